//! Settings the admin API changes while the data plane runs: weights, faults and the
//! endpoints of each pool. The data plane reads them lock-free until the generation number
//! moves, and publishes what it sees of each backend in return.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use zdeploy_api::chaos::MAX_FAULT;
use zdeploy_api::{Duration, Weight};

use crate::routes::Route;
use crate::shadow::{MismatchSample, SAMPLES};
use zdeploy_api::shadow::ShadowCopy;

/// A fault injected into one pool's traffic; it ends by itself at `until`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveFault {
    /// The fault as requested.
    pub spec: FaultSpec,
    /// When it stops applying, whatever else happens.
    pub until: Instant,
}

/// A fault request, as the admin API takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Added delay before a request is forwarded.
    #[serde(default)]
    pub latency: Duration,
    /// Share of requests answered with an injected error, 0..1.
    #[serde(default)]
    pub error_ratio: f64,
    /// Share of requests never forwarded (the client gets a timeout error), 0..1.
    #[serde(default)]
    pub drop_ratio: f64,
    /// How long the fault lasts; required so that no fault outlives its experiment.
    pub duration: Duration,
}

impl FaultSpec {
    /// Why the fault cannot be applied, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let ratio_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !ratio_ok(self.error_ratio) {
            return Some(format!(
                "errorRatio must be between 0 and 1 (got {})",
                self.error_ratio
            ));
        }
        if !ratio_ok(self.drop_ratio) {
            return Some(format!(
                "dropRatio must be between 0 and 1 (got {})",
                self.drop_ratio
            ));
        }
        if self.duration.get().is_zero() || self.duration > MAX_FAULT {
            return Some(format!(
                "duration must be above 0s and at most {MAX_FAULT} (got {})",
                self.duration
            ));
        }
        if self.latency > MAX_FAULT {
            return Some(format!(
                "latency must be at most {MAX_FAULT} (got {})",
                self.latency
            ));
        }
        None
    }
}

/// What happens to one request under a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Forward it, after this much delay.
    Forward(std::time::Duration),
    /// Answer with an injected error.
    Error,
    /// Never forward it; it will time out.
    Drop,
}

impl ActiveFault {
    /// The action for a request at `now`, given two uniform draws in 0..1.
    pub fn action(&self, now: Instant, error_draw: f64, drop_draw: f64) -> FaultAction {
        if now >= self.until {
            return FaultAction::Forward(std::time::Duration::ZERO);
        }
        if error_draw < self.spec.error_ratio {
            FaultAction::Error
        } else if drop_draw < self.spec.drop_ratio {
            FaultAction::Drop
        } else {
            FaultAction::Forward(self.spec.latency.get())
        }
    }
}

/// The current settings, one entry per pool in pool order.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Weight of each pool.
    pub weights: Vec<Weight>,
    /// Fault of each pool, if any.
    pub faults: Vec<Option<ActiveFault>>,
    /// Endpoints each pool connects to (names resolved to addresses).
    pub endpoints: Vec<Vec<Endpoint>>,
    /// Routes by client, first match wins; each names one of the pools.
    pub routes: Vec<Route>,
    /// Requests copied to a pool as well, their replies compared; none when `None`.
    pub shadow: Option<ShadowCopy>,
}

/// Whether a backend endpoint may take new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointState {
    /// Ready: takes new requests.
    Serving,
    /// Not ready or terminating: no new requests, while those it has finish.
    Draining,
}

/// One backend address of a pool and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The ZeroMQ endpoint, `tcp://10.0.0.7:5555`.
    pub address: String,
    /// Serving or draining.
    pub state: EndpointState,
}

impl Endpoint {
    /// An endpoint that takes requests.
    pub fn serving(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            state: EndpointState::Serving,
        }
    }
}

/// What the data plane sees of one backend, for `GET /endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// The ZeroMQ endpoint.
    pub address: String,
    /// `serving`, `draining`, or `removed` (gone from discovery, closing after its last
    /// reply or the request timeout).
    pub state: &'static str,
    /// Its ZMTP handshake completed and it answers.
    pub live: bool,
}

/// Settings shared between the admin API (writer) and the data plane (reader).
#[derive(Debug)]
pub struct Control {
    pools: Vec<String>,
    generation: AtomicU64,
    settings: Mutex<Settings>,
    backends: Mutex<Vec<Vec<BackendView>>>,
    samples: Mutex<Vec<MismatchSample>>,
    shutdown: AtomicBool,
}

impl Control {
    /// Control over `pools` starting from `settings`.
    pub fn new(pools: Vec<String>, settings: Settings) -> Self {
        Self {
            pools,
            generation: AtomicU64::new(0),
            settings: Mutex::new(settings),
            backends: Mutex::default(),
            samples: Mutex::default(),
            shutdown: AtomicBool::new(false),
        }
    }

    /// The pool names, in order.
    pub fn pools(&self) -> &[String] {
        &self.pools
    }

    /// Index of a pool by name.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p == name)
    }

    /// A copy of the current settings.
    pub fn snapshot(&self) -> Settings {
        self.settings.lock().expect("settings lock").clone()
    }

    /// Changes the settings; the data plane picks them up before its next batch.
    pub fn update(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.settings.lock().expect("settings lock"));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Increases whenever the settings change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records what the data plane sees of each pool's backends.
    pub fn publish_backends(&self, views: Vec<Vec<BackendView>>) {
        *self.backends.lock().expect("backends lock") = views;
    }

    /// What the data plane last published of each pool's backends, in pool order.
    pub fn backends(&self) -> Vec<Vec<BackendView>> {
        self.backends.lock().expect("backends lock").clone()
    }

    /// Keeps a mismatching pair, unless enough are kept since the shadow setting changed;
    /// a kept one is logged too (in a cluster, where zgate serves no admin API, the log is
    /// where a person reads it).
    pub fn keep_sample(&self, sample: MismatchSample) {
        let mut kept = self.samples.lock().expect("samples lock");
        if kept.len() < SAMPLES {
            tracing::warn!(pair = %sample.summary(), "shadow copy: the canary's reply differs from stable's");
            kept.push(sample);
        }
    }

    /// The mismatching pairs kept since the shadow setting last changed, first ones first.
    pub fn samples(&self) -> Vec<MismatchSample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// Forgets the kept pairs: they belong to the previous shadow setting.
    pub fn clear_samples(&self) {
        self.samples.lock().expect("samples lock").clear();
    }

    /// Asks the data plane to answer what is pending and stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// True once shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(latency_ms: u64, error: f64, drop: f64) -> ActiveFault {
        ActiveFault {
            spec: FaultSpec {
                latency: Duration::from_millis(latency_ms),
                error_ratio: error,
                drop_ratio: drop,
                duration: Duration::from_secs(1),
            },
            until: Instant::now() + std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn actions_follow_the_draws_and_expire() {
        let now = Instant::now();
        let f = fault(200, 0.1, 0.5);
        assert_eq!(f.action(now, 0.05, 0.9), FaultAction::Error);
        assert_eq!(f.action(now, 0.5, 0.2), FaultAction::Drop);
        assert_eq!(
            f.action(now, 0.5, 0.9),
            FaultAction::Forward(std::time::Duration::from_millis(200))
        );
        let later = now + std::time::Duration::from_secs(2);
        assert_eq!(
            f.action(later, 0.0, 0.0),
            FaultAction::Forward(std::time::Duration::ZERO)
        );
    }

    proptest::proptest! {
        /// Any latency and duration in an admin body: refused, or a fault whose end and
        /// delay fit a clock; never a panic.
        #[test]
        fn extreme_faults_are_refused_or_fit(latency in proptest::prelude::any::<u64>(), duration in proptest::prelude::any::<u64>()) {
            let body = format!(r#"{{"latency":"{latency}s","duration":"{duration}ms"}}"#);
            if let Ok(spec) = crate::admin::fault_from_body(body.as_bytes()) {
                let now = Instant::now();
                let f = ActiveFault { until: crate::deadline::after(now, spec.duration.get()), spec };
                if let FaultAction::Forward(delay) = f.action(now, 1.0, 1.0) {
                    proptest::prop_assert!(now.checked_add(delay).is_some());
                }
            }
        }
    }

    #[test]
    fn bad_faults_are_named() {
        let mut f = fault(0, 1.5, 0.0).spec;
        assert!(f.problem().unwrap().contains("errorRatio"));
        f.error_ratio = 0.0;
        f.duration = Duration::from_secs(0);
        assert!(f.problem().unwrap().contains("duration"));
    }
}
