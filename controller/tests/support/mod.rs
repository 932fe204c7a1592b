//! Real Prometheus and Alertmanager processes on 127.0.0.1 for analysis tests, a real zgate
//! metrics registry served over HTTP as their target, and helpers. Everything stops when
//! dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdeploy_api::service::{Analysis, Builtin, Metric};
use zdeploy_gateway::metrics::{GatewayMetrics, Outcome};

use zdeploy_testkit::children::Daemon;
use zdeploy_testkit::dirs::TempDir;
use zdeploy_testkit::ports::free_port;

fn need(bin: &str) -> &str {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "{bin} is not installed: run ./tests/run, which installs the Debian packages the tests use"
    );
    bin
}

async fn wait_http_ok(url: &str, what: &str) {
    zdeploy_controller::tls::install_ring_provider();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Prometheus server scraping `target` every second, evaluating `rules` every second.
pub struct Prometheus {
    pub url: String,
    daemon: Daemon,
    _dir: TempDir,
}

impl Prometheus {
    /// Kills Prometheus at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts Prometheus and returns once it has scraped `target` (ready is not scraping).
    pub async fn start(target: &str, rules: Option<&str>, alertmanager: Option<&str>) -> Self {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: zgate\n    static_configs: [{{targets: ['{target}']}}]\n"
        );
        if let Some(r) = rules {
            std::fs::write(dir.join("rules.yaml"), r).unwrap();
            config.push_str("rule_files: [rules.yaml]\n");
        }
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{am}']}}]\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut cmd = Command::new(need("prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap());
        let url = format!("http://127.0.0.1:{port}");
        let p = Self {
            url,
            daemon: Daemon::spawn(&mut cmd),
            _dir: dir,
        };
        wait_http_ok(&format!("{}/-/ready", p.url), "Prometheus").await;
        p.wait_scraped().await;
        p
    }

    /// Waits until the target has been scraped (`up == 1`).
    async fn wait_scraped(&self) {
        let client = zdeploy_controller::analysis::prometheus::Prometheus::new(
            &self.url,
            Duration::from_secs(2),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.query("up{job=\"zgate\"}").await.ok().flatten() != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped the target"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An Alertmanager sending every alert to `webhook` with `token`, at once.
pub struct Alertmanager {
    pub addr: String,
    _daemon: Daemon,
    _dir: TempDir,
}

impl Alertmanager {
    pub async fn start(webhook: &str, token: &str) -> Self {
        let dir = TempDir::new("alertmanager");
        let port = free_port();
        let config = format!(
            "route:\n  receiver: zdeploy\n  group_by: [alertname, service]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: zdeploy\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n        http_config:\n          authorization: {{credentials: '{token}'}}\n"
        );
        std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
        let mut cmd = Command::new(need("prometheus-alertmanager"));
        cmd.arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).unwrap());
        let addr = format!("127.0.0.1:{port}");
        let am = Self {
            addr,
            _daemon: Daemon::spawn(&mut cmd),
            _dir: dir,
        };
        wait_http_ok(&format!("http://{}/-/ready", am.addr), "Alertmanager").await;
        am
    }
}

/// zgate's real metrics registry served on 127.0.0.1, with traffic we inject.
pub struct Target {
    pub metrics: Arc<GatewayMetrics>,
    pub addr: String,
    server: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(service: &str) -> Self {
        let metrics = Arc::new(GatewayMetrics::new(
            service,
            &["stable".into(), "canary".into()],
            &[],
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let router = zdeploy_gateway::admin::metrics_router(metrics.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            metrics,
            addr,
            server,
        }
    }

    /// Sends `ok` and `errors` requests a second to `pool` (index 0 stable, 1 canary)
    /// until the returned task is aborted.
    pub fn traffic(
        &self,
        pool: usize,
        ok: u32,
        errors: u32,
        latency: f64,
    ) -> tokio::task::JoinHandle<()> {
        let m = self.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut sent = (0u64, 0u64);
            let start = Instant::now();
            loop {
                tick.tick().await;
                let t = start.elapsed().as_secs_f64();
                while (sent.0 as f64) < t * f64::from(ok) {
                    m.pools[pool].count(Outcome::Ok, latency);
                    sent.0 += 1;
                }
                while (sent.1 as f64) < t * f64::from(errors) {
                    m.pools[pool].count(Outcome::Error, latency);
                    sent.1 += 1;
                }
            }
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The analysis the tests judge with: error ratio max 1% and p99 max 800 ms over 10 s.
pub fn analysis(min_samples: u64) -> Analysis {
    let metric = |name: &str, b: Builtin, max: f64| Metric {
        name: name.into(),
        builtin: Some(b),
        query: None,
        counts: None,
        window: zdeploy_api::Duration::from_secs(10),
        max: Some(max),
        min: None,
        relative: None,
        min_samples: None,
    };
    Analysis {
        interval: zdeploy_api::Duration::from_secs(1),
        failure_limit: 0,
        inconclusive_limit: 10,
        min_samples,
        alpha: 0.01,
        metrics: vec![
            metric("error-ratio", Builtin::ErrorRatio, 0.01),
            metric("latency-p99", Builtin::LatencyP99, 0.8),
        ],
    }
}

/// Serves Alertmanager's webhook into `inbox` on a free loopback port; returns its URL.
pub async fn webhook(
    inbox: Arc<zdeploy_controller::analysis::webhook::AlertInbox>,
    token: &str,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alertmanager", listener.local_addr().unwrap());
    let router = zdeploy_controller::analysis::webhook::router(inbox, token.into());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}
