//! Chaos on the local platform, end to end with the example service and real processes.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proc, zmq_client};

const SERVICE: &str = "apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {name: drill}
spec:
  windows: {build: \"2022\"}
  template: {spec: {containers: [{name: echo, image: \"example.com/echo:1.0\"}]}}
  zmq: {port: 5555, requestTimeout: 2s}
  strategy:
    canary:
      steps: [{setWeight: 10}, {pause: {}}]
      analysis: {minSamples: 1000000, inconclusiveLimit: 1000000}
  local:
    command: [zdeploy, example, echo, --bind, \"{{endpoint}}\", --version, \"{{revision}}\"]
    replicas: 2
";

fn experiment(fault: &str, duration: &str, metric: &str) -> String {
    format!(
        "apiVersion: zdeploy.io/v1alpha1
kind: ChaosSchedule
metadata: {{name: drill-now}}
spec:
  schedule: \"0 3 1 * *\"
  experiment:
    service: drill
    pool: stable
    fault: {fault}
    mode: one
    duration: {duration}
  steadyState:
    interval: 250ms
    recoveryDeadline: 10s
    metrics:
      - {metric}
"
    )
}

struct Setup {
    dir: zdeploy_testkit::dirs::TempDir,
    up: Proc,
    frontend: String,
    _load: Proc,
}

fn setup() -> Setup {
    setup_with(&[])
}

fn setup_with(extra: &[&str]) -> Setup {
    let dir = support::tempdir("chaos");
    std::fs::write(dir.join("drill.yaml"), SERVICE).unwrap();
    let support::Up { proc: up, frontend } =
        support::up_with(&dir.join("drill.yaml"), &dir.join("state"), extra);
    // Steady background load, pipelined, so every check has samples.
    let mut load = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    load.args([
        "example",
        "load",
        "--connect",
        &frontend,
        "--rate",
        "200",
        "--duration",
        "120s",
    ]);
    let load = Proc::start_silent(load);
    Setup {
        dir,
        up,
        frontend,
        _load: load,
    }
}

fn chaos(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["chaos"])
        .args(args)
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn run(dir: &Path, file: &str, body: &str) -> (i32, serde_json::Value) {
    let path = dir.join(file);
    std::fs::write(&path, body).unwrap();
    let (code, out) = chaos(dir, &["run", "-f", path.to_str().unwrap(), "-o", "json"]);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

#[test]
fn a_latency_fault_that_breaks_the_steady_state_is_removed_at_once() {
    let s = setup();
    std::thread::sleep(Duration::from_secs(2));
    let body = experiment(
        "{gatewayLatency: {latency: 300ms}}",
        "30s",
        "{name: p99, builtin: latencyP99, window: 1m, max: 0.1, minSamples: 10}",
    );
    let (code, run) = run(&s.dir, "latency.yaml", &body);
    let done = Instant::now();
    assert_eq!(code, 1, "{run}");
    assert_eq!(run["verdict"], "broken", "{run}");
    assert!(
        run["reason"].as_str().unwrap().contains("reverted at once"),
        "{run}"
    );
    // The first request sent after the verdict is answered without the 300 ms delay.
    let ctx = zmq::Context::new();
    let probe = zmq_client(&ctx, zmq::REQ, &s.frontend);
    let t = Instant::now();
    probe.send("after", 0).unwrap();
    probe.recv_multipart(0).unwrap();
    let rtt = t.elapsed();
    eprintln!(
        "{}; fault gone: first request after the verdict took {rtt:?}, answered {:?} after the verdict",
        run["reason"],
        done.elapsed()
    );
    assert!(
        rtt < Duration::from_millis(300),
        "the delay is still there: {rtt:?}"
    );
    assert!(
        done.elapsed() < Duration::from_secs(1),
        "fault still in place after {:?}",
        done.elapsed()
    );
    drop(s.up);
}

#[test]
fn a_killed_process_is_restarted_and_the_after_check_passes() {
    let s = setup();
    std::thread::sleep(Duration::from_secs(2));
    let body = experiment(
        "{processKill: {}}",
        "2s",
        "{name: errors, builtin: errorRatio, window: 1m, max: 0.2, minSamples: 10}",
    );
    let (code, run) = run(&s.dir, "kill.yaml", &body);
    assert_eq!(code, 0, "{run}");
    assert_eq!(run["verdict"], "held", "{run}");
    let targets = run["targets"].to_string();
    assert!(
        targets.contains("stable process") && targets.matches("pid").count() == 1,
        "mode one hits one process: {targets}"
    );
    assert!(
        run["reason"].as_str().unwrap().contains("recovered"),
        "{run}"
    );
}

#[test]
fn an_experiment_during_a_rollout_is_skipped_and_recorded() {
    let s = setup();
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args([
            "rollout",
            "drill",
            "--image",
            "example.com/echo:1.1",
            "--state-dir",
            s.dir.join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = experiment(
        "{gatewayErrors: {ratio: 0.5}}",
        "10s",
        "{name: errors, builtin: errorRatio, max: 0.01}",
    );
    let (code, run) = run(&s.dir, "during.yaml", &body);
    assert_eq!(code, 2, "{run}");
    assert_eq!(run["verdict"], "skipped");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("rollout of drill (example.com/echo:1.1+"),
        "{run}"
    );
    let (code, history) = chaos(&s.dir, &["history", "drill-now", "-o", "json"]);
    assert_eq!(code, 0);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history[0]["verdict"], "skipped");
    // Pause and resume reach the runtime that holds the schedule.
    let suspended = |dir: &Path| {
        let (code, list) = chaos(dir, &["list", "-o", "json"]);
        assert_eq!(code, 0);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        list[0]["suspended"].as_bool().unwrap()
    };
    assert_eq!(
        chaos(&s.dir, &["pause", "drill-now"]),
        (0, "drill-now: paused\n".into())
    );
    assert!(suspended(&s.dir));
    assert_eq!(
        chaos(&s.dir, &["resume", "drill-now"]),
        (0, "drill-now: resumed\n".into())
    );
    assert!(!suspended(&s.dir));
    assert_eq!(chaos(&s.dir, &["pause", "no-such-drill"]).0, 2, "an error");
    // A dry run names what would be hit and changes nothing.
    let path = s.dir.join("during.yaml");
    let (code, out) = chaos(&s.dir, &["run", "-f", path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "dry run, nothing changed: would hit zgate pool stable: latency 0s, error ratio 0.5"
        ),
        "{out}"
    );
}

#[test]
fn no_experiment_starts_while_an_alert_fires_for_the_service() {
    let port = zdeploy_testkit::ports::free_port();
    let hook = format!("127.0.0.1:{port}");
    let s = setup_with(&["--alertmanager-webhook", &hook]);
    std::thread::sleep(Duration::from_secs(2));
    let token = std::fs::read_to_string(s.dir.join("state/drill/token")).unwrap();
    // What Alertmanager sends (the real Alertmanager path is tested with the analysis).
    let notify = |status: &str| {
        let body = format!(
            r#"{{"version":"4","status":"{status}","alerts":[{{"status":"{status}","fingerprint":"a1b2","labels":{{"alertname":"DrillLatencyHigh","service":"drill","pool":"stable"}},"annotations":{{}}}}]}}"#
        );
        let r = support::http()
            .post(format!("http://{hook}/alertmanager"))
            .bearer_auth(token.trim())
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    notify("firing");
    let body = experiment(
        "{gatewayLatency: {latency: 1ms}}",
        "1s",
        "{name: errors, builtin: errorRatio, window: 1m, max: 0.5, minSamples: 10}",
    );
    let (code, guarded) = run(&s.dir, "guarded.yaml", &body);
    assert_eq!(code, 2, "{guarded}");
    assert_eq!(guarded["verdict"], "skipped", "{guarded}");
    assert_eq!(
        guarded["reason"], "alert DrillLatencyHigh is firing for drill",
        "{guarded}"
    );
    notify("resolved");
    let (code, ran) = run(&s.dir, "guarded.yaml", &body);
    assert_eq!(code, 0, "once resolved, the experiment runs: {ran}");
    assert_eq!(ran["verdict"], "held", "{ran}");
    // Runs by verdict, on the admin API's /metrics.
    let admin = std::fs::read_to_string(s.dir.join("state/drill/endpoint")).unwrap();
    let metrics = support::http()
        .get(format!("{}/metrics", admin.trim()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for (verdict, n) in [("held", 1), ("skipped", 1), ("broken", 0), ("aborted", 0)] {
        let line = format!("zdeploy_chaos_runs_total{{verdict=\"{verdict}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// A drill due every minute whose fault lasts longer than a minute, under `policy`: run by
/// hand, the next minute falls due while it runs.
fn every_minute(policy: &str) -> String {
    experiment(
        "{gatewayLatency: {latency: 1ms}}",
        "70s",
        "{name: errors, builtin: errorRatio, window: 1m, max: 0.5, minSamples: 10}",
    )
    .replace(
        "schedule: \"0 3 1 * *\"",
        &format!("schedule: \"* * * * *\"\n  concurrencyPolicy: {policy}"),
    )
}

#[test]
fn a_run_due_while_one_is_in_progress_replaces_it_under_replace() {
    let s = setup();
    let asked = Instant::now();
    let (code, run) = run(&s.dir, "replace.yaml", &every_minute("Replace"));
    assert_eq!(run["verdict"], "aborted", "{run}");
    assert_ne!(code, 0, "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("concurrencyPolicy: Replace"),
        "{run}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(65),
        "replaced at the next minute, not at its end: {:?}",
        asked.elapsed()
    );
}

#[test]
fn a_run_due_while_one_is_in_progress_is_skipped_under_forbid() {
    let s = setup();
    let (code, run) = run(&s.dir, "forbid.yaml", &every_minute("Forbid"));
    assert_eq!((code, &run["verdict"]), (0, &"held".into()), "{run}");
    let (code, history) = chaos(&s.dir, &["history", "drill-now", "-o", "json"]);
    assert_eq!(code, 0);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["verdict"] == "skipped"
                && r["reason"]
                    .as_str()
                    .unwrap()
                    .contains("concurrencyPolicy: Forbid")),
        "{history}"
    );
}

#[test]
fn a_dry_run_with_no_runtime_and_no_cluster_shows_the_plan_and_what_it_cannot_know() {
    let dir = support::tempdir("chaos-plan");
    let metric = "{name: errors, builtin: errorRatio, window: 10s, max: 0.05}";
    for (fault, hits) in [
        (
            "{gatewayLatency: {latency: 300ms}}",
            "would hit drill's zgate wherever it runs",
        ),
        (
            "{processKill: {}}",
            "which pods or processes it hits is known only where drill runs",
        ),
    ] {
        let path = dir.join("plan.yaml");
        std::fs::write(&path, experiment(fault, "5m", metric)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
            .args(["chaos", "run", "-f", path.to_str().unwrap(), "--dry-run"])
            .args(["--state-dir", dir.join("state").to_str().unwrap()])
            .env_remove("KUBECONFIG")
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for said in [
            "drill-now: an experiment on drill, pool stable",
            "fault:",
            "schedule:     0 3 1 * * (UTC)",
            "next runs:",
            "guards:       skipped while a rollout of drill is in progress",
            "steady state: errors checked every 250ms",
            hits,
            "no `zdeploy up` runs drill here",
        ] {
            assert!(text.contains(said), "{said:?} not in:\n{text}");
        }
    }
}
