//! Detection time: from the start of an error burst on the canary to a `fail` verdict,
//! through (a) Prometheus query polling at a 1 s scrape, (b) an Alertmanager webhook, and
//! (c) the embedded scrape, all watching the same bursts at once. Each burst is judged over
//! a sliding 4 s window (`Span::Window`), so that one trial's errors do not count in the next.
//!
//! `cargo bench -p zdeploy-controller --bench detection` (needs prometheus and
//! prometheus-alertmanager, which ./tests/run installs). Prints each trial and the medians;
//! fails when a path detected fewer than half of the bursts (it measured nothing).
//! `ZDEPLOY_BENCH_QUICK=1` runs two trials (how ./tests/run keeps it working).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Alertmanager, Prometheus, Target, analysis};
use zdeploy_api::service::Verdict;
use zdeploy_controller::analysis::promql::Target as Who;
use zdeploy_controller::analysis::webhook::AlertInbox;
use zdeploy_controller::analysis::{Analyzer, Source, Span};

/// Trials: 7, or 2 with `ZDEPLOY_BENCH_QUICK`.
fn trials() -> usize {
    match std::env::var_os("ZDEPLOY_BENCH_QUICK") {
        Some(_) => 2,
        None => 7,
    }
}
const WINDOW: Duration = Duration::from_secs(4);

fn canary() -> Who {
    Who {
        service: "echo".into(),
        namespace: None,
        pool: zdeploy_api::Pool::Canary,
    }
}

async fn until_fail(
    a: &mut Analyzer,
    every: Duration,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    while start.elapsed() < limit {
        if a.run(WINDOW).await.verdict == Verdict::Fail {
            return Some(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let target = Target::start("echo").await;
    let _stable = target.traffic(0, 200, 0, 0.002);
    let _canary_ok = target.traffic(1, 100, 0, 0.002);
    let inbox = Arc::new(AlertInbox::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/alertmanager", listener.local_addr().unwrap());
    let router = zdeploy_controller::analysis::webhook::router(inbox.clone(), "t".into());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let am = Alertmanager::start(&hook, "t").await;
    let rules = "groups:\n  - name: canary\n    rules:\n      - alert: CanaryErrorRateHigh\n        expr: sum by (service, pool) (rate(zgate_requests_total{pool=\"canary\",outcome!=\"ok\"}[4s])) / sum by (service, pool) (rate(zgate_requests_total{pool=\"canary\"}[4s])) > 0.01\n";
    let prom = Prometheus::start(&target.addr, Some(rules), Some(&am.addr)).await;
    let mut polling = Analyzer::new(
        Source::prometheus(&prom.url),
        canary(),
        analysis(20),
        None,
        Span::Window,
    );
    let metrics_url = format!("http://{}/metrics", target.addr);
    let mut scraping = Analyzer::new(
        Source::scrape(&metrics_url),
        canary(),
        analysis(20),
        None,
        Span::Window,
    );
    println!(
        "error bursts of 30 errors/s on a canary serving 100 ok/s; Prometheus scrape and rule interval 1 s"
    );
    println!(
        "{:<6} {:>16} {:>16} {:>16}",
        "trial", "query polling", "webhook", "embedded scrape"
    );
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let trials = trials();
    for trial in 1..=trials {
        // Quiet period: every window forgets the previous burst.
        tokio::time::sleep(Duration::from_secs(8)).await;
        inbox.take_matching("echo", None, zdeploy_api::Pool::Canary);
        for _ in 0..8 {
            scraping.observe().await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A random phase against the 1 s scrape, so trials do not all hit the same moment.
        let mut raw = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw)
            .unwrap();
        tokio::time::sleep(Duration::from_micros(u64::from(
            u32::from_le_bytes(raw) % 1_000_000,
        )))
        .await;
        let start = Instant::now();
        let burst = target.traffic(1, 0, 30, 0.002);
        let limit = Duration::from_secs(30);
        let poll = until_fail(&mut polling, Duration::from_millis(100), start, limit);
        let push = async {
            while start.elapsed() < limit {
                if !inbox
                    .take_matching("echo", None, zdeploy_api::Pool::Canary)
                    .is_empty()
                {
                    return Some(start.elapsed());
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), inbox.notify.notified()).await;
            }
            None
        };
        let scrape = async {
            let mut next_scrape = Instant::now();
            while start.elapsed() < limit {
                if Instant::now() >= next_scrape {
                    scraping.observe().await.unwrap();
                    next_scrape = Instant::now() + Duration::from_millis(250);
                }
                if scraping.run(WINDOW).await.verdict == Verdict::Fail {
                    return Some(start.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        };
        let (pa, pb, pc) = tokio::join!(poll, push, scrape);
        burst.abort();
        let show = |d: Option<Duration>| {
            d.map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "none".into())
        };
        println!(
            "{trial:<6} {:>16} {:>16} {:>16}",
            show(pa),
            show(pb),
            show(pc)
        );
        a.extend(pa);
        b.extend(pb);
        c.extend(pc);
    }
    for (path, detected) in [
        ("query polling", &a),
        ("webhook", &b),
        ("embedded scrape", &c),
    ] {
        assert!(
            2 * detected.len() >= trials,
            "{path} detected {} of {trials} bursts: the median would not measure detection",
            detected.len()
        );
    }
    let show = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<6} {:>16} {:>16} {:>16}",
        "median",
        show(median(a)),
        show(median(b)),
        show(median(c))
    );
}
