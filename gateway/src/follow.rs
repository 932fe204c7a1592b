//! Weights and faults that follow a ConfigMap through the Kubernetes API: zgate reads
//! them before it serves (a restarted replica never sends the canary more than the
//! recorded weight) and watches the one object after, so a rollback reaches every replica
//! as soon as the API server tells it, without a restart and without polling (a mounted
//! ConfigMap takes a minute or more to update). Faults carry a wall-clock end: one whose end has passed is never applied,
//! so a chaos runner that crashed cannot leave a fault behind, even in a restarted zgate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use zdeploy_api::Weight;

use crate::config::{check_shadow, check_weights};
use crate::control::{ActiveFault, Control, FaultSpec};
use crate::routes::{Route, check_routes};
use crate::watch_retry::WatchRetry;
use zdeploy_api::shadow::ShadowCopy;

/// The key holding `{"stable":90,"canary":10}`.
pub const KEY: &str = "weights.json";
/// The key holding faults by pool, `{"canary":{"fault":{...},"until":"2026-...Z"}}`.
pub const FAULTS_KEY: &str = "faults.json";
/// The key holding routes by client, `["canary=identity:tester-"]` (absent: none).
pub const ROUTES_KEY: &str = "routes.json";

/// The key holding the shadow copy, `{"pool":"canary","percent":5}` (absent: none).
pub const SHADOW_KEY: &str = "shadow.json";

/// The shadow copy under [`SHADOW_KEY`], checked against the pools.
pub fn shadow_from(raw: Option<&str>, pools: &[String]) -> Result<Option<ShadowCopy>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let shadow: ShadowCopy =
        zdeploy_api::strict_json::from_str(raw).map_err(|e| format!("{SHADOW_KEY}: {e}"))?;
    check_shadow(pools, &shadow).map_err(|e| format!("{SHADOW_KEY}: {e}"))?;
    Ok(Some(shadow))
}

/// The routes by client under [`ROUTES_KEY`], checked against the pools.
pub fn routes_from(raw: Option<&str>, pools: &[String]) -> Result<Vec<Route>, String> {
    let routes: Vec<Route> = match raw {
        Some(r) => {
            zdeploy_api::strict_json::from_str(r).map_err(|e| format!("{ROUTES_KEY}: {e}"))?
        }
        None => Vec::new(),
    };
    check_routes(pools, &routes).map_err(|e| format!("{ROUTES_KEY}: {e}"))?;
    Ok(routes)
}

/// The weights a controller writes under [`KEY`] for a stable and a canary pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TwoPoolWeights {
    /// The stable pool's share.
    pub stable: Weight,
    /// The canary pool's share.
    pub canary: Weight,
}

impl TwoPoolWeights {
    /// The canary at `canary`, stable at the rest.
    pub fn canary_at(canary: Weight) -> Self {
        Self {
            stable: canary.complement(),
            canary,
        }
    }

    /// The document as stored in the ConfigMap, `{"stable":90,"canary":10}`.
    pub fn document(&self) -> String {
        serde_json::to_string(self).expect("two weights serialize")
    }
}

/// A fault as stored in the ConfigMap: the request and the moment it ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFault {
    /// The fault.
    pub fault: FaultSpec,
    /// When it stops applying, whatever else happens.
    pub until: Timestamp,
}

/// The faults in force now, one per pool in pool order, from `faults.json` (absent: none).
pub fn faults_from(
    raw: Option<&str>,
    pools: &[String],
    now: Timestamp,
) -> Result<Vec<Option<ActiveFault>>, String> {
    let stored: BTreeMap<String, StoredFault> = match raw {
        Some(r) => {
            zdeploy_api::strict_json::from_str(r).map_err(|e| format!("{FAULTS_KEY}: {e}"))?
        }
        None => BTreeMap::new(),
    };
    if let Some(unknown) = stored.keys().find(|p| !pools.contains(p)) {
        return Err(format!("{FAULTS_KEY}: no pool {unknown:?}"));
    }
    let started = Instant::now();
    pools
        .iter()
        .map(|p| {
            let Some(s) = stored.get(p) else {
                return Ok(None);
            };
            if let Some(problem) = s.fault.problem() {
                return Err(format!("{FAULTS_KEY} {p}: {problem}"));
            }
            let left = s
                .until
                .duration_since(now)
                .try_into()
                .unwrap_or(Duration::ZERO)
                .min(s.fault.duration.get());
            Ok((!left.is_zero()).then(|| ActiveFault {
                spec: s.fault.clone(),
                until: started + left,
            }))
        })
        .collect()
}

async fn get(api: &Api<ConfigMap>, name: &str) -> Result<ConfigMap, String> {
    api.get(name)
        .await
        .map_err(|e| format!("reading ConfigMap {name}: {e}"))
}

/// The weights in a ConfigMap, checked against the pools.
fn weights_in(cm: &ConfigMap, name: &str, pools: &[String]) -> Result<Vec<Weight>, String> {
    let raw = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| format!("ConfigMap {name} has no {KEY}"))?;
    let parsed: BTreeMap<String, i64> = zdeploy_api::strict_json::from_str(raw)
        .map_err(|e| format!("ConfigMap {name} {KEY}: {e}"))?;
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

/// Reads the weights in the ConfigMap, checked against the pools.
pub async fn read(
    api: &Api<ConfigMap>,
    name: &str,
    pools: &[String],
) -> Result<Vec<Weight>, String> {
    weights_in(&get(api, name).await?, name, pools)
}

/// Applies the ConfigMap's weights and faults now, then keeps following it until the task
/// is dropped. Unreadable or invalid contents keep what is in force and are logged.
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
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let mut current = first;
        // Faults are applied when their text changes, so a resync does not restart them.
        let mut current_faults = None;
        let mut current_routes = None;
        let mut current_shadow = None;
        // Only this object: the watch is authorised by the Role's resourceNames.
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut changes = watcher(api, config)
            .backoff(WatchRetry::default())
            .touched_objects()
            .boxed();
        while let Some(change) = changes.next().await {
            let cm = match change {
                Ok(cm) => cm,
                Err(e) => {
                    tracing::warn!(
                        "watching ConfigMap {name}: {e}; keeping the current weights and faults"
                    );
                    continue;
                }
            };
            match weights_in(&cm, &name, &pools) {
                Ok(w) if w != current => {
                    tracing::info!(?w, "weights changed in ConfigMap {name}");
                    control.update(|s| s.weights = w.clone());
                    current = w;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}; keeping the current weights"),
            }
            let raw = cm.data.as_ref().and_then(|d| d.get(FAULTS_KEY)).cloned();
            if raw != current_faults {
                match faults_from(raw.as_deref(), &pools, Timestamp::now()) {
                    Ok(f) => {
                        tracing::info!(faults = ?raw, "faults changed in ConfigMap {name}");
                        control.update(|s| s.faults = f);
                        current_faults = raw;
                    }
                    Err(e) => tracing::warn!("ConfigMap {name} {e}; keeping the current faults"),
                }
            }
            let raw = cm.data.as_ref().and_then(|d| d.get(ROUTES_KEY)).cloned();
            if raw != current_routes {
                match routes_from(raw.as_deref(), &pools) {
                    Ok(r) => {
                        tracing::info!(routes = ?raw, "routes changed in ConfigMap {name}");
                        control.update(|s| s.routes = r);
                        current_routes = raw;
                    }
                    Err(e) => tracing::warn!("ConfigMap {name} {e}; keeping the current routes"),
                }
            }
            let raw = cm.data.as_ref().and_then(|d| d.get(SHADOW_KEY)).cloned();
            if raw != current_shadow {
                match shadow_from(raw.as_deref(), &pools) {
                    Ok(shadow) => {
                        tracing::info!(shadow = ?raw, "shadow copy changed in ConfigMap {name}");
                        control.update(|s| s.shadow = shadow);
                        current_shadow = raw;
                    }
                    Err(e) => {
                        tracing::warn!("ConfigMap {name} {e}; keeping the current shadow copy")
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<String> {
        vec!["stable".into(), "canary".into()]
    }

    #[test]
    fn routes_are_read_from_their_key_and_checked_against_the_pools() {
        assert_eq!(routes_from(None, &pools()), Ok(Vec::new()));
        let read = routes_from(Some(r#"["canary=identity:tester-"]"#), &pools()).unwrap();
        assert_eq!(read[0].to_string(), "canary=identity:tester-");
        let e = routes_from(Some(r#"["blue=identity:x"]"#), &pools()).unwrap_err();
        assert!(
            e.starts_with("routes.json: route blue=identity:x: no pool"),
            "{e}"
        );
        assert!(routes_from(Some("{}"), &pools()).is_err());
    }

    #[test]
    fn the_shadow_copy_is_read_from_its_key_and_checked_against_the_pools() {
        assert_eq!(shadow_from(None, &pools()), Ok(None));
        let read = shadow_from(Some(r#"{"pool":"canary","percent":5}"#), &pools()).unwrap();
        assert_eq!(read.unwrap().to_string(), "canary=5");
        let e = shadow_from(Some(r#"{"pool":"blue","percent":5}"#), &pools()).unwrap_err();
        assert!(e.starts_with("shadow.json: blue=5: no pool"), "{e}");
        assert!(shadow_from(Some(r#"{"pool":"canary","percent":500}"#), &pools()).is_err());
    }

    #[test]
    fn the_controllers_weights_document_is_what_zgate_reads() {
        let w = TwoPoolWeights::canary_at(Weight::new(10).unwrap());
        assert_eq!(w.document(), r#"{"stable":90,"canary":10}"#);
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(KEY.to_string(), w.document())])),
            ..Default::default()
        };
        assert_eq!(
            weights_in(&cm, "echo-weights", &pools()).unwrap(),
            vec![Weight::new(90).unwrap(), Weight::new(10).unwrap()]
        );
    }

    #[test]
    fn a_fault_applies_until_its_end_and_never_after() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let raw = r#"{"canary":{"fault":{"latency":"300ms","duration":"1m"},"until":"2026-11-25T12:00:30Z"}}"#;
        let f = faults_from(Some(raw), &pools(), now).unwrap();
        assert!(f[0].is_none());
        let left = f[1].as_ref().unwrap().until - Instant::now();
        assert!(
            left > Duration::from_secs(29) && left <= Duration::from_secs(30),
            "{left:?}"
        );
        let later: Timestamp = "2026-11-25T12:00:31Z".parse().unwrap();
        assert_eq!(
            faults_from(Some(raw), &pools(), later).unwrap(),
            vec![None, None]
        );
        assert_eq!(faults_from(None, &pools(), now).unwrap(), vec![None, None]);
    }

    #[test]
    fn an_end_beyond_the_duration_is_cut_to_the_duration() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let raw = r#"{"canary":{"fault":{"errorRatio":0.5,"duration":"10s"},"until":"2026-11-26T12:00:00Z"}}"#;
        let f = faults_from(Some(raw), &pools(), now).unwrap();
        assert!(f[1].as_ref().unwrap().until - Instant::now() <= Duration::from_secs(10));
    }

    #[test]
    fn bad_faults_are_refused_with_the_reason() {
        let now = Timestamp::now();
        let e = faults_from(
            Some(r#"{"blue":{"fault":{"duration":"1s"},"until":"2026-11-25T12:00:00Z"}}"#),
            &pools(),
            now,
        )
        .unwrap_err();
        assert!(e.contains("no pool \"blue\""), "{e}");
        let e = faults_from(Some(r#"{"canary":{"fault":{"errorRatio":2,"duration":"1s"},"until":"2026-11-25T12:00:00Z"}}"#), &pools(), now).unwrap_err();
        assert!(e.contains("errorRatio"), "{e}");
    }
}
