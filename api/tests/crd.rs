//! The committed CRDs are exactly what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/crds/zdeploy.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("manifests/crds/zdeploy.yaml exists");
    assert!(
        committed == zdeploy_api::crd::crds_yaml(),
        "manifests/crds/zdeploy.yaml is stale: regenerate it with `cargo run -q -- crds > manifests/crds/zdeploy.yaml`"
    );
}

#[test]
fn crds_have_status_and_printer_columns() {
    let crds = zdeploy_api::crd::crds();
    let svc = &crds[0];
    assert_eq!(svc.spec.group, "zdeploy.io");
    assert_eq!(svc.spec.scope, "Namespaced");
    let v = &svc.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Weight", "Step", "Age"]);
}
