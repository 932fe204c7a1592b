//! Canary analysis: turns metrics into verdicts (pass, fail, inconclusive) with reasons and
//! the queries actually run. Sources: Prometheus queries and alerts, Alertmanager's
//! webhook (push), or an embedded scrape of zgate's `/metrics` when there is no Prometheus.

pub mod exposition;
pub mod judge;
pub mod prometheus;
pub mod promql;
pub mod scrape;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::service::{Analysis, Builtin, Measurement, Metric, Verdict};

use judge::{Reading, judge, overall};
use prometheus::Prometheus;
use promql::Target;
use scrape::ScrapeHistory;
use webhook::{AlertInbox, labels_match};

/// Shortest rate window sent to Prometheus: four scrapes at the 1 s interval zdeploy assumes.
const MIN_WINDOW: Duration = Duration::from_secs(4);

/// Where measurements come from.
pub enum Source {
    /// Instant queries and firing alerts from a Prometheus server.
    Prometheus(Prometheus),
    /// zgate's `/metrics`, scraped by zdeploy itself.
    Scrape {
        /// The `/metrics` URL.
        url: String,
        /// Scrapes taken so far.
        history: ScrapeHistory,
        /// The HTTP client.
        http: reqwest::Client,
    },
}

impl Source {
    /// The embedded scrape of `url`.
    pub fn scrape(url: &str) -> Self {
        crate::tls::install_ring_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("building an HTTP client");
        Source::Scrape {
            url: url.to_string(),
            history: ScrapeHistory::default(),
            http,
        }
    }

    /// Prometheus at `url`.
    pub fn prometheus(url: &str) -> Self {
        Source::Prometheus(Prometheus::new(url, Duration::from_secs(5)))
    }
}

/// The result of one analysis.
#[derive(Clone, Debug)]
pub struct AnalysisRun {
    /// Fail if any measurement failed, inconclusive if any was, else pass.
    pub verdict: Verdict,
    /// One measurement per metric, plus one per firing alert.
    pub measurements: Vec<Measurement>,
}

/// Runs a service's analysis against one source.
pub struct Analyzer {
    source: Source,
    canary: Target,
    spec: Analysis,
    inbox: Option<Arc<AlertInbox>>,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

impl Analyzer {
    /// An analyzer of `canary` by `spec`, reading `source`, and `inbox` when the webhook runs.
    pub fn new(
        source: Source,
        canary: Target,
        spec: Analysis,
        inbox: Option<Arc<AlertInbox>>,
    ) -> Self {
        Self {
            source,
            canary,
            spec,
            inbox,
        }
    }

    /// The alert inbox, if any.
    pub fn inbox(&self) -> Option<&Arc<AlertInbox>> {
        self.inbox.as_ref()
    }

    /// Takes a scrape for the embedded source (a no-op for Prometheus); call it often.
    pub async fn observe(&mut self) -> Result<(), String> {
        let keep = self
            .spec
            .metrics
            .iter()
            .map(|m| m.window.get())
            .max()
            .unwrap_or_default()
            + Duration::from_secs(5);
        if let Source::Scrape { url, history, http } = &mut self.source {
            let page = scrape::scrape(http, url).await?;
            history.record(Instant::now(), page, keep);
        }
        Ok(())
    }

    /// Analyses the metrics named in `only` (all when empty); `canary_age` is how long the
    /// canary has taken traffic, which bounds every window so an older canary's traffic
    /// never counts against this one.
    pub async fn run(&mut self, only: &[String], canary_age: Duration) -> AnalysisRun {
        let mut measurements = Vec::new();
        if matches!(self.source, Source::Scrape { .. })
            && let Err(e) = self.observe().await
        {
            tracing::warn!("{e}");
        }
        let metrics: Vec<Metric> = self
            .spec
            .metrics
            .iter()
            .filter(|m| only.is_empty() || only.contains(&m.name))
            .cloned()
            .collect();
        for m in &metrics {
            measurements.push(self.measure(m, canary_age).await);
        }
        measurements.extend(self.alerts().await);
        AnalysisRun {
            verdict: overall(measurements.iter().map(|m| m.verdict)),
            measurements,
        }
    }

    async fn measure(&mut self, m: &Metric, canary_age: Duration) -> Measurement {
        let window = zdeploy_api::Duration::from(Duration::from_secs(
            m.window.get().min(canary_age).as_secs().max(1),
        ));
        let canary = self.canary.clone();
        let stable = canary.with_pool("stable");
        let (query, reading) = match &mut self.source {
            // A shorter window than four scrapes has no rate, and a longer one would reach
            // back before the canary started: too young to judge.
            Source::Prometheus(_) if canary_age < MIN_WINDOW => {
                let r = Reading {
                    error: Some(format!(
                        "the canary has taken traffic for {:.1}s; Prometheus needs {}s of it",
                        canary_age.as_secs_f64(),
                        MIN_WINDOW.as_secs()
                    )),
                    ..Reading::default()
                };
                return record(m, String::new(), &r, self.spec.min_samples);
            }
            Source::Prometheus(p) => {
                let q = match (m.builtin, &m.query) {
                    (_, Some(t)) => promql::render(t, &canary, window),
                    (Some(b), None) => promql::builtin(b, &canary, window),
                    (None, None) => String::new(),
                };
                let stable_q = match (m.builtin, &m.query) {
                    (_, Some(t)) => promql::render(t, &stable, window),
                    (Some(b), None) => promql::builtin(b, &stable, window),
                    (None, None) => String::new(),
                };
                let mut r = Reading::default();
                match (
                    p.query(&q).await,
                    p.query(&promql::sample_count(&canary, window)).await,
                ) {
                    (Ok(v), Ok(n)) => {
                        r.value = v;
                        r.samples = n;
                    }
                    (Err(e), _) | (_, Err(e)) => r.error = Some(e),
                }
                if m.relative.is_some() {
                    r.stable = p.query(&stable_q).await.ok().flatten();
                }
                (q, r)
            }
            Source::Scrape { url, history, .. } => {
                // Scrapes are exact: the window starts when the canary did, if that is later.
                let span = m.window.get().min(canary_age);
                let window = zdeploy_api::Duration::from(span);
                let since = Instant::now() - span;
                let Some(b) = m.builtin else {
                    let r = Reading { error: Some("PromQL metrics need --prometheus; the embedded scrape measures built-ins only".into()), ..Reading::default() };
                    return record(
                        m,
                        m.query.clone().unwrap_or_default(),
                        &r,
                        self.spec.min_samples,
                    );
                };
                let (value, samples) = history.measure(b, &canary, since);
                let (stable_value, _) = history.measure(b, &stable, since);
                let r = Reading {
                    value,
                    samples: Some(samples),
                    stable: stable_value,
                    error: None,
                };
                (
                    format!(
                        "{} of pool {} over {window} (embedded scrape of {url})",
                        builtin_name(b),
                        canary.pool
                    ),
                    r,
                )
            }
        };
        record(m, query, &reading, self.spec.min_samples)
    }

    /// Firing alerts for the canary, from Prometheus and from the webhook inbox.
    async fn alerts(&mut self) -> Vec<Measurement> {
        let mut found = Vec::new();
        let ns = self.canary.namespace.clone();
        if let Source::Prometheus(p) = &self.source
            && let Ok(alerts) = p.alerts().await
        {
            for a in alerts.into_iter().filter(|a| a.state == "firing") {
                if labels_match(
                    &a.labels,
                    &self.canary.service,
                    ns.as_deref(),
                    &self.canary.pool,
                ) {
                    let name = a.labels.get("alertname").cloned().unwrap_or_default();
                    found.push(alert_measurement(
                        &name,
                        "Prometheus /api/v1/alerts",
                        a.annotations.get("runbook_url"),
                    ));
                }
            }
        }
        if let Some(inbox) = &self.inbox {
            for a in inbox.take_matching(&self.canary.service, ns.as_deref(), &self.canary.pool) {
                found.push(alert_measurement(
                    &a.name,
                    "Alertmanager webhook",
                    a.runbook_url.as_ref(),
                ));
            }
        }
        found
    }
}

fn builtin_name(b: Builtin) -> &'static str {
    match b {
        Builtin::ErrorRatio => "errorRatio",
        Builtin::LatencyP99 => "latencyP99",
        Builtin::LatencyP50 => "latencyP50",
    }
}

fn record(m: &Metric, query: String, r: &Reading, min_samples: u64) -> Measurement {
    let (verdict, reason) = judge(m, min_samples, r);
    Measurement {
        metric: m.name.clone(),
        query,
        value: r.value.filter(|v| v.is_finite()),
        verdict,
        reason,
        at: now(),
    }
}

fn alert_measurement(name: &str, via: &str, runbook: Option<&String>) -> Measurement {
    let runbook = runbook
        .map(|r| format!("; runbook {r}"))
        .unwrap_or_default();
    Measurement {
        metric: format!("alert:{name}"),
        query: via.to_string(),
        value: None,
        verdict: Verdict::Fail,
        reason: format!("alert {name} is firing for the canary{runbook}"),
        at: now(),
    }
}
