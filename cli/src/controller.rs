//! `zdeploy controller`: the in-cluster controller, with `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::get;
use zdeploy_controller::platforms::kubernetes::controller::{self, MetricsSource, Stats};

/// Arguments of `zdeploy controller`.
#[derive(clap::Args)]
pub struct Args {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    probes: SocketAddr,
    /// Judge canaries with this Prometheus (default: scrape each service's zgate directly).
    #[arg(long)]
    prometheus: Option<String>,
    /// zgate's series in Prometheus carry no `namespace` label (no Kubernetes relabeling).
    #[arg(long)]
    no_namespace_label: bool,
    /// Receive Alertmanager webhooks here (POST /alertmanager): a firing alert labelled with
    /// a service, its namespace and pool="canary" rolls that canary back at once.
    #[arg(long, requires = "webhook_token_file")]
    alertmanager_webhook: Option<SocketAddr>,
    /// File holding the bearer token Alertmanager must send.
    #[arg(long)]
    webhook_token_file: Option<std::path::PathBuf>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let s = s.clone();
                async move { s.encode() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.probes)
        .await
        .with_context(|| format!("listening on {}", args.probes))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    if let (Some(addr), Some(file)) = (args.alertmanager_webhook, &args.webhook_token_file) {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_string();
        anyhow::ensure!(!token.is_empty(), "{} is empty", file.display());
        let inbox = Arc::new(zdeploy_controller::analysis::webhook::AlertInbox::default());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let router = zdeploy_controller::analysis::webhook::router(inbox.clone(), token);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        tokio::spawn(controller::rollback_on_alerts(client.clone(), inbox));
    }
    let metrics = match &args.prometheus {
        Some(url) => MetricsSource::Prometheus {
            url: url.clone(),
            namespace_label: !args.no_namespace_label,
        },
        None => MetricsSource::Scrape,
    };
    controller::run(client, metrics, stats).await?;
    Ok(())
}
