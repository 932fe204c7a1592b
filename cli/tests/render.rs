//! `zdeploy render`: the objects pass kubernetes-validate (strict, Kubernetes 1.33 and
//! 1.37, offline) and zdeploy's own Windows rules.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use support::root;

fn render(file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["render", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubernetes_validate(yaml: &str, version: &str) {
    let bin = support::python().with_file_name("kubernetes-validate");
    assert!(
        bin.exists(),
        "kubernetes-validate is missing: run ./tests/run"
    );
    // Tests run in parallel: each call writes a file of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!(
        "zdeploy-render-{}-{call}-{version}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(bin)
        .args(["--strict", "-k", version])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate {version} failed:\n{text}"
    );
    assert_eq!(
        text.matches("passed for resource").count(),
        yaml.matches("\n---\n").count() + 1,
        "{text}"
    );
}

fn deployments(yaml: &str) -> Vec<Deployment> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(yaml).unwrap();
    docs.into_iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| serde_json::from_value(d).unwrap())
        .collect()
}

fn variant(tag: &str, from: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(root().join(from)).unwrap();
    for (a, b) in edits {
        assert!(text.contains(a), "{from} has no {a:?}");
        text = text.replacen(a, b, 1);
    }
    let path =
        std::env::temp_dir().join(format!("zdeploy-variant-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn check_windows_pools(yaml: &str, expect_node_selector: bool) {
    for d in deployments(yaml) {
        let name = d.metadata.name.clone().unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        if name.ends_with("-zgate") {
            assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
            continue;
        }
        assert_eq!(pod.os.as_ref().unwrap().name, "windows", "{name}");
        assert_eq!(
            zdeploy_api::windows::forbidden_fields(&pod),
            vec![],
            "{name}"
        );
        let user = pod
            .security_context
            .as_ref()
            .and_then(|s| s.windows_options.as_ref())
            .and_then(|w| w.run_as_user_name.clone());
        assert!(user.is_some(), "{name}: runAsUserName");
        let c = &pod.containers[0];
        assert!(
            c.readiness_probe.as_ref().unwrap().tcp_socket.is_some(),
            "{name}: tcpSocket probe"
        );
        if expect_node_selector {
            let ns = pod.node_selector.unwrap();
            assert_eq!(ns["kubernetes.io/os"], "windows");
            assert_eq!(ns["node.kubernetes.io/windows-build"], "10.0.20348");
            let keys: Vec<_> = pod
                .tolerations
                .unwrap()
                .into_iter()
                .filter_map(|t| t.key)
                .collect();
            assert!(
                keys.contains(&"os".into()) && keys.contains(&"node.kubernetes.io/os".into()),
                "{keys:?}"
            );
        } else {
            assert_eq!(pod.runtime_class_name.as_deref(), Some("windows-2022"));
        }
    }
}

#[test]
fn the_example_with_a_runtime_class_renders_valid_objects() {
    let yaml = render(&root().join("manifests/examples/echo.yaml"));
    kubernetes_validate(&yaml, "1.33");
    kubernetes_validate(&yaml, "1.37");
    check_windows_pools(&yaml, false);
    assert_eq!(deployments(&yaml).len(), 3);
}

#[test]
fn the_blue_green_example_renders_valid_objects_with_the_shadow_rules_in_zgate() {
    let yaml = render(&root().join("manifests/examples/echo-blue-green.yaml"));
    kubernetes_validate(&yaml, "1.37");
    check_windows_pools(&yaml, false);
    assert_eq!(deployments(&yaml).len(), 3);
    assert!(
        yaml.contains("ts=[0-9]+"),
        "zgate gets the compare mask: {yaml}"
    );
}

#[test]
fn without_runtime_class_the_pods_select_and_tolerate_windows_nodes() {
    let file = variant(
        "no-rc",
        "manifests/examples/echo.yaml",
        &[("    runtimeClassName: windows-2022\n", "")],
    );
    let yaml = render(&file);
    kubernetes_validate(&yaml, "1.33");
    kubernetes_validate(&yaml, "1.37");
    check_windows_pools(&yaml, true);
}

#[test]
fn the_replica_router_renders_no_gateway() {
    let file = variant(
        "replicas",
        "manifests/examples/echo.yaml",
        &[("    router: gateway", "    router: replicas")],
    );
    let yaml = render(&file);
    kubernetes_validate(&yaml, "1.37");
    let names: Vec<String> = deployments(&yaml)
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert_eq!(names, ["echo-stable", "echo-canary"]);
    assert!(!yaml.contains("kind: ConfigMap"));
}
