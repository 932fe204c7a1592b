//! zgate following its weights ConfigMap through the real API server, with the
//! ServiceAccount and Role zdeploy renders for it: how fast a weight change reaches it,
//! a chaos fault that reaches it and expires, and serving on with the last weights while
//! the API server is down.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::{Value, json};

use crate::controlplane::ControlPlane;
use crate::scenario::{Namespace, eventually};
use crate::support::{self, Gw};

const CHANGES: usize = 20;

fn patch_configmap(cp: &ControlPlane, ns: &str, data: Value) {
    let patch = json!({"data": data}).to_string();
    cp.kubectl(&[
        "patch",
        "configmap",
        "echo-weights",
        "-n",
        ns,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn zgate_weights(gw: &Gw) -> Option<Value> {
    support::http()
        .get(format!("{}/weights", gw.admin))
        .send()
        .ok()?
        .json()
        .ok()
}

fn zgate_faults(gw: &Gw) -> Value {
    support::http()
        .get(format!("{}/faults", gw.admin))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Sets the canary's weight in the ConfigMap; returns how long until zgate applied it,
/// timed from just before the patch is sent.
fn change_weight(cp: &ControlPlane, ns: &str, gw: &Gw, canary: u8) -> Duration {
    let start = Instant::now();
    let weights = json!({"stable": 100 - canary, "canary": canary});
    patch_configmap(cp, ns, json!({"weights.json": weights.to_string()}));
    loop {
        if zgate_weights(gw).as_ref() == Some(&weights) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "zgate did not apply {weights} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Requests through zgate; all must be answered by a backend.
fn requests_answered(gw: &Gw, count: u32) {
    let r = support::client(&[
        "req",
        "--connect",
        &gw.frontend,
        "--count",
        &count.to_string(),
    ]);
    assert_eq!(r["received"], count, "{r}");
}

/// zgate as its rendered ServiceAccount follows the ConfigMap: 20 weight changes timed,
/// a fault that applies and expires, and an API server outage survived.
pub fn follows_its_configmap_through_the_api(cp: &ControlPlane) -> Result<(), Failed> {
    cp.install();
    let ns = Namespace::new(cp, "zgate");
    // zgate's identity, Role and ConfigMap exactly as zdeploy renders them; no controller
    // runs, so only this test writes the weights.
    let file = cp.echo_manifest(&ns.name, |t| t);
    let rendered = cp.zdeploy(&["render", "-f", &file.display().to_string()]);
    let rendered = cp.file("zgate-rendered.yaml", &rendered);
    cp.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &rendered.display().to_string(),
    ]);
    let kubeconfig = cp.service_account_kubeconfig(&ns.name, "echo-zgate");

    let stable = support::peer(&["rep", "--name", "stable", "--heartbeat"]);
    let canary = support::peer(&["rep", "--name", "canary", "--heartbeat"]);
    let configmap = format!("{}/echo-weights", ns.name);
    let gw = support::gateway_with(
        "tcp://127.0.0.1:*",
        &[
            "--pool",
            &format!("stable={}", stable.endpoint()),
            "--pool",
            &format!("canary={}", canary.endpoint()),
            "--weights-configmap",
            &configmap,
        ],
        |cmd| {
            cmd.env("KUBECONFIG", &kubeconfig);
        },
    );
    assert_eq!(
        zgate_weights(&gw),
        Some(json!({"stable": 100, "canary": 0}))
    );

    let mut took: Vec<Duration> = (0..CHANGES)
        .map(|i| change_weight(cp, &ns.name, &gw, [10, 25, 50, 0][i % 4]))
        .collect();
    took.sort();
    println!(
        "weight change to zgate over {CHANGES} changes: median {:.0} ms, max {:.0} ms (from before the patch request)",
        ms(took[CHANGES / 2]),
        ms(took[CHANGES - 1])
    );
    assert!(took[CHANGES - 1] < Duration::from_secs(5), "{took:?}");

    // A fault as the chaos controller writes it: applies now, gone at its end.
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    let faults = json!({"canary": {"fault": {"latency": "50ms", "duration": "3s"}, "until": until.to_string()}});
    patch_configmap(cp, &ns.name, json!({"faults.json": faults.to_string()}));
    eventually("zgate applies the fault", Duration::from_secs(5), || {
        zgate_faults(&gw)["canary"].is_object().then_some(())
    });
    eventually("the fault expires", Duration::from_secs(10), || {
        zgate_faults(&gw)["canary"].is_null().then_some(())
    });

    // The API server goes away: zgate keeps its last weights and keeps serving.
    change_weight(cp, &ns.name, &gw, 50);
    cp.with_apiserver_down(|| {
        std::thread::sleep(Duration::from_secs(2));
        requests_answered(&gw, 200);
        assert_eq!(
            zgate_weights(&gw),
            Some(json!({"stable": 50, "canary": 50}))
        );
    });
    // Back again: the watch resumes and the next change arrives.
    let after = change_weight(cp, &ns.name, &gw, 0);
    println!(
        "first weight change after the API server restarted: {:.0} ms",
        ms(after)
    );
    requests_answered(&gw, 200);
    Ok(())
}
