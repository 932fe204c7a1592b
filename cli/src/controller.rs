//! `zdeploy controller`: the in-cluster controller, with `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::get;
use zdeploy_controller::platforms::kubernetes::leader::{self, Leader};
use zdeploy_controller::platforms::kubernetes::measure::MetricsSource;
use zdeploy_controller::platforms::kubernetes::queue::{CanaryLimits, LimitArg};
use zdeploy_controller::platforms::kubernetes::stats::Stats;
use zdeploy_controller::platforms::kubernetes::{alerts, manager};

/// Arguments of `zdeploy controller`.
#[derive(clap::Args)]
pub struct Args {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:8080", value_parser = crate::listen::listen_addr)]
    probes: SocketAddr,
    /// Judge canaries with this Prometheus (default: scrape each service's zgate directly).
    #[arg(long)]
    prometheus: Option<String>,
    /// zgate's series in Prometheus carry no `namespace` label (no Kubernetes relabeling).
    #[arg(long)]
    no_namespace_label: bool,
    /// Receive Alertmanager webhooks here (POST /alertmanager): a firing alert labelled with
    /// a service, its namespace and pool="canary" rolls that canary back at once, and no
    /// chaos run starts for a service while an alert for it fires.
    #[arg(long, requires = "webhook_token_file", value_parser = crate::listen::listen_addr)]
    alertmanager_webhook: Option<SocketAddr>,
    /// File holding the bearer token Alertmanager must send.
    #[arg(long)]
    webhook_token_file: Option<std::path::PathBuf>,
    /// Reconcile without taking the `zdeploy-controller` Lease (only when one replica runs).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the Lease (the controller's own namespace in the cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "zdeploy-system")]
    lease_namespace: String,
    /// Name this replica holds the Lease under.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The most canaries a spec change starts at once in a namespace: `N` for every
    /// namespace, `NAMESPACE=N` for one (repeatable); the others wait in a queue that
    /// `zdeploy status` shows. Default: no limit. Commands from people are not queued.
    #[arg(long, value_name = "N|NAMESPACE=N")]
    max_canaries: Vec<LimitArg>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    // From the start: a SIGTERM while the Lease is taken must not be lost.
    let stop = crate::signals::listen_for_stop();
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
    let limits = zdeploy_gateway::http::Limits::default();
    zdeploy_gateway::http::bind(args.probes, router, limits, stats.probes_refused.clone())
        .await
        .with_context(|| format!("listening on {}", args.probes))?;
    let mut alerts = None;
    if let (Some(addr), Some(file)) = (args.alertmanager_webhook, &args.webhook_token_file) {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_string();
        anyhow::ensure!(!token.is_empty(), "{} is empty", file.display());
        let inbox = Arc::new(zdeploy_controller::analysis::webhook::AlertInbox::default());
        let router = zdeploy_controller::analysis::webhook::router(inbox.clone(), token);
        let limits = zdeploy_gateway::http::Limits {
            max_body_bytes: zdeploy_controller::analysis::webhook::MAX_BODY,
            ..limits
        };
        zdeploy_gateway::http::bind(addr, router, limits, stats.webhook_refused.clone())
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tokio::spawn(alerts::rollback_on_alerts(client.clone(), inbox.clone()));
        alerts = Some(inbox);
    }
    let metrics = match &args.prometheus {
        Some(url) => MetricsSource::Prometheus {
            url: url.clone(),
            namespace_label: !args.no_namespace_label,
        },
        None => MetricsSource::Scrape,
    };
    let limits = CanaryLimits::from_args(&args.max_canaries);
    if args.no_leader_election {
        stats.set_leader(true);
        manager::run(client, metrics, stats, alerts, limits, stop).await?;
        return Ok(());
    }
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("zdeploy-{}-{}", std::process::id(), fastrand::u32(..)));
    let mut leader = Leader::join(client.clone(), &args.lease_namespace, &identity)
        .await
        .with_context(|| {
            format!(
                "joining the election for Lease {}/{}",
                args.lease_namespace,
                leader::LEASE_NAME
            )
        })?;
    tracing::info!(%identity, "waiting for the {} Lease", leader::LEASE_NAME);
    tokio::select! {
        _ = leader.acquired() => {}
        _ = stop.clone() => {
            leader.release().await;
            return Ok(());
        }
    }
    tracing::info!(%identity, "holding the {} Lease: reconciling", leader::LEASE_NAME);
    stats.set_leader(true);
    let outcome = tokio::select! {
        r = manager::run(client, metrics, stats.clone(), alerts, limits, stop) => r.map_err(anyhow::Error::from),
        _ = leader.lost() => Err(anyhow::anyhow!(
            "lost the {} Lease: stopping so that only the new holder reconciles",
            leader::LEASE_NAME
        )),
    };
    stats.set_leader(false);
    leader.release().await;
    outcome
}
