//! The CustomResourceDefinitions generated from the Rust types (`manifests/crds/`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ChaosSchedule, ZmqService};

/// Every CRD zdeploy installs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ZmqService::crd(), ChaosSchedule::crd()]
}

/// The CRDs as one multi-document YAML text, as committed in `manifests/crds/zdeploy.yaml`.
pub fn crds_yaml() -> String {
    let mut out =
        String::from("# Generated from the zdeploy-api types by `zdeploy crds`; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}
