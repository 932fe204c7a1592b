//! The suite against a real cluster (kind or k3d: see the README). It runs only when
//! asked: `tests/run` runs it when `ZDEPLOY_E2E_KUBECONFIG` names a kubeconfig and says it
//! is skipped otherwise; here every test is `#[ignore]`d, so a plain run lists them as
//! skipped, and one run with `--run-ignored` but no kubeconfig fails instead of passing.
//!
//! Each test works in its own namespace and deletes it. Kind and k3d have no Windows
//! nodes, so the pools' pods stay Pending: the suite checks what the controller writes to
//! the API (objects, weights, faults, status, Lease, finalizers), not ZeroMQ traffic,
//! which the local-platform suites cover with real processes.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Proc;

/// The kubeconfig of the cluster under test.
fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("ZDEPLOY_E2E_KUBECONFIG").map(PathBuf::from);
    match path {
        Some(p) if p.exists() => p,
        Some(p) => panic!("ZDEPLOY_E2E_KUBECONFIG={} does not exist", p.display()),
        None => panic!("the cluster suite was asked to run but ZDEPLOY_E2E_KUBECONFIG is not set"),
    }
}

/// Runs kubectl against the cluster under test; panics with its stderr when it fails.
fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("kubectl must be installed to run the cluster suite");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).unwrap()
}

/// `zdeploy ARGS` against the cluster under test.
fn zdeploy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(args)
        .current_dir(support::root())
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = zdeploy(args);
    assert_eq!(code, 0, "zdeploy {args:?}: {err}{out}");
    out
}

/// Polls `probe` every 500 ms for at most `limit`; panics with `what` when it never holds.
fn eventually<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A namespace for one test, deleted (with what is in it) on drop.
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Self {
        let name = format!("zdeploy-e2e-{tag}-{}", std::process::id());
        kubectl(&["create", "namespace", &name]);
        Namespace(name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .stdout(Stdio::null())
            .status();
    }
}

/// `zdeploy controller` on this machine, electing its leader in `ns`.
fn controller(ns: &str, identity: &str) -> (Proc, String) {
    let port = support::free_port();
    let probes = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    cmd.args([
        "controller",
        "--probes",
        &probes,
        "--lease-namespace",
        ns,
        "--identity",
        identity,
    ])
    .env("KUBECONFIG", kubeconfig());
    let proc = Proc::start_silent(cmd);
    (proc, format!("http://{probes}"))
}

fn leader_gauge(probes: &str) -> Option<f64> {
    let text = support::http()
        .get(format!("{probes}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("zdeploy_controller_leader "))
        .and_then(|v| v.trim().parse().ok())
}

fn install_crds() {
    kubectl(&["apply", "--server-side", "-k", "manifests/crds"]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/zmqservices.zdeploy.io",
        "--timeout=60s",
    ]);
}

/// The echo example in namespace `ns`, written to a file.
fn echo_manifest(ns: &str) -> PathBuf {
    let text = std::fs::read_to_string(support::root().join("manifests/examples/echo.yaml"))
        .unwrap()
        .replace("namespace: trading", &format!("namespace: {ns}"));
    let file = support::tempdir("e2e").join("echo.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

fn weights(ns: &str) -> Value {
    let cm = kubectl_json(&["get", "configmap", "echo-weights", "-n", ns]);
    serde_json::from_str(cm["data"]["weights.json"].as_str().unwrap()).unwrap()
}

fn status(ns: &str) -> Value {
    serde_json::from_str(&ok(&["status", "echo", "-n", ns, "-o", "json"])).unwrap()
}

#[test]
#[ignore = "needs a cluster: set ZDEPLOY_E2E_KUBECONFIG (tests/run runs this suite then)"]
fn deploy_rollout_rollback_and_delete_through_the_controller() {
    install_crds();
    let ns = Namespace::new("rollout");
    let (mut ctl, probes) = controller(&ns.0, "e2e-a");
    eventually(
        "the controller takes the Lease",
        Duration::from_secs(30),
        || (leader_gauge(&probes)? == 1.0).then_some(()),
    );
    let lease = kubectl_json(&["get", "lease", "zdeploy-controller", "-n", &ns.0]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-a");

    let file = echo_manifest(&ns.0);
    ok(&["apply", "-f", file.to_str().unwrap()]);
    let image = "registry.example.com/trading/echo:2.0.3-ltsc2022";
    eventually(
        "the first deploy is recorded as stable",
        Duration::from_secs(60),
        || (status(&ns.0)["stableRevision"] == image).then_some(()),
    );
    let stable = kubectl_json(&["get", "deployment", "echo-stable", "-n", &ns.0]);
    let pod = &stable["spec"]["template"]["spec"];
    assert_eq!(pod["os"]["name"], "windows");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "windows");
    assert_eq!(
        pod["nodeSelector"]["node.kubernetes.io/windows-build"],
        "10.0.20348"
    );
    let zgate = kubectl_json(&["get", "deployment", "echo-zgate", "-n", &ns.0]);
    assert_eq!(
        zgate["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(weights(&ns.0)["canary"], 0);
    let owner = &stable["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ZmqService");

    // A rollout through the CLI: the annotation, never the spec.
    let next = "registry.example.com/trading/echo:2.0.4-ltsc2022";
    ok(&[
        "rollout", "echo", "-n", &ns.0, "--canary", "10", "--image", next,
    ]);
    assert_eq!(weights(&ns.0)["canary"], 10);
    let canary = kubectl_json(&["get", "deployment", "echo-canary", "-n", &ns.0]);
    assert_eq!(
        canary["spec"]["template"]["spec"]["containers"][0]["image"],
        next
    );
    let svc = kubectl_json(&["get", "zmqservice", "echo", "-n", &ns.0]);
    assert_eq!(
        svc["spec"]["template"]["spec"]["containers"][0]["image"], image,
        "the CLI must not change the spec"
    );

    ok(&["rollback", "echo", "-n", &ns.0, "--reason", "e2e"]);
    assert_eq!(weights(&ns.0)["canary"], 0);
    let s = status(&ns.0);
    assert_eq!(s["phase"], "RolledBack", "{s}");
    assert_eq!(s["history"][0]["revision"], next);

    // Deletion: the finalizer is removed and the object goes.
    kubectl(&["delete", "zmqservice", "echo", "-n", &ns.0, "--timeout=60s"]);
    eventually(
        "the owned Deployments are garbage-collected",
        Duration::from_secs(60),
        || {
            let out = kubectl(&["get", "deployments", "-n", &ns.0, "-o", "name"]);
            out.trim().is_empty().then_some(())
        },
    );

    ctl.signal("TERM");
    assert_eq!(ctl.wait_exit(Duration::from_secs(15)), Some(0));
    let lease = kubectl_json(&["get", "lease", "zdeploy-controller", "-n", &ns.0]);
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a stopped controller gives the Lease up: {lease}"
    );
}

#[test]
#[ignore = "needs a cluster: set ZDEPLOY_E2E_KUBECONFIG (tests/run runs this suite then)"]
fn a_standby_controller_takes_over_when_the_leader_stops() {
    install_crds();
    let ns = Namespace::new("leader");
    let (mut a, probes_a) = controller(&ns.0, "e2e-a");
    eventually(
        "the first controller leads",
        Duration::from_secs(30),
        || (leader_gauge(&probes_a)? == 1.0).then_some(()),
    );
    let (_b, probes_b) = controller(&ns.0, "e2e-b");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(leader_gauge(&probes_b), Some(0.0), "two leaders at once");
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(15)), Some(0));
    eventually("the standby leads", Duration::from_secs(30), || {
        (leader_gauge(&probes_b)? == 1.0).then_some(())
    });
    let lease = kubectl_json(&["get", "lease", "zdeploy-controller", "-n", &ns.0]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-b");
}

#[test]
#[ignore = "needs a cluster: set ZDEPLOY_E2E_KUBECONFIG (tests/run runs this suite then)"]
fn a_chaos_run_puts_its_fault_in_the_configmap_and_deleting_the_schedule_removes_it() {
    install_crds();
    let ns = Namespace::new("chaos");
    let (_ctl, probes) = controller(&ns.0, "e2e-a");
    eventually(
        "the controller takes the Lease",
        Duration::from_secs(30),
        || (leader_gauge(&probes)? == 1.0).then_some(()),
    );
    let file = echo_manifest(&ns.0);
    ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually(
        "the first deploy is recorded",
        Duration::from_secs(60),
        || status(&ns.0)["stableRevision"].is_string().then_some(()),
    );
    let drill = support::tempdir("e2e-chaos").join("drill.yaml");
    std::fs::write(
        &drill,
        format!(
            "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata:\n  name: drill\n  namespace: {}\n  annotations: {{zdeploy.io/run-now: e2e-1}}\nspec:\n  schedule: \"0 3 1 * *\"\n  experiment: {{service: echo, pool: canary, fault: {{gatewayLatency: {{latency: 300ms}}}}, duration: 10m}}\n",
            ns.0
        ),
    )
    .unwrap();
    kubectl(&["apply", "-f", drill.to_str().unwrap()]);
    let faults = eventually(
        "the fault reaches the ConfigMap",
        Duration::from_secs(60),
        || {
            let cm = kubectl_json(&["get", "configmap", "echo-weights", "-n", &ns.0]);
            cm["data"]["faults.json"].as_str().map(String::from)
        },
    );
    let faults: Value = serde_json::from_str(&faults).unwrap();
    assert_eq!(faults["canary"]["fault"]["latency"], "300ms");
    assert_eq!(
        weights(&ns.0)["canary"],
        0,
        "chaos never touches the weights"
    );
    let cs = kubectl_json(&["get", "chaosschedule", "drill", "-n", &ns.0]);
    assert_eq!(cs["status"]["lastRunRequest"], "e2e-1");
    assert_eq!(
        cs["status"]["active"]["faultEnds"],
        faults["canary"]["until"]
    );
    kubectl(&[
        "delete",
        "chaosschedule",
        "drill",
        "-n",
        &ns.0,
        "--timeout=60s",
    ]);
    let cm = kubectl_json(&["get", "configmap", "echo-weights", "-n", &ns.0]);
    assert!(
        cm["data"].get("faults.json").is_none(),
        "the finalizer removed the fault: {cm}"
    );
}
