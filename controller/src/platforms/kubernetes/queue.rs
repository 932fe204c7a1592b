//! At most N canaries at once in a namespace. A change that reaches many services at once
//! (a GitOps commit touching ten manifests, one shared ConfigMap) starts N canaries; the
//! others wait their turn in the order their change was seen (`status.queuedSince`), and
//! say so. Commands from people (`zdeploy rollout`) are not queued: someone asked for
//! that one. The count comes from the controller's cache of ZmqServices plus the canaries
//! this process started that the cache may not show yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use zdeploy_api::ZmqService;

/// The most canaries in flight per namespace: a default and per-namespace values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanaryLimits {
    default: Option<u32>,
    by_namespace: BTreeMap<String, u32>,
}

/// One `--max-canaries` value: `N` (every namespace) or `NAMESPACE=N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitArg {
    /// The limit of every namespace without its own.
    Default(u32),
    /// The limit of one namespace.
    Namespace(String, u32),
}

/// Why a `--max-canaries` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitArgError {
    /// The count is not a whole number of at least 1.
    #[error("{0:?} is not a number of canaries of at least 1 (write N or NAMESPACE=N)")]
    Count(String),
    /// The namespace part is empty.
    #[error("the namespace before '=' is empty (write N or NAMESPACE=N)")]
    Namespace,
}

impl FromStr for LimitArg {
    type Err = LimitArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let count = |n: &str| match n.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(LimitArgError::Count(n.to_string())),
        };
        match s.split_once('=') {
            Some((ns, _)) if ns.trim().is_empty() => Err(LimitArgError::Namespace),
            Some((ns, n)) => Ok(Self::Namespace(ns.trim().to_string(), count(n)?)),
            None => Ok(Self::Default(count(s)?)),
        }
    }
}

impl CanaryLimits {
    /// The limits the flags give (a later value for the same scope wins).
    pub fn from_args(args: &[LimitArg]) -> Self {
        let mut limits = Self::default();
        for a in args {
            match a {
                LimitArg::Default(n) => limits.default = Some(*n),
                LimitArg::Namespace(ns, n) => {
                    limits.by_namespace.insert(ns.clone(), *n);
                }
            }
        }
        limits
    }

    /// The limit in `ns`, if there is one.
    pub fn of(&self, ns: &str) -> Option<u32> {
        self.by_namespace.get(ns).copied().or(self.default)
    }
}

/// Whether a waiting change may start its canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// It starts now.
    Go,
    /// It waits: `in_flight` canaries run in its namespace, `limit` at most; it is
    /// `position` in the queue (1: next).
    Wait {
        /// Canaries running in the namespace.
        in_flight: usize,
        /// The namespace's limit.
        limit: u32,
        /// Place in the queue, from 1.
        position: usize,
    },
}

/// The canaries in flight and the changes waiting, per namespace.
#[derive(Debug, Default)]
pub struct Queue {
    limits: CanaryLimits,
    services: OnceLock<Store<ZmqService>>,
    /// Canaries this process started, by namespace, until it sees them end.
    started: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl Queue {
    /// A queue with `limits`.
    pub fn new(limits: CanaryLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Counts from `services`, the controller's cache of every ZmqService.
    pub fn read_from(&self, services: Store<ZmqService>) {
        let _ = self.services.set(services);
    }

    /// Whether `svc`, whose change has waited since `since`, may start its canary now;
    /// a `Go` counts it in flight at once, so two reconciles never take one place.
    pub fn turn(&self, svc: &ZmqService, since: Timestamp) -> Turn {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let Some(limit) = self.limits.of(&ns) else {
            return Turn::Go;
        };
        let mut started = self.started.lock().expect("queue lock");
        let mine = started.entry(ns.clone()).or_default();
        let others: Vec<std::sync::Arc<ZmqService>> = self
            .services
            .get()
            .map(|s| s.state())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() != name)
            .collect();
        let in_flight: BTreeSet<String> = others
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.rollout.is_some()))
            .map(|s| s.name_any())
            .chain(mine.iter().filter(|n| **n != name).cloned())
            .collect();
        // Changes seen before this one (the name breaks a tie) go first.
        let ahead = others
            .iter()
            .filter(|s| !in_flight.contains(&s.name_any()))
            .filter_map(|s| Some((s.status.as_ref()?.queued_since.as_ref()?.0, s.name_any())))
            .filter(|key| *key < (since, name.clone()))
            .count();
        if in_flight.len() < limit as usize && ahead == 0 {
            mine.insert(name);
            return Turn::Go;
        }
        Turn::Wait {
            in_flight: in_flight.len(),
            limit,
            position: ahead + 1,
        }
    }

    /// Records that `svc` has no canary in flight any more (the reconcile that ended it).
    pub fn ended(&self, svc: &ZmqService) {
        let ns = svc.namespace().unwrap_or_default();
        if let Some(names) = self.started.lock().expect("queue lock").get_mut(&ns) {
            names.remove(&svc.name_any());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_give_a_default_and_per_namespace_limits() {
        let args: Vec<LimitArg> = ["3", "trading=5", "batch = 1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let limits = CanaryLimits::from_args(&args);
        assert_eq!(limits.of("trading"), Some(5));
        assert_eq!(limits.of("batch"), Some(1));
        assert_eq!(limits.of("other"), Some(3));
        assert_eq!(CanaryLimits::default().of("other"), None);
        assert_eq!(
            "0".parse::<LimitArg>(),
            Err(LimitArgError::Count("0".into()))
        );
        assert_eq!("=2".parse::<LimitArg>(), Err(LimitArgError::Namespace));
        assert_eq!(
            "trading=x".parse::<LimitArg>(),
            Err(LimitArgError::Count("x".into()))
        );
    }

    fn svc(name: &str) -> ZmqService {
        let mut s = zdeploy_testkit::fixtures::echo().build();
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn the_limit_holds_and_a_place_freed_goes_to_the_next() {
        let q = Queue::new(CanaryLimits::from_args(&[LimitArg::Default(2)]));
        let t = Timestamp::UNIX_EPOCH;
        assert_eq!(q.turn(&svc("a"), t), Turn::Go);
        assert_eq!(q.turn(&svc("b"), t), Turn::Go);
        assert_eq!(
            q.turn(&svc("c"), t),
            Turn::Wait {
                in_flight: 2,
                limit: 2,
                position: 1
            }
        );
        assert_eq!(
            q.turn(&svc("a"), t),
            Turn::Go,
            "a runs already: asking again is fine"
        );
        q.ended(&svc("a"));
        assert_eq!(q.turn(&svc("c"), t), Turn::Go);
    }
}
