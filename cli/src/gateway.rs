//! `zdeploy gateway`: runs zgate in the foreground until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use zdeploy_api::Duration;
use zdeploy_api::service::{ErrorClassifier, StatusFrame};
use zdeploy_gateway::config::parse_weights;
use zdeploy_gateway::{Discovery, Gateway, GatewayConfig, PoolConfig};

/// Arguments of `zdeploy gateway`.
#[derive(clap::Args)]
pub struct Args {
    /// ZeroMQ endpoint the ROUTER frontend binds (clients connect here); port * picks a free one.
    #[arg(long)]
    frontend: String,
    /// A pool of backends: NAME=ENDPOINT[,ENDPOINT...]; repeat for each pool.
    #[arg(long = "pool", required = true)]
    pools: Vec<String>,
    /// How a pool endpoint given by name becomes backends: dns (resolve it every 2 s) or
    /// endpointslices (the name is a Service's, tcp://SERVICE.NAMESPACE.svc.cluster.local:PORT:
    /// follow its EndpointSlices through the Kubernetes API, readiness and termination included).
    #[arg(long, default_value = "dns")]
    discovery: Discovery,
    /// Initial weights, NAME=N,... (0-100); pools left out get 0. Default: the first pool takes all.
    #[arg(long)]
    weights: Option<String>,
    /// A request without a reply after this long gets an error reply.
    #[arg(long, default_value = "2s")]
    timeout: Duration,
    /// Send matching requests to a pool whatever the weights, first match wins:
    /// POOL=identity:PREFIX (the client's ZeroMQ routing id) or POOL=frame:N:PREFIX (body
    /// frame N); \xNN for any byte. Repeat for more; change them with PUT /routes.
    #[arg(long = "route", value_name = "POOL=MATCH")]
    routes: Vec<zdeploy_gateway::routes::Route>,
    /// Copy PERCENT of the requests routed to other pools to POOL as well (shadow traffic):
    /// clients get the other pool's reply only; POOL's is compared with it
    /// (zgate_shadow_total). Change it with PUT /shadow.
    #[arg(long, value_name = "POOL=PERCENT")]
    shadow: Option<zdeploy_api::shadow::ShadowCopy>,
    /// Bytes of replies zgate keeps at most while it waits to compare a shadow copy's
    /// reply with stable's; past it, comparisons are skipped (zgate_shadow_skipped_total,
    /// reason shed) instead of holding more.
    #[arg(long, default_value_t = 64 << 20)]
    shadow_max_bytes: usize,
    /// How shadow replies are compared: bytes (frame by frame, after ignored frames and
    /// masks) or classifier (only error vs not).
    #[arg(long, default_value = "bytes")]
    compare_by: zdeploy_api::compare::CompareBy,
    /// Leave reply body frame N out of the shadow comparison (repeatable).
    #[arg(long = "compare-ignore-frame", value_name = "N")]
    compare_ignore_frames: Vec<u32>,
    /// Blank part of a reply frame before comparing: FRAME:regex:PATTERN or
    /// FRAME:bytes:START..END (repeatable), e.g. 0:regex:ts=[0-9]+.
    #[arg(long = "compare-mask", value_name = "MASK")]
    compare_masks: Vec<zdeploy_api::compare::Mask>,
    /// Keep each client on one pool (by its ZeroMQ identity) while weights stay the same.
    #[arg(long)]
    sticky: bool,
    /// Service name put in the `service` label of every metric.
    #[arg(long, default_value = "zgate")]
    service: String,
    /// Replies whose first frame starts with this text count as errors.
    #[arg(long, default_value = "ERR")]
    error_prefix: String,
    /// Replies whose frame N holds a status at or above --error-status-min count as errors
    /// (frame index).
    #[arg(long)]
    error_status_frame: Option<u32>,
    /// The lowest status --error-status-frame counts as an error.
    #[arg(long, default_value_t = 500)]
    error_status_min: u32,
    /// Queue bound per peer, in messages.
    #[arg(long, default_value_t = 10_000)]
    hwm: i32,
    /// ZMTP heartbeat interval (0s turns heartbeats off).
    #[arg(long, default_value = "1s")]
    heartbeat: Duration,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, value_parser = crate::listen::listen_addr)]
    metrics: Option<SocketAddr>,
    /// Serve the admin API (weights, faults) on this address.
    #[arg(long, value_parser = crate::listen::listen_addr)]
    admin: Option<SocketAddr>,
    /// File holding the bearer token the admin API requires (required off loopback).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Take weights from this ConfigMap (NAMESPACE/NAME, key weights.json) through the
    /// Kubernetes API: read before serving, then watched.
    #[arg(long)]
    weights_configmap: Option<String>,
    /// Add a latency bucket edge (repeatable), e.g. 800ms: a latency gate is judged on the
    /// count of requests slower than its threshold, which needs an edge there.
    #[arg(long = "latency-edge")]
    latency_edges: Vec<Duration>,
    /// At start, requests wait up to this long for every pool with weight to have a live
    /// backend (then they are served; a pool still without one answers `unavailable`).
    /// `/readyz` turns 200 when the wait ends.
    #[arg(long, default_value = "10s")]
    ready_wait: Duration,
    /// Largest message (all frames) accepted from a client or backend, in bytes; a peer
    /// sending a larger one is disconnected before zgate holds it.
    #[arg(long, default_value_t = 8 << 20)]
    max_message_bytes: i64,
}

impl Args {
    fn config(&self) -> anyhow::Result<GatewayConfig> {
        let pools = self
            .pools
            .iter()
            .map(|p| PoolConfig::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = GatewayConfig::new(&self.service, &self.frontend, pools);
        config.discovery = self.discovery;
        if let Some(w) = &self.weights {
            config.weights = parse_weights(w)?;
        }
        config.timeout = self.timeout;
        config.sticky = self.sticky;
        config.routes = self.routes.clone();
        config.shadow = self.shadow.clone();
        config.compare = zdeploy_api::compare::ReplyComparison {
            by: self.compare_by,
            ignore_frames: self.compare_ignore_frames.clone(),
            masks: self.compare_masks.clone(),
        };
        config.classifier = ErrorClassifier {
            reply_prefix: Some(self.error_prefix.clone()).filter(|p| !p.is_empty()),
            status_frame: self.error_status_frame.map(|frame| StatusFrame {
                frame,
                error_at_or_above: self.error_status_min,
            }),
        };
        config.hwm = self.hwm;
        config.heartbeat = self.heartbeat;
        config.latency_edges = self.latency_edges.iter().map(|d| d.get()).collect();
        config.max_message_size = self.max_message_bytes;
        config.ready_wait = self.ready_wait;
        config.shadow_max_bytes = self.shadow_max_bytes;
        config.metrics = self.metrics;
        config.admin = self.admin;
        if let Some(f) = &self.admin_token_file {
            let token = std::fs::read_to_string(f)
                .with_context(|| format!("reading --admin-token-file {}", f.display()))?;
            let token = token.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "--admin-token-file {} is empty",
                f.display()
            );
            config.admin_token = Some(token);
        }
        Ok(config)
    }
}

/// Runs the gateway until a signal asks it to stop.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let mut config = args.config()?;
    let needs_api = args.weights_configmap.is_some() || args.discovery == Discovery::EndpointSlices;
    let client = match needs_api {
        true => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (for --weights-configmap or --discovery endpointslices)")?,
        ),
        false => None,
    };
    let source = match (&args.weights_configmap, &client) {
        (Some(target), Some(client)) => {
            let (ns, name) = target
                .split_once('/')
                .context("--weights-configmap: write NAMESPACE/NAME")?;
            // The recorded weights before the first request: never more to the canary than recorded.
            let api = kube::Api::namespaced(client.clone(), ns);
            let pools = config.pool_names();
            let weights = zdeploy_gateway::follow::read(&api, name, &pools)
                .await
                .map_err(anyhow::Error::msg)?;
            config.weights = pools.into_iter().zip(weights).collect();
            Some((client.clone(), ns.to_string(), name.to_string()))
        }
        _ => None,
    };
    let configured: Vec<Vec<String>> = config.pools.iter().map(|p| p.endpoints.clone()).collect();
    let gateway = Gateway::start(config).await?;
    let _endpoints = match (&client, args.discovery) {
        (Some(client), Discovery::EndpointSlices) => Some(
            zdeploy_gateway::endpointslices::follow(
                client.clone(),
                configured,
                gateway.control().clone(),
            )
            .await
            .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let _follow = match source {
        Some((client, ns, name)) => Some(
            zdeploy_gateway::follow::follow(client, ns, name, gateway.control().clone())
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let mut line = format!("zgate ready: frontend {}", gateway.frontend());
    if let Some(a) = gateway.metrics_addr() {
        line.push_str(&format!(" metrics http://{a}/metrics"));
    }
    if let Some(a) = gateway.admin_addr() {
        line.push_str(&format!(" admin http://{a}"));
    }
    println!("{line}");
    std::io::stdout().flush()?;
    crate::signals::wait_for_stop().await;
    tracing::info!("stopping: answering pending requests");
    gateway.shutdown().await;
    Ok(())
}
