//! The push path: an Alertmanager webhook receiver. A firing alert whose labels name the
//! service and the canary pool lands in the inbox at once and wakes the rollout. The inbox
//! also tracks which alerts are firing now (until Alertmanager sends them resolved), which
//! the chaos guard reads: no experiment starts while an alert fires for its service.
//!
//! Bounded: a body may hold a large group (up to [`MAX_BODY`]); only alerts labelled with
//! a service zdeploy runs are kept (one service for `zdeploy up`, any for the controller),
//! and at most [`MAX_KEPT`] of each kind, so a busy Alertmanager cannot grow the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use zdeploy_api::Pool;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
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

/// The largest webhook body taken: a group of 10,000 alerts is about 6.4 MB.
pub const MAX_BODY: usize = 32 << 20;
/// Alerts kept waiting, and alerts remembered as firing, at most each.
pub const MAX_KEPT: usize = 10_000;

/// Alerts pushed by Alertmanager, waiting to be taken by the rollout driver.
#[derive(Debug, Default)]
pub struct AlertInbox {
    alerts: Mutex<Vec<PushedAlert>>,
    /// Alerts firing now, by fingerprint.
    firing: Mutex<BTreeMap<String, PushedAlert>>,
    /// The one service whose alerts are kept; any labelled service when `None`.
    service: Option<String>,
    /// Woken on every new firing alert.
    pub notify: Notify,
}

impl AlertInbox {
    /// An inbox that keeps only the alerts of `service` (`zdeploy up` runs one service).
    pub fn only_for(service: &str) -> Self {
        Self {
            service: Some(service.to_string()),
            ..Self::default()
        }
    }

    /// Whether an alert with these labels is one zdeploy can act on.
    fn wants(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get("service"), &self.service) {
            (None, _) => false,
            (Some(s), Some(only)) => s == only,
            (Some(_), None) => true,
        }
    }

    /// Alerts waiting to be taken, and alerts remembered as firing.
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.alerts.lock().expect("inbox lock").len(),
            self.firing.lock().expect("inbox lock").len(),
        )
    }

    /// Firing alerts for `service` (and `namespace`, when given) on the `pool` pool, taken out.
    pub fn take_matching(
        &self,
        service: &str,
        namespace: Option<&str>,
        pool: Pool,
    ) -> Vec<PushedAlert> {
        self.take_where(|a| labels_match(&a.labels, service, namespace, pool))
    }

    /// Every alert for the canary pool, taken out (the controller routes them by labels).
    pub fn take_canary(&self) -> Vec<PushedAlert> {
        self.take_where(|a| a.labels.get("pool").map(String::as_str) == Some(Pool::Canary.name()))
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
        let mut alerts = self.alerts.lock().expect("inbox lock");
        if alerts.len() >= MAX_KEPT {
            // Nobody took the oldest: drop it rather than grow.
            alerts.remove(0);
        }
        alerts.push(alert);
        drop(alerts);
        self.notify.notify_waiters();
    }
}

/// True when alert labels name this service and pool (a namespace label must agree if present).
pub fn labels_match(
    labels: &BTreeMap<String, String>,
    service: &str,
    namespace: Option<&str>,
    pool: Pool,
) -> bool {
    labels.get("service").map(String::as_str) == Some(service)
        && labels.get("pool").map(String::as_str) == Some(pool.name())
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
    match shared.inbox.receive(&body) {
        Ok(r) => {
            tracing::info!(
                firing = r.firing,
                ignored = r.ignored,
                "alertmanager webhook received"
            );
            (
                StatusCode::OK,
                format!(
                    "{} firing alerts received, {} for no service zdeploy runs\n",
                    r.firing, r.ignored
                ),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// What one webhook body brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Firing alerts taken in.
    pub firing: usize,
    /// Alerts for no service zdeploy runs, left out.
    pub ignored: usize,
}

impl AlertInbox {
    /// Takes in one webhook body (Alertmanager's version 4 payload): firing alerts join
    /// the inbox, resolved ones leave the firing set. No I/O: the HTTP handler calls it.
    pub fn receive(&self, body: &[u8]) -> Result<Received, String> {
        let payload: Payload = zdeploy_api::strict_json::from_slice(body)
            .map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
        let mut r = Received::default();
        for a in payload.alerts {
            if !self.wants(&a.labels) {
                r.ignored += 1;
                continue;
            }
            let key = a
                .fingerprint
                .clone()
                .unwrap_or_else(|| format!("{:?}", a.labels));
            let alert = PushedAlert {
                name: a.labels.get("alertname").cloned().unwrap_or_default(),
                runbook_url: a.annotations.get("runbook_url").cloned(),
                labels: a.labels,
            };
            let mut now_firing = self.firing.lock().expect("inbox lock");
            if a.status == "firing" {
                r.firing += 1;
                if now_firing.len() < MAX_KEPT || now_firing.contains_key(&key) {
                    now_firing.insert(key, alert.clone());
                }
                drop(now_firing);
                self.push(alert);
            } else {
                now_firing.remove(&key);
            }
        }
        Ok(r)
    }
}
