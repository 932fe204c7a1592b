//! zgate's Prometheus metrics. Every series exists at 0 from the start, so `rate()` works
//! from the first scrape; the data plane holds pre-resolved handles (atomics, no lookups).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::heartbeat::Heartbeat;
use crate::shadow::{ShadowOutcome, ShadowSkip};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The service replied and the reply is not an error.
    Ok,
    /// The reply matched the error classifier, or a fault injected an error.
    Error,
    /// No reply within the timeout.
    Timeout,
    /// The pool had no live backend (or its queues were full).
    Unavailable,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Unavailable,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds (800 ms is the default p99 gate). The
/// latency thresholds of a service's analysis are added to these: a gate is judged on the
/// count of requests slower than its threshold, which only a bucket edge there gives.
const LATENCY_BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
];

/// The default bucket edges plus `extra`, sorted, each once.
pub fn latency_bounds(extra: &[Duration]) -> Arc<[f64]> {
    let mut bounds: Vec<f64> = LATENCY_BOUNDS
        .iter()
        .copied()
        .chain(extra.iter().map(Duration::as_secs_f64))
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
    bounds.into()
}

/// A latency histogram with one writer, the data plane: it updates buckets with plain
/// relaxed loads and stores (no lock, no locked instruction) while `/metrics` reads them.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds, sorted; +Inf is implied.
    bounds: Arc<[f64]>,
    /// Per-bucket counts; the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram with these (sorted) bucket bounds.
    pub fn new(bounds: Arc<[f64]>) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(HistogramCells {
                bounds,
                buckets,
                sum_bits: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation. Only the data plane thread may call this.
    pub fn observe(&self, seconds: f64) {
        let c = &self.inner;
        let i = c.bounds.partition_point(|b| *b < seconds);
        let bucket = &c.buckets[i];
        bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let sum = f64::from_bits(c.sum_bits.load(Ordering::Relaxed)) + seconds;
        c.sum_bits.store(sum.to_bits(), Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.inner;
        let buckets: Vec<(f64, u64)> = c
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(c.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so `+Inf` and `_count` always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(c.sum_bits.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Makes each pool's histogram with the gateway's bucket bounds.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<LatencyHistogram> for Buckets {
    fn new_metric(&self) -> LatencyHistogram {
        LatencyHistogram::new(self.0.clone())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolReasonLabels {
    pool: String,
    reason: String,
}

/// Why libzmq's socket monitor says a ZMTP handshake with a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer broke the protocol (not ZMTP, or an incompatible greeting).
    Protocol,
    /// The security mechanism refused the peer.
    Auth,
    /// libzmq gave no detail.
    Other,
}

impl HandshakeFailure {
    const ALL: [Self; 3] = [Self::Protocol, Self::Auth, Self::Other];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::Auth => "auth",
            Self::Other => "other",
        }
    }
}

/// Handles for one pool's series.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    requests: [Counter; 4],
    /// Request latency as the client sees it through the gateway.
    pub latency: LatencyHistogram,
    /// Requests forwarded and not yet answered.
    pub in_flight: Gauge,
    /// Configured weight.
    pub weight: Gauge,
    /// Backends that can take a request: handshaken, serving, answering.
    pub live_backends: Gauge,
    /// The weight requests are routed by: the configured one, or 0 while the pool has no
    /// usable backend.
    pub routed_weight: Gauge,
    /// Times the pool lost its last usable backend while it had weight (routed 0 since).
    pub withheld: Counter,
    /// Replies that came after their request had timed out (dropped).
    pub late_replies: Counter,
    /// Requests a route sent to this pool (whatever its weight).
    pub route_requests: Counter,
    handshake_failures: [Counter; 3],
    shadow: [Counter; 4],
    shadow_skipped: [Counter; 2],
}

impl PoolMetrics {
    /// Counts one finished request.
    pub fn count(&self, outcome: Outcome, seconds: f64) {
        self.requests[outcome as usize].inc();
        self.latency.observe(seconds);
    }

    /// Counts a backend connection whose ZMTP handshake failed.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].inc();
    }

    /// Counts a shadow copy sent to this pool, by how it compared.
    pub fn shadowed(&self, outcome: ShadowOutcome) {
        self.shadow[outcome as usize].inc();
    }

    /// Counts a request not shadowed to this pool, or a copy not judged.
    pub fn shadow_skipped(&self, why: ShadowSkip) {
        self.shadow_skipped[why as usize].inc();
    }

    /// The handshake failure counted most often, if any was.
    pub fn commonest_handshake_failure(&self) -> Option<HandshakeFailure> {
        HandshakeFailure::ALL
            .into_iter()
            .map(|why| (self.handshake_failures[why as usize].get(), why))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, why)| why)
    }
}

/// Reasons a reply could not reach its client.
#[derive(Clone, Copy, Debug)]
pub enum Undeliverable {
    /// The client disconnected.
    ClientGone,
    /// The client's queue is full (it does not read).
    ClientSlow,
}

/// All of zgate's metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// One entry per pool, in pool order.
    pub pools: Vec<PoolMetrics>,
    /// Requests without an empty delimiter frame or without a body.
    pub malformed: Counter,
    undeliverable: [Counter; 2],
    /// Replies dropped per pool: no request id, a forged one, or another pool's request.
    rejected: Vec<Counter>,
    /// The soft open-file limit zgate runs with (raised to the hard limit at start).
    pub open_files_limit: Gauge,
    /// The data plane's heartbeat, shown as `zgate_up`.
    pub heartbeat: Arc<Heartbeat>,
    up: Gauge,
    /// HTTP connections refused, by listener, because the listener was at its cap.
    http_refused: Family<ListenerLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

impl GatewayMetrics {
    /// Registers every series for `service` and `pools`, all at 0, with latency bucket
    /// edges at the defaults and at `latency_edges`.
    pub fn new(service: &str, pools: &[String], latency_edges: &[Duration]) -> Self {
        let bounds = latency_bounds(latency_edges);
        let labels = [(Cow::Borrowed("service"), Cow::Owned(service.to_string()))];
        let mut registry = Registry::with_prefix_and_labels("zgate", labels.into_iter());
        let requests = Family::<OutcomeLabels, Counter>::default();
        let latency =
            Family::<PoolLabels, LatencyHistogram, Buckets>::new_with_constructor(Buckets(bounds));
        let in_flight = Family::<PoolLabels, Gauge>::default();
        let weight = Family::<PoolLabels, Gauge>::default();
        let live = Family::<PoolLabels, Gauge>::default();
        let routed = Family::<PoolLabels, Gauge>::default();
        let withheld = Family::<PoolLabels, Counter>::default();
        let late = Family::<PoolLabels, Counter>::default();
        let route_requests = Family::<PoolLabels, Counter>::default();
        let undeliverable = Family::<ReasonLabels, Counter>::default();
        let rejected = Family::<PoolLabels, Counter>::default();
        let handshakes = Family::<PoolReasonLabels, Counter>::default();
        let shadow = Family::<OutcomeLabels, Counter>::default();
        let shadow_skipped = Family::<PoolReasonLabels, Counter>::default();
        let open_files_limit = Gauge::default();
        let up = Gauge::default();
        registry.register(
            "up",
            "1 while the data plane turns (it marks every turn); 0 once it stalled for 2 s or stopped",
            up.clone(),
        );
        let http_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on arrival because the listener was at its connection cap, by listener",
            http_refused.clone(),
        );
        registry.register(
            "open_files_limit",
            "Soft limit on open descriptors (each connection is one), raised to the hard limit at start",
            open_files_limit.clone(),
        );
        let malformed = Counter::default();
        registry.register(
            "requests",
            "Requests by pool and outcome (ok, error, timeout, unavailable)",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency through the gateway, by pool",
            latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests forwarded and not yet answered, by pool",
            in_flight.clone(),
        );
        registry.register(
            "pool_weight",
            "Configured weight of each pool, in percent",
            weight.clone(),
        );
        registry.register(
            "backends_live",
            "Backends that can take a request (handshake done, serving, answering), by pool",
            live.clone(),
        );
        registry.register(
            "pool_routed_weight",
            "Weight requests are routed by, in percent: the configured weight, or 0 while the pool has no live backend",
            routed.clone(),
        );
        registry.register(
            "pool_withheld",
            "Times a pool with weight lost its last live backend and was routed 0% until one came back",
            withheld.clone(),
        );
        registry.register(
            "late_replies",
            "Replies that arrived after their request timed out, by pool",
            late.clone(),
        );
        registry.register(
            "route_requests",
            "Requests a route by client (identity or frame prefix) sent to a pool whatever its weight",
            route_requests.clone(),
        );
        registry.register(
            "shadow",
            "Shadow copies sent to a pool, by how its reply compared with the one the client got (match, mismatch, canary_error, canary_timeout)",
            shadow.clone(),
        );
        registry.register(
            "shadow_skipped",
            "Requests not shadowed to a pool for lack of room (shed), or copies not judged because the reply they shadow failed (stable_failed)",
            shadow_skipped.clone(),
        );
        registry.register(
            "malformed_requests",
            "Requests without an empty delimiter frame or without a body",
            malformed.clone(),
        );
        registry.register(
            "replies_rejected",
            "Replies dropped because their request id was missing, forged or another pool's, by pool",
            rejected.clone(),
        );
        registry.register(
            "handshake_failures",
            "Backend connections whose ZeroMQ handshake failed, by pool and reason (protocol, auth, other)",
            handshakes.clone(),
        );
        registry.register(
            "replies_undeliverable",
            "Replies dropped because the client was gone or not reading",
            undeliverable.clone(),
        );
        let rejected = pools
            .iter()
            .map(|name| {
                rejected
                    .get_or_create(&PoolLabels { pool: name.clone() })
                    .clone()
            })
            .collect();
        let pools = pools
            .iter()
            .map(|name| {
                let pl = PoolLabels { pool: name.clone() };
                PoolMetrics {
                    requests: Outcome::ALL.map(|o| {
                        requests
                            .get_or_create(&OutcomeLabels {
                                pool: name.clone(),
                                outcome: o.label().into(),
                            })
                            .clone()
                    }),
                    latency: latency.get_or_create(&pl).clone(),
                    in_flight: in_flight.get_or_create(&pl).clone(),
                    weight: weight.get_or_create(&pl).clone(),
                    live_backends: live.get_or_create(&pl).clone(),
                    routed_weight: routed.get_or_create(&pl).clone(),
                    withheld: withheld.get_or_create(&pl).clone(),
                    late_replies: late.get_or_create(&pl).clone(),
                    route_requests: route_requests.get_or_create(&pl).clone(),
                    handshake_failures: HandshakeFailure::ALL.map(|r| {
                        handshakes
                            .get_or_create(&PoolReasonLabels {
                                pool: name.clone(),
                                reason: r.label().into(),
                            })
                            .clone()
                    }),
                    shadow: ShadowOutcome::ALL.map(|o| {
                        shadow
                            .get_or_create(&OutcomeLabels {
                                pool: name.clone(),
                                outcome: o.label().into(),
                            })
                            .clone()
                    }),
                    shadow_skipped: ShadowSkip::ALL.map(|r| {
                        shadow_skipped
                            .get_or_create(&PoolReasonLabels {
                                pool: name.clone(),
                                reason: r.label().into(),
                            })
                            .clone()
                    }),
                }
            })
            .collect();
        let undeliverable = ["client_gone", "client_slow"].map(|r| {
            undeliverable
                .get_or_create(&ReasonLabels { reason: r.into() })
                .clone()
        });
        Self {
            registry,
            pools,
            malformed,
            undeliverable,
            rejected,
            open_files_limit,
            heartbeat: Arc::default(),
            up,
            http_refused,
        }
    }

    /// The counter of connections `listener` refused at its cap.
    pub fn http_refused(&self, listener: &str) -> Counter {
        self.http_refused
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .clone()
    }

    /// Counts a reply dropped from pool `i`: no request id, a forged one, or another pool's.
    pub fn rejected_reply(&self, i: usize) {
        if let Some(c) = self.rejected.get(i) {
            c.inc();
        }
    }

    /// Counts a reply that could not be delivered.
    pub fn undeliverable(&self, why: Undeliverable) {
        self.undeliverable[why as usize].inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let up = self.heartbeat.check(std::time::Instant::now()).is_ok();
        self.up.set(i64::from(up));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero() {
        let m = GatewayMetrics::new("echo", &["stable".into(), "canary".into()], &[]);
        let text = m.encode();
        for pool in ["stable", "canary"] {
            for o in Outcome::ALL {
                let series = format!(
                    "zgate_requests_total{{service=\"echo\",pool=\"{pool}\",outcome=\"{}\"}} 0",
                    o.label()
                );
                assert!(text.contains(&series), "missing {series} in\n{text}");
            }
            assert!(text.contains(&format!(
                "zgate_request_duration_seconds_count{{service=\"echo\",pool=\"{pool}\"}} 0"
            )));
        }
        assert!(text.contains("zgate_malformed_requests_total{service=\"echo\"} 0"));
        for o in ShadowOutcome::ALL {
            let series = format!(
                "zgate_shadow_total{{service=\"echo\",pool=\"canary\",outcome=\"{}\"}} 0",
                o.label()
            );
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
        assert!(text.contains(
            "zgate_shadow_skipped_total{service=\"echo\",pool=\"canary\",reason=\"shed\"} 0"
        ));
    }

    #[test]
    fn latency_histogram_counts_into_the_right_buckets() {
        let m = GatewayMetrics::new("echo", &["stable".into()], &[Duration::from_millis(300)]);
        for s in [0.0001, 0.0009, 0.3, 0.7, 0.9, 20.0] {
            m.pools[0].latency.observe(s);
        }
        let text = m.encode();
        let line = |le: &str| {
            format!(
                "zgate_request_duration_seconds_bucket{{service=\"echo\",le=\"{le}\",pool=\"stable\"}}"
            )
        };
        // 0.3 is the edge asked for: an observation at the edge counts as at or below it.
        for (le, n) in [
            ("0.0005", 1),
            ("0.001", 2),
            ("0.25", 2),
            ("0.3", 3),
            ("0.5", 3),
            ("0.8", 4),
            ("1.0", 5),
            ("10.0", 5),
            ("+Inf", 6),
        ] {
            assert!(
                text.contains(&format!("{} {n}", line(le))),
                "bucket {le} is not {n}:\n{text}"
            );
        }
        assert!(
            text.contains(
                "zgate_request_duration_seconds_count{service=\"echo\",pool=\"stable\"} 6"
            )
        );
    }
}
