//! `zdeploy validate`: checks manifest files, directories or stdin and reports every problem.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use zdeploy_api::validate::validate_str;

use crate::Output;

/// Arguments of `zdeploy validate`.
#[derive(clap::Args)]
pub struct Args {
    /// A YAML file, a directory of them (recursively, *.yaml and *.yml), or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
struct Report {
    file: String,
    document: usize,
    kind: String,
    name: String,
    valid: bool,
    problems: Vec<ProblemOut>,
}

#[derive(Serialize)]
struct ProblemOut {
    path: String,
    rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
}

impl Report {
    /// A report for a file that could not be read as documents at all.
    fn file_problem(file: &str, rule: String) -> Self {
        Report {
            file: file.to_string(),
            document: 0,
            kind: String::new(),
            name: String::new(),
            valid: false,
            problems: vec![ProblemOut {
                path: "(file)".into(),
                rule,
                value: None,
                line: None,
            }],
        }
    }
}

/// Runs the command: exit 0 when every document is valid, 1 otherwise.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for f in &args.files {
        for (name, text) in read_inputs(f)? {
            match validate_str(&text) {
                Ok(docs) if docs.is_empty() => {
                    reports.push(Report::file_problem(&name, "holds no YAML document".into()))
                }
                Ok(docs) => reports.extend(docs.into_iter().map(|d| {
                    Report {
                        file: name.clone(),
                        document: d.index,
                        valid: d.problems.is_empty(),
                        kind: d.kind,
                        name: d.name,
                        problems: d
                            .problems
                            .into_iter()
                            .map(|p| ProblemOut {
                                path: p.path.to_string(),
                                rule: p.rule,
                                value: p.value,
                                line: p.line,
                            })
                            .collect(),
                    }
                })),
                Err(e) => reports.push(Report::file_problem(&name, e.to_string())),
            }
        }
    }
    let valid = reports.iter().all(|r| r.valid);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Output::Text => print_text(&reports),
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(reports: &[Report]) {
    for r in reports {
        let what = if r.kind.is_empty() {
            String::new()
        } else {
            format!(" {}/{}", r.kind, r.name)
        };
        if r.valid {
            println!("{}{what}: valid", r.file);
            continue;
        }
        for p in &r.problems {
            let at = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            let got = p
                .value
                .as_ref()
                .map(|v| format!(" (got {v})"))
                .unwrap_or_default();
            eprintln!("{}{at}:{what} {}: {}{got}", r.file, p.path, p.rule);
        }
    }
}

/// The (name, text) of every input that `arg` names.
fn read_inputs(arg: &str) -> anyhow::Result<Vec<(String, String)>> {
    if arg == "-" {
        let text = crate::manifest::read_from(std::io::stdin(), "<stdin>")?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let path = Path::new(arg);
    let mut files = Vec::new();
    if path.is_dir() {
        collect_yaml(path, &mut files)?;
        files.sort();
        if files.is_empty() {
            anyhow::bail!("{arg}: directory holds no .yaml or .yml file");
        }
    } else {
        files.push(path.to_path_buf());
    }
    files
        .into_iter()
        .map(|f| {
            let text = crate::manifest::read(&f)?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            collect_yaml(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}
