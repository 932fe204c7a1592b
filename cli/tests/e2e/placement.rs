//! Where the scheduler puts what zdeploy renders, and what the API server itself refuses:
//! pools on the Windows nodes of their build (with and without a RuntimeClass), zgate
//! and the controller on Linux; zdeploy's list of fields Windows forbids against the
//! server's validation; the CRD schema's refusals at the paths `zdeploy validate` names.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use libtest_mimic::Failed;
use serde_json::{Value, json};

use crate::controlplane::{ControlPlane, WS2019, WS2022};
use crate::scenario::{Namespace, Stage, eventually};

/// Pod name -> node name for the Running pods of `selector` in `ns`.
fn placed(cp: &ControlPlane, ns: &str, selector: &str) -> BTreeMap<String, String> {
    let pods = cp.json(&["get", "pods", "-n", ns, "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn node_build(cp: &ControlPlane, node: &str) -> Option<String> {
    let n = cp.json(&["get", "node", node]);
    n["metadata"]["labels"]["node.kubernetes.io/windows-build"]
        .as_str()
        .map(String::from)
}

fn node_os(cp: &ControlPlane, node: &str) -> String {
    let n = cp.json(&["get", "node", node]);
    n["metadata"]["labels"]["kubernetes.io/os"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `count` pods of `selector` run, then checks each is on a node of `build`.
fn assert_on_build(cp: &ControlPlane, ns: &str, selector: &str, count: usize, build: &str) {
    let pods = eventually(
        &format!("{count} pods of {selector} run"),
        Duration::from_secs(60),
        || {
            let p = placed(cp, ns, selector);
            (p.len() >= count).then_some(p)
        },
    );
    for (pod, node) in pods {
        assert_eq!(
            node_build(cp, &node).as_deref(),
            Some(build),
            "{pod} ({selector}) runs on {node}"
        );
    }
}

/// A 2022 service (RuntimeClass) and a 2019 service (node selector and tolerations
/// only) land on their own builds; zgate and the controller on Linux; no pod fails to
/// schedule.
pub fn pools_land_on_their_windows_build(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("placement");
    let echo = cp.echo_manifest(&ns.name, |t| t);
    let quotes = cp.echo_manifest(&ns.name, |t| {
        t.replace("  name: echo\n", "  name: quotes\n")
            .replace("build: \"2022\"", "build: \"2019\"")
            .replace("    runtimeClassName: windows-2022\n", "")
            .replace("ltsc2022", "ltsc2019")
    });
    for file in [&echo, &quotes] {
        cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    }
    let next = [
        ("echo", "registry.example.com/trading/echo:2.0.4-ltsc2022"),
        ("quotes", "registry.example.com/trading/echo:2.0.4-ltsc2019"),
    ];
    for (svc, image) in next {
        eventually(
            &format!("{svc} is deployed"),
            Duration::from_secs(60),
            || {
                cp.status(&ns.name, svc)["stableRevision"]
                    .as_str()
                    .map(|_| ())
            },
        );
        cp.zdeploy(&[
            "rollout", svc, "-n", &ns.name, "--canary", "10", "--image", image,
        ]);
    }
    let pool =
        |svc: &str, pool: &str| format!("app.kubernetes.io/name={svc},zdeploy.io/pool={pool}");
    for pool_name in ["stable", "canary"] {
        assert_on_build(cp, &ns.name, &pool("echo", pool_name), 1, WS2022);
        assert_on_build(cp, &ns.name, &pool("quotes", pool_name), 1, WS2019);
    }
    for (ns, selector) in [
        (ns.name.as_str(), "app.kubernetes.io/component=gateway"),
        ("zdeploy-system", "app.kubernetes.io/component=controller"),
    ] {
        let pods = eventually(
            &format!("pods of {selector} run in {ns}"),
            Duration::from_secs(60),
            || {
                let p = placed(cp, ns, selector);
                (!p.is_empty()).then_some(p)
            },
        );
        for (pod, node) in pods {
            assert_eq!(node_os(cp, &node), "linux", "{pod} runs on {node}");
        }
    }
    for ns in [ns.name.as_str(), "zdeploy-system"] {
        let events = cp.json(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "reason=FailedScheduling",
        ]);
        assert_eq!(
            events["items"].as_array().map(Vec::len),
            Some(0),
            "FailedScheduling in {ns}: {events}"
        );
    }
    Ok(())
}

/// Every pod field that might be Linux-only, set on its own. Values are valid on Linux.
fn candidates() -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = vec![
        ("hostPID", json!({"hostPID": true})),
        ("hostIPC", json!({"hostIPC": true})),
        ("hostUsers", json!({"hostUsers": false})),
        (
            "shareProcessNamespace",
            json!({"shareProcessNamespace": true}),
        ),
    ];
    let pod_level: [(&'static str, Value); 13] = [
        (
            "securityContext.seLinuxOptions",
            json!({"seLinuxOptions": {"level": "s0:c1,c2"}}),
        ),
        (
            "securityContext.seccompProfile",
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
        ),
        (
            "securityContext.appArmorProfile",
            json!({"appArmorProfile": {"type": "RuntimeDefault"}}),
        ),
        ("securityContext.fsGroup", json!({"fsGroup": 2000})),
        (
            "securityContext.fsGroupChangePolicy",
            json!({"fsGroupChangePolicy": "OnRootMismatch"}),
        ),
        (
            "securityContext.sysctls",
            json!({"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}]}),
        ),
        ("securityContext.runAsUser", json!({"runAsUser": 1000})),
        ("securityContext.runAsGroup", json!({"runAsGroup": 1000})),
        (
            "securityContext.runAsNonRoot",
            json!({"runAsNonRoot": true}),
        ),
        (
            "securityContext.supplementalGroups",
            json!({"supplementalGroups": [3000]}),
        ),
        (
            "securityContext.supplementalGroupsPolicy",
            json!({"supplementalGroupsPolicy": "Strict"}),
        ),
        (
            "securityContext.seLinuxChangePolicy",
            json!({"seLinuxChangePolicy": "Recursive"}),
        ),
        (
            "securityContext.windowsOptions",
            json!({"windowsOptions": {"runAsUserName": "ContainerUser"}}),
        ),
    ];
    for (path, sc) in pod_level {
        out.push((path, json!({"securityContext": sc})));
    }
    let container_level: [(&'static str, Value); 11] = [
        (
            "seLinuxOptions",
            json!({"seLinuxOptions": {"level": "s0:c1,c2"}}),
        ),
        (
            "seccompProfile",
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
        ),
        (
            "appArmorProfile",
            json!({"appArmorProfile": {"type": "RuntimeDefault"}}),
        ),
        (
            "capabilities",
            json!({"capabilities": {"add": ["NET_ADMIN"]}}),
        ),
        (
            "readOnlyRootFilesystem",
            json!({"readOnlyRootFilesystem": true}),
        ),
        ("privileged", json!({"privileged": true})),
        (
            "allowPrivilegeEscalation",
            json!({"allowPrivilegeEscalation": false}),
        ),
        ("procMount", json!({"procMount": "Default"})),
        ("runAsUser", json!({"runAsUser": 1000})),
        ("runAsGroup", json!({"runAsGroup": 1000})),
        ("runAsNonRoot", json!({"runAsNonRoot": true})),
    ];
    for list in ["containers", "initContainers"] {
        for (field, sc) in &container_level {
            let path: &'static str = format!("{list}[0].securityContext.{field}").leak();
            let name = if list == "containers" { "c" } else { "init" };
            out.push((
                path,
                json!({list: [{"name": name, "image": "img", "securityContext": sc}]}),
            ));
        }
    }
    out
}

/// A pod spec with `extra` merged in (containers replaced when `extra` lists them).
fn pod_spec(extra: &Value, windows: bool) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "img"}]});
    if windows {
        spec["os"] = json!({"name": "windows"});
    }
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// The server's answer to a dry-run create: `None` when accepted, its message when not.
fn server_refuses(cp: &ControlPlane, ns: &str, n: usize, spec: &Value) -> Option<String> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("probe-{n}"), "namespace": ns}, "spec": spec});
    let file = cp.file(&format!("probe-{n}.json"), &pod.to_string());
    let out = cp.kubectl_as(
        &cp.admin,
        &[
            "create",
            "--dry-run=server",
            "-f",
            &file.display().to_string(),
        ],
    );
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// zdeploy forbids exactly the fields the API server refuses on a Windows pod (and
/// accepts on a Linux pod), and the server names the field it refuses.
pub fn windows_rules_match_the_api_server(cp: &ControlPlane) -> Result<(), Failed> {
    let ns = Namespace::new(cp, "windows-rules");
    let mut disagreements = Vec::new();
    for (n, (path, extra)) in candidates().into_iter().enumerate() {
        let windows_spec = pod_spec(&extra, true);
        let pod: PodSpec = serde_json::from_value(windows_spec.clone()).unwrap();
        let zdeploy_forbids = zdeploy_api::windows::forbidden_fields(&pod)
            .iter()
            .any(|f| f.path == path);
        let on_windows = server_refuses(cp, &ns.name, n, &windows_spec);
        let on_linux = server_refuses(cp, &ns.name, n, &pod_spec(&extra, false));
        let windows_rule = on_windows.is_some() && on_linux.is_none();
        if let Some(why) = &on_windows {
            let named = path.split('.').next_back().unwrap();
            assert!(
                why.contains(named),
                "the server refuses {path} on Windows but names another field: {why}"
            );
        }
        if zdeploy_forbids != windows_rule {
            disagreements.push(format!(
                "{path}: zdeploy forbids it: {zdeploy_forbids}; the server refuses it on Windows: {:?}; on Linux: {:?}",
                on_windows.as_deref().map(str::trim),
                on_linux.as_deref().map(str::trim),
            ));
        }
    }
    if disagreements.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "zdeploy's Windows rules and the API server's disagree:\n{}",
            disagreements.join("\n")
        )
        .into())
    }
}

/// Invalid ZmqServices are refused by the API server's schema at the path that
/// `zdeploy validate` names.
pub fn the_crd_schema_refuses_what_validate_refuses(cp: &ControlPlane) -> Result<(), Failed> {
    cp.install();
    let ns = Namespace::new(cp, "schema");
    let cases = [
        ("spec.zmq.pattern", "pattern: req-rep", "pattern: pubsub"),
        ("spec.replicas", "replicas: 3", "replicas: -2"),
        ("spec.windows.build", "build: \"2022\"", "build: \"2016\""),
        (
            "spec.zmq.port",
            "port: 5555\n    requestTimeout",
            "port: 99999\n    requestTimeout",
        ),
    ];
    for (path, from, to) in cases {
        let file = cp.echo_manifest(&ns.name, |t| {
            assert!(t.contains(from), "the example has {from:?}");
            t.replacen(from, to, 1)
        });
        let (code, out, err) =
            cp.zdeploy_as(&cp.admin, &["validate", "-f", &file.display().to_string()]);
        assert_eq!(code, 1, "validate accepts {to:?}: {out}{err}");
        assert!(
            format!("{out}{err}").contains(&format!("{path}:")),
            "validate names {path}: {out}{err}"
        );
        let server = cp.kubectl_as(
            &cp.admin,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                &file.display().to_string(),
            ],
        );
        let why = String::from_utf8_lossy(&server.stderr);
        assert!(!server.status.success(), "the API server accepts {to:?}");
        assert!(
            why.contains(path),
            "the API server refuses {to:?} at another path than {path}: {why}"
        );
    }
    Ok(())
}
