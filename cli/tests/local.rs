//! `zdeploy up` with a service that is not the bundled one (a pyzmq script), driven by the
//! CLI verbs from other processes; and a restart in the middle of a rollout.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{client, python, root, tempdir, up};

fn manifest(dir: &Path, name: &str, steps: &str) -> PathBuf {
    manifest_routed(dir, name, steps, "[]")
}

/// `manifest` with `routes` under `strategy.canary`.
fn manifest_routed(dir: &Path, name: &str, steps: &str, routes: &str) -> PathBuf {
    let strategy = format!(
        "    canary:
      steps: {steps}
      routes: {routes}
      analysis:
        interval: 500ms
        minSamples: 1000000
        inconclusiveLimit: 1000000
"
    );
    service_manifest(dir, name, "{port: 7000, requestTimeout: 2s}", &strategy, "")
}

/// A ZmqService whose revisions are the pyzmq peer (`peer_flags`: more of its flags,
/// each followed by a comma), with `zmq` as its `zmq` mapping and `strategy` (indented
/// four spaces) under `strategy`.
fn service_manifest(
    dir: &Path,
    name: &str,
    zmq: &str,
    strategy: &str,
    peer_flags: &str,
) -> PathBuf {
    let text = format!(
        "apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {{name: {name}}}
spec:
  windows: {{build: \"2022\"}}
  template: {{spec: {{containers: [{{name: svc, image: \"example.com/quotes:v1\"}}]}}}}
  zmq: {zmq}
  strategy:
{strategy}  runbooks:
    - {{id: canary-error-ratio-high, alerts: [CanaryErrorRateHigh]}}
  local:
    command: [\"{python}\", \"{peer}\", rep, {peer_flags}--bind, \"{{{{endpoint}}}}\", --name, \"{{{{revision}}}}\"]
",
        python = python().display(),
        peer = root().join("tests/peers/zmq_peer.py").display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `zdeploy up` of service `name` with canary `steps`, rolled out to
/// `example.com/NAME:v2` from another process; its manifest, state folder and process.
fn rolled_out(dir: &Path, name: &str, steps: &str) -> (PathBuf, PathBuf, support::Up) {
    let file = manifest(dir, name, steps);
    let state = dir.join("state");
    let running = up(&file, &state);
    let image = format!("example.com/{name}:v2");
    let (code, out) = zdeploy(&state, &["rollout", name, "--image", &image]);
    assert_eq!(code, 0, "{out}");
    (file, state, running)
}

/// Runs a CLI verb as its own process; returns exit code and stdout.
fn zdeploy(state: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(args)
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        eprintln!("zdeploy {args:?}: {stderr}");
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The image of a revision named `IMAGE+DIGEST`.
fn image_of(revision: &serde_json::Value) -> &str {
    let name = revision.as_str().unwrap_or_default();
    name.split_once('+').map_or(name, |(image, _)| image)
}

fn status(state: &Path, name: &str) -> serde_json::Value {
    let (code, out) = zdeploy(state, &["status", name, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn replies_by_revision(frontend: &str, n: u32) -> serde_json::Value {
    replies_to(frontend, n, &[])
}

/// `replies_by_revision` from a client with more flags (`--identity ID`).
fn replies_to(frontend: &str, n: u32, extra: &[&str]) -> serde_json::Value {
    let count = n.to_string();
    let mut args = vec![
        "dealer",
        "--connect",
        frontend,
        "--count",
        &count,
        "--pipeline",
        "20",
    ];
    args.extend_from_slice(extra);
    let r = client(&args);
    assert_eq!(r["received"], n, "{r}");
    r["by_first_word"].clone()
}

#[test]
fn rollout_then_rollback_from_other_processes() {
    let dir = tempdir("up");
    let file = manifest(&dir, "quotes", "[{setWeight: 20}, {pause: {}}]");
    let state = dir.join("state");
    let up = up(&file, &state);
    assert_eq!(replies_by_revision(&up.frontend, 200)["OK v1"], 200);

    let (code, out) = zdeploy(
        &state,
        &["rollout", "quotes", "--image", "example.com/quotes:v2"],
    );
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "quotes");
    assert_eq!(s["status"]["phase"], "Paused", "{s}");
    assert_eq!(s["status"]["canaryWeight"], 20);
    assert_eq!(
        image_of(&s["status"]["canaryRevision"]),
        "example.com/quotes:v2"
    );
    let split = replies_by_revision(&up.frontend, 1000);
    assert_eq!(
        (split["OK v1"].as_u64(), split["OK v2"].as_u64()),
        (Some(800), Some(200)),
        "{split}"
    );

    // A second rollout while one is under way is refused, with the reason.
    let (code, _) = zdeploy(
        &state,
        &["rollout", "quotes", "--image", "example.com/quotes:v3"],
    );
    assert_eq!(code, 1);

    let (code, out) = zdeploy(
        &state,
        &["rollback", "quotes", "--reason", "on-call says no"],
    );
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "quotes");
    assert_eq!(s["status"]["phase"], "RolledBack");
    assert_eq!(s["status"]["canaryWeight"], 0);
    assert_eq!(
        replies_by_revision(&up.frontend, 300)["OK v1"],
        300,
        "all traffic back on stable"
    );

    let (code, out) = zdeploy(&state, &["history", "quotes", "-o", "json"]);
    assert_eq!(code, 0);
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(image_of(&history[0]["revision"]), "example.com/quotes:v2");
    assert_eq!(history[0]["outcome"], "RolledBack");
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("on-call says no")
    );
    drop(up);
}

#[test]
fn a_killed_zdeploy_up_resumes_the_same_step() {
    let dir = tempdir("resume");
    let (file, state, mut first) = rolled_out(
        &dir,
        "ticks",
        "[{setWeight: 30}, {pause: {}}, {setWeight: 60}]",
    );
    let before = status(&state, "ticks")["status"].clone();
    assert_eq!(before["currentStep"], 1);

    first.proc.signal("KILL");
    first.proc.wait_exit(Duration::from_secs(5));
    drop(first);
    // Its children die with it (PR_SET_PDEATHSIG), freeing their ports for the restart.
    let second = up(&file, &state);
    let after = status(&state, "ticks")["status"].clone();
    assert_eq!(after["currentStep"], before["currentStep"]);
    assert_eq!(after["phase"], "Paused");
    assert_eq!(after["canaryWeight"], 30);
    assert_eq!(image_of(&after["canaryRevision"]), "example.com/ticks:v2");
    let split = replies_by_revision(&second.frontend, 1000);
    assert_eq!(
        (split["OK v1"].as_u64(), split["OK v2"].as_u64()),
        (Some(700), Some(300)),
        "{split}"
    );

    // And it goes on from there: promote moves to the next step.
    let (code, out) = zdeploy(&state, &["promote", "ticks"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&state, "ticks")["status"]["canaryWeight"], 60);
}

#[test]
fn a_second_zdeploy_up_on_one_state_is_refused_and_the_rollout_survives_both() {
    let dir = tempdir("twice");
    let (file, state, mut first) = rolled_out(&dir, "twice", "[{setWeight: 20}, {pause: {}}]");
    assert_eq!(status(&state, "twice")["status"]["canaryWeight"], 20);

    let t = std::time::Instant::now();
    let mut second = up_command(&file, &state, "tcp://127.0.0.1:*")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a second up that is not refused runs until it is killed.
    let exited = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(5) {
            second.kill().unwrap();
            panic!("a second zdeploy up on the same state directory started and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!exited.success(), "a second up started: {said}");
    // At once, not after waiting on the lock: within a second, as the issue asks.
    eprintln!("second up refused after {took:?}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    let pid = first.proc.child.id().to_string();
    assert!(
        said.contains("another zdeploy up")
            && said.contains(&format!("pid {pid}"))
            && said.contains(&first.frontend),
        "the refusal does not name the running one (pid {pid}, {}): {said}",
        first.frontend
    );

    // The first one stops as a person stops it; its rollout is on record as it was.
    first.proc.signal("INT");
    first.proc.wait_exit(Duration::from_secs(10));
    drop(first);
    let _again = up(&file, &state);
    let after = status(&state, "twice")["status"].clone();
    assert_eq!(after["canaryWeight"], 20, "{after}");
    assert_eq!(
        image_of(&after["canaryRevision"]),
        "example.com/twice:v2",
        "{after}"
    );
    assert_eq!(after["phase"], "Paused", "{after}");
}

#[test]
fn a_recorded_step_the_manifest_does_not_have_is_refused_never_promoted() {
    let dir = tempdir("tampered");
    let (file, state, mut first) = rolled_out(&dir, "steps", "[{setWeight: 30}, {pause: {}}]");
    first.proc.signal("KILL");
    first.proc.wait_exit(Duration::from_secs(5));
    drop(first);

    let recorded = state.join("steps/status.json");
    let text = std::fs::read_to_string(&recorded).unwrap();
    for (tampered, want) in [
        (
            text.replace("\"currentStep\": 1", "\"currentStep\": 99"),
            "currentStep is 99, but the manifest has 2 steps",
        ),
        ("{ not json".to_string(), "key must be a string"),
    ] {
        std::fs::write(&recorded, &tampered).unwrap();
        let out = up_command(&file, &state, "tcp://127.0.0.1:*")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&recorded.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains(want), "{stderr}");
        // Nothing recorded is lost or overwritten.
        assert_eq!(std::fs::read_to_string(&recorded).unwrap(), tampered);
    }
}

#[test]
fn a_verb_with_no_local_runtime_and_no_cluster_says_what_it_looked_for() {
    let home = tempdir("nohome");
    let state = home.join("state");
    for verb in [&["status", "echo"][..], &["rollback", "echo"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
            .args(verb)
            .args(["--state-dir", state.to_str().unwrap()])
            .env_remove("KUBECONFIG")
            .env("HOME", home.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        for said in [
            "no `zdeploy up` runs echo here",
            "KUBECONFIG is unset and",
            ".kube/config does not exist",
            "--kubeconfig PATH",
        ] {
            assert!(err.contains(said), "{said:?} not in: {err}");
        }
        assert_eq!(
            err.lines().count(),
            1,
            "one line, no raw error chain: {err}"
        );
        assert!(!err.contains("infer"), "{err}");
    }
}

#[test]
fn a_manifest_route_sends_testers_to_the_canary_at_weight_zero_until_the_rollback() {
    let dir = tempdir("routes");
    let file = manifest_routed(
        &dir,
        "routed",
        "[{pause: {}}]",
        "[{match: {identityPrefix: tester-}}]",
    );
    let state = dir.join("state");
    let up = up(&file, &state);
    let tester = ["--identity", "tester-1"];
    assert_eq!(
        replies_to(&up.frontend, 200, &tester)["OK v1"],
        200,
        "no rollout, no route"
    );
    let (code, out) = zdeploy(
        &state,
        &["rollout", "routed", "--image", "example.com/quotes:v2"],
    );
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "routed");
    assert_eq!(s["status"]["canaryWeight"], 0, "{s}");
    assert_eq!(
        s["status"]["routes"],
        serde_json::json!(["canary=identity:tester-"])
    );
    let (code, text) = zdeploy(&state, &["status", "routed"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("Routes:    canary=identity:tester-\n"),
        "{text}"
    );
    // At weight 0: every tester request reaches the canary, no one else's does.
    assert_eq!(replies_to(&up.frontend, 1000, &tester)["OK v2"], 1000);
    let others = replies_to(&up.frontend, 1000, &["--identity", "customer-1"]);
    assert_eq!(others["OK v1"], 1000, "{others}");
    let (code, out) = zdeploy(&state, &["rollback", "routed"]);
    assert_eq!(code, 0, "{out}");
    assert!(status(&state, "routed")["status"].get("routes").is_none());
    assert_eq!(
        replies_to(&up.frontend, 1000, &tester)["OK v1"],
        1000,
        "the route went with the rollback"
    );
    drop(up);
}

/// A service whose replies are comparable between revisions (`--stamp`: no name in the
/// body, `ts=` and `by=` frames of their own), shadowed at 100% before any weight, and
/// judged on its mismatch ratio. `canary` holds the peer's flags for the canary's
/// behaviour, `compare` the manifest's `zmq.compare`.
fn manifest_shadowed(dir: &Path, name: &str, canary: &str, compare: &str) -> PathBuf {
    let strategy = "    canary:
      steps: [{shadow: {percent: 100}}, {analysis: {}}, {setWeight: 50}, {pause: {}}]
      analysis:
        interval: 500ms
        failureLimit: 0
        # 3% over 1,000 copies: a pass (at most 1% seen) is beyond four standard deviations.
        minSamples: 1000
        metrics: [{name: shadow-mismatches, builtin: shadowMismatchRatio, max: 0.01}]
";
    service_manifest(
        dir,
        name,
        &format!("{{port: 7000, requestTimeout: 2s, idempotent: true, compare: {compare}}}"),
        strategy,
        &format!("--stamp, {canary}, "),
    )
}

/// Rolls `name` out to v2 under steady REQ traffic until the status says `done`; returns
/// the final status and who answered the client's requests (the `by=` frame).
fn shadowed_rollout(
    state: &Path,
    frontend: &str,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, serde_json::Value) {
    let traffic = Traffic::start(frontend, state);
    let (code, out) = zdeploy(
        state,
        &["rollout", name, "--image", "example.com/quotes:v2"],
    );
    assert_eq!(code, 0, "{out}");
    let mut s = status(state, name);
    for _ in 0..300 {
        if done(&s) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        s = status(state, name);
    }
    let r = traffic.finish();
    (s, r["by_stamp"].clone())
}

#[test]
fn a_canary_answering_3_percent_differently_is_rolled_back_by_shadow_comparison_unseen() {
    let dir = tempdir("shadow");
    let file = manifest_shadowed(
        &dir,
        "shadowed",
        "--differ-ratio, \"0.03\", --differ-in, v2",
        "{ignoreFrames: [2, 3]}",
    );
    let state = dir.join("state");
    let mut up = up(&file, &state);
    let (s, by) = shadowed_rollout(&state, &up.frontend, "shadowed", |s| {
        s["status"]["history"].is_array()
    });
    let last = &s["status"]["history"][0];
    assert_eq!(last["outcome"], "RolledBack", "{s}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("shadow-mismatches"), "{s}");
    // The rollback notice (told once the canary has drained) shows a pair that differed.
    let notice = up
        .proc
        .wait_line_containing(" Warning RolledBack: ", Duration::from_secs(20));
    assert!(
        notice.contains("; first mismatching pair mismatch: request [")
            && notice.contains("stable answered [\"OK\"")
            && notice.contains("by=v2"),
        "{notice}"
    );
    // Not one of the canary's replies reached a client.
    let answered: Vec<&String> = by.as_object().unwrap().keys().collect();
    assert_eq!(answered, ["by=v1"], "{by}");
    assert!(by["by=v1"].as_u64().unwrap() >= 200, "{by}");
    drop(up);
}

#[test]
fn a_canary_differing_only_in_a_masked_timestamp_passes_shadow_comparison() {
    let dir = tempdir("shadow-masked");
    let file = manifest_shadowed(
        &dir,
        "masked",
        "--differ-ratio, \"0\"",
        "{ignoreFrames: [3], masks: [{frame: 2, regex: \"ts=[0-9]+\"}]}",
    );
    let state = dir.join("state");
    let up = up(&file, &state);
    let (s, by) = shadowed_rollout(&state, &up.frontend, "masked", |s| {
        s["status"]["phase"] == "Paused" || s["status"]["history"].is_array()
    });
    assert_eq!(s["status"]["phase"], "Paused", "{s}");
    assert_eq!(s["status"]["canaryWeight"], 50, "the analysis passed: {s}");
    assert_eq!(s["status"]["shadowPercent"], 100, "{s}");
    let (code, text) = zdeploy(&state, &["status", "masked"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("Shadow:    100% of stable's requests copied"),
        "{text}"
    );
    assert!(by["by=v1"].as_u64().unwrap() >= 200, "{by}");
    let (code, out) = zdeploy(&state, &["rollback", "masked"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        status(&state, "masked")["status"]
            .get("shadowPercent")
            .is_none()
    );
    drop(up);
}

/// A REQ client sending through zgate from its start until `finish`.
struct Traffic {
    stop: PathBuf,
    thread: std::thread::JoinHandle<serde_json::Value>,
}

impl Traffic {
    /// Starts sending through `frontend`; its stop file goes in `dir`.
    fn start(frontend: &str, dir: &Path) -> Self {
        let stop = dir.join("stop-traffic");
        let args = [
            "req".to_string(),
            "--connect".into(),
            frontend.into(),
            "--count".into(),
            "0".into(),
            "--stop-file".into(),
            stop.display().to_string(),
        ];
        let thread = std::thread::spawn(move || {
            client(&args.iter().map(String::as_str).collect::<Vec<_>>())
        });
        Traffic { stop, thread }
    }

    /// Stops the client and returns its summary, after checking every request it sent
    /// was answered.
    fn finish(self) -> serde_json::Value {
        std::fs::write(&self.stop, "").unwrap();
        let r = self.thread.join().unwrap();
        assert_eq!(r["lost"], 0, "{r}");
        r
    }
}

/// Rolls `name` out to v2 and waits until its preview (or a step) holds it for a person.
fn previewed(state: &Path, name: &str) -> serde_json::Value {
    let (code, out) = zdeploy(
        state,
        &["rollout", name, "--image", "example.com/quotes:v2"],
    );
    assert_eq!(code, 0, "{out}");
    status_until(state, name, |s| s["status"]["phase"] == "Paused")
}

/// A blue-green service: previewed with every request shadowed (replies compared, the
/// timestamp masked), held for a person, then switched; the old pool is kept for
/// `scaleDownDelay` after the switch.
fn manifest_blue_green(dir: &Path, name: &str, delay: &str) -> PathBuf {
    let strategy = format!(
        "    blueGreen:
      preview: [{{shadow: {{percent: 100}}}}, {{analysis: {{metrics: [shadow-mismatches]}}}}, {{pause: {{}}}}]
      scaleDownDelay: {delay}
      analysis:
        interval: 500ms
        minSamples: 200
        inconclusiveLimit: 1000000
        metrics:
          - {{name: shadow-mismatches, builtin: shadowMismatchRatio, max: 0.01}}
          - {{name: error-ratio, builtin: errorRatio, max: 0.01}}
"
    );
    service_manifest(
        dir,
        name,
        "{port: 7000, requestTimeout: 2s, idempotent: true, compare: {ignoreFrames: [3], masks: [{frame: 2, regex: \"ts=[0-9]+\"}]}}",
        &strategy,
        "--stamp, --differ-ratio, \"0\", ",
    )
}

/// Who answered `n` requests of a fresh REQ client (the `by=` frame).
fn answered_by(frontend: &str, n: u32) -> serde_json::Value {
    let r = client(&["req", "--connect", frontend, "--count", &n.to_string()]);
    assert_eq!(
        (r["received"].as_u64(), r["lost"].as_u64()),
        (Some(n.into()), Some(0)),
        "{r}"
    );
    r["by_stamp"].clone()
}

/// Polls the status until `done` holds (at most 30 s).
fn status_until(
    state: &Path,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut s = status(state, name);
    for _ in 0..300 {
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
        s = status(state, name);
    }
    panic!("not within 30 s: {s}");
}

#[test]
fn blue_green_previews_switches_and_switches_back_in_one_weight_change() {
    let dir = tempdir("blue-green");
    let file = manifest_blue_green(&dir, "bg", "60s");
    let state = dir.join("state");
    let mut up = up(&file, &state);
    // Steady traffic throughout: not one request may go unanswered.
    let traffic = Traffic::start(&up.frontend, &state);
    // Preview: shadowed and judged at weight 0, then held for a person.
    let s = previewed(&state, "bg");
    assert_eq!(s["status"]["canaryWeight"], 0, "{s}");
    assert_eq!(s["status"]["shadowPercent"], 100, "{s}");
    assert_eq!(
        s["status"]["currentStep"], 2,
        "the analysis step passed: {s}"
    );
    assert_eq!(
        answered_by(&up.frontend, 300),
        serde_json::json!({"by=v1": 300})
    );

    // Promote: every request to the new revision at once, the old pool kept.
    let (code, out) = zdeploy(&state, &["promote", "bg"]);
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "bg");
    assert_eq!(s["status"]["canaryWeight"], 100, "{s}");
    assert!(s["status"]["rollout"]["switched"].is_string(), "{s}");
    assert!(s["status"].get("shadowPercent").is_none(), "{s}");
    assert_eq!(
        answered_by(&up.frontend, 300),
        serde_json::json!({"by=v2": 300})
    );
    let (_, text) = zdeploy(&state, &["status", "bg"]);
    assert!(text.contains("Switched:  "), "{text}");

    // Rollback within the scale-down delay: back to the old pool in one weight change,
    // with nothing to start first.
    up.proc.drain();
    let asked = std::time::Instant::now();
    let (code, out) = zdeploy(&state, &["rollback", "bg", "--reason", "paged"]);
    assert_eq!(code, 0, "{out}");
    let command = asked.elapsed();
    // The first requests sent once the command returned all reach the old pool.
    assert_eq!(
        answered_by(&up.frontend, 300),
        serde_json::json!({"by=v1": 300})
    );
    println!(
        "blue-green rollback in the scale-down delay: `zdeploy rollback` returned in {:.0} ms; the next 300 requests all reached the old pool",
        command.as_secs_f64() * 1000.0
    );
    // Everything the rollback did is told before its notice.
    let changes: Vec<String> = up
        .proc
        .lines_until(" Warning RolledBack: ", Duration::from_secs(20))
        .into_iter()
        .filter(|l| l.contains(" weights: "))
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].ends_with("weights: stable 100%, canary 0%"),
        "{changes:?}"
    );
    let s = status(&state, "bg");
    assert_eq!(s["status"]["phase"], "RolledBack", "{s}");
    assert_eq!(
        image_of(&s["status"]["stableRevision"]),
        "example.com/quotes:v1",
        "{s}"
    );

    let r = traffic.finish();
    assert!(r["by_stamp"]["by=v2"].as_u64() > Some(0), "{r}");
    drop(up);
}

#[test]
fn blue_green_scales_the_old_pool_down_after_the_delay() {
    let dir = tempdir("blue-green-delay");
    let file = manifest_blue_green(&dir, "bgd", "3s");
    let state = dir.join("state");
    let up = up(&file, &state);
    let traffic = Traffic::start(&up.frontend, &state);
    previewed(&state, "bgd");
    let (code, out) = zdeploy(&state, &["promote", "bgd"]);
    assert_eq!(code, 0, "{out}");
    let s = status_until(&state, "bgd", |s| s["status"]["phase"] == "Healthy");
    assert_eq!(
        image_of(&s["status"]["stableRevision"]),
        "example.com/quotes:v2",
        "{s}"
    );
    assert_eq!(s["status"]["history"][0]["outcome"], "Promoted", "{s}");
    assert_eq!(
        s["status"]["history"][0]["reason"], "scale-down delay over",
        "{s}"
    );
    assert_eq!(
        answered_by(&up.frontend, 300),
        serde_json::json!({"by=v2": 300})
    );
    traffic.finish();
    drop(up);
}

/// The command of `zdeploy up -f FILE` with its state in `state`, serving on `frontend`.
fn up_command(file: &Path, state: &Path, frontend: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    cmd.args(["up", "-f", file.to_str().unwrap(), "--frontend", frontend])
        .args(["--state-dir", state.to_str().unwrap()]);
    cmd
}

/// `zdeploy up` on a fixed frontend, as a restart keeps it.
fn up_on(file: &Path, state: &Path, frontend: &str) -> support::Up {
    let proc = support::Proc::start(up_command(file, state, frontend), "zdeploy up:");
    let frontend = proc.ready_field("frontend");
    support::Up { proc, frontend }
}

#[test]
fn a_restarted_up_after_a_switch_serves_queued_requests_from_the_new_revision() {
    let dir = tempdir("restart-switched");
    let file = manifest_blue_green(&dir, "rs", "5m");
    let state = dir.join("state");
    let frontend = format!("tcp://127.0.0.1:{}", zdeploy_testkit::ports::free_port());
    let mut first = up_on(&file, &state, &frontend);
    // The preview's analysis needs traffic to pass.
    let traffic = Traffic::start(&first.frontend, &state);
    previewed(&state, "rs");
    traffic.finish();
    let (code, out) = zdeploy(&state, &["promote", "rs"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&state, "rs")["status"]["canaryWeight"], 100);

    first.proc.signal("KILL");
    first.proc.wait_exit(Duration::from_secs(5));
    drop(first);
    // Requests sent while it is down wait in the client's queue for the restart.
    let queued = {
        let frontend = frontend.clone();
        std::thread::spawn(move || {
            client(&[
                "dealer",
                "--connect",
                &frontend,
                "--count",
                "200",
                "--pipeline",
                "200",
                "--recv-timeout-ms",
                "30000",
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let _second = up_on(&file, &state, &frontend);
    let r = queued.join().unwrap();
    assert_eq!(r["received"], 200, "{r}");
    assert_eq!(
        r["by_stamp"],
        serde_json::json!({"by=v2": 200}),
        "queued requests after the restart: {r}"
    );
}

#[test]
fn zdeploy_up_stops_when_its_gateway_stalls_and_a_restart_resumes() {
    let dir = tempdir("stalled");
    let (file, state, mut up) = rolled_out(&dir, "stalled", "[{setWeight: 30}, {pause: {}}]");
    let tid = zdeploy_testkit::freeze::thread_named(up.proc.child.id(), "zgate-dataplane")
        .expect("zdeploy up runs zgate's data plane");
    let frozen = zdeploy_testkit::freeze::freeze(tid).expect("ptrace can stop a thread");
    let t = std::time::Instant::now();
    // Its exit status waits for the frozen thread to be let go: watch /proc instead.
    let pid = up.proc.child.id();
    while !zdeploy_testkit::freeze::exited(pid) && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    drop(frozen);
    let code = up.proc.wait_exit(Duration::from_secs(5));
    eprintln!("zdeploy up exited {code:?} {took:?} after its data plane froze");
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    drop(up);
    let _again = support::up(&file, &state);
    let s = status(&state, "stalled")["status"].clone();
    assert_eq!(
        (s["canaryWeight"].as_u64(), s["phase"].as_str()),
        (Some(30), Some("Paused")),
        "{s}"
    );
}

#[test]
fn a_rollout_without_an_image_over_a_newer_stable_is_refused_naming_both() {
    let dir = tempdir("downgrade");
    let (_, state, _up) = rolled_out(&dir, "down", "[{setWeight: 20}, {pause: {}}]");
    let (code, out) = zdeploy(&state, &["promote", "down", "--full"]);
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "down")["status"].clone();
    assert_eq!(image_of(&s["stableRevision"]), "example.com/down:v2", "{s}");
    // The manifest still names v1: without --image, that would be a silent downgrade.
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["rollout", "down", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {said}");
    assert!(
        said.contains("stable runs example.com/down:v2+")
            && said.contains("not the manifest's example.com/quotes:v1+"),
        "{said}"
    );
    assert!(status(&state, "down")["status"].get("rollout").is_none());
    // Said outright, it goes.
    let (code, out) = zdeploy(&state, &["rollout", "down", "--manifest-image"]);
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "down")["status"].clone();
    assert_eq!(
        image_of(&s["canaryRevision"]),
        "example.com/quotes:v1",
        "{s}"
    );
}

/// A ZmqService whose peer runs with `ZMQ_PEER_NAME_SUFFIX=LEVEL` and tracks `peer.conf`
/// (appended to its name from the revision's copy): replies say which config answered.
fn config_manifest(dir: &Path, name: &str, level: &str) -> PathBuf {
    let path = manifest(dir, name, "[{setWeight: 50}, {pause: {}}]");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\"{{revision}}\"]\n",
        &format!(
            "\"{{{{revision}}}}\", --name-file, \"{{{{file:peer.conf}}}}\"]\n    env: {{ZMQ_PEER_NAME_SUFFIX: {level}}}\n    track: [peer.conf]\n"
        ),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The local runtime's revision is the image plus `local.command`, `local.env` and the
/// tracked files: a change of only the env, then of only a tracked file, is released by
/// canary while stable keeps running its own config (also across restarts of `zdeploy up`
/// with the changed manifest), and a rollback leaves stable's config as it was.
#[test]
fn a_local_env_or_tracked_file_change_is_a_canary_and_stable_keeps_its_own() {
    let dir = tempdir("local-config");
    let state = dir.join("state");
    std::fs::write(dir.join("peer.conf"), "a\n").unwrap();
    let file = config_manifest(&dir, "conf", "info");
    let first = up(&file, &state);
    let answers = replies_by_revision(&first.frontend, 200);
    assert_eq!(answers["OK v1-info-a"], 200, "{answers}");
    drop(first);

    // Only the env changes: a restarted `zdeploy up` keeps stable's env; the rollout
    // releases the new one as a canary.
    let file = config_manifest(&dir, "conf", "debug");
    let second = up(&file, &state);
    let answers = replies_by_revision(&second.frontend, 200);
    assert_eq!(
        answers["OK v1-info-a"], 200,
        "stable kept its env: {answers}"
    );
    let (code, out) = zdeploy(&state, &["rollout", "conf"]);
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "conf")["status"].clone();
    assert_eq!(
        s["changes"],
        serde_json::json!(["env ZMQ_PEER_NAME_SUFFIX"]),
        "{s}"
    );
    assert_ne!(s["canaryRevision"], s["stableRevision"], "{s}");
    assert_eq!(
        image_of(&s["canaryRevision"]),
        image_of(&s["stableRevision"])
    );
    let split = replies_by_revision(&second.frontend, 1000);
    assert_eq!(
        (
            split["OK v1-info-a"].as_u64(),
            split["OK v1-debug-a"].as_u64()
        ),
        (Some(500), Some(500)),
        "{split}"
    );
    let (code, out) = zdeploy(&state, &["rollback", "conf"]);
    assert_eq!(code, 0, "{out}");
    let answers = replies_by_revision(&second.frontend, 200);
    assert_eq!(answers["OK v1-info-a"], 200, "rolled back: {answers}");
    drop(second);

    // Only the tracked file changes (the env is back): stable, restarted, reads its own
    // copy; the canary the new content; promoted, stable then runs it.
    std::fs::write(dir.join("peer.conf"), "b\n").unwrap();
    let file = config_manifest(&dir, "conf", "info");
    let third = up(&file, &state);
    let answers = replies_by_revision(&third.frontend, 200);
    assert_eq!(
        answers["OK v1-info-a"], 200,
        "stable kept its file: {answers}"
    );
    let (code, out) = zdeploy(&state, &["rollout", "conf"]);
    assert_eq!(code, 0, "{out}");
    let s = status(&state, "conf")["status"].clone();
    assert_eq!(s["changes"], serde_json::json!(["file peer.conf"]), "{s}");
    let (code, out) = zdeploy(&state, &["promote", "conf", "--full"]);
    assert_eq!(code, 0, "{out}");
    let answers = replies_by_revision(&third.frontend, 200);
    assert_eq!(answers["OK v1-info-b"], 200, "promoted: {answers}");
    // Only what a restart or a retry needs stays recorded: stable's and the manifest's run
    // (one here) and the last rollout's.
    let records = std::fs::read_dir(state.join("conf/revisions"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "records kept");
}
