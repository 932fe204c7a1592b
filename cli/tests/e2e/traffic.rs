//! Real requests through zgate in the cluster: the pods' processes run at the pods'
//! addresses (the pod runner), zgate follows the pools' EndpointSlices as its rendered
//! ServiceAccount, and clients send requests through both zgate replicas all along while
//! stable pods are deleted one after another, a canary takes traffic and is rolled back.
//! Measured: how long a deleted pod still gets new requests, how soon a new pod gets its
//! first; required: every request answered by a service, none by an error.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use libtest_mimic::Failed;
use serde_json::Value;

use crate::controlplane::ControlPlane;
use crate::pods::{Behaviour, PodRecord, PodRunner};
use crate::scenario::{Stage, eventually};
use crate::support;

const DELETIONS: usize = 20;
const RUNS: usize = 5;
/// A build that answers every request with an error.
const BAD: &str = "registry.example.com/trading/echo:2.0.6-ltsc2022";
/// A build whose port the node's firewall blocks.
const BLOCKED: &str = "registry.example.com/trading/echo:2.0.7-ltsc2022";
/// A good build.
pub const V2: &str = "registry.example.com/trading/echo:2.0.4-ltsc2022";

/// A REQ client sending through one zgate until stopped.
pub struct Client {
    child: Child,
    /// The zgate pod it sends through.
    gateway: PodRecord,
    /// Created to stop it: the client finishes the request it has out, then reports.
    stop_file: std::path::PathBuf,
    /// Holds `stop_file`.
    _dir: zdeploy_testkit::dirs::TempDir,
}

impl Client {
    fn start(gateway: &PodRecord) -> Self {
        let frontend = format!("tcp://{}:5555", gateway.ip);
        let dir = support::tempdir("client");
        let stop_file = dir.join("stop");
        let child = Command::new(support::python())
            .arg(support::root().join("tests/peers/zmq_peer.py"))
            .args([
                "req",
                "--connect",
                &frontend,
                "--count",
                "0",
                "--interval-ms",
                "2",
                "--tag",
                &format!("{}-", gateway.name),
            ])
            .arg("--stop-file")
            .arg(&stop_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Client {
            child,
            gateway: gateway.clone(),
            stop_file,
            _dir: dir,
        }
    }

    /// Stops it and returns its summary.
    fn stop(self) -> Value {
        std::fs::write(&self.stop_file, "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A zgate pod's backends of `pool` as its `/endpoints` shows them.
fn backends(gw: &PodRecord, pool: &str) -> Vec<Value> {
    let admin = gw.admin.as_ref().unwrap();
    support::http()
        .get(format!("{admin}/endpoints"))
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| v[pool].as_array().cloned())
        .unwrap_or_default()
}

/// `pod` is a live serving backend of every zgate.
fn live_everywhere(runner: &PodRunner, pod: &PodRecord) -> bool {
    let pool = pod.pool.as_deref().unwrap_or_default();
    let address = format!("tcp://{}:5555", pod.ip);
    let gateways = runner.running(None);
    !gateways.is_empty()
        && gateways.iter().all(|gw| {
            backends(gw, pool).iter().any(|b| {
                b["address"].as_str() == Some(address.as_str())
                    && b["state"] == "serving"
                    && b["live"] == true
            })
        })
}

/// Every running pod of `pool` is a live serving backend of every zgate.
fn all_live(runner: &PodRunner, pool: &str) -> bool {
    let pods = runner.running(Some(pool));
    !pods.is_empty() && pods.iter().all(|p| live_everywhere(runner, p))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// Stable pods deleted one after another, a canary in and rolled back, with requests
/// flowing through both zgate replicas the whole time.
pub fn requests_through_zgate_survive_pod_churn(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage("traffic");
    deploy(cp, &ns.name, &runner, |t| t);
    let clients = clients(&runner);

    let mut drained = Vec::new();
    let mut first_request = Vec::new();
    for i in 0..DELETIONS {
        let before: Vec<String> = runner
            .running(Some("stable"))
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let victim = before[i % before.len()].clone();
        let asked = SystemTime::now();
        cp.kubectl(&["delete", "pod", &victim, "-n", &ns.name, "--wait=false"]);
        let gone = eventually("the deleted pod goes", Duration::from_secs(30), || {
            runner.pod(&victim).filter(|r| r.gone.is_some())
        });
        // kwok gives the replacement the deleted pod's address at once, as CNIs may.
        let replacement = until(
            cp,
            &ns.name,
            &runner,
            "a replacement is live in both zgates",
            || {
                let now: Vec<PodRecord> = runner.running(Some("stable"));
                let new = now.into_iter().find(|p| !before.contains(&p.name))?;
                live_everywhere(&runner, &new).then_some(new)
            },
        );
        let last = gone.requests().into_iter().max().unwrap_or(asked);
        drained.push(since(last, asked));
        let first = eventually(
            "the new pod gets a request",
            Duration::from_secs(10),
            || runner.pod(&replacement.name)?.requests().into_iter().min(),
        );
        first_request.push(since(first, replacement.started));
    }
    let (dm, dx) = median_max(drained.clone());
    println!(
        "deleted pod -> last new request to it, over {DELETIONS} deletions: median {dm:.0} ms, max {dx:.0} ms (from before the delete request)"
    );
    let (fm, fx) = median_max(first_request);
    println!(
        "new ready pod -> first request to it: median {fm:.0} ms, max {fx:.0} ms (from its process start)"
    );
    assert!(
        all_live(&runner, "stable"),
        "every stable pod is live in both zgates after the deletions"
    );
    // Terminating, the pod is kept 1 s: a request after that would have been lost.
    assert!(
        dx < 1000.0,
        "a deleted pod got requests for {dx:.0} ms: {drained:?}"
    );

    // A canary takes its share, then is rolled back by hand: its pods drain and go.
    cp.zdeploy(&[
        "rollout", "echo", "-n", &ns.name, "--canary", "25", "--image", V2,
    ]);
    eventually(
        "the canary's pods are live in both zgates",
        Duration::from_secs(60),
        || {
            let pods = runner.running(Some("canary"));
            (!pods.is_empty() && pods.iter().all(|p| live_everywhere(&runner, p))).then_some(())
        },
    );
    let canary: Vec<String> = runner
        .running(Some("canary"))
        .iter()
        .map(|p| p.name.clone())
        .collect();
    eventually("the canary gets requests", Duration::from_secs(20), || {
        canary
            .iter()
            .all(|c| runner.pod(c).is_some_and(|p| !p.requests().is_empty()))
            .then_some(())
    });
    let asked = Instant::now();
    cp.zdeploy(&[
        "rollback",
        "echo",
        "-n",
        &ns.name,
        "--reason",
        "e2e traffic",
    ]);
    eventually(
        "the canary's pods are gone",
        Duration::from_secs(60),
        || {
            canary
                .iter()
                .all(|c| runner.pod(c).is_some_and(|p| p.gone.is_some()))
                .then_some(())
        },
    );
    println!(
        "rollback by hand -> canary pods gone: {:.1} s",
        asked.elapsed().as_secs_f64()
    );

    for summary in stop(&runner, clients, 1000) {
        assert_eq!(errors(&summary), Vec::<String>::new(), "{summary}");
        assert!(
            answered_by(&summary, "-canary-") > 0,
            "the canary never answered: {summary}"
        );
    }
    Ok(())
}

/// Applies the echo example (edited by `edit`) and waits until its 3 stable pods are live
/// in both zgate replicas.
pub fn deploy(cp: &ControlPlane, ns: &str, runner: &PodRunner, edit: impl Fn(String) -> String) {
    let file = cp.echo_manifest(ns, edit);
    cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    until(cp, ns, runner, "3 stable pods live in both zgates", || {
        (runner.running(Some("stable")).len() == 3
            && runner.running(None).len() == 2
            && all_live(runner, "stable"))
        .then_some(())
    });
}

/// Polls `probe` for at most 60 s; on failure says what the cluster, the pod runner and
/// zgate each see.
fn until<T>(
    cp: &ControlPlane,
    ns: &str,
    runner: &PodRunner,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; Deployments and ReplicaSets:\n{}\npods:\n{}\nEndpointSlices:\n{}\nplayed: {:#?}\nzgate sees: {:#?}\nzgate logs:\n{}",
            cp.kubectl(&["get", "deployments,replicasets", "-n", ns, "-o", "wide"]),
            cp.kubectl(&["get", "pods", "-n", ns, "-o", "wide"]),
            cp.kubectl(&["get", "endpointslices", "-n", ns, "-o", "wide"]),
            runner.pods(),
            runner
                .running(None)
                .iter()
                .map(|gw| backends(gw, "stable"))
                .collect::<Vec<_>>(),
            runner
                .running(None)
                .iter()
                .map(log_tail)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of a zgate pod's log, for a failure message.
fn log_tail(gw: &PodRecord) -> String {
    let text = gw
        .output
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {}:\n{}",
        gw.name,
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// A client through each zgate replica, sending from now on.
pub fn clients(runner: &PodRunner) -> Vec<Client> {
    let clients = runner.running(None).iter().map(Client::start).collect();
    std::thread::sleep(Duration::from_millis(500));
    clients
}

/// Stops the clients; each must have sent at least `min_sent` requests (traffic flowed all
/// along) and had every one answered.
pub fn stop(runner: &PodRunner, clients: Vec<Client>, min_sent: u64) -> Vec<Value> {
    clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let gateway = c.gateway.clone();
            let summary = c.stop();
            println!("client {i} through zgate: {summary}");
            let sent = summary["sent"].as_u64().unwrap();
            assert!(
                sent >= min_sent,
                "fewer than {min_sent} requests sent: {summary}"
            );
            let stopped = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert_eq!(
                summary["lost"],
                0,
                "unanswered requests (stopped at {stopped:.3}): {summary}\n{}",
                explain_loss(runner, &gateway, &summary)
            );
            assert_eq!(summary["received"], sent, "{summary}");
            summary
        })
        .collect()
}

/// Where an unanswered request went: the service pods that logged a request with its
/// number within 3 s of its sending, and what its zgate counted.
fn explain_loss(runner: &PodRunner, gateway: &PodRecord, summary: &Value) -> String {
    let (Some(number), Some(sent)) = (
        summary["lost_request"].as_u64(),
        summary["lost_sent_at"].as_f64(),
    ) else {
        return String::new();
    };
    let body = format!("{}-{number}", gateway.name);
    let near: Vec<String> = runner
        .pods()
        .iter()
        .filter_map(|p| {
            let log = std::fs::read_to_string(p.log.as_ref()?).ok()?;
            let hits: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.split_once(' ').is_some_and(|(t, b)| {
                        b == body && t.parse::<f64>().is_ok_and(|t| (t - sent).abs() < 3.0)
                    })
                })
                .collect();
            (!hits.is_empty()).then(|| format!("{}: {hits:?}", p.name))
        })
        .collect();
    let metrics = support::http()
        .get(format!("http://{}:9464/metrics", gateway.ip))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "requests_total",
                    "undeliverable",
                    "late_replies",
                    "rejected",
                    "withheld",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    // zgate's log around the sending, by its RFC 3339 timestamps (same second or next).
    let second = |t: f64| {
        jiff::Timestamp::from_second(t as i64)
            .map(|t| t.to_string()[..19].to_string())
            .unwrap_or_default()
    };
    let (this, next) = (second(sent), second(sent + 1.0));
    let log = std::fs::read_to_string(gateway.output.as_ref().unwrap()).unwrap_or_default();
    let around: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&this) || l.contains(&next))
        .collect();
    format!(
        "request {body} sent at {sent:.3}; pods that logged it: {near:?}\nconnection events: {}\nzgate counted:\n{}\nzgate's log then:\n{}",
        summary["connection_events"],
        counted.join("\n"),
        around.join("\n")
    )
}

/// Replies by first words that are not a service's `OK`, with their counts.
pub fn errors(summary: &Value) -> Vec<String> {
    summary["by_first_word"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(w, _)| !w.starts_with("OK "))
        .map(|(w, n)| format!("{w}: {n}"))
        .collect()
}

/// Replies from pods whose name contains `part`.
fn answered_by(summary: &Value, part: &str) -> u64 {
    summary["by_first_word"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(w, _)| w.contains(part))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// What every zgate replica's admin API answers at `path` (`null` when it does not).
fn from_every_zgate(runner: &PodRunner, path: &str) -> Vec<Value> {
    runner
        .running(None)
        .iter()
        .map(|gw| {
            support::http()
                .get(format!("{}{path}", gw.admin.as_ref().unwrap()))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .unwrap_or(Value::Null)
        })
        .collect()
}

/// zgate's weight for the canary, in every replica.
fn zgate_canary_weights(runner: &PodRunner) -> Vec<u64> {
    from_every_zgate(runner, "/weights")
        .iter()
        .map(|w| w["canary"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

/// Five canaries of a build that fails every request: each rolled back by the controller,
/// timed from the first bad reply the canary sent to zgate routing it nothing.
pub fn a_bad_canary_is_rolled_back_through_the_controller(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage_with("bad-canary", &[(BAD, Behaviour::FailEveryRequest)]);
    deploy(cp, &ns.name, &runner, |t| t);
    let clients = clients(&runner);
    let mut took = Vec::new();
    for run in 0..RUNS {
        let asked = SystemTime::now();
        if run == 0 {
            cp.zdeploy(&[
                "rollout", "echo", "-n", &ns.name, "--canary", "10", "--image", BAD,
            ]);
        } else {
            cp.zdeploy(&["retry", "echo", "-n", &ns.name]);
        }
        let first_bad = eventually(
            "the canary answers a request",
            Duration::from_secs(60),
            || {
                runner
                    .pods()
                    .iter()
                    .filter(|p| p.pool.as_deref() == Some("canary"))
                    .flat_map(|p| p.requests())
                    .filter(|t| *t >= asked)
                    .min()
            },
        );
        // Polled fast: the moment every zgate replica routes nothing to the canary.
        let zero = loop {
            if zgate_canary_weights(&runner).iter().all(|w| *w == 0) {
                break SystemTime::now();
            }
            assert!(
                since(SystemTime::now(), first_bad) < Duration::from_secs(60),
                "the bad canary was never taken off"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        took.push(since(zero, first_bad));
        eventually(
            "the rollout is rolled back",
            Duration::from_secs(30),
            || (cp.status(&ns.name, "echo")["phase"] == "RolledBack").then_some(()),
        );
        let s = cp.status(&ns.name, "echo");
        assert!(
            s["history"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("error-ratio")),
            "{s}"
        );
    }
    let mut sorted = took.clone();
    sorted.sort();
    println!(
        "first bad reply of a canary -> zgate routing 0 to it, through the controller and the API server, over {RUNS} runs: median {:.0} ms, max {:.0} ms ({:?} ms)",
        ms(sorted[RUNS / 2]),
        ms(sorted[RUNS - 1]),
        took.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    for summary in stop(&runner, clients, 1000) {
        // Every request was answered by a service: errors only from the bad canary.
        let others: Vec<String> = errors(&summary)
            .into_iter()
            .filter(|w| !w.starts_with("ERR echo-canary-"))
            .collect();
        assert!(others.is_empty(), "{others:?}: {summary}");
    }
    Ok(())
}

/// A canary whose pods are ready but whose port nothing answers on (the node's firewall):
/// zgate never reaches it, it gets no weight and no request, and the controller rolls it
/// back at the reach deadline with the firewall as the reason.
pub fn an_unreachable_canary_gets_nothing_and_is_rolled_back(
    cp: &ControlPlane,
) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage_with("unreachable", &[(BLOCKED, Behaviour::Unreachable)]);
    deploy(cp, &ns.name, &runner, |t| {
        t.replace(
            "    progressDeadline: 15m\n",
            "    progressDeadline: 15m\n    reachDeadline: 5s\n",
        )
    });
    let clients = clients(&runner);
    let asked = Instant::now();
    cp.zdeploy(&[
        "rollout", "echo", "-n", &ns.name, "--canary", "10", "--image", BLOCKED,
    ]);
    eventually("the canary's pods run", Duration::from_secs(30), || {
        (!runner.running(Some("canary")).is_empty()).then_some(())
    });
    eventually(
        "the rollout is rolled back",
        Duration::from_secs(60),
        || (cp.status(&ns.name, "echo")["phase"] == "RolledBack").then_some(()),
    );
    println!(
        "unreachable canary rolled back {:.1} s after the rollout (reachDeadline 5s)",
        asked.elapsed().as_secs_f64()
    );
    let s = cp.status(&ns.name, "echo");
    let reason = s["history"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("zgate cannot reach them on port 5555")
            && reason.contains("Windows firewall and antivirus"),
        "{s}"
    );
    assert_eq!(
        s["history"][0]["runbook"], "canary-unreachable@1.0.0",
        "the runbook, pinned to its version: {s}"
    );
    assert_eq!(cp.weights(&ns.name, "echo")["canary"], 0);
    for summary in stop(&runner, clients, 1000) {
        assert_eq!(errors(&summary), Vec::<String>::new(), "{summary}");
        assert_eq!(answered_by(&summary, "-canary-"), 0, "{summary}");
    }
    Ok(())
}

/// zgate's routes by client, in every replica.
fn zgate_routes(runner: &PodRunner) -> Vec<Value> {
    from_every_zgate(runner, "/routes")
}

/// `n` requests from a client with routing id `identity` through zgate replica `gw`;
/// returns how many a canary pod answered, after checking every one was answered.
fn canary_answers(gw: &PodRecord, identity: &str, n: u64) -> u64 {
    let frontend = format!("tcp://{}:5555", gw.ip);
    let count = n.to_string();
    let summary = support::client(&[
        "req",
        "--connect",
        &frontend,
        "--count",
        &count,
        "--identity",
        identity,
    ]);
    assert_eq!(summary["received"], n, "{summary}");
    answered_by(&summary, "echo-canary-")
}

/// Routes by client through the controller: a rollout held at weight 0 sends a tester's
/// requests, and no one else's, to the canary in every zgate replica (the route reaches
/// them through the weights ConfigMap); the rollback takes the route away.
pub fn routes_by_client_reach_the_canary_at_weight_zero(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage("routes");
    deploy(cp, &ns.name, &runner, |t| {
        t.replacen(
            "      steps:\n",
            "      routes:\n        - match: {identityPrefix: tester-}\n      steps:\n        - pause: {}\n",
            1,
        )
    });
    cp.zdeploy(&["rollout", "echo", "-n", &ns.name, "--image", V2]);
    let route = serde_json::json!(["canary=identity:tester-"]);
    until(
        cp,
        &ns.name,
        &runner,
        "the route in every zgate, canary live",
        || {
            (zgate_routes(&runner).iter().all(|r| *r == route) && all_live(&runner, "canary"))
                .then_some(())
        },
    );
    let s = cp.status(&ns.name, "echo");
    assert_eq!(
        (s["canaryWeight"].as_u64(), &s["routes"]),
        (Some(0), &route),
        "{s}"
    );
    for gw in runner.running(None) {
        assert_eq!(
            canary_answers(&gw, "tester-1", 500),
            500,
            "through {}",
            gw.name
        );
        assert_eq!(
            canary_answers(&gw, "customer-1", 500),
            0,
            "through {}",
            gw.name
        );
    }
    cp.zdeploy(&["rollback", "echo", "-n", &ns.name]);
    until(cp, &ns.name, &runner, "no route left in any zgate", || {
        zgate_routes(&runner)
            .iter()
            .all(|r| *r == serde_json::json!([]))
            .then_some(())
    });
    for gw in runner.running(None) {
        assert_eq!(
            canary_answers(&gw, "tester-1", 500),
            0,
            "through {}",
            gw.name
        );
    }
    println!(
        "routes by client: 500 of 500 tester requests to the canary at weight 0 and 0 of 500 others, through each of 2 zgate replicas; 0 of 500 after the rollback"
    );
    Ok(())
}

/// The echo example with `strategy.blueGreen` in place of its canary: previewed by a
/// tester's route, held for a person, the old pool kept `scaleDownDelay` after the switch.
fn blue_green(text: String) -> String {
    let start = text
        .find("    canary:\n")
        .expect("the example has a canary");
    let end = text
        .find("  runbooks:\n")
        .expect("the example has runbooks");
    let strategy = "    blueGreen:
      preview:
        - pause: {}            # wait for `zdeploy promote echo`
      scaleDownDelay: 5m
      routes:
        - match: {identityPrefix: tester-}
      analysis:
        interval: 2s
";
    format!("{}{strategy}{}", &text[..start], &text[end..])
}

/// Blue-green through the controller: the new revision previewed at weight 0 (a tester's
/// requests reach it, no one else's), `zdeploy promote` switches every zgate replica to
/// it in one change, and `zdeploy rollback` within the scale-down delay switches back in
/// one change, with the old pods never gone. Clients through both replicas all along.
pub fn blue_green_switches_and_switches_back_in_one_change(
    cp: &ControlPlane,
) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage("blue-green");
    deploy(cp, &ns.name, &runner, blue_green);
    let old_pods: Vec<String> = runner
        .running(Some("stable"))
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let clients = clients(&runner);
    cp.zdeploy(&["rollout", "echo", "-n", &ns.name, "--image", V2]);
    until(
        cp,
        &ns.name,
        &runner,
        "the preview's route in every zgate, the new pods live",
        || {
            let route = serde_json::json!(["canary=identity:tester-"]);
            (zgate_routes(&runner).iter().all(|r| *r == route)
                && runner.running(Some("canary")).len() == 3
                && all_live(&runner, "canary"))
            .then_some(())
        },
    );
    assert_eq!(cp.status(&ns.name, "echo")["canaryWeight"], 0);
    for gw in runner.running(None) {
        assert_eq!(canary_answers(&gw, "tester-1", 200), 200, "{}", gw.name);
        assert_eq!(canary_answers(&gw, "customer-1", 200), 0, "{}", gw.name);
    }

    // The switch: every zgate replica goes from 0 to 100 with nothing between.
    let switch = weights_seen(&runner, 100, || {
        cp.zdeploy(&["promote", "echo", "-n", &ns.name]);
    });
    let s = cp.status(&ns.name, "echo");
    assert!(s["rollout"]["switched"].is_string(), "{s}");
    for gw in runner.running(None) {
        assert_eq!(canary_answers(&gw, "customer-1", 200), 200, "{}", gw.name);
    }

    // Within the delay: back in one change, to pods that never stopped.
    let asked = Instant::now();
    let back = weights_seen(&runner, 0, || {
        cp.zdeploy(&["rollback", "echo", "-n", &ns.name, "--reason", "paged"]);
    });
    let took = asked.elapsed();
    for gw in runner.running(None) {
        assert_eq!(canary_answers(&gw, "customer-1", 200), 0, "{}", gw.name);
    }
    let stable_now: Vec<String> = runner
        .running(Some("stable"))
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(stable_now, old_pods, "the old pool was kept, not restarted");
    assert_eq!(cp.status(&ns.name, "echo")["phase"], "RolledBack");
    println!(
        "blue-green in the cluster: canary weights seen by each zgate replica at the switch {switch:?}, at the rollback {back:?}; rollback command -> every replica at 0: {:.0} ms",
        ms(took)
    );
    for summary in stop(&runner, clients, 1000) {
        assert_eq!(errors(&summary), Vec::<String>::new(), "{summary}");
        assert!(answered_by(&summary, "-canary-") > 0, "{summary}");
    }
    Ok(())
}

/// Runs `act`, then polls every zgate replica's canary weight until all are `target`;
/// returns the distinct weights each replica showed, in order (one change: `[from, to]`).
fn weights_seen(runner: &PodRunner, target: u64, act: impl FnOnce()) -> Vec<Vec<u64>> {
    let mut seen: Vec<Vec<u64>> = zgate_canary_weights(runner)
        .into_iter()
        .map(|w| vec![w])
        .collect();
    act();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = zgate_canary_weights(runner);
        for (s, w) in seen.iter_mut().zip(&now) {
            if s.last() != Some(w) {
                s.push(*w);
            }
        }
        if now.iter().all(|w| *w == target) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "weights {seen:?}, not all {target}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A bad config (the service fails every request when its ConfigMap says so) is rolled
/// back by the analysis with stable untouched; a good one is promoted and stable reads it.
pub fn a_bad_config_is_rolled_back_by_the_analysis(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: runner,
    } = cp.stage("bad-config");
    let ns = ns.name.as_str();
    let config = cp.file(
        &format!("behaviour-{ns}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: echo-behaviour, namespace: {ns}}}\ndata: {{errorRatio: \"0\"}}\n"
        ),
    );
    cp.kubectl(&["apply", "-f", &config.display().to_string()]);
    deploy(cp, ns, &runner, |t| {
        t.replace(
            "            - name: ECHO_LOG_LEVEL\n",
            "            - name: ECHO_ERROR_RATIO\n              valueFrom: {configMapKeyRef: {name: echo-behaviour, key: errorRatio}}\n            - name: ECHO_LOG_LEVEL\n",
        )
    });
    let clients = clients(&runner);
    let stable_reads = || {
        let d = cp.json(&["get", "deployment", "echo-stable", "-n", ns]);
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"][0];
        let name = env["valueFrom"]["configMapKeyRef"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let cm = cp.json(&["get", "configmap", &name, "-n", ns]);
        cm["data"]["errorRatio"].as_str().unwrap().to_string()
    };
    let set = |ratio: &str| {
        let patch = format!(r#"{{"data":{{"errorRatio":"{ratio}"}}}}"#);
        cp.kubectl(&[
            "patch",
            "configmap",
            "echo-behaviour",
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            &patch,
        ]);
    };

    set("1");
    until(cp, ns, &runner, "the bad config is rolled back", || {
        (cp.status(ns, "echo")["phase"] == "RolledBack").then_some(())
    });
    let s = cp.status(ns, "echo");
    let reason = s["history"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("error-ratio"), "{s}");
    assert_eq!(
        s["history"][0]["changes"],
        serde_json::json!(["ConfigMap echo-behaviour (1 key)"])
    );
    assert_eq!(stable_reads(), "0", "stable untouched");

    set("0.0");
    until(cp, ns, &runner, "the good config's canary starts", || {
        cp.status(ns, "echo")["rollout"].is_object().then_some(())
    });
    until(
        cp,
        ns,
        &runner,
        "every zgate replica is connected to the good config's canary, which takes requests",
        || {
            let live_everywhere = from_every_zgate(&runner, "/endpoints").iter().all(|e| {
                e["canary"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|b| b["live"] == true))
            });
            (live_everywhere && cp.status(ns, "echo")["canaryWeight"].as_u64() > Some(0))
                .then_some(())
        },
    );
    let canary = cp.status(ns, "echo")["canaryRevision"]
        .as_str()
        .unwrap()
        .to_string();
    cp.zdeploy(&["promote", "echo", "-n", ns, "--full"]);
    until(cp, ns, &runner, "the good config is promoted", || {
        (cp.status(ns, "echo")["stableRevision"] == canary.as_str()).then_some(())
    });
    assert_eq!(stable_reads(), "0.0");
    // The canary pool takes every request until stable's rolled pods are reached.
    until(cp, ns, &runner, "stable takes the requests back", || {
        cp.status(ns, "echo")["handover"]["stableSince"]
            .is_string()
            .then_some(())
    });
    let seen = stop(&runner, clients, 1);
    for client in &seen {
        let by_head = client["by_head"].as_object().unwrap();
        assert!(
            !by_head.keys().any(|h| h.starts_with("ERR zgate")),
            "zgate refused requests (a pool without a live backend): {client}"
        );
    }
    println!(
        "bad config rolled back ({reason}), stable untouched; good config promoted; clients: {seen:?}"
    );
    Ok(())
}
