//! `zdeploy runbook list|show|lint|run`: the runbooks that ship with zdeploy.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use zdeploy_controller::runbooks::{self, lint, steps};

use crate::Output;

/// `zdeploy runbook ...`.
#[derive(clap::Subcommand)]
pub enum RunbookCommand {
    /// List the runbooks with their versions and the alerts they answer.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show a runbook, by id or by the alert it answers.
    #[command(
        after_help = "Examples:\n  zdeploy runbook show CanaryErrorRateHigh\n  zdeploy runbook show canary-error-ratio-high --steps"
    )]
    Show {
        /// Runbook id or alert name.
        name: String,
        /// Show only the executable steps, numbered.
        #[arg(long)]
        steps: bool,
    },
    /// Check runbooks and alert rules: front matter, sections, links, version bumps.
    Lint {
        /// The repository to check.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Run one executable step of a runbook (asks first; no shell is involved).
    #[command(
        after_help = "Example:\n  zdeploy runbook run canary-error-ratio-high 1 --set service=echo --dry-run"
    )]
    Run {
        /// Runbook id or alert name.
        name: String,
        /// Step number, as `show --steps` lists them.
        step: usize,
        /// A value for a {{placeholder}}: NAME=VALUE (letters, digits, . _ - : / only).
        #[arg(long = "set", value_parser = key_value)]
        values: Vec<(String, String)>,
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: write NAME=VALUE"))
}

fn find(name: &str) -> anyhow::Result<runbooks::Runbook> {
    runbooks::find(name).with_context(|| {
        format!("no runbook with id or alert {name:?}; `zdeploy runbook list` shows them")
    })
}

/// Runs a runbook subcommand.
pub fn run(cmd: &RunbookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunbookCommand::List { output } => {
            let all = runbooks::catalog();
            if *output == Output::Json {
                let metas: Vec<_> = all.iter().map(|r| &r.meta).collect();
                println!("{}", serde_json::to_string_pretty(&metas)?);
            } else {
                println!("{:<28} {:<8} {:<45} ALERTS", "ID", "VERSION", "TITLE");
                for r in &all {
                    println!(
                        "{:<28} {:<8} {:<45} {}",
                        r.meta.id,
                        r.meta.version,
                        r.meta.title,
                        r.meta.alerts.join(",")
                    );
                }
            }
        }
        RunbookCommand::Show {
            name,
            steps: only_steps,
        } => {
            let r = find(name)?;
            if *only_steps {
                for s in steps::steps(&r.body) {
                    println!("step {}:", s.number);
                    for l in &s.lines {
                        println!("  {l}");
                    }
                }
            } else {
                print!("{}", runbooks::render(&r));
            }
        }
        RunbookCommand::Lint { repo } => {
            let problems = lint::lint(repo);
            for p in &problems {
                eprintln!("{}: {}", p.file, p.message);
            }
            if !problems.is_empty() {
                eprintln!("{} problems", problems.len());
                return Ok(ExitCode::from(1));
            }
            println!("runbooks and alert rules are consistent");
        }
        RunbookCommand::Run {
            name,
            step,
            values,
            dry_run,
            yes,
        } => {
            let r = find(name)?;
            let all = steps::steps(&r.body);
            let s = all
                .iter()
                .find(|s| s.number == *step)
                .with_context(|| format!("{} has {} executable steps", r.meta.id, all.len()))?;
            let commands: Vec<Vec<String>> = s
                .lines
                .iter()
                .map(|l| steps::argv(l, values))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            for argv in &commands {
                println!("$ {}", argv.join(" "));
            }
            if *dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            if !yes {
                print!(
                    "run {} command(s) from {}@{} step {step}? [y/N] ",
                    commands.len(),
                    r.meta.id,
                    r.meta.version
                );
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !answer.trim().eq_ignore_ascii_case("y") {
                    bail!("not confirmed; nothing ran");
                }
            }
            for argv in commands {
                // `zdeploy` in a step means this very binary.
                let program = if argv[0] == "zdeploy" {
                    std::env::current_exe()?
                } else {
                    PathBuf::from(&argv[0])
                };
                let status = std::process::Command::new(program)
                    .args(&argv[1..])
                    .status()
                    .with_context(|| format!("starting {}", argv[0]))?;
                if !status.success() {
                    bail!("{} failed with {status}", argv.join(" "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
