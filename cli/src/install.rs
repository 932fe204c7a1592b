//! `zdeploy install`: the namespace, CRDs, least-privilege RBAC and the controller
//! Deployment (the `manifests/install` kustomize base), printed or applied.

use anyhow::Context;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{self, Scope};
use kube::{Api, Client, ResourceExt};

const NAMESPACE: &str = include_str!("../../manifests/install/namespace.yaml");
const RBAC: &str = include_str!("../../manifests/install/rbac.yaml");
const CHAOS_RBAC: &str = include_str!("../../manifests/install/chaos-rbac.yaml");
const CONTROLLER: &str = include_str!("../../manifests/install/controller.yaml");

/// Arguments of `zdeploy install`.
#[derive(clap::Args)]
pub struct Args {
    /// Print the objects instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// Every object of the install, as multi-document YAML.
pub fn objects() -> String {
    let mut out = String::new();
    for part in [
        NAMESPACE.to_string(),
        zdeploy_api::crd::crds_yaml(),
        RBAC.to_string(),
        CHAOS_RBAC.to_string(),
        CONTROLLER.to_string(),
    ] {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&part);
    }
    out
}

/// Prints or server-side applies the install.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    if args.dry_run {
        print!("{}", objects());
        return Ok(());
    }
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG)")?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&objects())?;
    let params = PatchParams::apply("zdeploy-install").force();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let obj: DynamicObject = serde_json::from_value(doc)?;
        let types = obj
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)?;
        let (resource, caps) = discovery::pinned_kind(&client, &gvk).await?;
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(&obj.name_any(), &params, &Patch::Apply(&obj))
            .await?;
        println!("{}/{} applied", types.kind, obj.name_any());
    }
    Ok(())
}
