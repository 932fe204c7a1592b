//! The install: `kubectl kustomize manifests/install` builds, `zdeploy install --dry-run`
//! prints the same objects, and they pass kubernetes-validate (strict, 1.33 and 1.37).

mod support;

use std::collections::BTreeSet;
use std::process::Command;

fn objects(yaml: &str) -> BTreeSet<(String, String)> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(yaml).unwrap();
    docs.iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_kustomize_base_and_install_dry_run_agree_and_validate() {
    let kustomize = Command::new("kubectl")
        .args(["kustomize", "manifests/install"])
        .current_dir(support::root())
        .output()
        .expect("kubectl is on the machine");
    assert!(
        kustomize.status.success(),
        "{}",
        String::from_utf8_lossy(&kustomize.stderr)
    );
    let built = String::from_utf8(kustomize.stdout).unwrap();
    let printed = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["install", "--dry-run"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(objects(&built), objects(&printed));
    assert!(objects(&printed).contains(&("ClusterRole".into(), "zdeploy-controller".into())));
    let file = std::env::temp_dir().join(format!("zdeploy-install-{}.yaml", std::process::id()));
    std::fs::write(&file, &printed).unwrap();
    let validate = support::python().with_file_name("kubernetes-validate");
    for version in ["1.33", "1.37"] {
        let out = Command::new(&validate)
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn rbac_grants_no_pods_or_wildcards_never_watches_secrets_and_deletes_only_copies() {
    let rbac =
        std::fs::read_to_string(support::root().join("manifests/install/rbac.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&rbac).unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    for rule in role["rules"].as_array().unwrap() {
        let text = rule.to_string();
        assert!(!text.contains('*'), "wildcard in {text}");
        assert!(!text.contains("\"pods\""), "{text}");
        let resources = rule["resources"].as_array().unwrap();
        let verbs = rule["verbs"].as_array().unwrap();
        // Secrets the pods read, and their copies per revision: read one by one, never
        // watched cluster-wide.
        if resources.iter().any(|r| r == "secrets") {
            assert_eq!(resources.len(), 1, "{text}");
            assert_eq!(
                rule["verbs"],
                serde_json::json!(["get", "list", "create", "patch", "delete"])
            );
        }
        // Deleting is for the copies and records of revisions no longer run; the rest
        // goes by owner references.
        if verbs.iter().any(|v| v == "delete") {
            assert!(
                resources
                    .iter()
                    .all(|r| r == "secrets" || r == "configmaps"),
                "{text}"
            );
        }
    }
}

#[test]
fn pod_kill_is_granted_apart_and_only_list_and_delete_on_pods() {
    let text =
        std::fs::read_to_string(support::root().join("manifests/install/chaos-rbac.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}])
    );
}
