//! The controllers' counts for `/metrics`: reconciles by result, leadership, chaos runs.

use kube::Resource;
use kube::runtime::controller::Action;

use super::errors::{Error, ErrorKind};

/// Counts of reconciles, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciles that succeeded.
    pub ok: std::sync::atomic::AtomicU64,
    /// Reconciles that failed, by kind.
    pub failed: std::sync::Mutex<std::collections::BTreeMap<ErrorKind, u64>>,
    leader: std::sync::atomic::AtomicBool,
    /// Chaos runs recorded, by verdict.
    pub chaos_runs: crate::experiment::RunCounts,
    /// Connections the probes listener refused at its caps.
    pub probes_refused: zdeploy_gateway::http::Refused,
    /// Connections the Alertmanager webhook listener refused at its caps.
    pub webhook_refused: zdeploy_gateway::http::Refused,
}

impl Stats {
    /// Records whether this replica holds the Lease (and so reconciles).
    pub fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "# TYPE zdeploy_controller_leader gauge\nzdeploy_controller_leader {}\n",
            u8::from(self.leader.load(std::sync::atomic::Ordering::Relaxed))
        );
        out.push_str("# TYPE zdeploy_reconciles_total counter\n");
        out.push_str(&format!(
            "zdeploy_reconciles_total{{result=\"ok\"}} {}\n",
            self.ok.load(std::sync::atomic::Ordering::Relaxed)
        ));
        out.push_str("# TYPE zdeploy_reconcile_errors_total counter\n");
        for kind in ErrorKind::ALL {
            let n = self
                .failed
                .lock()
                .expect("stats lock")
                .get(&kind)
                .copied()
                .unwrap_or(0);
            out.push_str(&format!(
                "zdeploy_reconcile_errors_total{{error=\"{}\"}} {n}\n",
                kind.label()
            ));
        }
        out.push_str(&self.chaos_runs.encode());
        out.push_str("# TYPE zdeploy_http_connections_refused_total counter\n");
        for (listener, refused) in [
            ("probes", &self.probes_refused),
            ("webhook", &self.webhook_refused),
        ] {
            out.push_str(&format!(
                "zdeploy_http_connections_refused_total{{listener=\"{listener}\"}} {}\n",
                refused.get()
            ));
        }
        out
    }

    /// Counts one reconcile's result.
    pub(super) fn tally<K>(&self, result: ReconcileResult<K>)
    where
        K: Resource,
        K::DynamicType: Clone + std::fmt::Debug + Eq + std::hash::Hash,
    {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                *self
                    .failed
                    .lock()
                    .expect("stats lock")
                    .entry(e.kind())
                    .or_default() += 1;
                tracing::warn!(object = %obj.name, "reconcile failed: {e}");
            }
            Err(e) => tracing::warn!("controller: {e}"),
        }
    }
}

type ReconcileResult<K> = Result<
    (kube::runtime::reflector::ObjectRef<K>, Action),
    kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>,
>;
