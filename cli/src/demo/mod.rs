//! `zdeploy demo`: the whole job on one machine. The example service runs as stable under
//! load; a bad build (20% errors) goes out with `--canary 10` and rolls back by itself; a
//! good build is promoted through every step. A live view while it runs, a summary after.

pub mod echo;
pub mod load;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use zdeploy_api::Weight;
use zdeploy_api::command::CommandRequest;
use zdeploy_api::revision::Revision;
use zdeploy_api::service::{Outcome, Phase, Verdict};
use zdeploy_controller::platforms::local::{Runtime, RuntimeEvent, UpConfig};

use crate::Output;
use crate::local::{LocalClient, StateArgs};
use load::Load;

const STABLE: &str = "zdeploy.example/echo:1.0";
const BAD: &str = "zdeploy.example/echo:1.1+errors=0.2";
const GOOD: &str = "zdeploy.example/echo:1.2";

/// Arguments of `zdeploy demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Requests per second the load generator sends.
    #[arg(long, default_value_t = 600)]
    rate: u32,
    /// Print the summary as JSON (the live view goes to stderr).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// The summary, as `-o json` prints it.
#[derive(Serialize)]
struct Summary {
    rollback_seconds: Option<f64>,
    canary_errors: u64,
    requests_sent: u64,
    requests_unanswered: u64,
    bad_version_rolled_back: bool,
    good_version_promoted: bool,
    total_seconds: f64,
}

fn manifest(exe: &str) -> String {
    format!(
        "apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata:
  name: echo-demo
spec:
  replicas: 1
  windows: {{build: \"2022\"}}
  template:
    spec:
      containers: [{{name: echo, image: \"{STABLE}\"}}]
  zmq: {{port: 5555, requestTimeout: 2s}}
  strategy:
    progressDeadline: 2m
    canary:
      steps:
        - setWeight: 10
        - pause: {{duration: 4s}}
        - setWeight: 50
        - pause: {{duration: 4s}}
      analysis:
        interval: 200ms
        minSamples: 20
        failureLimit: 0
        inconclusiveLimit: 1000
        metrics:
          - {{name: error-ratio, builtin: errorRatio, window: 5m, max: 0.01}}
          - {{name: latency-p99, builtin: latencyP99, window: 3m, max: 0.8}}
  local:
    command: [\"{exe}\", example, echo, --bind, \"{{{{endpoint}}}}\", --version, \"{{{{revision}}}}\"]
  runbooks:
    - {{id: canary-error-ratio-high, alerts: [CanaryErrorRateHigh]}}
"
    )
}

/// Prints the live view: weights, steps, analysis verdicts, notes.
struct LiveView {
    start: Instant,
    to_stderr: bool,
    last_analysis: Mutex<(Instant, String)>,
}

impl LiveView {
    fn line(&self, s: &str) {
        let line = format!("[{:>6.2}s] {s}", self.start.elapsed().as_secs_f64());
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    fn analysis(&self, verdicts: &[(String, Option<f64>, Verdict)]) {
        let text: Vec<String> = verdicts
            .iter()
            .map(|(m, v, verdict)| {
                let v = v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
                format!(
                    "{m} {v} {}",
                    match verdict {
                        Verdict::Pass => "pass",
                        Verdict::Fail => "FAIL",
                        Verdict::Inconclusive => "inconclusive",
                    }
                )
            })
            .collect();
        let text = text.join(", ");
        let kinds: String = verdicts.iter().map(|(_, _, v)| format!("{v:?}")).collect();
        let mut last = self.last_analysis.lock().expect("view lock");
        // Every change of verdict is shown; the same verdicts at most once a second.
        if last.1 != kinds || last.0.elapsed() >= Duration::from_secs(1) {
            *last = (Instant::now(), kinds);
            self.line(&format!("analysis: {text}"));
        }
    }
}

async fn wait_for(
    client: &LocalClient,
    what: &str,
    limit: Duration,
    done: impl Fn(&zdeploy_api::ZmqServiceStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let view = client.status().await?;
        if done(&view.status) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not happen within {limit:?}; last status: {:?}",
                view.status.message
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the demo; exit 0 when the bad build rolled back, the good one was promoted and
/// every request was answered.
pub async fn run(args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let exe = std::env::current_exe().context("locating zdeploy")?;
    let svc = zdeploy_api::validate::load_services(&manifest(&exe.display().to_string()))
        .map_err(anyhow::Error::msg)?
        .remove(0);
    let state_root: PathBuf =
        std::env::temp_dir().join(format!("zdeploy-demo-{}", std::process::id()));
    let view = Arc::new(LiveView {
        start: Instant::now(),
        to_stderr: args.output == Output::Json,
        last_analysis: Mutex::new((Instant::now(), String::new())),
    });
    view.line("starting echo 1.0 as stable behind zgate (no cluster, no Prometheus: zgate is scraped directly)");
    let config = UpConfig {
        service: svc,
        // The demo's manifest tracks no files.
        manifest_dir: state_root.clone(),
        state_root: state_root.clone(),
        frontend: "tcp://127.0.0.1:*".into(),
        prometheus: None,
        admin: "127.0.0.1:0".parse().expect("loopback"),
        webhook: None,
        chaos: Vec::new(),
    };
    let (runtime, mut events) = Runtime::start(config).await.map_err(anyhow::Error::msg)?;
    let frontend = runtime.frontend().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runtime.run(stop_rx));
    let weights: Arc<Mutex<Vec<(Weight, Instant)>>> = Arc::default();
    let (v, w) = (view.clone(), weights.clone());
    tokio::spawn(async move {
        let mut phase = None;
        while let Ok(e) = events.recv().await {
            match e {
                RuntimeEvent::Weight { canary, at } => {
                    w.lock().expect("weights lock").push((canary, at))
                }
                RuntimeEvent::Note(n) => v.line(&n),
                RuntimeEvent::Analysis(run) => {
                    let verdicts: Vec<_> = run
                        .measurements
                        .iter()
                        .map(|m| (m.metric.clone(), m.value, m.verdict))
                        .collect();
                    v.analysis(&verdicts);
                }
                RuntimeEvent::Status(s) => {
                    let now = (s.phase, s.current_step);
                    if phase != Some(now) {
                        phase = Some(now);
                        let step = s
                            .current_step
                            .map(|i| format!(", step {i}"))
                            .unwrap_or_default();
                        v.line(&format!(
                            "phase {:?}{step}, canary {}%",
                            s.phase, s.canary_weight
                        ));
                    }
                }
            }
        }
    });
    let result = scenario(args, &view, &state_root, &frontend, &weights).await;
    let _ = stop_tx.send(true);
    running.await??;
    let _ = std::fs::remove_dir_all(&state_root);
    let summary = result?;
    let ok = summary.bad_version_rolled_back
        && summary.good_version_promoted
        && summary.requests_unanswered == 0;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Text => {
            println!("\nSummary");
            let rb = summary
                .rollback_seconds
                .map(|s| format!("{s:.3} s"))
                .unwrap_or_else(|| "-".into());
            println!(
                "  bad build rolled back by itself:    {}",
                summary.bad_version_rolled_back
            );
            println!("  first bad reply to canary weight 0: {rb}");
            println!(
                "  errors served by the bad canary:    {}",
                summary.canary_errors
            );
            println!(
                "  good build promoted:                {}",
                summary.good_version_promoted
            );
            println!(
                "  requests sent:                      {}",
                summary.requests_sent
            );
            println!(
                "  requests without a reply:           {}",
                summary.requests_unanswered
            );
            println!(
                "  demo took:                          {:.1} s",
                summary.total_seconds
            );
        }
    }
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

async fn scenario(
    args: &Args,
    view: &LiveView,
    state_root: &std::path::Path,
    frontend: &str,
    weights: &Mutex<Vec<(Weight, Instant)>>,
) -> anyhow::Result<Summary> {
    let client = LocalClient::connect(
        &StateArgs {
            state_dir: state_root.to_path_buf(),
        },
        "echo-demo",
    )?;
    view.line(&format!("load: {} requests/s to {frontend}", args.rate));
    let load = Load::start(frontend, args.rate)?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    view.line(&format!(
        "$ zdeploy rollout echo-demo --canary 10 --image {BAD}"
    ));
    let bad_started = Instant::now();
    client
        .command(&CommandRequest::Rollout {
            image: Some(BAD.into()),
            canary: Weight::new(10).ok(),
            manifest_over_stable: false,
        })
        .await?;
    wait_for(
        &client,
        "the rollback of the bad build",
        Duration::from_secs(60),
        |s| s.phase == Phase::RolledBack,
    )
    .await?;
    let weight_zero = weights
        .lock()
        .expect("weights lock")
        .iter()
        .find(|(w, at)| *w == Weight::ZERO && *at > bad_started)
        .map(|(_, at)| *at);
    tokio::time::sleep(Duration::from_secs(1)).await;

    view.line(&format!(
        "$ zdeploy rollout echo-demo --canary 10 --image {GOOD}"
    ));
    client
        .command(&CommandRequest::Rollout {
            image: Some(GOOD.into()),
            canary: Weight::new(10).ok(),
            manifest_over_stable: false,
        })
        .await?;
    wait_for(
        &client,
        "the promotion of the good build",
        Duration::from_secs(90),
        |s| {
            s.phase == Phase::Healthy
                && s.stable_revision
                    .as_deref()
                    .is_some_and(|r| Revision::parse(r).image == GOOD)
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    view.line("stopping the load and waiting for the last replies");
    let stats = load.finish();
    let history = client.status().await?.status.history;
    let bad_key = format!("ERR echo {}", BAD.rsplit(':').next().unwrap_or_default());
    let first_bad = stats.first_error.get(&bad_key).copied();
    let rollback_seconds = match (first_bad, weight_zero) {
        (Some(bad), Some(zero)) => Some(zero.saturating_duration_since(bad).as_secs_f64()),
        _ => None,
    };
    Ok(Summary {
        rollback_seconds,
        canary_errors: stats.by_reply.get(&bad_key).copied().unwrap_or(0),
        requests_sent: stats.sent,
        requests_unanswered: stats.unanswered,
        bad_version_rolled_back: history
            .iter()
            .any(|r| Revision::parse(&r.revision).image == BAD && r.outcome == Outcome::RolledBack),
        good_version_promoted: history
            .iter()
            .any(|r| Revision::parse(&r.revision).image == GOOD && r.outcome == Outcome::Promoted),
        total_seconds: view.start.elapsed().as_secs_f64(),
    })
}
