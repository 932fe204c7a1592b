//! Weights that follow a ConfigMap through the Kubernetes API: zgate reads them before it
//! serves (a restarted replica never sends the canary more than the recorded weight) and
//! polls every 250 ms after, so a rollback reaches every replica in well under a second
//! without restarting it (a mounted ConfigMap takes a minute or more to update).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use zdeploy_api::Weight;

use crate::config::check_weights;
use crate::control::Control;

/// How often the ConfigMap is read.
pub const POLL: Duration = Duration::from_millis(250);
/// The key holding `{"stable":90,"canary":10}`.
pub const KEY: &str = "weights.json";

/// Reads the weights in the ConfigMap, checked against the pools.
pub async fn read(
    api: &Api<ConfigMap>,
    name: &str,
    pools: &[String],
) -> Result<Vec<Weight>, String> {
    let cm = api
        .get(name)
        .await
        .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
    let raw = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| format!("ConfigMap {name} has no {KEY}"))?;
    let parsed: BTreeMap<String, i64> =
        serde_json::from_str(raw).map_err(|e| format!("ConfigMap {name} {KEY}: {e}"))?;
    let mut weights = BTreeMap::new();
    for (pool, n) in parsed {
        weights.insert(
            pool.clone(),
            Weight::new(n).map_err(|e| format!("ConfigMap {name} {KEY} {pool}: {e}"))?,
        );
    }
    check_weights(pools, &weights).map_err(|e| format!("ConfigMap {name} {KEY}: {e}"))?;
    Ok(pools
        .iter()
        .map(|p| weights.get(p).copied().unwrap_or(Weight::ZERO))
        .collect())
}

/// Applies the ConfigMap's weights now, then keeps following it until the task is dropped.
/// Unreadable or invalid contents keep the weights in force and are logged.
pub async fn follow(
    client: Client,
    namespace: String,
    name: String,
    control: Arc<Control>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let pools = control.pools().to_vec();
    let first = read(&api, &name, &pools).await?;
    control.update(|s| s.weights = first.clone());
    Ok(tokio::spawn(async move {
        let mut current = first;
        loop {
            tokio::time::sleep(POLL).await;
            match read(&api, &name, &pools).await {
                Ok(w) if w != current => {
                    tracing::info!(?w, "weights changed in ConfigMap {name}");
                    control.update(|s| s.weights = w.clone());
                    current = w;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}; keeping the current weights"),
            }
        }
    }))
}
