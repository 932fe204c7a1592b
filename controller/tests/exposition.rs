//! The exposition parser against real output: prometheus-client (zgate), Python's
//! prometheus_client, and Prometheus' own `/metrics`, hard label values included.

mod support;

use std::process::Command;

use zdeploy_controller::analysis::exposition::{MetricType, parse};
use zdeploy_gateway::metrics::{GatewayMetrics, Outcome};

const HARD: &str = "a,b \"quoted\" {braces} back\\slash";

#[test]
fn prometheus_client_output_from_zgate() {
    let m = GatewayMetrics::new(HARD, &["stable".into(), "canary".into()], &[]);
    m.pools[1].count(Outcome::Error, 0.3);
    m.pools[1].count(Outcome::Ok, 0.001);
    let e = parse(&m.encode()).expect("zgate's output parses");
    let errors = e.select(
        "zgate_requests_total",
        &[("service", HARD), ("pool", "canary"), ("outcome", "error")],
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].value, 1.0);
    assert_eq!(e.type_of("zgate_requests_total"), MetricType::Counter);
    assert_eq!(
        e.type_of("zgate_request_duration_seconds_bucket"),
        MetricType::Histogram
    );
    assert_eq!(
        e.type_of("zgate_request_duration_seconds_count"),
        MetricType::Histogram
    );
    let inf = e
        .select(
            "zgate_request_duration_seconds_bucket",
            &[("pool", "canary"), ("le", "+Inf")],
        )
        .pop()
        .expect("+Inf bucket");
    assert_eq!(inf.value, 2.0);
}

#[test]
fn python_prometheus_client_output() {
    let python = std::env::var("ZDEPLOY_PYTHON").unwrap_or_else(|_| {
        zdeploy_testkit::fixtures::repo(".venv/bin/python")
            .display()
            .to_string()
    });
    let script = r#"
import sys
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
r = CollectorRegistry()
hard = sys.argv[1] + "\nline2"
c = Counter("jobs", "Jobs done", ["queue"], registry=r)
c.labels(queue=hard).inc(3)
g = Gauge("temperature_celsius", "Temp", registry=r)
g.set(-4.5)
h = Histogram("work_seconds", "Work", ["pool"], buckets=[0.1, 1.0], registry=r)
h.labels(pool="canary").observe(0.05)
h.labels(pool="canary").observe(0.5)
s = Summary("rpc_seconds", "RPC", registry=r)
s.observe(2.0)
sys.stdout.write(generate_latest(r).decode())
"#;
    let out = Command::new(&python)
        .args(["-c", script, HARD])
        .output()
        .expect("python runs (./tests/run installs the venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    let hard = format!("{HARD}\nline2");
    let jobs = e.select("jobs_total", &[("queue", hard.as_str())]);
    assert_eq!(jobs.len(), 1, "{text}");
    assert_eq!(jobs[0].value, 3.0);
    assert_eq!(e.type_of("jobs_total"), MetricType::Counter);
    // Python declares `_created` as a gauge family of its own; the declaration wins.
    assert_eq!(e.type_of("jobs_created"), MetricType::Gauge);
    assert_eq!(
        e.select("temperature_celsius", &[]).pop().unwrap().value,
        -4.5
    );
    assert_eq!(e.type_of("temperature_celsius"), MetricType::Gauge);
    assert_eq!(e.type_of("work_seconds_bucket"), MetricType::Histogram);
    assert_eq!(
        e.select("work_seconds_bucket", &[("le", "1.0")])
            .pop()
            .unwrap()
            .value,
        2.0
    );
    assert_eq!(
        e.select("work_seconds_count", &[]).pop().unwrap().value,
        2.0
    );
    assert_eq!(e.type_of("rpc_seconds_sum"), MetricType::Summary);
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_own_metrics() {
    let target = support::Target::start("echo").await;
    let prom = support::Prometheus::start(&target.addr, None, None).await;
    zdeploy_controller::tls::install_ring_provider();
    let text = reqwest::get(format!("{}/metrics", prom.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}"));
    assert!(e.samples.len() > 100, "only {} samples", e.samples.len());
    let build = e
        .select("prometheus_build_info", &[])
        .pop()
        .expect("prometheus_build_info");
    assert!(
        build.labels["version"].starts_with('2'),
        "{:?}",
        build.labels
    );
    assert_eq!(
        e.type_of("prometheus_http_requests_total"),
        MetricType::Counter
    );
    assert_eq!(
        e.type_of("prometheus_http_request_duration_seconds_bucket"),
        MetricType::Histogram
    );
    assert_eq!(e.type_of("go_gc_duration_seconds"), MetricType::Summary);
}
