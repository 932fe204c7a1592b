//! Canary analysis against real Prometheus and Alertmanager processes, with zgate's real
//! metrics as the scrape target.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Alertmanager, Prometheus, Target, analysis};
use zdeploy_api::service::{Analysis, Verdict};
use zdeploy_controller::analysis::promql::Target as Who;
use zdeploy_controller::analysis::webhook::AlertInbox;
use zdeploy_controller::analysis::{AnalysisRun, Analyzer, Source, Span};

const AGE: Duration = Duration::from_secs(3600);

fn canary(service: &str) -> Who {
    Who {
        service: service.into(),
        namespace: None,
        pool: zdeploy_api::Pool::Canary,
    }
}

/// Runs the analysis until it gives `want` (at most `limit`); returns the last run.
/// An analyzer of `service`'s canary by `spec`, asking `prom`.
fn on_prometheus(prom: &Prometheus, service: &str, spec: Analysis) -> Analyzer {
    prometheus_at(&prom.url, service, spec)
}

/// An analyzer of `service`'s canary by `spec`, asking whatever answers at `url`.
fn prometheus_at(url: &str, service: &str, spec: Analysis) -> Analyzer {
    Analyzer::new(
        Source::prometheus(url),
        canary(service),
        spec,
        None,
        Span::CanaryLife,
    )
}

async fn until(a: &mut Analyzer, want: Verdict, limit: Duration) -> AnalysisRun {
    let deadline = Instant::now() + limit;
    loop {
        let run = a.run(AGE).await;
        if run.verdict == want || Instant::now() > deadline {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The run is inconclusive, and its first measurement says `because`.
fn assert_inconclusive(run: &AnalysisRun, because: &str) {
    assert_eq!(run.verdict, Verdict::Inconclusive, "{}", reasons(run));
    assert!(
        run.measurements[0].reason.contains(because),
        "{}",
        reasons(run)
    );
}

fn reasons(run: &AnalysisRun) -> String {
    run.measurements
        .iter()
        .map(|m| format!("{} {:?}: {} [{}]", m.metric, m.verdict, m.reason, m.query))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_passes_and_the_query_is_shown() {
    let target = Target::start("echo").await;
    let _load = target.traffic(1, 100, 0, 0.002);
    let prom = Prometheus::start(&target.addr, None, None).await;
    let mut a = on_prometheus(&prom, "echo", analysis(20));
    let run = until(&mut a, Verdict::Pass, Duration::from_secs(20)).await;
    assert_eq!(run.verdict, Verdict::Pass, "{}", reasons(&run));
    let m = &run.measurements[0];
    assert!(
        m.query.contains(
            "increase(zgate_requests_total{service=\"echo\",pool=\"canary\",outcome!=\"ok\"}[1h])"
        ),
        "{}",
        m.query
    );
    assert_eq!(m.value, Some(0.0));
    let e = m.evidence.as_ref().expect("counted");
    assert!(e.canary.requests >= 20 && e.canary.bad == 0, "{e:?}");
    assert!(m.reason.contains("within bounds: 0 bad of"), "{}", m.reason);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_with_errors_fails() {
    let target = Target::start("echo").await;
    let _load = target.traffic(1, 80, 20, 0.002);
    let prom = Prometheus::start(&target.addr, None, None).await;
    let mut a = on_prometheus(&prom, "echo", analysis(20));
    let run = until(&mut a, Verdict::Fail, Duration::from_secs(20)).await;
    assert_eq!(run.verdict, Verdict::Fail, "{}", reasons(&run));
    let ratio = run.measurements[0].value.unwrap();
    assert!((0.15..0.25).contains(&ratio), "error ratio {ratio}");
    let m = &run.measurements[0];
    assert!(m.reason.contains("above the maximum 1.00%"), "{}", m.reason);
    let e = m.evidence.as_ref().expect("counted");
    assert!(e.evidence >= e.fail_at, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn too_few_requests_and_no_series_are_inconclusive_not_failures() {
    let target = Target::start("echo").await;
    // One good request a second: far too few to pass, and no evidence of a breach.
    let _trickle = target.traffic(1, 1, 0, 0.002);
    let prom = Prometheus::start(&target.addr, None, None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut a = on_prometheus(&prom, "echo", analysis(20));
    let run = a.run(AGE).await;
    assert_inconclusive(&run, "requests, 20 needed to pass");

    let mut none = on_prometheus(&prom, "no-such-service", analysis(0));
    let run = none.run(AGE).await;
    assert_inconclusive(&run, "no requests counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firing_alert_for_the_canary_fails_the_analysis() {
    let target = Target::start("echo").await;
    let _load = target.traffic(1, 50, 50, 0.002);
    let rules = "groups:\n  - name: fast\n    rules:\n      - alert: CanaryErrorsNow\n        expr: sum by (service, pool) (rate(zgate_requests_total{pool=\"canary\",outcome!=\"ok\"}[4s])) > 0\n        annotations: {runbook_url: 'https://example.com/runbooks/canary-error-ratio-high.md'}\n";
    let prom = Prometheus::start(&target.addr, Some(rules), None).await;
    // Only the alert can fail this analysis: the thresholds are out of reach.
    let mut lenient = analysis(0);
    lenient.metrics.iter_mut().for_each(|m| m.max = Some(1e9));
    let mut a = on_prometheus(&prom, "echo", lenient);
    let run = until(&mut a, Verdict::Fail, Duration::from_secs(20)).await;
    assert_eq!(run.verdict, Verdict::Fail, "{}", reasons(&run));
    let alert = run
        .measurements
        .iter()
        .find(|m| m.metric == "alert:CanaryErrorsNow")
        .expect("alert measurement");
    assert!(
        alert
            .reason
            .contains("runbook https://example.com/runbooks/canary-error-ratio-high.md")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alertmanager_webhook_fails_the_analysis() {
    let target = Target::start("echo").await;
    let _load = target.traffic(1, 50, 50, 0.002);
    let inbox = Arc::new(AlertInbox::default());
    let hook = support::webhook(inbox.clone(), "hook-token").await;
    let am = Alertmanager::start(&hook, "hook-token").await;
    let rules = "groups:\n  - name: fast\n    rules:\n      - alert: CanaryErrorsNow\n        expr: sum by (service, pool) (rate(zgate_requests_total{pool=\"canary\",outcome!=\"ok\"}[4s])) > 0\n";
    let _prom = Prometheus::start(&target.addr, Some(rules), Some(&am.addr)).await;
    tokio::time::timeout(Duration::from_secs(30), inbox.notify.notified())
        .await
        .expect("Alertmanager called the webhook");
    // The analysis here scrapes nothing that could fail: only the pushed alert can.
    let mut a = Analyzer::new(
        Source::scrape(&format!("http://{}/metrics", target.addr)),
        canary("echo"),
        analysis(1_000_000),
        Some(inbox),
        Span::CanaryLife,
    );
    let run = a.run(AGE).await;
    assert_eq!(run.verdict, Verdict::Fail, "{}", reasons(&run));
    let pushed = run
        .measurements
        .iter()
        .find(|m| m.metric == "alert:CanaryErrorsNow")
        .expect("pushed alert");
    assert_eq!(pushed.query, "Alertmanager webhook");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_knows_an_alert_fires_until_alertmanager_resolves_it() {
    let target = Target::start("echo").await;
    let load = target.traffic(0, 50, 50, 0.002);
    let inbox = Arc::new(AlertInbox::default());
    let hook = support::webhook(inbox.clone(), "hook-token").await;
    let am = Alertmanager::start(&hook, "hook-token").await;
    let rules = "groups:\n  - name: fast\n    rules:\n      - alert: StableErrorsNow\n        expr: sum by (service, pool) (rate(zgate_requests_total{pool=\"stable\",outcome!=\"ok\"}[4s])) > 0\n";
    let _prom = Prometheus::start(&target.addr, Some(rules), Some(&am.addr)).await;
    assert_eq!(inbox.firing_for("echo", None), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while inbox.firing_for("echo", None).is_none() {
        assert!(
            Instant::now() < deadline,
            "the alert never arrived as firing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        inbox.firing_for("echo", None).as_deref(),
        Some("StableErrorsNow")
    );
    assert_eq!(inbox.firing_for("other", None), None);
    assert_eq!(
        inbox.firing_for("echo", Some("elsewhere")),
        Some("StableErrorsNow".into()),
        "series without a namespace label match any namespace"
    );
    // The errors stop: Prometheus resolves the alert and Alertmanager says so.
    load.abort();
    let stopped = Instant::now();
    while inbox.firing_for("echo", None).is_some() {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "the alert was never resolved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("resolved {:?} after the errors stopped", stopped.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_refuses_a_wrong_token() {
    let inbox = Arc::new(AlertInbox::default());
    let url = support::webhook(inbox.clone(), "right").await;
    zdeploy_controller::tls::install_ring_provider();
    let body = r#"{"alerts":[{"status":"firing","labels":{"alertname":"X","service":"echo","pool":"canary"}}]}"#;
    let http = reqwest::Client::new();
    let wrong = http
        .post(&url)
        .bearer_auth("wrong")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(
        inbox
            .take_matching("echo", None, zdeploy_api::Pool::Canary)
            .is_empty()
    );
    let right = http
        .post(&url)
        .bearer_auth("right")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        inbox
            .take_matching("echo", None, zdeploy_api::Pool::Canary)
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_fails_is_inconclusive_never_a_pass() {
    let down = format!("http://127.0.0.1:{}", zdeploy_testkit::ports::free_port());
    let mut a = prometheus_at(&down, "echo", analysis(0));
    let run = a.run(AGE).await;
    assert_inconclusive(&run, "unreachable");

    // Something that answers, but not Prometheus' API (HTML, 500s): also inconclusive.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/api/v1/query",
            axum::routing::get(|| async { "<html>login</html>" }),
        )
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let mut garbage = prometheus_at(&url, "echo", analysis(0));
    let run = garbage.run(AGE).await;
    assert_inconclusive(&run, "not its API");
    let mut scrape = Analyzer::new(
        Source::scrape(&format!("{url}/metrics")),
        canary("echo"),
        analysis(0),
        None,
        Span::CanaryLife,
    );
    let run = scrape.run(AGE).await;
    assert_eq!(run.verdict, Verdict::Inconclusive, "{}", reasons(&run));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_service_name_cannot_inject_promql() {
    let target = Target::start("echo").await;
    let prom = Prometheus::start(&target.addr, None, None).await;
    let hostile = "echo\"} or vector(1) or up{x=\"";
    // Unescaped, this name would turn the query into one that always returns 1.
    let raw = format!("sum(up{{service=\"{hostile}\"}})");
    let client = zdeploy_controller::analysis::prometheus::Prometheus::new(
        &prom.url,
        Duration::from_secs(5),
    );
    let attacked = client.query(&raw).await.unwrap();
    assert!(
        attacked.is_some_and(|v| v >= 1.0),
        "unescaped, the name injects a series: {attacked:?}"
    );
    let mut spec = analysis(0);
    spec.metrics.truncate(1);
    spec.metrics[0].builtin = None;
    spec.metrics[0].query = Some("sum(up{service=\"{{service}}\"})".into());
    spec.metrics[0].max = Some(0.5);
    let mut a = on_prometheus(&prom, hostile, spec);
    let run = a.run(AGE).await;
    let m = &run.measurements[0];
    assert!(
        m.query
            .contains("service=\"echo\\\"} or vector(1) or up{x=\\\"\""),
        "{}",
        m.query
    );
    assert_eq!(
        m.value,
        None,
        "the injected vector(1) was evaluated: {}",
        reasons(&run)
    );
    assert_eq!(m.verdict, Verdict::Inconclusive);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_younger_than_the_shortest_window_is_not_judged_on_older_data() {
    let target = Target::start("echo").await;
    // Earlier traffic full of errors, from a previous canary.
    let _old = target.traffic(1, 0, 50, 0.002);
    let prom = Prometheus::start(&target.addr, None, None).await;
    let mut a = on_prometheus(&prom, "echo", analysis(0));
    let run = a.run(Duration::from_secs(2)).await;
    assert_inconclusive(&run, "Prometheus needs 4s");
}

fn scraping(target: &Target) -> Analyzer {
    Analyzer::new(
        Source::scrape(&format!("http://{}/metrics", target.addr)),
        canary("echo"),
        analysis(20),
        None,
        Span::CanaryLife,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_recomputes_the_verdict_from_the_recorded_counts_and_counts_on() {
    // Before the restart: a canary failing a fifth of its requests is failed, with counts.
    let before = Target::start("echo").await;
    let load = before.traffic(1, 40, 10, 0.002);
    let mut a = scraping(&before);
    a.observe().await.unwrap();
    let failed = until(&mut a, Verdict::Fail, Duration::from_secs(10)).await;
    assert_eq!(failed.verdict, Verdict::Fail, "{}", reasons(&failed));
    let recorded = failed.measurements[0].evidence.clone().expect("counted");
    load.abort();
    drop(before);

    // After: zgate's counters start from zero. The recorded counts alone give the same
    // verdict and the same evidence...
    let after = Target::start("echo").await;
    let mut b = scraping(&after);
    b.resume(&failed.measurements);
    let again = b.run(AGE).await;
    assert_eq!(again.verdict, Verdict::Fail, "{}", reasons(&again));
    let e = again.measurements[0].evidence.clone().unwrap();
    assert_eq!((e.canary, e.evidence), (recorded.canary, recorded.evidence));
    // ...and new requests add to them.
    let _more = after.traffic(1, 50, 0, 0.002);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let on = b.run(AGE).await;
    let e = on.measurements[0].evidence.clone().unwrap();
    assert!(
        e.canary.requests > recorded.canary.requests,
        "{e:?} after {recorded:?}"
    );
    assert_eq!(e.canary.bad, recorded.canary.bad);
    // A new canary starts from zero.
    b.new_canary();
    let started = Instant::now();
    b.observe().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = b.run(started.elapsed()).await;
    let e = fresh.measurements[0]
        .evidence
        .clone()
        .unwrap_or_else(|| panic!("{}", reasons(&fresh)));
    assert!(e.canary.requests < recorded.canary.requests, "{e:?}");
    assert_eq!(e.canary.bad, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_scrape_sees_a_breach_between_intervals() {
    let target = Target::start("echo").await;
    let mut a = scraping(&target);
    a.observe().await.unwrap();
    assert!(!a.breach(AGE), "no traffic is no breach");
    let _load = target.traffic(1, 8, 2, 0.002);
    let start = Instant::now();
    loop {
        a.observe().await.unwrap();
        if a.breach(AGE) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never saw the breach"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = a.run(AGE).await;
    assert_eq!(run.verdict, Verdict::Fail, "{}", reasons(&run));
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_counts_latency_above_the_bucket_edge_and_custom_counts() {
    let target = Target::start("echo").await;
    // Every canary request takes a second: all of them are slower than 800 ms.
    let _slow = target.traffic(1, 30, 0, 1.0);
    let _stable = target.traffic(0, 30, 0, 0.002);
    let prom = Prometheus::start(&target.addr, None, None).await;
    let mut spec = analysis(10);
    // A counts metric over the same counters, as a service's own HTTP metrics would be.
    let mut own = spec.metrics[0].clone();
    own.name = "own-5xx".into();
    own.builtin = None;
    own.counts = Some(zdeploy_api::service::CountQueries {
        errors: "sum(increase(zgate_requests_total{service=\"{{service}}\",pool=\"{{pool}}\",outcome=\"error\"}[{{interval}}]))".into(),
        total: "sum(increase(zgate_requests_total{service=\"{{service}}\",pool=\"{{pool}}\"}[{{interval}}]))".into(),
    });
    spec.metrics.push(own);
    let mut a = on_prometheus(&prom, "echo", spec);
    let run = until(&mut a, Verdict::Fail, Duration::from_secs(20)).await;
    assert_eq!(run.verdict, Verdict::Fail, "{}", reasons(&run));
    let latency = &run.measurements[1];
    assert_eq!(latency.verdict, Verdict::Fail, "{}", reasons(&run));
    assert!(
        latency.reason.contains("slower than 0.8s"),
        "{}",
        latency.reason
    );
    let e = latency.evidence.as_ref().unwrap();
    assert_eq!(e.canary.bad, e.canary.requests, "{e:?}");
    assert!(
        latency.query.contains("sum by (le) (increase("),
        "{}",
        latency.query
    );
    // No errors: the counts metric passes on the same traffic, with its counts shown.
    let own = &run.measurements[2];
    assert_eq!(own.verdict, Verdict::Pass, "{}", reasons(&run));
    assert!(own.evidence.as_ref().unwrap().canary.requests >= 10);
    assert!(
        own.query.contains("outcome=\"error\"}[1h]"),
        "{}",
        own.query
    );
}

/// `n` firing alerts for `service` as Alertmanager sends them, with long labels and
/// annotations as a real group has (about 640 bytes an alert).
fn alerts(service: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"status":"firing","fingerprint":"{service}-{i}","labels":{{"alertname":"CanaryErrorRateHigh","service":"{service}","pool":"canary","instance":"10.0.{}.{}:9464","job":"zgate","severity":"page"}},"annotations":{{"summary":"{}","runbook_url":"https://runbooks.example.com/canary-error-ratio-high.md"}}}}"#,
                i / 250,
                i % 250,
                "x".repeat(380)
            )
        })
        .collect()
}

/// A webhook body holding `alerts`.
fn group(alerts: &[String]) -> String {
    format!(
        r#"{{"version":"4","status":"firing","alerts":[{}]}}"#,
        alerts.join(",")
    )
}

/// POSTs `body` to the webhook at `url` with the bearer `token`.
async fn post(http: &reqwest::Client, url: &str, token: &str, body: String) -> reqwest::Response {
    http.post(url)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_takes_a_large_group_and_keeps_only_what_it_can_act_on() {
    let inbox = Arc::new(AlertInbox::only_for("echo"));
    let url = support::webhook(inbox.clone(), "t").await;
    zdeploy_controller::tls::install_ring_provider();
    let http = reqwest::Client::new();
    // 10,000 alerts of other services with the canary's one among them: 6 MB and more.
    let mut many = alerts("other", 5_000);
    many.extend(alerts("echo", 1));
    many.extend(alerts("other-too", 4_999));
    let big = group(&many);
    assert!(big.len() > 6_000_000, "{} bytes", big.len());
    let r = post(&http, &url, "t", big).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        inbox
            .take_matching("echo", None, zdeploy_api::Pool::Canary)
            .len(),
        1,
        "the canary's alert acts"
    );
    // Many groups for services zdeploy does not run: nothing is kept.
    for _ in 0..41 {
        let r = post(&http, &url, "t", group(&alerts("elsewhere", 3_000))).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        inbox.sizes(),
        (0, 1),
        "only echo's firing alert is remembered"
    );
    // The controller's inbox keeps any service, but never more than MAX_KEPT of each.
    let any = Arc::new(AlertInbox::default());
    let url = support::webhook(any.clone(), "t").await;
    for round in 0..4 {
        let body = group(&alerts(&format!("svc{round}"), 3_000));
        let r = post(&http, &url, "t", body).await;
        assert_eq!(r.status(), 200);
    }
    let kept = zdeploy_controller::analysis::webhook::MAX_KEPT;
    assert_eq!(any.sizes(), (kept, kept));
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_killed_mid_analysis_gives_no_verdict_until_it_is_back() {
    let target = Target::start("echo").await;
    // A canary failing every request: only a missing source can keep it from failing.
    let _bad = target.traffic(1, 0, 50, 0.002);
    let mut prom = Prometheus::start(&target.addr, None, None).await;
    let mut a = on_prometheus(&prom, "echo", analysis(0));
    // Killed while the analysis runs: whatever the run saw, it cannot be a pass.
    let (run, ()) = tokio::join!(a.run(AGE), async {
        tokio::time::sleep(Duration::from_millis(3)).await;
        prom.kill();
    });
    assert_ne!(run.verdict, Verdict::Pass, "{}", reasons(&run));
    // Dead: every run is inconclusive, never a pass and never a failure on no data.
    for _ in 0..3 {
        let run = a.run(AGE).await;
        assert_inconclusive(&run, "unreachable");
    }
}
