//! A fleet on one controller (#28): N idle ZmqServices beside one service that rolls out
//! and back. Measures the controller's memory (steady and peak), its CPU and API requests
//! while the fleet is idle, the time until every service is reconciled, and how long a
//! rollback of the one service takes to reach its weights ConfigMap. N is
//! `ZDEPLOY_FLEET` (100 by default, the suite's short run); the idle services have no pod
//! runner (their pods exist only as kwok pods), the one that rolls out has one.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::controlplane::ControlPlane;
use crate::scenario::{Namespace, Stage, eventually};
use crate::traffic::deploy;

const V2: &str = "registry.example.com/trading/echo:2.0.4-ltsc2022";
/// Rollbacks timed.
const TRIES: usize = 5;

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS and VmHWM of process `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The services of `ns` whose status has caught up with their spec.
fn reconciled(cp: &ControlPlane, ns: &str) -> usize {
    let list = cp.json(&["get", "zmqservices", "-n", ns]);
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|s| {
                    !s["status"]["stableRevision"].is_null()
                        && s["status"]["observedGeneration"] == s["metadata"]["generation"]
                })
                .count()
        })
        .unwrap_or(0)
}

/// N idle services and one that rolls out and back, on one controller.
pub fn a_fleet_of_idle_services_and_one_rollback(cp: &ControlPlane) -> Result<(), Failed> {
    let n: usize = std::env::var("ZDEPLOY_FLEET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let Stage {
        ns: one,
        ctl,
        pods: runner,
    } = cp.stage("fleet-one");
    let pid = ctl.proc.child.id();
    let idle = Namespace::new(cp, "fleet-idle");
    let template = std::fs::read_to_string(
        cp.echo_manifest(&idle.name, |t| t.replace("replicas: 3", "replicas: 1")),
    )
    .unwrap();
    let mut all = String::new();
    for i in 0..n {
        all.push_str(&template.replace("  name: echo\n", &format!("  name: idle-{i}\n")));
        all.push_str("\n---\n");
    }
    let file = cp.file(&format!("fleet-{n}.yaml"), &all);
    let started = Instant::now();
    cp.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=fleet",
        "-f",
        &file.display().to_string(),
    ]);
    let mut last = 0;
    let took = loop {
        let done = reconciled(cp, &idle.name);
        if done == n {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{done} of {n} reconciled after 10 minutes ({last} a minute before)"
        );
        last = done;
        std::thread::sleep(Duration::from_secs(2));
    };
    let (_, peak) = memory_mib(pid);

    // Settled: owned objects stop changing (pods come up after the status is written), so
    // the controller's requests fall to a trickle; at most 5 minutes.
    let user = "system:serviceaccount:zdeploy-system:zdeploy-controller";
    let settling = Instant::now();
    let mut seen = cp.audit(|u| u == user).len();
    let settled = loop {
        std::thread::sleep(Duration::from_secs(5));
        let now_seen = cp.audit(|u| u == user).len();
        // The API server rotates its audit log: a count that falls started a new file.
        let rate = now_seen.saturating_sub(seen) as f64 / 5.0;
        seen = now_seen;
        if rate < (n as f64 / 100.0).max(1.0) || settling.elapsed() > Duration::from_secs(300) {
            break settling.elapsed();
        }
    };
    // Idle: nothing changes for 30 s.
    let requests_before = cp.audit(|u| u == user).len();
    let cpu_before = cpu_seconds(pid);
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let idle_cpu = (cpu_seconds(pid) - cpu_before) / window.as_secs_f64();
    let all = cp.audit(|u| u == user);
    let during: Vec<serde_json::Value> = all.get(requests_before..).unwrap_or_default().to_vec();
    let idle_requests = during.len() as f64 / window.as_secs_f64();
    // What the idle requests are, most frequent first.
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &during {
        let r = &e["objectRef"];
        let key = format!(
            "{} {}{}",
            e["verb"].as_str().unwrap_or("?"),
            r["resource"].as_str().unwrap_or("?"),
            r["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        );
        *kinds.entry(key).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds.truncate(8);
    let (steady, _) = memory_mib(pid);
    // Why the controller reconciled (kube-runtime says at debug level), most frequent first.
    let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for l in log.lines() {
        // Without the terminal's colour codes.
        let mut plain = String::new();
        let mut escaped = false;
        for c in l.chars() {
            match (escaped, c) {
                (false, '\u{1b}') => escaped = true,
                (true, 'm') => escaped = false,
                (true, _) => {}
                (false, c) => plain.push(c),
            }
        }
        if let Some((_, after)) = plain.split_once("object.reason=") {
            let reason: String = after
                .chars()
                .take_while(|c| *c != '}')
                .collect::<String>()
                .split(": ")
                .next()
                .unwrap_or_default()
                .to_string();
            *reasons.entry(reason).or_default() += 1;
        }
    }
    eprintln!("reconcile reasons over the whole run: {reasons:?}");

    // The one in trouble: rolled out, then back, five times.
    let ns = one.name.as_str();
    deploy(cp, ns, &runner, |t| t);
    let mut rollbacks = Vec::new();
    for i in 0..TRIES {
        if i == 0 {
            cp.zdeploy(&["rollout", "echo", "-n", ns, "--canary", "10", "--image", V2]);
        } else {
            cp.zdeploy(&["retry", "echo", "-n", ns]);
        }
        eventually("the canary takes 10%", Duration::from_secs(60), || {
            (cp.weights(ns, "echo")["canary"] == 10).then_some(())
        });
        let asked = Instant::now();
        cp.zdeploy(&["rollback", "echo", "-n", ns, "--reason", "fleet"]);
        eventually(
            "the rollback reaches the weights",
            Duration::from_secs(60),
            || (cp.weights(ns, "echo")["canary"] == 0).then_some(()),
        );
        rollbacks.push(asked.elapsed());
        eventually(
            "the rollout is rolled back",
            Duration::from_secs(60),
            || (cp.status(ns, "echo")["phase"] == "RolledBack").then_some(()),
        );
    }
    rollbacks.sort();
    let median = rollbacks[TRIES / 2];
    println!(
        "fleet of {n} idle services: all reconciled in {:.1} s, settled {:.0} s later; controller RSS {steady:.0} MiB steady, {peak:.0} MiB peak ({:.0} KiB a service); idle: {:.1}% of a core, {idle_requests:.2} API requests/s; rollback -> weight 0 in the ConfigMap: median {:.0} ms over {TRIES} ({:?} ms, kubectl polling included); idle requests by kind: {kinds:?}",
        took.as_secs_f64(),
        settled.as_secs_f64(),
        steady * 1024.0 / n as f64,
        idle_cpu * 100.0,
        median.as_secs_f64() * 1000.0,
        rollbacks.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    Ok(())
}
