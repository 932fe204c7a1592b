//! zgate: a ZeroMQ gateway that sends each request to a pool chosen by weight, answers
//! every request exactly once, and exports per-pool metrics. The data plane is libzmq on
//! a dedicated thread; the admin API and `/metrics` are HTTP on tokio.

pub mod admin;
pub mod classify;
pub mod config;
pub mod control;
mod dataplane;
pub mod deadline;
pub mod discovery;
pub mod endpointslices;
pub mod envelope;
pub mod follow;
pub mod heartbeat;
pub mod http;
pub mod limits;
pub mod memory;
pub mod metrics;
mod pending;
pub mod router;
pub mod routes;
pub mod shadow;
pub mod watch_retry;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use config::{ConfigError, Discovery, GatewayConfig, PoolConfig};
pub use control::{Control, Endpoint, EndpointState, FaultSpec, Settings};

use dataplane::DataPlane;
use metrics::GatewayMetrics;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// libzmq could not bind or connect.
    #[error("zeromq: {0} (frontend {1})")]
    Zmq(zmq::Error, String),
    /// An HTTP listener could not bind.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A running gateway.
pub struct Gateway {
    control: Arc<Control>,
    metrics: Arc<GatewayMetrics>,
    frontend: String,
    metrics_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    data_plane: Option<std::thread::JoinHandle<()>>,
    /// Background tasks (HTTP listeners, name resolution), stopped with the gateway.
    tasks: Vec<JoinHandle<()>>,
}

/// Serves `router` on `addr` within the default limits, counting refusals as `name`'s.
async fn serve(
    addr: SocketAddr,
    router: axum::Router,
    metrics: &GatewayMetrics,
    name: &str,
) -> Result<(SocketAddr, JoinHandle<()>), GatewayError> {
    http::bind(
        addr,
        router,
        http::Limits::default(),
        metrics.http_refused(name),
    )
    .await
    .map_err(|e| GatewayError::Listen(addr, e))
}

/// Runs the data plane; if it panics or its loop fails, ends the process with a clear
/// line, so that its supervisor (kubelet, or whoever started `zdeploy up`) starts it again
/// instead of keeping a gateway that answers nothing.
fn run_data_plane(plane: DataPlane, control: Arc<Control>, heartbeat: Arc<heartbeat::Heartbeat>) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plane.run()));
    heartbeat.stop();
    let why = match outcome {
        Err(_) => "it panicked (the message is above)",
        Ok(()) if control.shutting_down() => return,
        Ok(()) => "its poll loop failed (the error is above)",
    };
    tracing::error!("zgate's data plane stopped: {why}; exiting so that zgate is started again");
    eprintln!("zgate's data plane stopped: {why}; exiting so that zgate is started again");
    std::process::exit(70);
}

impl Gateway {
    /// Checks the configuration, binds every socket and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        config.check()?;
        let pools = config.pool_names();
        let weights = pools
            .iter()
            .map(|p| config.weights.get(p).copied().unwrap_or_default())
            .collect();
        let configured: Vec<Vec<String>> =
            config.pools.iter().map(|p| p.endpoints.clone()).collect();
        let control = Arc::new(Control::new(
            pools.clone(),
            Settings {
                weights,
                faults: vec![None; pools.len()],
                routes: config.routes.clone(),
                shadow: config.shadow.clone(),
                // Names join once resolved; until then only literal addresses.
                endpoints: configured
                    .iter()
                    .map(|eps| {
                        eps.iter()
                            .filter(|e| discovery::named(e).is_none())
                            .map(Endpoint::serving)
                            .collect()
                    })
                    .collect(),
            },
        ));
        let metrics = Arc::new(GatewayMetrics::new(
            &config.service,
            &pools,
            &config.latency_edges,
        ));
        metrics
            .open_files_limit
            .set(i64::try_from(limits::raise_open_files()).unwrap_or(i64::MAX));
        let (plane, frontend) = DataPlane::bind(&config, control.clone(), metrics.clone())
            .map_err(|e| GatewayError::Zmq(e, config.frontend.clone()))?;
        let (beat_control, heartbeat) = (control.clone(), metrics.heartbeat.clone());
        let data_plane = std::thread::Builder::new()
            .name("zgate-dataplane".into())
            .spawn(move || run_data_plane(plane, beat_control, heartbeat))
            .expect("spawning the data plane thread");
        let mut gateway = Self {
            control,
            metrics,
            frontend,
            metrics_addr: None,
            admin_addr: None,
            data_plane: Some(data_plane),
            tasks: Vec::new(),
        };
        gateway.tasks.push(memory::give_back_periodically());
        // EndpointSlices are followed by the caller, who has the Kubernetes client.
        if config.discovery == Discovery::Dns
            && configured
                .iter()
                .flatten()
                .any(|e| discovery::named(e).is_some())
        {
            gateway
                .tasks
                .push(discovery::follow(configured, gateway.control.clone()).await);
        }
        if let Some(addr) = config.metrics {
            let router = admin::metrics_router(gateway.metrics.clone());
            let (bound, task) = serve(addr, router, &gateway.metrics, "metrics").await?;
            gateway.metrics_addr = Some(bound);
            gateway.tasks.push(task);
        }
        if let Some(addr) = config.admin {
            let router = admin::admin_router(
                gateway.control.clone(),
                gateway.metrics.heartbeat.clone(),
                config.admin_token.clone(),
            );
            let (bound, task) = serve(addr, router, &gateway.metrics, "admin").await?;
            gateway.admin_addr = Some(bound);
            gateway.tasks.push(task);
        }
        Ok(gateway)
    }

    /// The endpoint the frontend is bound to (with the real port when `*` or 0 was asked).
    pub fn frontend(&self) -> &str {
        &self.frontend
    }

    /// The address `/metrics` is served on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address the admin API is served on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared settings (weights and faults) of this gateway.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Backends of `pool` that can take a request right now.
    pub fn live_backends(&self, pool: &str) -> usize {
        self.control.pool_index(pool).map_or(0, |i| {
            self.metrics.pools[i].live_backends.get().max(0) as usize
        })
    }

    /// The handshake failure counted most often for `pool`'s backends, if any was.
    pub fn handshake_failure(&self, pool: &str) -> Option<metrics::HandshakeFailure> {
        self.control
            .pool_index(pool)
            .and_then(|i| self.metrics.pools[i].commonest_handshake_failure())
    }

    /// Requests forwarded to `pool` and not answered yet.
    pub fn in_flight(&self, pool: &str) -> i64 {
        self.control
            .pool_index(pool)
            .map_or(0, |i| self.metrics.pools[i].in_flight.get())
    }

    /// Whether the data plane is turning (it marks every turn of its loop).
    pub fn health(&self) -> Result<(), heartbeat::Unhealthy> {
        self.metrics.heartbeat.check(std::time::Instant::now())
    }

    /// The metrics in the Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode()
    }

    /// Answers pending requests with an error, closes every socket and stops the HTTP side.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.control.request_shutdown();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(t) = self.data_plane.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.control.request_shutdown();
        for task in &self.tasks {
            task.abort();
        }
    }
}
