//! The embedded source: no Prometheus, zdeploy scrapes zgate's `/metrics` itself and
//! computes rates and histogram quantiles from successive scrapes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use zdeploy_api::service::{Builtin, Tally};

use super::exposition::{self, Exposition};
use super::promql::Target;

/// Scrapes kept, oldest first, with the moment each was taken, and the first scrape of the
/// current canary, kept for as long as it lives: its counts are counted from there.
#[derive(Debug, Default)]
pub struct ScrapeHistory {
    scrapes: VecDeque<(Instant, Exposition)>,
    /// The canary's start it was pinned for, and the scrape.
    baseline: Option<(Instant, Exposition)>,
    /// When the current canary was started here: no scrape before it is its baseline,
    /// however early its recorded start reads (a status keeps whole seconds, so a retry
    /// right after a rollback would otherwise count the last canary's final requests).
    not_before: Option<Instant>,
}

/// A canary start this much later than the pinned one is a new canary. Callers derive the
/// start from an age measured a moment before, so the same canary's start jitters by the
/// time a scrape takes; a new canary starts seconds after the last one at the earliest.
const NEW_CANARY_AFTER: Duration = Duration::from_secs(1);

/// What the scrapes say of one metric of one pool: its value and, when the metric is a
/// rate, its counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// The ratio, or the quantile in seconds.
    pub value: Option<f64>,
    /// All requests and bad ones (errors, or slower than the latency threshold).
    pub tally: Tally,
    /// Why the counts are missing, when they are.
    pub missing: Option<String>,
}

impl ScrapeHistory {
    /// Records a scrape taken at `at`, forgetting those older than `keep`.
    pub fn record(&mut self, at: Instant, scrape: Exposition, keep: Duration) {
        self.scrapes.push_back((at, scrape));
        while let Some((t, _)) = self.scrapes.front() {
            if at.saturating_duration_since(*t) <= keep || self.scrapes.len() <= 2 {
                break;
            }
            self.scrapes.pop_front();
        }
    }

    /// Drops the pinned first scrape: the canary started at `now` pins its own, taken at
    /// or after `now`.
    pub fn forget_baseline(&mut self, now: Instant) {
        self.baseline = None;
        self.not_before = Some(now);
    }

    /// Pins the first scrape taken at or after `since` (the canary's start), so that the
    /// counts since then survive the history's trimming.
    fn pin(&mut self, since: Instant) {
        let since = self.not_before.map_or(since, |n| since.max(n));
        let stale = self
            .baseline
            .as_ref()
            .is_none_or(|(pinned_for, _)| since > *pinned_for + NEW_CANARY_AFTER);
        if stale {
            self.baseline = self
                .scrapes
                .iter()
                .find(|(t, _)| *t >= since)
                .map(|(_, e)| (since, e.clone()));
        }
    }

    /// A built-in measurement of `target` over the span `from` picks: since the canary
    /// started (pinned) or over a sliding window. `edge` is the latency threshold whose
    /// slower requests are the bad ones.
    pub fn measure(
        &mut self,
        kind: Builtin,
        target: &Target,
        from: From,
        edge: Option<f64>,
    ) -> Measured {
        // Borrowed, not copied: this runs for every metric at every scrape.
        if let From::Pinned(since) = from {
            self.pin(since);
        }
        let first = match from {
            From::Pinned(_) => self.baseline.as_ref().map(|(_, e)| e),
            From::Window(since) => self
                .scrapes
                .iter()
                .find(|(t, _)| *t >= since)
                .map(|(_, e)| e),
        };
        let (Some(first), Some((_, last))) = (first, self.scrapes.back()) else {
            return Measured::default();
        };
        measure(kind, target, first, last, edge)
    }
}

/// Where the counted span starts.
#[derive(Clone, Copy, Debug)]
pub enum From {
    /// At the first scrape at or after this moment, for as long as it lives (a canary).
    Pinned(Instant),
    /// At the first scrape at or after this moment, among those kept (a sliding window).
    Window(Instant),
}

fn measure(
    kind: Builtin,
    target: &Target,
    first: &Exposition,
    last: &Exposition,
    edge: Option<f64>,
) -> Measured {
    let labels = labels(target);
    let increase = |name: &str, extra: Option<(&str, &str)>| -> f64 {
        let mut m = labels.clone();
        m.extend(extra);
        last.select(name, &m)
            .into_iter()
            .map(|s| series_increase(first, s))
            .sum()
    };
    match kind {
        Builtin::ErrorRatio | Builtin::ShadowMismatchRatio => {
            let (series, good) = match kind {
                Builtin::ShadowMismatchRatio => ("zgate_shadow_total", "match"),
                _ => ("zgate_requests_total", "ok"),
            };
            let requests = increase(series, None);
            let ok = increase(series, Some(("outcome", good)));
            let tally = Tally {
                requests: requests.round() as u64,
                bad: (requests - ok).max(0.0).round() as u64,
            };
            Measured {
                value: (requests > 0.0).then(|| (requests - ok) / requests),
                tally,
                missing: None,
            }
        }
        Builtin::LatencyP99 | Builtin::LatencyP50 => {
            let q = 1.0 - kind.share_above().unwrap_or(0.01);
            let buckets = bucket_increases(first, last, &labels);
            let value = quantile(q, &buckets);
            let requests = buckets.last().map_or(0.0, |b| b.1);
            let Some(edge) = edge else {
                return Measured {
                    value,
                    ..Measured::default()
                };
            };
            match buckets
                .iter()
                .find(|(bound, _)| (bound - edge).abs() < 1e-9)
            {
                Some(&(_, fast)) => Measured {
                    value,
                    tally: Tally {
                        requests: requests.round() as u64,
                        bad: (requests - fast).max(0.0).round() as u64,
                    },
                    missing: None,
                },
                None => Measured {
                    value,
                    tally: Tally::default(),
                    missing: Some(missing_edge(edge)),
                },
            }
        }
    }
}

/// Why a latency gate cannot be counted, and the fix.
pub fn missing_edge(edge: f64) -> String {
    format!(
        "zgate's latency histogram has no bucket edge at {edge}s, so requests slower than the threshold cannot be counted: start zgate with --latency-edge {}ms (zdeploy up and the rendered zgate take it from the manifest)",
        (edge * 1000.0).round()
    )
}

fn labels(target: &Target) -> Vec<(&str, &str)> {
    let mut m = vec![
        ("service", target.service.as_str()),
        ("pool", target.pool.name()),
    ];
    if let Some(ns) = &target.namespace {
        m.push(("namespace", ns.as_str()));
    }
    m
}

/// (upper bound, cumulative increase) per bucket, sorted by bound.
pub fn bucket_increases(
    first: &Exposition,
    last: &Exposition,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let name = "zgate_request_duration_seconds_bucket";
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in last.select(name, labels) {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        // The same bucket of several replicas adds up.
        let inc = series_increase(first, s);
        match out.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, total)) => *total += inc,
            None => out.push((bound, inc)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// How much counter `s` of the last scrape grew since the first: against the same series
/// (same name and labels, so one replica's), from zero when it is new (a replica that
/// started since) or went down (a replica that restarted).
fn series_increase(first: &Exposition, s: &exposition::Sample) -> f64 {
    let before = first
        .samples
        .iter()
        .find(|p| p.name == s.name && p.labels == s.labels)
        .map_or(0.0, |p| p.value);
    if s.value < before {
        s.value
    } else {
        s.value - before
    }
}

/// The q-quantile of cumulative buckets, interpolated as Prometheus' `histogram_quantile`.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_bound, mut prev_count) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        (prev_bound, prev_count) = (bound, count);
    }
    Some(prev_bound)
}

/// Fetches and parses one `/metrics` page.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Result<Exposition, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("scraping {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("scraping {url}: HTTP {status}"));
    }
    let text = resp
        .text()
        .await
        .map_err(|e| format!("scraping {url}: {e}"))?;
    exposition::parse(&text)
        .map_err(|e| format!("scraping {url}: not the Prometheus text format: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdeploy_api::Pool;

    fn page(ok: u64, err: u64, fast: u64, slow: u64) -> Exposition {
        let text = format!(
            "# TYPE zgate_requests counter\n\
             zgate_requests_total{{service=\"echo\",pool=\"canary\",outcome=\"ok\"}} {ok}\n\
             zgate_requests_total{{service=\"echo\",pool=\"canary\",outcome=\"error\"}} {err}\n\
             zgate_requests_total{{service=\"echo\",pool=\"stable\",outcome=\"ok\"}} 999\n\
             # TYPE zgate_request_duration_seconds histogram\n\
             zgate_request_duration_seconds_bucket{{service=\"echo\",le=\"0.1\",pool=\"canary\"}} {fast}\n\
             zgate_request_duration_seconds_bucket{{service=\"echo\",le=\"1.0\",pool=\"canary\"}} {}\n\
             zgate_request_duration_seconds_bucket{{service=\"echo\",le=\"+Inf\",pool=\"canary\"}} {}\n",
            fast + slow,
            fast + slow
        );
        exposition::parse(&text).unwrap()
    }

    #[test]
    fn the_replicas_of_zgate_add_up_and_a_restart_counts_in_its_replica_alone() {
        let t0 = Instant::now();
        let mut h = ScrapeHistory::default();
        let both = |a: Exposition, b: Exposition| {
            Exposition::merge(vec![("a".into(), a), ("b".into(), b)])
        };
        h.record(
            t0,
            both(page(10, 0, 10, 0), page(20, 0, 20, 0)),
            Duration::from_secs(60),
        );
        h.record(
            t0 + Duration::from_secs(1),
            both(page(15, 5, 20, 0), page(27, 1, 28, 0)),
            Duration::from_secs(60),
        );
        // Replica b restarts (its counters from zero): only its new requests count.
        h.record(
            t0 + Duration::from_secs(2),
            both(page(15, 5, 20, 0), page(3, 1, 4, 0)),
            Duration::from_secs(60),
        );
        let target = Target {
            service: "echo".into(),
            namespace: None,
            pool: Pool::Canary,
        };
        let errors = h.measure(Builtin::ErrorRatio, &target, From::Pinned(t0), None);
        // a: 10 new (5 bad); b restarted: only its 4 since (1 bad).
        assert_eq!(
            errors.tally,
            Tally {
                requests: 14,
                bad: 6
            }
        );
        // Every new request of either replica was fast: none above the 0.1 s edge.
        let slow = h.measure(Builtin::LatencyP99, &target, From::Pinned(t0), Some(0.1));
        assert_eq!(
            slow.tally,
            Tally {
                requests: 14,
                bad: 0
            }
        );
    }

    #[test]
    fn rates_come_from_the_difference_of_two_scrapes() {
        let t0 = Instant::now();
        let mut h = ScrapeHistory::default();
        h.record(t0, page(100, 0, 100, 0), Duration::from_secs(60));
        h.record(
            t0 + Duration::from_secs(1),
            page(180, 20, 150, 50),
            Duration::from_secs(60),
        );
        let target = Target {
            service: "echo".into(),
            namespace: None,
            pool: Pool::Canary,
        };
        let errors = h.measure(Builtin::ErrorRatio, &target, From::Pinned(t0), None);
        assert_eq!(
            errors.tally,
            Tally {
                requests: 100,
                bad: 20
            }
        );
        assert_eq!(errors.value, Some(0.2));
        let p99 = h.measure(Builtin::LatencyP99, &target, From::Pinned(t0), Some(0.1));
        // 50 of 100 new requests fell between 0.1 s and 1 s: p99 interpolates to 0.982.
        assert!((p99.value.unwrap() - 0.982).abs() < 1e-9, "{p99:?}");
        assert_eq!(
            p99.tally,
            Tally {
                requests: 100,
                bad: 50
            }
        );
        // No bucket edge at the threshold: no counts, and the fix named.
        let none = h.measure(Builtin::LatencyP99, &target, From::Pinned(t0), Some(0.8));
        assert!(none.missing.unwrap().contains("--latency-edge 800ms"));
        let later = h.measure(
            Builtin::ErrorRatio,
            &target,
            From::Window(t0 + Duration::from_secs(5)),
            None,
        );
        assert_eq!(later, Measured::default());
    }

    #[test]
    fn a_retry_counts_nothing_of_the_canary_before_it_however_early_its_start_reads() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        let mut h = ScrapeHistory::default();
        let target = Target {
            service: "echo".into(),
            namespace: None,
            pool: Pool::Canary,
        };
        h.record(t0, page(100, 0, 0, 0), keep);
        // The last canary's final bad replies are counted, then the retry starts.
        h.record(t0 + Duration::from_millis(400), page(100, 10, 0, 0), keep);
        h.forget_baseline(t0 + Duration::from_millis(500));
        h.record(t0 + Duration::from_millis(600), page(100, 10, 0, 0), keep);
        h.record(t0 + Duration::from_millis(900), page(102, 10, 0, 0), keep);
        // Its start as the status records it: the whole second, before those replies.
        let m = h.measure(Builtin::ErrorRatio, &target, From::Pinned(t0), None);
        assert_eq!(m.tally.requests, 2, "{m:?}");
        assert_eq!(m.tally.bad, 0, "{m:?}");
    }

    #[test]
    fn a_canary_is_counted_from_its_first_scrape_however_short_the_history() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(1);
        let mut h = ScrapeHistory::default();
        let target = Target {
            service: "echo".into(),
            namespace: None,
            pool: Pool::Canary,
        };
        h.record(t0, page(10, 0, 10, 0), keep);
        // The canary starts now; its first scrape becomes the baseline.
        let start = t0 + Duration::from_millis(1);
        h.record(t0 + Duration::from_secs(1), page(20, 1, 20, 0), keep);
        assert_eq!(
            h.measure(Builtin::ErrorRatio, &target, From::Pinned(start), None)
                .tally,
            Tally::default()
        );
        for i in 2..10 {
            h.record(
                t0 + Duration::from_secs(i),
                page(20 + 10 * i, 1 + i, 20, 0),
                keep,
            );
        }
        let m = h.measure(Builtin::ErrorRatio, &target, From::Pinned(start), None);
        // Counted from the scrape at 1 s (21 requests, 1 error) to the last (120, 10).
        assert_eq!(
            m.tally,
            Tally {
                requests: 99,
                bad: 9
            }
        );
    }

    #[test]
    fn quantile_matches_prometheus_interpolation() {
        let b = [(0.1, 50.0), (0.5, 90.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        assert!((quantile(0.7, &b).unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(quantile(0.99, &b), Some(0.5));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
