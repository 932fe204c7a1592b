//! Where both controllers measure (the embedded scrape of zgate's replicas, or
//! Prometheus), and one analyzer per object that keeps the scrape's history between
//! reconciles.

use std::sync::Arc;

use zdeploy_api::Pool;

use crate::analysis::promql::Target;
use crate::analysis::{Analyzer, Source};

/// Where the controller measures canaries.
#[derive(Clone, Debug)]
pub enum MetricsSource {
    /// Scrape each service's zgate Service (`http://NAME.NAMESPACE.svc:9464/metrics`).
    Scrape,
    /// Query Prometheus; `namespace_label` says whether zgate's series carry `namespace`.
    Prometheus {
        /// Prometheus' base URL.
        url: String,
        /// Series carry a `namespace` label (the usual Kubernetes relabeling).
        namespace_label: bool,
    },
}

/// One analyzer per object, shared with a lock: the embedded scrape builds history between
/// reconciles.
pub(super) type SharedAnalyzer = Arc<tokio::sync::Mutex<Analyzer>>;

/// The analyzers of every object, each made anew when its object's spec changes. Each has
/// its own lock, so a slow source delays only the analyses that use it.
#[derive(Default)]
pub(super) struct Analyzers(
    std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, SharedAnalyzer)>>,
);

impl Analyzers {
    /// The analyzer of `key` for spec `generation`, made by `make` when there is none yet.
    pub(super) fn current(
        &self,
        key: String,
        generation: Option<i64>,
        make: impl FnOnce() -> Analyzer,
    ) -> SharedAnalyzer {
        let mut all = self.0.lock().expect("analyzers lock");
        match all.get(&key) {
            Some((g, analyzer)) if *g == generation => analyzer.clone(),
            _ => {
                let analyzer = Arc::new(tokio::sync::Mutex::new(make()));
                all.insert(key, (generation, analyzer.clone()));
                analyzer
            }
        }
    }

    /// Drops the analyzer of a deleted object.
    pub(super) fn forget(&self, key: &str) {
        self.0.lock().expect("analyzers lock").remove(key);
    }
}

impl MetricsSource {
    /// Where the measurements of `pool` of service `name` in `ns` come from.
    pub fn source_for(&self, name: &str, ns: &str, pool: Pool) -> (Source, Target) {
        let (source, namespace) = match self {
            MetricsSource::Scrape => (
                Source::scrape(&format!(
                    "http://{name}.{ns}.svc.cluster.local:{}/metrics",
                    super::render::METRICS_PORT
                )),
                None,
            ),
            MetricsSource::Prometheus {
                url,
                namespace_label,
            } => (
                Source::prometheus(url),
                namespace_label.then(|| ns.to_string()),
            ),
        };
        let target = Target {
            service: name.to_string(),
            namespace,
            pool,
        };
        (source, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Span;

    #[test]
    fn an_analyzer_is_kept_per_generation_and_made_anew_when_the_spec_changes() {
        let mut made = 0;
        let mut make = || {
            made += 1;
            let (source, target) =
                MetricsSource::Scrape.source_for("echo", "trading", Pool::Canary);
            Analyzer::new(source, target, Default::default(), None, Span::CanaryLife)
        };
        let analyzers = Analyzers::default();
        let first = analyzers.current("trading/echo".into(), Some(1), &mut make);
        let again = analyzers.current("trading/echo".into(), Some(1), &mut make);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same analyzer, history kept"
        );
        // An analysis in progress for one service does not hold up another's.
        let busy = first.try_lock().unwrap();
        let other = analyzers.current("trading/quotes".into(), Some(1), &mut make);
        assert!(other.try_lock().is_ok());
        drop(busy);
        analyzers.current("trading/echo".into(), Some(2), &mut make);
        analyzers.forget("trading/echo");
        analyzers.current("trading/echo".into(), Some(2), &mut make);
        assert_eq!(made, 4);
    }
}
