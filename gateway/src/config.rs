//! What a gateway is told at start: its frontend, its pools, weights, timeout and limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use zdeploy_api::service::ErrorClassifier;

use crate::routes::{Route, check_routes};
use zdeploy_api::compare::ReplyComparison;
use zdeploy_api::service::MAX_REQUEST_TIMEOUT;
use zdeploy_api::shadow::ShadowCopy;
use zdeploy_api::{Duration, Weight};

/// The longest ZMTP heartbeat interval zgate takes.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The longest wait for backends at start zgate takes.
pub const MAX_READY_WAIT: Duration = Duration::from_secs(600);
/// The smallest `max_message_size` zgate takes, in bytes.
pub const MIN_MESSAGE_BYTES: i64 = 1024;

/// A named pool of backend endpoints (e.g. `stable` = two Windows pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The pool's name, used in weights, metrics and the admin API.
    pub name: String,
    /// ZeroMQ endpoints to connect to, e.g. `tcp://10.0.0.7:5555`.
    pub endpoints: Vec<String>,
}

/// How pool endpoints given by name become addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Discovery {
    /// Resolve the name every 2 s; every address it gives is a backend.
    #[default]
    Dns,
    /// The name is a Service's: follow its EndpointSlices through the Kubernetes API
    /// (readiness and termination included).
    EndpointSlices,
}

impl std::str::FromStr for Discovery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dns" => Ok(Self::Dns),
            "endpointslices" => Ok(Self::EndpointSlices),
            _ => Err(format!("{s:?}: write dns or endpointslices")),
        }
    }
}

/// Everything a gateway needs to run.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The service this gateway fronts (the `service` label on every metric).
    pub service: String,
    /// Endpoint the ROUTER frontend binds, e.g. `tcp://0.0.0.0:5555`.
    pub frontend: String,
    /// The pools, in order.
    pub pools: Vec<PoolConfig>,
    /// How pool endpoints given by name are found.
    pub discovery: Discovery,
    /// Initial weight of each pool, by name; pools left out start at 0.
    pub weights: BTreeMap<String, Weight>,
    /// A request without a reply after this long is answered with a timeout error.
    pub timeout: Duration,
    /// Routes by client: matching requests go to a pool whatever the weights.
    pub routes: Vec<Route>,
    /// Requests copied to a pool as well at start, their replies compared.
    pub shadow: Option<ShadowCopy>,
    /// How a shadow copy's reply is compared with the reply the client got.
    pub compare: ReplyComparison,
    /// Route a client to the same pool while weights stay the same.
    pub sticky: bool,
    /// Which replies count as errors.
    pub classifier: ErrorClassifier,
    /// Queue bound per peer, in messages, on every socket.
    pub hwm: i32,
    /// ZMTP heartbeat interval towards clients and backends (0 turns them off).
    pub heartbeat: Duration,
    /// Address of the `/metrics` HTTP listener, if any.
    pub metrics: Option<SocketAddr>,
    /// Address of the admin HTTP listener, if any.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API requires; mandatory when `admin` is not loopback.
    pub admin_token: Option<String>,
    /// Latency bucket edges beyond the defaults: the analysis' latency thresholds, whose
    /// slower requests are counted.
    pub latency_edges: Vec<std::time::Duration>,
    /// Largest message accepted from a client or a backend, in bytes; a peer that sends a
    /// larger one is disconnected.
    pub max_message_size: i64,
    /// Bytes of replies kept at most for shadow comparisons; past it, comparisons are
    /// skipped and counted `shed`.
    pub shadow_max_bytes: usize,
    /// At start, requests wait (unread) up to this long for every pool with weight to have a
    /// live backend, so a restarted gateway neither answers `unavailable` nor sends a pool's
    /// share to another pool while its backends connect.
    pub ready_wait: Duration,
}

/// A gateway configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--pool` was not `name=endpoint[,endpoint...]`.
    #[error("--pool {0:?}: write name=tcp://host:port[,tcp://host:port...]")]
    BadPool(String),
    /// Two pools share a name.
    #[error("--pool {0:?} is given twice")]
    DuplicatePool(String),
    /// `--weights` was not `name=N,...`.
    #[error("--weights {0:?}: write name=N,name=N with N from 0 to 100")]
    BadWeights(String),
    /// A weight names no pool.
    #[error("weight for unknown pool {0:?}; pools are: {1}")]
    UnknownPool(String, String),
    /// Every weight is zero.
    #[error("at least one pool needs a weight above 0")]
    AllZero,
    /// The weights are shares of all requests: they must add up to 100.
    #[error(
        "weights must add up to 100 (they are percentages of all requests); these add up to {0}"
    )]
    NotHundred(u32),
    /// No pool at all.
    #[error("give at least one --pool")]
    NoPools,
    /// A route names no pool.
    #[error("--route {0}")]
    BadRoute(String),
    /// A shadow copy names no pool.
    #[error("--shadow {0}")]
    BadShadow(String),
    /// A comparison mask does not compile.
    #[error("--compare-mask {0}: {1}")]
    BadMask(String, String),
    /// The request timeout is 0 or longer than zgate takes.
    #[error("--timeout {0}: must be above 0s and at most {max}", max = MAX_REQUEST_TIMEOUT)]
    Timeout(Duration),
    /// The heartbeat interval is longer than zgate takes.
    #[error("--heartbeat {0}: must be 0s (off) or from 10ms to {max} (libzmq keeps it in milliseconds; a longer one would detect nothing)", max = MAX_HEARTBEAT)]
    Heartbeat(Duration),
    /// The wait for backends at start is longer than zgate takes.
    #[error("--ready-wait {0}: must be at most {max}", max = MAX_READY_WAIT)]
    ReadyWait(Duration),
    /// The message size limit is too small for any request.
    #[error(
        "--max-message-bytes {0}: must be at least {MIN_MESSAGE_BYTES} (every frame, identities and request ids included, must fit)"
    )]
    MessageSize(i64),
    /// The queue bound is not a bound.
    #[error("--hwm {0}: must be at least 1 (libzmq takes 0 as no bound at all)")]
    Hwm(i32),
    /// The admin API would be reachable from the network without a token.
    #[error(
        "--admin {0} is not a loopback address: give --admin-token-file so the admin API needs a bearer token"
    )]
    AdminWithoutToken(SocketAddr),
}

impl PoolConfig {
    /// Parses `stable=tcp://127.0.0.1:6001,tcp://127.0.0.1:6002`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadPool(s.to_string());
        let (name, list) = s.split_once('=').ok_or_else(bad)?;
        let endpoints: Vec<String> = list.split(',').map(str::trim).map(String::from).collect();
        let well_formed = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && endpoints.iter().all(|e| e.contains("://") && e.len() > 6);
        if !well_formed {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_string(),
            endpoints,
        })
    }
}

/// Parses `stable=90,canary=10`.
pub fn parse_weights(s: &str) -> Result<BTreeMap<String, Weight>, ConfigError> {
    let bad = || ConfigError::BadWeights(s.to_string());
    s.split(',')
        .map(|part| {
            let (name, n) = part.split_once('=').ok_or_else(bad)?;
            let n: i64 = n.trim().parse().map_err(|_| bad())?;
            Ok((name.trim().to_string(), Weight::new(n).map_err(|_| bad())?))
        })
        .collect()
}

/// Checks `weights` against the pool names: no unknown pool, not all zero, a sum of 100.
pub fn check_weights(
    pools: &[String],
    weights: &BTreeMap<String, Weight>,
) -> Result<(), ConfigError> {
    if let Some(unknown) = weights.keys().find(|k| !pools.contains(k)) {
        return Err(ConfigError::UnknownPool(unknown.clone(), pools.join(", ")));
    }
    if weights.values().all(|w| *w == Weight::ZERO) {
        return Err(ConfigError::AllZero);
    }
    let sum: u32 = weights.values().map(|w| u32::from(w.percent())).sum();
    if sum != 100 {
        return Err(ConfigError::NotHundred(sum));
    }
    Ok(())
}

impl GatewayConfig {
    /// A configuration with zdeploy's defaults for everything but the frontend and pools.
    pub fn new(service: &str, frontend: &str, pools: Vec<PoolConfig>) -> Self {
        let weights = pools
            .first()
            .map(|p| (p.name.clone(), Weight::FULL))
            .into_iter()
            .collect();
        Self {
            service: service.to_string(),
            frontend: frontend.to_string(),
            pools,
            discovery: Discovery::Dns,
            weights,
            timeout: Duration::from_secs(2),
            routes: Vec::new(),
            shadow: None,
            compare: ReplyComparison::default(),
            sticky: false,
            classifier: ErrorClassifier::default(),
            hwm: 10_000,
            heartbeat: Duration::from_secs(1),
            metrics: None,
            admin: None,
            admin_token: None,
            latency_edges: Vec::new(),
            max_message_size: 8 << 20,
            ready_wait: Duration::from_secs(10),
            shadow_max_bytes: 64 << 20,
        }
    }

    /// The pool names, in order.
    pub fn pool_names(&self) -> Vec<String> {
        self.pools.iter().map(|p| p.name.clone()).collect()
    }

    /// Refuses configurations that cannot work or would be unsafe.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.pools.is_empty() {
            return Err(ConfigError::NoPools);
        }
        let names = self.pool_names();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(ConfigError::DuplicatePool(n.clone()));
            }
        }
        check_weights(&names, &self.weights)?;
        check_routes(&names, &self.routes).map_err(ConfigError::BadRoute)?;
        if let Some(shadow) = &self.shadow {
            check_shadow(&names, shadow).map_err(ConfigError::BadShadow)?;
        }
        if let Err((i, e)) = self.compare.compile() {
            return Err(ConfigError::BadMask(self.compare.masks[i].to_string(), e));
        }
        if self.timeout.get().is_zero() || self.timeout > MAX_REQUEST_TIMEOUT {
            return Err(ConfigError::Timeout(self.timeout));
        }
        let heartbeat = self.heartbeat.get();
        if heartbeat > MAX_HEARTBEAT.get()
            || (!heartbeat.is_zero() && heartbeat < std::time::Duration::from_millis(10))
        {
            return Err(ConfigError::Heartbeat(self.heartbeat));
        }
        if self.ready_wait > MAX_READY_WAIT {
            return Err(ConfigError::ReadyWait(self.ready_wait));
        }
        if self.max_message_size < MIN_MESSAGE_BYTES {
            return Err(ConfigError::MessageSize(self.max_message_size));
        }
        if self.hwm < 1 {
            return Err(ConfigError::Hwm(self.hwm));
        }
        if let Some(addr) = self.admin
            && !addr.ip().is_loopback()
            && self.admin_token.is_none()
        {
            return Err(ConfigError::AdminWithoutToken(addr));
        }
        Ok(())
    }
}

/// Checks that a shadow copy goes to one of `pools`.
pub fn check_shadow(pools: &[String], shadow: &ShadowCopy) -> Result<(), String> {
    if pools.contains(&shadow.pool) {
        Ok(())
    } else {
        Err(format!(
            "{}={}: no pool {:?}; pools are: {}",
            shadow.pool,
            shadow.percent,
            shadow.pool,
            pools.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pools_and_weights() {
        let p = PoolConfig::parse("stable=tcp://127.0.0.1:6001,tcp://127.0.0.1:6002").unwrap();
        assert_eq!(p.name, "stable");
        assert_eq!(p.endpoints.len(), 2);
        assert!(PoolConfig::parse("stable").is_err());
        assert!(PoolConfig::parse("st able=tcp://x:1").is_err());
        let w = parse_weights("stable=90,canary=10").unwrap();
        assert_eq!(w["canary"].percent(), 10);
        assert!(parse_weights("stable=101").is_err());
        assert!(parse_weights("stable").is_err());
    }

    proptest::proptest! {
        /// Any timeout, heartbeat, wait and size: checked, never a panic; what passes has
        /// deadlines that fit a clock and a heartbeat libzmq can take.
        #[test]
        fn extreme_settings_are_checked(
            timeout in proptest::prelude::any::<u64>(),
            heartbeat in proptest::prelude::any::<u64>(),
            wait in proptest::prelude::any::<u64>(),
            size in proptest::prelude::any::<i64>(),
        ) {
            let pools = vec![PoolConfig::parse("stable=tcp://127.0.0.1:1").unwrap()];
            let mut c = GatewayConfig::new("echo", "tcp://127.0.0.1:2", pools);
            c.timeout = std::time::Duration::from_millis(timeout).into();
            c.heartbeat = std::time::Duration::from_millis(heartbeat).into();
            c.ready_wait = std::time::Duration::from_millis(wait).into();
            c.max_message_size = size;
            if c.check().is_ok() {
                proptest::prop_assert!(c.timeout <= MAX_REQUEST_TIMEOUT && c.ready_wait <= MAX_READY_WAIT);
                proptest::prop_assert!(c.heartbeat.get().as_millis() * 3 <= i32::MAX as u128);
                proptest::prop_assert!(size >= MIN_MESSAGE_BYTES);
            }
        }
    }

    #[test]
    fn refuses_unsafe_or_impossible_setups() {
        let pools = vec![PoolConfig::parse("stable=tcp://127.0.0.1:1").unwrap()];
        let mut c = GatewayConfig::new("echo", "tcp://127.0.0.1:2", pools);
        assert_eq!(c.check(), Ok(()));
        c.weights = parse_weights("canary=10").unwrap();
        assert!(matches!(c.check(), Err(ConfigError::UnknownPool(..))));
        c.weights = parse_weights("stable=0").unwrap();
        assert_eq!(c.check(), Err(ConfigError::AllZero));
        // 90 + 90 would be reported as 90/90 but split 50/50: refused.
        let two = vec![
            PoolConfig::parse("stable=tcp://127.0.0.1:1").unwrap(),
            PoolConfig::parse("canary=tcp://127.0.0.1:3").unwrap(),
        ];
        let mut both = GatewayConfig::new("echo", "tcp://127.0.0.1:2", two);
        both.weights = parse_weights("stable=90,canary=90").unwrap();
        assert_eq!(both.check(), Err(ConfigError::NotHundred(180)));
        c.weights = parse_weights("stable=100").unwrap();
        c.admin = Some("0.0.0.0:9465".parse().unwrap());
        assert!(matches!(c.check(), Err(ConfigError::AdminWithoutToken(_))));
        c.admin_token = Some("secret".into());
        assert_eq!(c.check(), Ok(()));
    }
}
