//! A service's life through the controller, as the installed ServiceAccount: first
//! deploy, a rollout from the CLI, pause and resume, promotion, rollback and retry,
//! status conditions for `kubectl wait`, a GitOps-style spec change by another field
//! manager, then deletion through the finalizer and the garbage collector.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::controlplane::ControlPlane;
use crate::scenario::{Stage, eventually, image_of};

const V1: &str = "registry.example.com/trading/echo:2.0.3-ltsc2022";
const V2: &str = "registry.example.com/trading/echo:2.0.4-ltsc2022";
const V3: &str = "registry.example.com/trading/echo:2.0.5-ltsc2022";

fn wait_condition(cp: &ControlPlane, ns: &str, condition: &str) {
    cp.kubectl(&[
        "wait",
        &format!("--for=condition={condition}"),
        "zmqservice/echo",
        "-n",
        ns,
        "--timeout=60s",
    ]);
}

fn canary_image(cp: &ControlPlane, ns: &str) -> String {
    let d = cp.json(&["get", "deployment", "echo-canary", "-n", ns]);
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Deploy, rollout, pause, resume, promote, rollback, retry, history, deletion.
pub fn through_the_cli(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        mut ctl,
        pods: _pods,
    } = cp.stage("rollout");
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-rollout");

    let file = cp.echo_manifest(&ns.name, |t| t);
    cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    wait_condition(cp, &ns.name, "Available");
    let s = cp.status(&ns.name, "echo");
    assert_eq!(image_of(&s["stableRevision"]), V1, "{s}");
    assert_eq!(cp.weights(&ns.name, "echo")["canary"], 0);
    let stable = cp.json(&["get", "deployment", "echo-stable", "-n", &ns.name]);
    assert_eq!(
        stable["metadata"]["ownerReferences"][0]["kind"],
        "ZmqService"
    );

    // A command the engine refuses is reported as refused, with the reason, exit 1.
    let (code, out, err) = cp.zdeploy_as(&cp.admin, &["promote", "echo", "-n", &ns.name]);
    assert_eq!(code, 1, "{err}{out}");
    assert!(err.contains("refused: no rollout in progress"), "{err}");
    assert_eq!(
        cp.status(&ns.name, "echo")["lastCommandRefused"],
        "no rollout in progress"
    );

    // A rollout from the CLI: the annotation, never the spec.
    cp.zdeploy(&[
        "rollout", "echo", "-n", &ns.name, "--canary", "10", "--image", V2,
    ]);
    wait_condition(cp, &ns.name, "Progressing");
    assert!(
        cp.status(&ns.name, "echo")["lastCommandRefused"].is_null(),
        "a command carried out clears the refusal"
    );
    // Once both zgate replicas reach a canary pod.
    eventually("the canary takes 10%", Duration::from_secs(30), || {
        (cp.weights(&ns.name, "echo")["canary"] == 10).then_some(())
    });
    assert_eq!(canary_image(cp, &ns.name), V2);
    let svc = cp.json(&["get", "zmqservice", "echo", "-n", &ns.name]);
    assert_eq!(
        svc["spec"]["template"]["spec"]["containers"][0]["image"], V1,
        "the CLI must not change the spec"
    );

    cp.zdeploy(&["pause", "echo", "-n", &ns.name]);
    eventually("the rollout is paused", Duration::from_secs(30), || {
        (cp.status(&ns.name, "echo")["phase"] == "Paused").then_some(())
    });
    cp.zdeploy(&["resume", "echo", "-n", &ns.name]);
    eventually("the rollout resumes", Duration::from_secs(30), || {
        (cp.status(&ns.name, "echo")["phase"] == "Progressing").then_some(())
    });

    cp.zdeploy(&["promote", "echo", "-n", &ns.name, "--full"]);
    eventually("the canary becomes stable", Duration::from_secs(30), || {
        (image_of(&cp.status(&ns.name, "echo")["stableRevision"]) == V2).then_some(())
    });
    // The canary pool takes every request until stable's new pods are reached.
    eventually(
        "stable takes the requests back",
        Duration::from_secs(60),
        || (cp.weights(&ns.name, "echo")["canary"] == 0).then_some(()),
    );
    let handed = events_of(cp, &ns.name, "HandedOver");
    assert!(handed.contains("take the requests back"), "{handed}");
    let stable = cp.json(&["get", "deployment", "echo-stable", "-n", &ns.name]);
    assert_eq!(
        stable["spec"]["template"]["spec"]["containers"][0]["image"],
        V2
    );

    cp.zdeploy(&[
        "rollout", "echo", "-n", &ns.name, "--canary", "25", "--image", V3,
    ]);
    eventually("the canary takes 25%", Duration::from_secs(30), || {
        (cp.weights(&ns.name, "echo")["canary"] == 25).then_some(())
    });
    // The API server restarts under the controller; a rollback right after still lands.
    cp.with_apiserver_down(|| std::thread::sleep(Duration::from_secs(2)));
    let asked = std::time::Instant::now();
    cp.zdeploy(&["rollback", "echo", "-n", &ns.name, "--reason", "e2e"]);
    println!(
        "rollback carried out {:.1} s after the API server was back",
        asked.elapsed().as_secs_f64()
    );
    wait_condition(cp, &ns.name, "RolledBack");
    assert_eq!(cp.weights(&ns.name, "echo")["canary"], 0);
    let s = cp.status(&ns.name, "echo");
    assert_eq!(s["phase"], "RolledBack", "{s}");
    assert_eq!(image_of(&s["history"][0]["revision"]), V3);
    assert_eq!(image_of(&s["stableRevision"]), V2);

    cp.zdeploy(&["retry", "echo", "-n", &ns.name]);
    eventually(
        "the retry starts the canary",
        Duration::from_secs(30),
        || {
            let s = cp.status(&ns.name, "echo");
            (s["phase"] == "Progressing" && image_of(&s["canaryRevision"]) == V3).then_some(())
        },
    );
    cp.zdeploy(&["rollback", "echo", "-n", &ns.name, "--reason", "e2e again"]);
    let history = cp.zdeploy(&["history", "echo", "-n", &ns.name]);
    for rev in [V2, V3] {
        assert!(history.contains(rev), "history lists {rev}:\n{history}");
    }

    // Deletion: the finalizer runs, then the garbage collector removes what it owned.
    cp.kubectl(&[
        "delete",
        "zmqservice",
        "echo",
        "-n",
        &ns.name,
        "--timeout=60s",
    ]);
    eventually(
        "the owned Deployments are garbage-collected",
        Duration::from_secs(60),
        || {
            let out = cp.kubectl(&["get", "deployments", "-n", &ns.name, "-o", "name"]);
            out.trim().is_empty().then_some(())
        },
    );

    ctl.proc.signal("TERM");
    assert_eq!(ctl.proc.wait_exit(Duration::from_secs(15)), Some(0));
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a stopped controller gives the Lease up: {lease}"
    );
    // Refusals by RBAC are checked from the audit log (the rbac scenario), which can tell
    // them from the moment after the API server's restart when its RBAC cache is empty.
    Ok(())
}

/// Merges `patch` into `kind name` in `ns`, as a person with kubectl would.
fn merge_patch(cp: &ControlPlane, ns: &str, object: &str, patch: &str) {
    let (kind, name) = object.split_once(' ').unwrap();
    cp.kubectl(&[
        "patch", kind, name, "-n", ns, "--type", "merge", "-p", patch,
    ]);
}

/// The Events of `reason` in `ns`, as `kubectl get events` lists them.
fn events_of(cp: &ControlPlane, ns: &str, reason: &str) -> String {
    let selector = format!("reason={reason}");
    cp.kubectl(&["get", "events", "-n", ns, "--field-selector", &selector])
}

/// `file` server-side applied as a GitOps tool does, under its own field manager.
fn gitops_apply(cp: &ControlPlane, file: &std::path::Path) -> String {
    cp.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=argocd-controller",
        "-f",
        &file.display().to_string(),
    ])
}

/// Another field manager (a GitOps tool) server-side applies the manifest and then a new
/// image: no conflict with what zdeploy writes, a rollout starts, and a second apply of the
/// same manifest changes nothing.
pub fn through_gitops(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("gitops");
    let apply = |file: &std::path::Path| gitops_apply(cp, file);
    let v1 = cp.echo_manifest(&ns.name, |t| t);
    apply(&v1);
    wait_condition(cp, &ns.name, "Available");
    let v2 = cp.echo_manifest(&ns.name, |t| t.replace(V1, V2));
    apply(&v2);
    eventually(
        "the spec change starts a canary",
        Duration::from_secs(30),
        || (image_of(&cp.status(&ns.name, "echo")["canaryRevision"]) == V2).then_some(()),
    );
    let out = cp.kubectl_as(
        &cp.admin,
        &[
            "diff",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            &v2.display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "drift after the controller reconciled:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = cp.zdeploy_as(&cp.admin, &["diff", "-f", &v2.display().to_string()]);
    assert_eq!(code, 0, "zdeploy diff sees drift: {out}{err}");
    Ok(())
}

fn replicas(cp: &ControlPlane, ns: &str, deployment: &str) -> i64 {
    cp.json(&["get", "deployment", deployment, "-n", ns])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(-1)
}

/// `kubectl scale` through the ZmqService's `/scale` subresource (what an HPA uses) is
/// kept by the controller through a whole rollout, and the canary is sized for its weight.
pub fn scaled_through_the_scale_subresource(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("scale");
    let ns = ns.name.as_str();
    let file = cp.echo_manifest(ns, |t| t);
    cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    wait_condition(cp, ns, "Available");
    cp.kubectl(&["scale", "zmqservice/echo", "--replicas", "6", "-n", ns]);
    let scale = || {
        cp.json(&[
            "get",
            "zmqservice",
            "echo",
            "-n",
            ns,
            "--subresource",
            "scale",
        ])
    };
    eventually(
        "/scale reports 6 stable pods",
        Duration::from_secs(60),
        || {
            let s = scale();
            (s["spec"]["replicas"] == 6 && s["status"]["replicas"] == 6).then_some(s)
        },
    );
    let selector = scale()["status"]["selector"].as_str().unwrap().to_string();
    assert!(selector.contains("zdeploy.io/pool=stable"), "{selector}");
    let selected = cp.kubectl(&["get", "pods", "-n", ns, "-l", &selector, "-o", "name"]);
    assert_eq!(
        selected.lines().count(),
        6,
        "the selector finds stable's pods: {selected}"
    );

    // 25% now and 50% next (the example's steps): ceil(6 x 50%) canary pods.
    cp.zdeploy(&["rollout", "echo", "-n", ns, "--canary", "25", "--image", V2]);
    eventually("the canary takes 25%", Duration::from_secs(60), || {
        (cp.weights(ns, "echo")["canary"] == 25).then_some(())
    });
    // Weights are applied before workloads, so the canary's size may land a moment later.
    eventually(
        "the canary is sized for the next step",
        Duration::from_secs(10),
        || (replicas(cp, ns, "echo-canary") == 3).then_some(()),
    );
    assert_eq!(replicas(cp, ns, "echo-stable"), 6, "stable keeps its size");

    // Scaled down mid-rollout: both pools follow, nothing is reset to the manifest's 3.
    cp.kubectl(&["scale", "zmqservice/echo", "--replicas", "4", "-n", ns]);
    eventually(
        "the pools follow the new scale",
        Duration::from_secs(30),
        || {
            (replicas(cp, ns, "echo-stable") == 4 && replicas(cp, ns, "echo-canary") == 2)
                .then_some(())
        },
    );
    cp.zdeploy(&["promote", "echo", "-n", ns]);
    eventually("the canary takes 50%", Duration::from_secs(30), || {
        (cp.weights(ns, "echo")["canary"] == 50).then_some(())
    });
    cp.zdeploy(&["promote", "echo", "-n", ns, "--full"]);
    eventually("the canary becomes stable", Duration::from_secs(30), || {
        (image_of(&cp.status(ns, "echo")["stableRevision"]) == V2).then_some(())
    });
    eventually(
        "the canary drains and scales down",
        Duration::from_secs(30),
        || (replicas(cp, ns, "echo-canary") == 0).then_some(()),
    );
    let svc = cp.json(&["get", "zmqservice", "echo", "-n", ns]);
    assert_eq!(
        svc["spec"]["replicas"], 4,
        "the controller never resets the scale"
    );
    assert_eq!(replicas(cp, ns, "echo-stable"), 4);
    eventually(
        "/scale reports 4 stable pods",
        Duration::from_secs(60),
        || (scale()["status"]["replicas"] == 4).then_some(()),
    );

    // A real HorizontalPodAutoscaler (kube-controller-manager's) targets the ZmqService.
    // There is no metrics API here (kwok's pods report no usage), so it cannot compute a
    // utilization; below minReplicas it scales to minReplicas without one, through /scale.
    let hpa = cp.file(
        &format!("hpa-{ns}.yaml"),
        &format!(
            "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: echo, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: zdeploy.io/v1alpha1, kind: ZmqService, name: echo}}
  minReplicas: 5
  maxReplicas: 8
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}
"
        ),
    );
    cp.kubectl(&["apply", "-f", &hpa.display().to_string()]);
    eventually(
        "the HPA scales the ZmqService to 5",
        Duration::from_secs(90),
        || (replicas(cp, ns, "echo-stable") == 5).then_some(()),
    );
    let svc = cp.json(&["get", "zmqservice", "echo", "-n", ns]);
    assert_eq!(
        svc["spec"]["replicas"], 5,
        "set by the HPA through /scale: {svc}"
    );
    println!(
        "scale 6 then 4 kept through a rollout; canary 3 pods at 25% (50% next), 2 after scaling to 4; a HorizontalPodAutoscaler scaled it to 5"
    );
    Ok(())
}

/// Ten services read one shared ConfigMap and a controller allows 3 canaries per
/// namespace: one change of that ConfigMap makes ten releases, never more than 3 run, the
/// others say their place in the queue, all ten are released.
pub fn a_change_to_many_services_waits_in_a_queue(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage_with_controller("queue", &["--max-canaries", "3"]);
    let ns = ns.name.as_str();
    let shared = cp.file(
        &format!("shared-{ns}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared-settings, namespace: {ns}}}\ndata: {{level: info}}\n"
        ),
    );
    cp.kubectl(&["apply", "-f", &shared.display().to_string()]);
    let names: Vec<String> = (0..10).map(|i| format!("echo-{i}")).collect();
    for name in &names {
        let manifest = cp.echo_manifest(ns, |t| {
            t.replace("  name: echo\n", &format!("  name: {name}\n"))
                .replace("replicas: 3", "replicas: 1")
                .replace(
                    "            - name: ECHO_LOG_LEVEL\n              value: info\n",
                    "            - name: ECHO_LOG_LEVEL\n              valueFrom: {configMapKeyRef: {name: shared-settings, key: level}}\n",
                )
        });
        gitops_apply(cp, &manifest);
    }
    let mut first = std::collections::BTreeMap::new();
    for name in &names {
        cp.kubectl(&[
            "wait",
            "--for=condition=Available",
            &format!("zmqservice/{name}"),
            "-n",
            ns,
            "--timeout=120s",
        ]);
        let revision = cp.status(ns, name)["stableRevision"].clone();
        first.insert(name.clone(), revision);
    }
    merge_patch(
        cp,
        ns,
        "configmap shared-settings",
        r#"{"data":{"level":"debug"}}"#,
    );
    // Each canary in flight is promoted once seen; the queue must never let a fourth in.
    let (mut most, mut positions) = (0, std::collections::BTreeSet::new());
    let started = std::time::Instant::now();
    loop {
        let list = cp.json(&["get", "zmqservices", "-n", ns]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let in_flight: Vec<&serde_json::Value> = items
            .iter()
            .filter(|s| !s["status"]["rollout"].is_null())
            .collect();
        most = most.max(in_flight.len());
        assert!(in_flight.len() <= 3, "{} canaries at once", in_flight.len());
        for s in &items {
            let message = s["status"]["message"].as_str().unwrap_or_default();
            if let Some((_, after)) = message.split_once(" is number ") {
                positions.insert(after.split(' ').next().unwrap_or_default().to_string());
                assert!(message.starts_with("queued: "), "{message}");
                assert!(
                    message.contains("in progress in e2e-queue (at most 3)"),
                    "{message}"
                );
                assert!(!s["status"]["queuedSince"].is_null(), "{s}");
            }
        }
        let released = items
            .iter()
            .filter(|s| {
                let name = s["metadata"]["name"].as_str().unwrap_or_default();
                let stable = &s["status"]["stableRevision"];
                !stable.is_null()
                    && first.get(name) != Some(stable)
                    && s["status"]["rollout"].is_null()
            })
            .count();
        if released == names.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{released} of 10 released after 4 minutes"
        );
        for s in in_flight {
            let name = s["metadata"]["name"].as_str().unwrap();
            let _ = cp.zdeploy_as(&cp.admin, &["promote", name, "-n", ns, "--full"]);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = events_of(cp, ns, "Queued");
    assert!(events.contains("(at most 3)"), "{events}");
    println!(
        "one shared ConfigMap changed under 10 services, at most 3 canaries: {most} at most in flight, queue positions seen {positions:?}, all 10 released in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The env entries of the ZeroMQ container of Deployment `name`, by name: a value, or
/// `ConfigMap NAME/KEY` / `Secret NAME/KEY` where it reads one.
fn env_of(cp: &ControlPlane, ns: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    let d = cp.json(&["get", "deployment", name, "-n", ns]);
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned();
    env.unwrap_or_default()
        .iter()
        .map(|e| {
            let from = &e["valueFrom"];
            let said = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if !from["configMapKeyRef"].is_null() {
                format!(
                    "ConfigMap {}/{}",
                    from["configMapKeyRef"]["name"].as_str().unwrap(),
                    from["configMapKeyRef"]["key"].as_str().unwrap()
                )
            } else {
                format!(
                    "Secret {}/{}",
                    from["secretKeyRef"]["name"].as_str().unwrap(),
                    from["secretKeyRef"]["key"].as_str().unwrap()
                )
            };
            (e["name"].as_str().unwrap().to_string(), said)
        })
        .collect()
}

/// The value of `key` in `Kind name/key` (a Secret's decoded by kubectl).
fn config_value(cp: &ControlPlane, ns: &str, reference: &str) -> String {
    let (kind_name, key) = reference.split_once('/').unwrap();
    let (kind, name) = kind_name.split_once(' ').unwrap();
    let decode = if kind == "Secret" {
        " | base64decode"
    } else {
        ""
    };
    let template = format!("go-template={{{{index .data \"{key}\"{decode}}}}}");
    cp.kubectl(&["get", &kind.to_lowercase(), name, "-n", ns, "-o", &template])
}

/// Only an env value, then only a ConfigMap key, then only a Secret key change: each
/// starts a canary that reads the new value while stable (a pod deleted mid-rollout too)
/// reads the old; promotion gives stable the new, a rollback leaves it as it was, and the
/// copies of revisions no longer run are deleted.
pub fn config_changes_are_released_by_canary(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("config");
    let ns = ns.name.as_str();
    let config = cp.file(
        &format!("config-{ns}.yaml"),
        &format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: echo-config, namespace: {ns}}}
data: {{level: info, banner: hello}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca-bundle, namespace: {ns}}}
data: {{ca: one}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: echo-extra, namespace: {ns}}}
data: {{mode: a}}
---
apiVersion: v1
kind: Secret
metadata: {{name: echo-token, namespace: {ns}}}
stringData: {{token: first}}
"
        ),
    );
    cp.kubectl(&["apply", "-f", &config.display().to_string()]);
    let manifest = |log_level: &str| {
        cp.echo_manifest(ns, |t| {
            t.replace(
                "            - name: ECHO_LOG_LEVEL\n              value: info\n",
                &format!(
                    "            - name: ECHO_LOG_LEVEL\n              value: {log_level}\n            - name: LEVEL\n              valueFrom: {{configMapKeyRef: {{name: echo-config, key: level}}}}\n            - name: TOKEN\n              valueFrom: {{secretKeyRef: {{name: echo-token, key: token}}}}\n"
                ),
            )
            // A shared CA bundle it ignores, and a ConfigMap it tracks without reading it.
            .replace(
                "      terminationGracePeriodSeconds: 30\n",
                "      terminationGracePeriodSeconds: 30\n      volumes:\n        - name: ca\n          configMap: {name: ca-bundle}\n",
            )
            .replace(
                "  zmq:\n    pattern",
                "  configTracking:\n    ignore: [{kind: ConfigMap, name: ca-bundle}]\n    track: [{kind: ConfigMap, name: echo-extra}]\n  zmq:\n    pattern",
            )
        })
    };
    gitops_apply(cp, &manifest("info"));
    wait_condition(cp, ns, "Available");
    let first = cp.status(ns, "echo")["stableRevision"]
        .as_str()
        .unwrap()
        .to_string();
    let stable = env_of(cp, ns, "echo-stable");
    assert_eq!(config_value(cp, ns, &stable["LEVEL"]), "info", "{stable:?}");
    assert_eq!(config_value(cp, ns, &stable["TOKEN"]), "first");
    assert_ne!(
        stable["LEVEL"], "ConfigMap echo-config/level",
        "stable reads a copy"
    );
    let canary_started = |why: &str, before: &str| {
        eventually(why, Duration::from_secs(60), || {
            let s = cp.status(ns, "echo");
            let canary = s["canaryRevision"].as_str()?;
            (!s["rollout"].is_null() && canary != before).then(|| canary.to_string())
        })
    };
    let promoted = |revision: &str| {
        cp.zdeploy(&["promote", "echo", "-n", ns, "--full"]);
        eventually("promoted", Duration::from_secs(30), || {
            (cp.status(ns, "echo")["stableRevision"] == revision).then_some(())
        });
    };

    // 1. Only an env value.
    gitops_apply(cp, &manifest("debug"));
    let second = canary_started("an env change starts a canary", &first);
    let changes = |why: &str| cp.status(ns, "echo")["changes"] == serde_json::json!([why]);
    assert!(changes("env ECHO_LOG_LEVEL"), "{}", cp.status(ns, "echo"));
    assert_eq!(
        image_of(&serde_json::json!(second)),
        V1,
        "same image, new revision"
    );
    assert_eq!(env_of(cp, ns, "echo-canary")["ECHO_LOG_LEVEL"], "debug");
    assert_eq!(env_of(cp, ns, "echo-stable")["ECHO_LOG_LEVEL"], "info");
    promoted(&second);
    assert_eq!(env_of(cp, ns, "echo-stable")["ECHO_LOG_LEVEL"], "debug");

    // 2. Only a ConfigMap key; a stable pod deleted meanwhile comes back on the old value.
    merge_patch(
        cp,
        ns,
        "configmap echo-config",
        r#"{"data":{"level":"warn"}}"#,
    );
    let third = canary_started("a ConfigMap change starts a canary", &second);
    assert!(
        changes("ConfigMap echo-config (1 key)"),
        "{}",
        cp.status(ns, "echo")
    );
    let (canary, stable) = (env_of(cp, ns, "echo-canary"), env_of(cp, ns, "echo-stable"));
    assert_eq!(config_value(cp, ns, &canary["LEVEL"]), "warn");
    assert_eq!(config_value(cp, ns, &stable["LEVEL"]), "info");
    let stable_pods = || {
        cp.kubectl(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "zdeploy.io/pool=stable",
            "-o",
            "name",
        ])
    };
    let pods = stable_pods();
    let victim = pods.lines().next().unwrap().to_string();
    cp.kubectl(&["delete", "-n", ns, &victim, "--wait=false"]);
    let reborn = eventually(
        "the stable pod is replaced",
        Duration::from_secs(60),
        || {
            let now = stable_pods();
            let fresh: Vec<String> = now
                .lines()
                .filter(|p| !pods.contains(*p))
                .map(String::from)
                .collect();
            fresh.into_iter().next()
        },
    );
    let pod = cp.json(&["get", "-n", ns, &reborn]);
    let level = pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "LEVEL")
        .unwrap()["valueFrom"]["configMapKeyRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        config_value(cp, ns, &format!("ConfigMap {level}/level")),
        "info",
        "the new stable pod reads stable's copy"
    );
    promoted(&third);
    assert_eq!(
        config_value(cp, ns, &env_of(cp, ns, "echo-stable")["LEVEL"]),
        "warn"
    );

    // 3. Only a Secret key (seen within the 30 s recheck); rolled back, stable unchanged.
    let before = env_of(cp, ns, "echo-stable");
    merge_patch(
        cp,
        ns,
        "secret echo-token",
        r#"{"stringData":{"token":"second"}}"#,
    );
    let fourth = canary_started("a Secret change starts a canary", &third);
    assert!(
        changes("Secret echo-token (1 key)"),
        "{}",
        cp.status(ns, "echo")
    );
    assert_eq!(
        config_value(cp, ns, &env_of(cp, ns, "echo-canary")["TOKEN"]),
        "second"
    );
    cp.zdeploy(&["rollback", "echo", "-n", ns, "--reason", "e2e"]);
    wait_condition(cp, ns, "RolledBack");
    assert_eq!(
        env_of(cp, ns, "echo-stable"),
        before,
        "a rollback leaves stable's config as it was"
    );
    let s = cp.status(ns, "echo");
    assert_eq!(s["history"][0]["revision"], fourth.as_str());
    assert_eq!(
        s["history"][0]["changes"],
        serde_json::json!(["Secret echo-token (1 key)"])
    );
    let events = events_of(cp, ns, "Changes");
    assert!(events.contains("changes env ECHO_LOG_LEVEL"), "{events}");

    // Copies of the first revision (neither stable nor the last released) are gone.
    let digest = |r: &str| r.rsplit_once('+').unwrap().1.to_string();
    let first_digest = digest(&first);
    let gone = |kind: &str, name: &str| {
        !cp.kubectl_as(&cp.admin, &["get", kind, name, "-n", ns])
            .status
            .success()
    };
    eventually(
        "the first revision's copies are deleted",
        Duration::from_secs(30),
        || {
            (gone("configmap", &format!("echo-config-{first_digest}"))
                && gone("secret", &format!("echo-token-{first_digest}"))
                && gone("configmap", &format!("echo-rev-{first_digest}")))
            .then_some(())
        },
    );
    assert!(
        !gone("configmap", &format!("echo-config-{}", digest(&third))),
        "stable's copy stays"
    );

    // The ignored CA bundle is read as it is, and its change starts nothing.
    let volumes = |d: &str| {
        cp.json(&["get", "deployment", d, "-n", ns])["spec"]["template"]["spec"]["volumes"].clone()
    };
    assert_eq!(volumes("echo-stable")[0]["configMap"]["name"], "ca-bundle");
    let settled = cp.status(ns, "echo");
    merge_patch(cp, ns, "configmap ca-bundle", r#"{"data":{"ca":"two"}}"#);
    std::thread::sleep(Duration::from_secs(5));
    let after = cp.status(ns, "echo");
    assert!(after["rollout"].is_null(), "{after}");
    assert_eq!(after["stableRevision"], settled["stableRevision"]);
    assert_eq!(after["history"], settled["history"]);

    // The tracked one, named by no pod, is released by canary all the same.
    merge_patch(cp, ns, "configmap echo-extra", r#"{"data":{"mode":"b"}}"#);
    let fifth = canary_started("a tracked ConfigMap's change starts a canary", &fourth);
    // The Secret rolled back above still holds its new value: this release carries it too.
    assert_eq!(
        cp.status(ns, "echo")["changes"],
        serde_json::json!(["ConfigMap echo-extra (1 key)", "Secret echo-token (1 key)"])
    );
    println!(
        "env, ConfigMap and Secret changes each released by canary: {first} -> {second} -> {third}; {fourth} rolled back; an ignored ConfigMap's change started nothing, a tracked one's started {fifth}"
    );
    Ok(())
}
