//! The push path: an Alertmanager webhook receiver. A firing alert whose labels name the
//! service and the canary pool lands in the inbox at once and wakes the rollout. The inbox
//! also tracks which alerts are firing now (until Alertmanager sends them resolved), which
//! the chaos guard reads: no experiment starts while an alert fires for its service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use tokio::sync::Notify;

/// A firing alert received by the webhook.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedAlert {
    /// `alertname`.
    pub name: String,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// `runbook_url`, when the rule gives one.
    pub runbook_url: Option<String>,
}

/// Alerts pushed by Alertmanager, waiting to be taken by the rollout driver.
#[derive(Debug, Default)]
pub struct AlertInbox {
    alerts: Mutex<Vec<PushedAlert>>,
    /// Alerts firing now, by fingerprint.
    firing: Mutex<BTreeMap<String, PushedAlert>>,
    /// Woken on every new firing alert.
    pub notify: Notify,
}

impl AlertInbox {
    /// Firing alerts for `service` (and `namespace`, when given) on the `pool` pool, taken out.
    pub fn take_matching(
        &self,
        service: &str,
        namespace: Option<&str>,
        pool: &str,
    ) -> Vec<PushedAlert> {
        self.take_where(|a| labels_match(&a.labels, service, namespace, pool))
    }

    /// Every alert for the canary pool, taken out (the controller routes them by labels).
    pub fn take_canary(&self) -> Vec<PushedAlert> {
        self.take_where(|a| a.labels.get("pool").map(String::as_str) == Some("canary"))
    }

    fn take_where(&self, wanted: impl Fn(&PushedAlert) -> bool) -> Vec<PushedAlert> {
        let mut all = self.alerts.lock().expect("inbox lock");
        let (hit, keep): (Vec<_>, Vec<_>) = all.drain(..).partition(|a| wanted(a));
        *all = keep;
        hit
    }

    /// The name of an alert firing now for `service` (any pool), if one is.
    pub fn firing_for(&self, service: &str, namespace: Option<&str>) -> Option<String> {
        let firing = self.firing.lock().expect("inbox lock");
        firing
            .values()
            .find(|a| {
                a.labels.get("service").map(String::as_str) == Some(service)
                    && match (namespace, a.labels.get("namespace")) {
                        (Some(ns), Some(l)) => ns == l,
                        _ => true,
                    }
            })
            .map(|a| a.name.clone())
    }

    fn push(&self, alert: PushedAlert) {
        self.alerts.lock().expect("inbox lock").push(alert);
        self.notify.notify_waiters();
    }
}

/// True when alert labels name this service and pool (a namespace label must agree if present).
pub fn labels_match(
    labels: &BTreeMap<String, String>,
    service: &str,
    namespace: Option<&str>,
    pool: &str,
) -> bool {
    labels.get("service").map(String::as_str) == Some(service)
        && labels.get("pool").map(String::as_str) == Some(pool)
        && match (namespace, labels.get("namespace")) {
            (Some(ns), Some(l)) => ns == l,
            _ => true,
        }
}

#[derive(Deserialize)]
struct Payload {
    alerts: Vec<WebhookAlert>,
}

#[derive(Deserialize)]
struct WebhookAlert {
    status: String,
    /// Alertmanager's identity of the alert (its labels when absent).
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

struct Shared {
    inbox: Arc<AlertInbox>,
    token: String,
}

/// `POST /alertmanager`: Alertmanager's webhook (version 4), bearer token required.
pub fn router(inbox: Arc<AlertInbox>, token: String) -> Router {
    Router::new()
        .route("/alertmanager", post(receive))
        .with_state(Arc::new(Shared { inbox, token }))
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    if !zdeploy_gateway::admin::bearer_matches(&headers, &shared.token) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n".into(),
        );
    }
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an Alertmanager webhook payload: {e}\n"),
            );
        }
    };
    let mut firing = 0;
    for a in payload.alerts {
        let key = a
            .fingerprint
            .clone()
            .unwrap_or_else(|| format!("{:?}", a.labels));
        let alert = PushedAlert {
            name: a.labels.get("alertname").cloned().unwrap_or_default(),
            runbook_url: a.annotations.get("runbook_url").cloned(),
            labels: a.labels,
        };
        let mut now_firing = shared.inbox.firing.lock().expect("inbox lock");
        if a.status == "firing" {
            firing += 1;
            now_firing.insert(key, alert.clone());
            drop(now_firing);
            shared.inbox.push(alert);
        } else {
            now_firing.remove(&key);
        }
    }
    tracing::info!(firing, "alertmanager webhook received");
    (StatusCode::OK, format!("{firing} firing alerts received\n"))
}
