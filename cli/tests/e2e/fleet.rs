//! A fleet on one controller (#28): N idle ZmqServices beside one service that rolls out
//! and back. Measures the controller's memory (steady and peak), its CPU and API requests
//! while the fleet is idle, the time until every service is reconciled, and how long a
//! rollback of the one service takes to reach its weights ConfigMap. N is
//! `ZDEPLOY_FLEET` (100 by default, the suite's short run). The idle services' pods are
//! kwok pods (no processes); the one that rolls out has its pods' processes. The fleet's
//! pods come up before the one is deployed: until then the controller manager, scheduler
//! and kwok are busy making them, and the Deployments' statuses still change.
//!
//! Bounds (the short run fails past them): the controller's memory per idle service
//! (steady RSS less its RSS before the fleet) at most `FLEET_FIXED_MIB` plus
//! `KIB_PER_SERVICE` for each service; its idle
//! API requests at most `IDLE_REQUESTS_PER_S` a second whatever N (idle costs nothing but
//! the Lease); no request throttled (429) or timed out (504); SIGTERM stops it within
//! `STOP_WITHIN` with the Lease given up; a new leader acts on a rollback within
//! `NEW_LEADER_ACTS_WITHIN` while it looks the whole fleet over again.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::controlplane::ControlPlane;
use crate::scenario::{Namespace, Stage, eventually};
use crate::traffic::deploy;

const V2: &str = "registry.example.com/trading/echo:2.0.4-ltsc2022";
/// Rollbacks timed.
const TRIES: usize = 5;
/// The most memory the controller may keep per idle service, on top of
/// `FLEET_FIXED_MIB` for having had a fleet at all (watch caches, connection buffers, the
/// allocator's arenas): 10,000 services then fit in 500 MB with its start-up RSS.
const KIB_PER_SERVICE: f64 = 40.0;
/// See `KIB_PER_SERVICE`.
const FLEET_FIXED_MIB: f64 = 24.0;
/// The most API requests a second the controller may send while the fleet is idle.
const IDLE_REQUESTS_PER_S: f64 = 1.0;
/// SIGTERM to exit.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// A new leader's start to a rollback in the weights.
const NEW_LEADER_ACTS_WITHIN: Duration = Duration::from_secs(60);

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

/// The Deployments of `ns` whose pods are all ready, and how many there are.
fn deployments_ready(cp: &ControlPlane, ns: &str) -> (usize, usize) {
    let list = cp.json(&["get", "deployments", "-n", ns]);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let ready = items
        .iter()
        .filter(|d| {
            let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
            d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= want
        })
        .count();
    (ready, items.len())
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
    let (base, _) = memory_mib(pid);
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
    // Requests of this controller identity before the fleet (earlier scenarios' own
    // controllers, an API server restarted under them) are not this scenario's.
    let user = "system:serviceaccount:zdeploy-system:zdeploy-controller";
    let before_fleet = cp.audit(|u| u == user).len();
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
    // The cluster catches up (ReplicaSets, pods, kwok marking them running): until then
    // owned Deployments change and the fleet is not idle.
    let catching_up = Instant::now();
    loop {
        let (ready, total) = deployments_ready(cp, &idle.name);
        if ready == total {
            break;
        }
        assert!(
            catching_up.elapsed() < Duration::from_secs(1800),
            "{ready} of {total} Deployments ready after 30 minutes"
        );
        std::thread::sleep(Duration::from_secs(10));
    }
    let caught_up = catching_up.elapsed();
    let (_, peak) = memory_mib(pid);

    // Settled: owned objects stop changing (pods come up after the status is written), so
    // the controller's requests fall to a trickle; at most 5 minutes.
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
    let per_service = (steady - base).max(0.0) * 1024.0 / n as f64;
    let throttled: Vec<serde_json::Value> = cp
        .audit(|u| u == user)
        .into_iter()
        .skip(before_fleet)
        .filter(|e| [429, 504].contains(&e["responseStatus"]["code"].as_u64().unwrap_or(0)))
        .collect();

    // Stopped while a canary runs, then a new leader that must look the whole fleet over
    // again: the rollback asked the moment it starts is acted on ahead of that.
    cp.zdeploy(&["retry", "echo", "-n", ns]);
    eventually("the canary takes 10%", Duration::from_secs(60), || {
        (cp.weights(ns, "echo")["canary"] == 10).then_some(())
    });
    let mut ctl = ctl;
    ctl.proc.signal("TERM");
    let asked = Instant::now();
    let exited = ctl.proc.wait_exit(STOP_WITHIN);
    let stopped = asked.elapsed();
    assert_eq!(
        exited,
        Some(0),
        "SIGTERM: not stopped within {STOP_WITHIN:?}"
    );
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    // With no controller, the CLI's wait says what it saw rather than guess.
    let (code, _, err) = cp.zdeploy_as(
        &cp.admin,
        &[
            "rollback", "echo", "-n", ns, "--reason", "fleet", "--wait", "2s",
        ],
    );
    assert_eq!(code, 2, "{err}");
    for seen in [
        "accepted",
        "not yet acted on",
        "no controller holds the Lease",
    ] {
        assert!(err.contains(seen), "{seen:?} not in: {err}");
    }
    // The rollback waits on the service; the new leader finds it when it starts.
    let started = Instant::now();
    let next = cp.controller("e2e-fleet-next");
    eventually("the new leader rolls back", NEW_LEADER_ACTS_WITHIN, || {
        (cp.weights(ns, "echo")["canary"] == 0).then_some(())
    });
    let new_leader = started.elapsed();
    drop(next);
    println!(
        "fleet of {n} idle services: all reconciled in {:.1} s, the cluster's pods up {:.0} s later, settled {:.0} s after that; controller RSS {steady:.0} MiB steady ({base:.0} before the fleet, {per_service:.1} KiB a service), {peak:.0} MiB peak; idle: {:.1}% of a core, {idle_requests:.2} API requests/s; throttled or timed out: {}; rollback -> weight 0 in the ConfigMap: median {:.0} ms over {TRIES} ({:?} ms, kubectl polling included); SIGTERM -> exit {:.1} s; new leader start -> rollback in the weights {:.1} s; idle requests by kind: {kinds:?}",
        took.as_secs_f64(),
        caught_up.as_secs_f64(),
        settled.as_secs_f64(),
        idle_cpu * 100.0,
        throttled.len(),
        median.as_secs_f64() * 1000.0,
        rollbacks.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        stopped.as_secs_f64(),
        new_leader.as_secs_f64(),
    );
    let budget = FLEET_FIXED_MIB + KIB_PER_SERVICE * n as f64 / 1024.0;
    assert!(
        steady - base <= budget,
        "the fleet costs {:.0} MiB of RSS, over {budget:.0} ({FLEET_FIXED_MIB} MiB and {KIB_PER_SERVICE} KiB a service)",
        steady - base
    );
    assert!(
        idle_requests <= IDLE_REQUESTS_PER_S,
        "{idle_requests:.2} API requests/s while idle, over {IDLE_REQUESTS_PER_S}: {kinds:?}"
    );
    assert!(
        throttled.is_empty(),
        "throttled or timed out: {throttled:?}"
    );
    Ok(())
}

/// `zdeploy crds`'s own example installs the CRDs on a real API server, and the
/// client-side apply the help gave before is refused (the ZmqService CRD, with its pod
/// template schema, is over the 256 KiB last-applied annotation).
pub fn the_crds_install_as_the_help_says(cp: &ControlPlane) -> Result<(), Failed> {
    let help = cp.zdeploy(&["crds", "--help"]);
    let example = help
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("zdeploy crds |"))
        .expect("an example in the help");
    let kubectl_args: Vec<&str> = example
        .split_once('|')
        .map(|(_, k)| k.split_whitespace().skip(1).collect())
        .unwrap_or_default();
    let crds = cp.zdeploy(&["crds"]);
    let apply = |args: &[&str]| {
        use std::io::Write;
        let mut child = std::process::Command::new(cp.kubectl_path())
            .args(args)
            .arg("--kubeconfig")
            .arg(&cp.admin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(crds.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = apply(&kubectl_args);
    assert!(ok, "{example}: {err}");
    let (ok, err) = apply(&["apply", "--dry-run=server", "-f", "-"]);
    assert!(!ok, "a client-side apply of the CRDs was accepted");
    assert!(err.contains("Too long"), "{err}");
    println!(
        "`{example}` installs the CRDs ({} KiB); client-side: {}",
        crds.len() / 1024,
        err.lines().next().unwrap_or_default()
    );
    Ok(())
}
