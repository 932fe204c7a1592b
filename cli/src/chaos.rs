//! `zdeploy chaos run|list|history|pause|resume`: against the local runtimes, or with
//! `-n`, `--context` or `--kubeconfig` against the ChaosSchedules in a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::ResourceExt;
use zdeploy_api::chaos::RunVerdict;
use zdeploy_controller::experiment::{describe_plan, targets_unknown};
use zdeploy_controller::platforms::local::api::ChaosRequest;
use zdeploy_controller::platforms::local::chaos::Scheduled;
use zdeploy_controller::platforms::local::state::StateDir;

use crate::Output;
use crate::cluster::{self, ClusterArgs};
use crate::local::{LocalClient, StateArgs};
use zdeploy_api::chaos::{ChaosSchedule, ChaosScheduleStatus};
use zdeploy_controller::platforms::kubernetes::chaos::suspended;

/// `zdeploy chaos ...`.
#[derive(clap::Subcommand)]
pub enum ChaosCommand {
    /// Run the experiment of a ChaosSchedule once, now, and wait for its verdict (in a
    /// cluster: applied, then run by the controller).
    #[command(
        after_help = "Exit status: 0 held, 1 broken or aborted, 2 skipped or refused.\n\nExamples:\n  zdeploy chaos run -f manifests/examples/echo-chaos.yaml --dry-run\n  zdeploy chaos run -f manifests/examples/echo-chaos.yaml\n  zdeploy chaos run -f manifests/examples/echo-chaos.yaml -n trading"
    )]
    Run {
        /// The ChaosSchedule manifest.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Show what would be hit and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// List the schedules the local runtimes (or the cluster's namespace) hold, with their last run.
    #[command(
        after_help = "Examples:\n  zdeploy chaos list\n  zdeploy chaos list -n trading -o json"
    )]
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show the runs of one schedule, newest first.
    History {
        /// The ChaosSchedule.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop a schedule from starting runs (in a cluster: the `zdeploy.io/suspend` annotation).
    #[command(
        after_help = "Examples:\n  zdeploy chaos pause echo-latency-drill\n  zdeploy chaos pause echo-latency-drill -n trading"
    )]
    Pause(Schedule),
    /// Let a paused schedule start runs again.
    Resume(Schedule),
}

/// One schedule, in the local runtimes or in a cluster.
#[derive(clap::Args)]
pub struct Schedule {
    /// The ChaosSchedule.
    name: String,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Every running local runtime, by service name.
fn runtimes(state: &StateArgs) -> Vec<(String, LocalClient)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&state.state_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(c) = LocalClient::connect(state, &name) {
            out.push((name, c));
        }
    }
    out
}

/// A schedule, the service it targets, and its status.
struct Row {
    service: String,
    schedule: ChaosSchedule,
    suspended: bool,
    status: ChaosScheduleStatus,
}

/// Every schedule: the cluster's when one is named, else the local runtimes'.
async fn all_schedules(state: &StateArgs, cluster: &ClusterArgs) -> anyhow::Result<Vec<Row>> {
    if cluster.given() {
        return Ok(cluster::chaos_schedules(cluster)
            .await?
            .into_iter()
            .map(|cs| Row {
                service: cs.spec.experiment.service.clone(),
                suspended: suspended(&cs),
                status: cs.status.clone().unwrap_or_default(),
                schedule: cs,
            })
            .collect());
    }
    let mut out = Vec::new();
    for (service, client) in runtimes(state) {
        if let Ok(reply) = client.chaos(&ChaosRequest::List).await {
            out.extend(reply.schedules.into_iter().map(|s: Scheduled| Row {
                service: service.clone(),
                suspended: s.schedule.spec.suspend,
                schedule: s.schedule,
                status: s.status,
            }));
        }
    }
    Ok(out)
}

/// Runs a chaos subcommand.
pub async fn run(cmd: &ChaosCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChaosCommand::Run {
            file,
            dry_run,
            state,
            cluster,
            output,
        } => {
            let schedules = crate::local::load_chaos(file)?;
            let cs = schedules
                .into_iter()
                .next()
                .with_context(|| format!("{} holds no ChaosSchedule", file.display()))?;
            let name = cs.name_any();
            // As the rollout verbs: the cluster when one is named or no local runtime
            // runs the experiment's service.
            let local = StateDir::existing(&state.state_dir, &cs.spec.experiment.service);
            if *dry_run {
                println!("{}", describe_plan(&cs, jiff::Timestamp::now()));
            }
            let run = if cluster.given() || local.is_none() {
                let x = cs.spec.experiment.clone();
                match cluster::chaos_run(cluster, cs, *dry_run).await {
                    Ok(cluster::ChaosOutcome::Plan(plan)) => {
                        println!("{plan}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Ok(cluster::ChaosOutcome::Run(run)) => run,
                    // Nowhere to look: the plan above is all there is to show.
                    Err(e)
                        if *dry_run
                            && !cluster.given()
                            && e.downcast_ref::<cluster::NoCluster>().is_some() =>
                    {
                        let hits = targets_unknown(&x);
                        println!(
                            "dry run, nothing changed: {hits}; no `zdeploy up` runs {} here and {e}",
                            x.service
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => return Err(e),
                }
            } else {
                let client = LocalClient::connect(state, &cs.spec.experiment.service)?;
                let reply = client
                    .chaos(&ChaosRequest::Run {
                        schedule: Box::new(cs),
                        dry_run: *dry_run,
                    })
                    .await?;
                if let Some(e) = reply.error {
                    bail!(e);
                }
                if let Some(plan) = reply.plan {
                    println!("{plan}");
                    return Ok(ExitCode::SUCCESS);
                }
                reply.run.context("the runtime gave no result")?
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&run)?),
                Output::Text => println!(
                    "{name}: {:?}: {}\ntargets: {}",
                    run.verdict,
                    run.reason,
                    run.targets.join(", ")
                ),
            }
            Ok(ExitCode::from(match run.verdict {
                RunVerdict::Held => 0,
                RunVerdict::Broken | RunVerdict::Aborted => 1,
                RunVerdict::Skipped => 2,
            }))
        }
        ChaosCommand::List {
            state,
            cluster,
            output,
        } => {
            let all = all_schedules(state, cluster).await?;
            if *output == Output::Json {
                let items: Vec<_> = all.iter().map(|r| serde_json::json!({"service": r.service, "suspended": r.suspended, "schedule": r.schedule, "status": r.status})).collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<16} {:<16} {:<9} LAST RUN",
                "NAME", "SERVICE", "SCHEDULE", "SUSPENDED"
            );
            for r in all {
                let last = match (&r.status.active, r.status.history.first()) {
                    (Some(a), _) => format!("running since {}", a.started.0),
                    (None, Some(run)) => format!("{:?} at {}", run.verdict, run.scheduled.0),
                    (None, None) => "-".into(),
                };
                println!(
                    "{:<24} {:<16} {:<16} {:<9} {last}",
                    r.schedule.name_any(),
                    r.service,
                    r.schedule.spec.schedule,
                    r.suspended
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::History {
            name,
            state,
            cluster,
            output,
        } => {
            let all = all_schedules(state, cluster).await?;
            let place = if cluster.given() {
                "the namespace"
            } else {
                "any running `zdeploy up`"
            };
            let s = all
                .into_iter()
                .find(|r| &r.schedule.name_any() == name)
                .with_context(|| format!("no chaos schedule {name:?} in {place}"))?;
            if *output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s.status.history)?);
                return Ok(ExitCode::SUCCESS);
            }
            for r in &s.status.history {
                println!(
                    "{}  {:<8?} {}  [{}]",
                    r.scheduled.0,
                    r.verdict,
                    r.reason,
                    r.targets.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Pause(s) => suspend(s, true).await,
        ChaosCommand::Resume(s) => suspend(s, false).await,
    }
}

/// Pauses (`suspend`) or resumes a schedule: in the cluster when one is named, else in
/// whichever running `zdeploy up` holds it.
async fn suspend(s: &Schedule, suspend: bool) -> anyhow::Result<ExitCode> {
    let name = &s.name;
    let done = || println!("{name}: {}", if suspend { "paused" } else { "resumed" });
    if s.cluster.given() {
        cluster::chaos_suspend(&s.cluster, name, suspend).await?;
        done();
        return Ok(ExitCode::SUCCESS);
    }
    for (_, client) in runtimes(&s.state) {
        let request = ChaosRequest::Suspend {
            name: name.clone(),
            suspend,
        };
        if client.chaos(&request).await?.error.is_none() {
            done();
            return Ok(ExitCode::SUCCESS);
        }
    }
    bail!("no chaos schedule {name:?} in any running `zdeploy up`")
}
