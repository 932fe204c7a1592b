//! Pod kill through the Kubernetes API: list the pool's running pods, pick at most
//! `maxTargets` at random, and delete each with one API call. Works for Windows pods: no
//! agent runs on the node.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use zdeploy_api::chaos::Experiment;

use crate::target::{count, pod_selector};

/// Pods that would be hit, without touching them (for `--dry-run`).
pub async fn choose(
    client: Client,
    namespace: &str,
    x: &Experiment,
    rng: &mut fastrand::Rng,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let pods = api
        .list(&ListParams::default().labels(&pod_selector(&x.service, x.pool)))
        .await?;
    let mut running: Vec<String> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| p.name_any())
        .collect();
    running.sort();
    let n = count(x.mode, x.value, x.max_targets, running.len());
    rng.shuffle(&mut running);
    running.truncate(n);
    Ok(running)
}

/// Deletes the chosen pods, one API delete each; returns the pods deleted.
pub async fn kill(
    client: Client,
    namespace: &str,
    x: &Experiment,
    rng: &mut fastrand::Rng,
) -> Result<Vec<String>, kube::Error> {
    let targets = choose(client.clone(), namespace, x, rng).await?;
    delete(client, namespace, &targets).await?;
    Ok(targets)
}

/// Deletes these pods, one API delete each (a pod already gone counts as deleted).
pub async fn delete(client: Client, namespace: &str, pods: &[String]) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    for name in pods {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
