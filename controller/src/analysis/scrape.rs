//! The embedded source: no Prometheus, zdeploy scrapes zgate's `/metrics` itself and
//! computes rates and histogram quantiles from successive scrapes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use zdeploy_api::service::Builtin;

use super::exposition::{self, Exposition};
use super::promql::Target;

/// Scrapes kept, oldest first, with the moment each was taken.
#[derive(Debug, Default)]
pub struct ScrapeHistory {
    scrapes: VecDeque<(Instant, Exposition)>,
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

    /// The newest scrape and the oldest one taken at or after `since`.
    fn span(&self, since: Instant) -> Option<(&Exposition, &Exposition)> {
        let (_, last) = self.scrapes.back()?;
        let (_, first) = self.scrapes.iter().find(|(t, _)| *t >= since)?;
        Some((first, last))
    }

    /// A built-in measurement of `target` over the scrapes since `since`: (value, requests).
    pub fn measure(&self, kind: Builtin, target: &Target, since: Instant) -> (Option<f64>, f64) {
        let Some((first, last)) = self.span(since) else {
            return (None, 0.0);
        };
        let labels = labels(target);
        let increase = |name: &str, extra: Option<(&str, &str)>| -> f64 {
            let mut m = labels.clone();
            m.extend(extra);
            let total = |e: &Exposition| e.select(name, &m).iter().map(|s| s.value).sum::<f64>();
            let (a, b) = (total(first), total(last));
            // A counter that went down was reset (gateway restart): count from zero.
            if b < a { b } else { b - a }
        };
        let requests = increase("zgate_requests_total", None);
        let value = match kind {
            Builtin::ErrorRatio => {
                let ok = increase("zgate_requests_total", Some(("outcome", "ok")));
                (requests > 0.0).then(|| (requests - ok) / requests)
            }
            Builtin::LatencyP99 | Builtin::LatencyP50 => {
                let q = if kind == Builtin::LatencyP99 {
                    0.99
                } else {
                    0.5
                };
                let buckets = bucket_increases(first, last, &labels);
                quantile(q, &buckets)
            }
        };
        (value, requests)
    }
}

fn labels(target: &Target) -> Vec<(&str, &str)> {
    let mut m = vec![
        ("service", target.service.as_str()),
        ("pool", target.pool.as_str()),
    ];
    if let Some(ns) = &target.namespace {
        m.push(("namespace", ns.as_str()));
    }
    m
}

/// (upper bound, cumulative increase) per bucket, sorted by bound.
fn bucket_increases(
    first: &Exposition,
    last: &Exposition,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let name = "zgate_request_duration_seconds_bucket";
    let mut out: Vec<(f64, f64)> = last
        .select(name, labels)
        .into_iter()
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let before = first
                .select(name, labels)
                .into_iter()
                .find(|p| p.labels.get("le") == Some(le))
                .map_or(0.0, |p| p.value);
            let inc = if s.value < before {
                s.value
            } else {
                s.value - before
            };
            Some((bound, inc))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
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
            pool: "canary".into(),
        };
        let (ratio, n) = h.measure(Builtin::ErrorRatio, &target, t0);
        assert_eq!(n, 100.0);
        assert_eq!(ratio, Some(0.2));
        let (p99, _) = h.measure(Builtin::LatencyP99, &target, t0);
        // 50 of 100 new requests fell between 0.1 s and 1 s: p99 interpolates to 0.982.
        assert!((p99.unwrap() - 0.982).abs() < 1e-9, "{p99:?}");
        let (none, n) = h.measure(Builtin::ErrorRatio, &target, t0 + Duration::from_secs(5));
        assert_eq!((none, n), (None, 0.0));
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
