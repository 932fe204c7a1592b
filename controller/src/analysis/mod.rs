//! Canary analysis: turns metrics into verdicts (pass, fail, inconclusive) with reasons and
//! the queries actually run. Sources: Prometheus queries and alerts, Alertmanager's
//! webhook (push), or an embedded scrape of zgate's `/metrics` when there is no Prometheus.

pub mod exposition;
pub mod judge;
pub mod prometheus;
pub mod promql;
pub mod scrape;
pub mod sequential;
mod special;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::Pool;
use zdeploy_api::service::{Analysis, Builtin, Measurement, Metric, Tally, Verdict};

use judge::{Judged, Reading, judge, needs_counts, needs_stable_counts, overall};
use prometheus::Prometheus;
use promql::Target;
use scrape::{From, ScrapeHistory};
use webhook::{AlertInbox, labels_match};

/// Shortest range sent to Prometheus: four scrapes at the 1 s interval zdeploy assumes.
const MIN_WINDOW: Duration = Duration::from_secs(4);

/// Where measurements come from.
pub enum Source {
    /// Instant queries and firing alerts from a Prometheus server.
    Prometheus(Prometheus),
    /// zgate's `/metrics`, scraped by zdeploy itself.
    Scrape {
        /// The `/metrics` URLs: every zgate replica's; their counts add up.
        urls: Vec<String>,
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
            urls: vec![url.to_string()],
            history: ScrapeHistory::default(),
            http,
        }
    }

    /// Prometheus at `url`.
    pub fn prometheus(url: &str) -> Self {
        Source::Prometheus(Prometheus::new(url, Duration::from_secs(5)))
    }
}

/// Which requests a measurement counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// Every request since the canary started: what the anytime-valid tests need, and
    /// what a restart can recompute from the counters.
    CanaryLife,
    /// Each metric's window, bounded by the age given (a chaos steady-state check).
    Window,
}

/// The result of one analysis.
#[derive(Clone, Debug)]
pub struct AnalysisRun {
    /// Fail if any measurement failed, inconclusive if any was, else pass.
    pub verdict: Verdict,
    /// One measurement per metric, plus one per firing alert.
    pub measurements: Vec<Measurement>,
}

/// Counts recorded before a restart, added to what the counters show after it.
#[derive(Clone, Copy, Debug, Default)]
struct Carried {
    canary: Tally,
    stable: Option<Tally>,
}

/// Runs a service's analysis against one source.
pub struct Analyzer {
    source: Source,
    canary: Target,
    spec: Analysis,
    inbox: Option<Arc<AlertInbox>>,
    span: Span,
    carried: BTreeMap<String, Carried>,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

impl Analyzer {
    /// An analyzer of `canary` by `spec`, reading `source`, counting over `span`, and
    /// `inbox` when the webhook runs.
    pub fn new(
        source: Source,
        canary: Target,
        spec: Analysis,
        inbox: Option<Arc<AlertInbox>>,
        span: Span,
    ) -> Self {
        Self {
            source,
            canary,
            spec,
            inbox,
            span,
            carried: BTreeMap::new(),
        }
    }

    /// The alert inbox, if any.
    pub fn inbox(&self) -> Option<&Arc<AlertInbox>> {
        self.inbox.as_ref()
    }

    /// Continues a canary judged before a restart: the counts in its recorded measurements
    /// are added to what the embedded scrape counts from now on (zgate's counters may have
    /// started again). Prometheus keeps the counters' history, so it needs none.
    pub fn resume(&mut self, recorded: &[Measurement]) {
        if !matches!(self.source, Source::Scrape { .. }) {
            return;
        }
        self.carried = recorded
            .iter()
            .filter_map(|m| {
                let e = m.evidence.as_ref()?;
                Some((
                    m.metric.clone(),
                    Carried {
                        canary: e.canary,
                        stable: e.stable,
                    },
                ))
            })
            .collect();
    }

    /// Forgets counts carried from before a restart: a new canary starts from zero.
    pub fn new_canary(&mut self) {
        self.carried.clear();
        if let Source::Scrape { history, .. } = &mut self.source {
            history.forget_baseline(std::time::Instant::now());
        }
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
        if let Source::Scrape {
            urls,
            history,
            http,
        } = &mut self.source
        {
            if urls.is_empty() {
                return Err("no zgate replica to scrape yet".into());
            }
            let mut pages = Vec::with_capacity(urls.len());
            for url in urls.iter() {
                pages.push((url.clone(), scrape::scrape(http, url).await?));
            }
            history.record(Instant::now(), exposition::Exposition::merge(pages), keep);
        }
        Ok(())
    }

    /// Sets the `/metrics` URLs the embedded scrape reads (every zgate replica); none
    /// keeps the ones it has. A no-op for Prometheus.
    pub fn scrape_targets(&mut self, targets: Vec<String>) {
        if let Source::Scrape { urls, .. } = &mut self.source
            && !targets.is_empty()
        {
            *urls = targets;
        }
    }

    /// Whether the scrapes taken so far already show a count-judged bound (`max`, `min`)
    /// broken: the tests are valid at every look, so the driver may ask after every scrape
    /// and run the full analysis at once instead of waiting for the interval. Comparisons
    /// with stable wait for the interval: they weigh moderate differences, where a few
    /// seconds change nothing. Always false for Prometheus, judged every interval.
    pub fn breach(&mut self, canary_age: Duration) -> bool {
        if !matches!(self.source, Source::Scrape { .. }) {
            return false;
        }
        let metrics: Vec<Metric> = self
            .spec
            .metrics
            .iter()
            .filter(|m| needs_counts(m) && !needs_stable_counts(m))
            .cloned()
            .collect();
        let asked = Instant::now();
        metrics.iter().any(|m| {
            let (_, reading) = self.scraped(m, canary_age, asked);
            judge(m, &self.spec, &reading).verdict == Verdict::Fail
        })
    }

    /// Analyses every metric; `canary_age` is how long the canary has taken traffic, which
    /// bounds every span so an older canary's traffic never counts against this one.
    pub async fn run(&mut self, canary_age: Duration) -> AnalysisRun {
        // The canary's start is `canary_age` before now, not before the scrape below ends.
        let asked = Instant::now();
        let mut measurements = Vec::new();
        if matches!(self.source, Source::Scrape { .. })
            && let Err(e) = self.observe().await
        {
            tracing::warn!("{e}");
        }
        let metrics = self.spec.metrics.clone();
        for m in &metrics {
            measurements.push(self.measure(m, canary_age, asked).await);
        }
        measurements.extend(self.alerts().await);
        AnalysisRun {
            verdict: overall(measurements.iter().map(|m| m.verdict)),
            measurements,
        }
    }

    /// How long a metric's counts reach back.
    fn range(&self, m: &Metric, canary_age: Duration) -> Duration {
        match self.span {
            Span::CanaryLife => canary_age,
            Span::Window => m.window.get().min(canary_age),
        }
    }

    /// A metric's reading from the scrapes taken so far, counts carried over a restart
    /// included; and the description of what was measured. `asked` is when the canary
    /// was `canary_age` old.
    fn scraped(&mut self, m: &Metric, canary_age: Duration, asked: Instant) -> (String, Reading) {
        let range = self.range(m, canary_age);
        let since = asked - range;
        let from = match self.span {
            Span::CanaryLife => From::Pinned(since),
            Span::Window => From::Window(since),
        };
        let carried = self.carried.get(&m.name).copied().unwrap_or_default();
        let canary = self.canary.clone();
        let stable = canary.with_pool(Pool::Stable);
        let Source::Scrape { urls, history, .. } = &mut self.source else {
            unreachable!("scraped() is called for the embedded source only");
        };
        let Some(b) = m.builtin else {
            let r = Reading {
                error: Some(
                    "PromQL metrics need --prometheus; the embedded scrape measures built-ins only"
                        .into(),
                ),
                ..Reading::default()
            };
            return (m.query.clone().unwrap_or_default(), r);
        };
        let edge = m.latency_edge();
        let c = history.measure(b, &canary, from, edge);
        let s = history.measure(b, &stable, from, edge);
        let canary_tally = c.tally.plus(carried.canary);
        let stable_tally = s.tally.plus(carried.stable.unwrap_or_default());
        let counted = needs_counts(m);
        let r = Reading {
            value: c.value,
            stable_value: s.value,
            samples: canary_tally.requests as f64,
            canary: counted.then_some(canary_tally),
            stable: counted.then_some(stable_tally),
            error: c.missing.filter(|_| counted),
        };
        let over = match self.span {
            Span::CanaryLife => "since the canary started".to_string(),
            Span::Window => format!("over {}", zdeploy_api::Duration::from(range)),
        };
        (
            format!(
                "{} of pool {} {over} (embedded scrape of {})",
                builtin_name(b),
                canary.pool,
                urls.join(", ")
            ),
            r,
        )
    }

    async fn measure(&mut self, m: &Metric, canary_age: Duration, asked: Instant) -> Measurement {
        if matches!(self.source, Source::Scrape { .. }) {
            let (query, reading) = self.scraped(m, canary_age, asked);
            return record(m, query, &reading, &self.spec);
        }
        let range = zdeploy_api::Duration::from(Duration::from_secs(
            self.range(m, canary_age).as_secs().max(1),
        ));
        let canary = self.canary.clone();
        let stable = canary.with_pool(Pool::Stable);
        let Source::Prometheus(p) = &self.source else {
            unreachable!("the embedded source returned above");
        };
        // A shorter range than four scrapes has no increase, and a longer one would reach
        // back before the canary started: too young to judge.
        if canary_age < MIN_WINDOW {
            let r = Reading {
                error: Some(format!(
                    "the canary has taken traffic for {:.1}s; Prometheus needs {}s of it",
                    canary_age.as_secs_f64(),
                    MIN_WINDOW.as_secs()
                )),
                ..Reading::default()
            };
            return record(m, String::new(), &r, &self.spec);
        }
        let (queries, reading) = match queried(p, m, &canary, &stable, range).await {
            Ok(found) => found,
            Err((queries, e)) => (
                queries,
                Reading {
                    error: Some(e),
                    ..Reading::default()
                },
            ),
        };
        record(m, queries.join("; "), &reading, &self.spec)
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
                    self.canary.pool,
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
            for a in inbox.take_matching(&self.canary.service, ns.as_deref(), self.canary.pool) {
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
        Builtin::ShadowMismatchRatio => "shadowMismatchRatio",
    }
}

fn record(m: &Metric, query: String, r: &Reading, analysis: &Analysis) -> Measurement {
    let Judged {
        verdict,
        reason,
        evidence,
    } = judge(m, analysis, r);
    Measurement {
        metric: m.name.clone(),
        query,
        value: r.value.filter(|v| v.is_finite()),
        evidence,
        verdict,
        reason,
        at: now(),
    }
}

/// One pool's counts from Prometheus for metric `m` over `range`: (value, tally).
async fn counted(
    p: &Prometheus,
    m: &Metric,
    target: &Target,
    range: zdeploy_api::Duration,
    queries: &mut Vec<String>,
) -> Result<(Option<f64>, Tally), String> {
    let tally = |requests: f64, bad: f64| Tally {
        requests: requests.max(0.0).round() as u64,
        bad: bad.clamp(0.0, requests.max(0.0)).round() as u64,
    };
    let ratio = |requests: f64, bad: f64| (requests > 0.0).then(|| bad / requests);
    let (errors_q, total_q) = match (&m.counts, m.builtin) {
        (Some(c), _) => (
            promql::render(&c.errors, target, range),
            promql::render(&c.total, target, range),
        ),
        (None, Some(Builtin::ErrorRatio)) => (
            promql::errors(target, range),
            promql::requests(target, range),
        ),
        (None, Some(Builtin::ShadowMismatchRatio)) => (
            promql::mismatched(target, range),
            promql::shadowed(target, range),
        ),
        (None, Some(kind)) => {
            let q = promql::buckets(target, range);
            queries.push(q.clone());
            let mut buckets: Vec<(f64, f64)> = p
                .query_vector(&q)
                .await?
                .into_iter()
                .filter_map(|(labels, v)| {
                    let le = labels.get("le")?;
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((bound, if v.is_nan() { 0.0 } else { v }))
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let q = 1.0 - kind.share_above().unwrap_or(0.01);
            let value = scrape::quantile(q, &buckets);
            let total = buckets.last().map_or(0.0, |b| b.1);
            let Some(edge) = m.latency_edge() else {
                return Ok((value, tally(total, 0.0)));
            };
            let Some(&(_, fast)) = buckets.iter().find(|(b, _)| (b - edge).abs() < 1e-9) else {
                if buckets.is_empty() {
                    return Ok((None, Tally::default()));
                }
                return Err(scrape::missing_edge(edge));
            };
            return Ok((value, tally(total, total - fast)));
        }
        (None, None) => return Err("the metric has no builtin, query or counts".into()),
    };
    queries.push(errors_q.clone());
    queries.push(total_q.clone());
    let bad = p
        .query(&errors_q)
        .await?
        .filter(|v| !v.is_nan())
        .unwrap_or(0.0);
    let total = p
        .query(&total_q)
        .await?
        .filter(|v| !v.is_nan())
        .unwrap_or(0.0);
    Ok((ratio(total, bad), tally(total, bad)))
}

/// A metric's reading from Prometheus, and the queries run.
async fn queried(
    p: &Prometheus,
    m: &Metric,
    canary: &Target,
    stable: &Target,
    range: zdeploy_api::Duration,
) -> Result<(Vec<String>, Reading), (Vec<String>, String)> {
    let mut queries = Vec::new();
    if let Some(t) = &m.query {
        let q = promql::render(t, canary, m.window);
        queries.push(q.clone());
        let value = p.query(&q).await.map_err(|e| (queries.clone(), e))?;
        let samples = p
            .query(&promql::requests(canary, range))
            .await
            .map_err(|e| (queries.clone(), e))?;
        let stable_value = if m.relative.is_some() {
            p.query(&promql::render(t, stable, m.window))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let reading = Reading {
            value,
            stable_value,
            samples: samples.unwrap_or(0.0),
            ..Reading::default()
        };
        return Ok((queries, reading));
    }
    let (value, c) = match counted(p, m, canary, range, &mut queries).await {
        Ok(found) => found,
        Err(e) => return Err((queries, e)),
    };
    let (stable_value, s) = if m.relative.is_some() {
        match counted(p, m, stable, range, &mut queries).await {
            Ok(found) => found,
            Err(e) => return Err((queries, e)),
        }
    } else {
        (None, Tally::default())
    };
    let counts = needs_counts(m);
    let reading = Reading {
        value,
        stable_value,
        samples: c.requests as f64,
        canary: counts.then_some(c),
        stable: (counts && m.relative.is_some()).then_some(s),
        error: None,
    };
    Ok((queries, reading))
}

fn alert_measurement(name: &str, via: &str, runbook: Option<&String>) -> Measurement {
    let runbook = runbook
        .map(|r| format!("; runbook {r}"))
        .unwrap_or_default();
    Measurement {
        metric: Measurement::alert_metric(name),
        query: via.to_string(),
        value: None,
        evidence: None,
        verdict: Verdict::Fail,
        reason: format!("alert {name} is firing for the canary{runbook}"),
        at: now(),
    }
}
