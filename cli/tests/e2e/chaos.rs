//! Chaos through the controller against real objects: a podKill deletes at most
//! maxTargets of the pool's pods and the ReplicaSet replaces them; a gateway fault
//! reaches the weights ConfigMap with its end, never touching the weights, and deleting
//! the schedule removes it.

use std::collections::BTreeSet;
use std::time::Duration;

use libtest_mimic::Failed;

use crate::controlplane::ControlPlane;
use crate::scenario::{Stage, eventually};
use crate::traffic;

fn running_pods(cp: &ControlPlane, ns: &str, selector: &str) -> BTreeSet<String> {
    let pods = cp.json(&["get", "pods", "-n", ns, "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn schedule(cp: &ControlPlane, ns: &str, name: &str, run: &str, experiment: &str) {
    let file = cp.file(
        &format!("chaos-{ns}-{name}.yaml"),
        &format!(
            "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{zdeploy.io/run-now: {run}}}\nspec:\n  schedule: \"0 3 1 * *\"\n  experiment: {experiment}\n"
        ),
    );
    cp.kubectl(&["apply", "-f", &file.display().to_string()]);
}

/// podKill with maxTargets 2 of 3 stable pods, survived by clients sending through zgate
/// all along with every request answered; then a gateway latency fault.
pub fn pod_kill_and_gateway_faults(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods,
    } = cp.stage("chaos");
    traffic::deploy(cp, &ns.name, &pods, |t| t);
    let stable = "app.kubernetes.io/name=echo,zdeploy.io/pool=stable";
    let before = running_pods(cp, &ns.name, stable);
    let clients = traffic::clients(&pods);

    schedule(
        cp,
        &ns.name,
        "kill",
        "e2e-kill-1",
        "{service: echo, pool: stable, fault: {podKill: {}}, mode: fixed, value: 3, maxTargets: 2, duration: 10s}",
    );
    let after = eventually(
        "the killed pods are replaced",
        Duration::from_secs(60),
        || {
            let p = running_pods(cp, &ns.name, stable);
            (p.len() == 3 && p != before).then_some(p)
        },
    );
    let killed = before.difference(&after).count();
    assert!(
        (1..=2).contains(&killed),
        "podKill with maxTargets 2 deleted {killed} of {before:?} (now {after:?})"
    );
    // The killed pods' last requests were answered while they drained.
    std::thread::sleep(Duration::from_secs(2));
    for summary in traffic::stop(&pods, clients, 200) {
        assert_eq!(traffic::errors(&summary), Vec::<String>::new(), "{summary}");
    }
    let cs = cp.json(&["get", "chaosschedule", "kill", "-n", &ns.name]);
    assert_eq!(cs["status"]["lastRunRequest"], "e2e-kill-1", "{cs}");
    cp.kubectl(&[
        "delete",
        "chaosschedule",
        "kill",
        "-n",
        &ns.name,
        "--timeout=60s",
    ]);

    schedule(
        cp,
        &ns.name,
        "latency",
        "e2e-latency-1",
        "{service: echo, pool: canary, fault: {gatewayLatency: {latency: 300ms}}, duration: 10m}",
    );
    let faults = eventually(
        "the fault reaches the ConfigMap",
        Duration::from_secs(60),
        || {
            let cm = cp.json(&["get", "configmap", "echo-weights", "-n", &ns.name]);
            cm["data"]["faults.json"].as_str().map(String::from)
        },
    );
    let faults: serde_json::Value = serde_json::from_str(&faults).unwrap();
    assert_eq!(faults["canary"]["fault"]["latency"], "300ms");
    assert_eq!(
        cp.weights(&ns.name, "echo")["canary"],
        0,
        "chaos never touches the weights"
    );
    let cs = cp.json(&["get", "chaosschedule", "latency", "-n", &ns.name]);
    assert_eq!(
        cs["status"]["active"]["faultEnds"],
        faults["canary"]["until"]
    );
    cp.kubectl(&[
        "delete",
        "chaosschedule",
        "latency",
        "-n",
        &ns.name,
        "--timeout=60s",
    ]);
    let cm = cp.json(&["get", "configmap", "echo-weights", "-n", &ns.name]);
    assert!(
        cm["data"].get("faults.json").is_none(),
        "the finalizer removed the fault: {cm}"
    );
    Ok(())
}

/// The chaos verbs of the CLI against the cluster's schedules: `chaos run` applies a
/// schedule, asks the controller for a run and reports its verdict; `list` and `history`
/// read it; `pause` sets only the annotation, never the spec kept in git.
pub fn chaos_verbs_of_the_cli(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("chaos-cli");
    let file = cp.echo_manifest(&ns.name, |t| t);
    cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    eventually("echo is deployed", Duration::from_secs(60), || {
        cp.status(&ns.name, "echo")["stableRevision"]
            .as_str()
            .map(|_| ())
    });
    let drill = cp.file(
        "drill.yaml",
        &format!(
            "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata: {{name: drill, namespace: {}}}\nspec:\n  schedule: \"0 3 1 * *\"\n  experiment: {{service: echo, pool: canary, fault: {{gatewayLatency: {{latency: 300ms}}}}, duration: 3s}}\n",
            ns.name
        ),
    );
    let drill = drill.display().to_string();
    let dry = cp.zdeploy(&["chaos", "run", "-f", &drill, "--dry-run"]);
    assert!(dry.contains("dry run, nothing changed"), "{dry}");
    let (code, _, _) = cp.zdeploy_as(&cp.admin, &["chaos", "history", "drill", "-n", &ns.name]);
    assert_ne!(code, 0, "a dry run created the schedule");

    let run: serde_json::Value =
        serde_json::from_str(&cp.zdeploy(&["chaos", "run", "-f", &drill, "-o", "json"])).unwrap();
    assert_eq!(run["verdict"], "held", "{run}");
    let list = cp.zdeploy(&["chaos", "list", "-n", &ns.name]);
    let row = list.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("drill") && row.contains("echo"), "{list}");
    let history: serde_json::Value = serde_json::from_str(
        &cp.zdeploy(&["chaos", "history", "drill", "-n", &ns.name, "-o", "json"]),
    )
    .unwrap();
    assert_eq!(history[0]["verdict"], "held", "{history}");

    let before = cp.json(&["get", "chaosschedule", "drill", "-n", &ns.name]);
    let out = cp.zdeploy(&["chaos", "pause", "drill", "-n", &ns.name]);
    assert_eq!(out.trim(), "drill: paused");
    let after = cp.json(&["get", "chaosschedule", "drill", "-n", &ns.name]);
    assert_eq!(
        after["metadata"]["annotations"]["zdeploy.io/suspend"],
        "true"
    );
    assert_eq!(
        after["spec"], before["spec"],
        "pause never touches the spec"
    );
    Ok(())
}
