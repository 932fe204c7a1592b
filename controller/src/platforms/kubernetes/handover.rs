//! The hand-over of a promotion in a cluster. The engine promotes in order: every request
//! to the canary, stable replaced by the canary's revision, requests back to stable. In a
//! cluster the middle step is a rolling update that takes seconds to minutes, and a pod
//! may be Ready before it listens; so the canary pool, which already runs the promoted
//! revision, keeps every request until the stable Deployment has rolled and zgate
//! reaches each of its pods. Then stable takes the requests back and the canary drains at
//! the size it had at its peak before it scales down.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::service::{Handover, RolloutState, Router};
use zdeploy_api::{Weight, ZmqServiceSpec, ZmqServiceStatus};

use crate::engine::{Action, clock, sizing};

/// How often a pending hand-over looks at the stable pool (its Deployment's changes wake
/// the controller too; zgate reaching the pods does not).
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Starts the hand-over when the engine promoted `ended`, a canary every zgate replica
/// reaches (`canary_live`: the fewest live canary backends a replica reports, `None` when
/// none could be asked). One that some replica does not reach cannot take every request
/// there: stable keeps them while it rolls. A rollout that starts ends it (the canary pool
/// is the new canary's).
pub fn begin_or_end(
    spec: &ZmqServiceSpec,
    ended: Option<&RolloutState>,
    canary_live: Option<f64>,
    status: &mut ZmqServiceStatus,
    actions: &[Action],
) {
    let promoted = promotes(actions);
    let reached =
        ended.is_some_and(|r| r.reached.is_some()) && canary_live.is_none_or(|n| n >= 1.0);
    if status.rollout.is_some() || spec.strategy.router != Router::Gateway {
        status.handover = None;
    } else if promoted && reached {
        status.handover = Some(Handover {
            peak_weight: status
                .history
                .first()
                .map_or(Weight::FULL, |h| h.peak_weight),
            stable_since: None,
        });
    }
}

/// Whether the engine's `actions` promote the canary.
pub fn promotes(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::DeployStable { .. }))
}

/// Whether the canary pool still takes every request.
pub fn canary_holds_all(status: &ZmqServiceStatus) -> bool {
    status
        .handover
        .as_ref()
        .is_some_and(|h| h.stable_since.is_none())
}

/// The canary pool's size during a hand-over and its drain after; `None` when none runs.
pub fn canary_pods(spec: &ZmqServiceSpec, status: &ZmqServiceStatus) -> Option<i32> {
    let h = status.handover.as_ref()?;
    Some(sizing::canary_replicas(spec, h.peak_weight))
}

/// Whether `stable` has rolled: every pod it wants runs its current template and is
/// available, and no pod of an older template is left.
pub fn rolled(stable: &Deployment, replicas: i32) -> bool {
    let (Some(s), Some(generation)) = (&stable.status, stable.metadata.generation) else {
        return false;
    };
    s.observed_generation.is_some_and(|g| g >= generation)
        && s.updated_replicas.unwrap_or(0) >= replicas
        && s.available_replicas.unwrap_or(0) >= replicas
        && s.replicas.unwrap_or(0) == replicas
}

/// Whether `d` has seen its current template and runs only pods of it, one available:
/// what a new canary's pool must be before zgate's reach of it means anything.
pub fn only_current_pods(d: &Deployment) -> bool {
    let (Some(s), Some(generation)) = (&d.status, d.metadata.generation) else {
        return false;
    };
    let updated = s.updated_replicas.unwrap_or(0);
    s.observed_generation.is_some_and(|g| g >= generation)
        && updated >= 1
        && s.available_replicas.unwrap_or(0) >= 1
        && s.replicas.unwrap_or(0) == updated
}

/// Stable took the requests back at `now`: the canary drains from then.
pub fn stable_took_over(status: &mut ZmqServiceStatus, now: Timestamp) {
    if let Some(h) = status.handover.as_mut() {
        h.stable_since.get_or_insert(Time(now));
    }
}

/// Ends a hand-over whose canary has drained by `now`.
pub fn end_drained(spec: &ZmqServiceSpec, status: &mut ZmqServiceStatus, now: Timestamp) {
    let drained = status
        .handover
        .as_ref()
        .and_then(|h| h.stable_since.as_ref())
        .is_some_and(|since| {
            Duration::try_from(now.duration_since(since.0))
                .is_ok_and(|d| d >= clock::drain_window(spec))
        });
    if drained {
        status.handover = None;
    }
}

/// When the hand-over next needs a look: every `LOOK_EVERY` while stable rolls, at the
/// drain's end after.
pub fn next_look(
    spec: &ZmqServiceSpec,
    status: &ZmqServiceStatus,
    now: Timestamp,
) -> Option<Duration> {
    let h = status.handover.as_ref()?;
    Some(match &h.stable_since {
        None => LOOK_EVERY,
        Some(since) => {
            let passed = Duration::try_from(now.duration_since(since.0)).unwrap_or_default();
            clock::drain_window(spec).saturating_sub(passed) + Duration::from_millis(100)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use zdeploy_api::service::{Outcome, RolloutRecord};

    fn w(n: u8) -> Weight {
        Weight::new(i64::from(n)).unwrap()
    }

    fn reached() -> RolloutState {
        let mut r = RolloutState::started_at(Time(Timestamp::UNIX_EPOCH), None);
        r.reached = Some(Time(Timestamp::UNIX_EPOCH));
        r
    }

    fn promoted() -> ZmqServiceStatus {
        let mut status = ZmqServiceStatus::default();
        let mut record: RolloutRecord = serde_json::from_value(serde_json::json!({
            "revision": "echo:2",
            "stableRevision": "echo:1",
            "outcome": "Promoted",
            "started": "2026-12-07T10:00:00Z",
            "ended": "2026-12-07T10:05:00Z",
            "reason": "promoted by hand (--full)",
        }))
        .unwrap();
        assert_eq!(record.outcome, Outcome::Promoted);
        record.peak_weight = w(50);
        status.history.push(record);
        status
    }

    #[test]
    fn a_promotion_holds_every_request_on_the_canary_until_stable_took_over_then_drains() {
        let mut spec = zdeploy_testkit::fixtures::echo().build().spec;
        spec.replicas = 6;
        let promote = [Action::DeployStable {
            revision: "echo:2".into(),
        }];
        let mut status = promoted();
        let unreached = RolloutState::started_at(Time(Timestamp::UNIX_EPOCH), None);
        begin_or_end(&spec, Some(&unreached), None, &mut status, &promote);
        assert_eq!(status.handover, None, "a canary zgate never reached");
        begin_or_end(&spec, Some(&reached()), Some(0.0), &mut status, &promote);
        assert_eq!(status.handover, None, "a zgate replica does not reach it");
        begin_or_end(&spec, Some(&reached()), Some(1.0), &mut status, &promote);
        assert!(canary_holds_all(&status));
        assert_eq!(canary_pods(&spec, &status), Some(3), "its peak size");
        let t0 = Timestamp::UNIX_EPOCH;
        assert_eq!(next_look(&spec, &status, t0), Some(LOOK_EVERY));

        stable_took_over(&mut status, t0);
        assert!(!canary_holds_all(&status));
        assert_eq!(canary_pods(&spec, &status), Some(3), "drains at its size");
        let almost = t0 + (clock::drain_window(&spec) - Duration::from_millis(1));
        end_drained(&spec, &mut status, almost);
        assert!(status.handover.is_some());
        end_drained(&spec, &mut status, t0 + clock::drain_window(&spec));
        assert_eq!(status.handover, None);
        assert_eq!(canary_pods(&spec, &status), None);
    }

    #[test]
    fn a_new_rollout_or_the_replica_router_has_no_hand_over() {
        let spec = zdeploy_testkit::fixtures::echo().build().spec;
        let promote = [Action::DeployStable {
            revision: "echo:2".into(),
        }];
        let mut status = promoted();
        begin_or_end(&spec, Some(&reached()), None, &mut status, &promote);
        status.rollout = Some(reached());
        begin_or_end(&spec, None, None, &mut status, &[]);
        assert_eq!(status.handover, None);

        let mut replicas = spec.clone();
        replicas.strategy.router = Router::Replicas;
        let mut status = promoted();
        begin_or_end(&replicas, Some(&reached()), None, &mut status, &promote);
        assert_eq!(status.handover, None);
    }

    #[test]
    fn stable_has_rolled_when_every_wanted_pod_is_new_and_available_and_no_old_one_is_left() {
        let dep = |generation: i64, observed: i64, updated: i32, available: i32, total: i32| {
            let mut d = Deployment::default();
            d.metadata.generation = Some(generation);
            d.status = Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                ..Default::default()
            });
            d
        };
        assert!(rolled(&dep(4, 4, 3, 3, 3), 3));
        assert!(
            !rolled(&dep(4, 3, 3, 3, 3), 3),
            "the new template not yet seen"
        );
        assert!(!rolled(&dep(4, 4, 2, 3, 4), 3), "an old pod left");
        assert!(!rolled(&dep(4, 4, 3, 2, 3), 3), "one not available");
        assert!(!rolled(&Deployment::default(), 3));

        assert!(only_current_pods(&dep(4, 4, 1, 1, 1)));
        assert!(!only_current_pods(&dep(4, 3, 1, 1, 1)), "not yet seen");
        assert!(!only_current_pods(&dep(4, 4, 1, 1, 2)), "an old pod left");
        assert!(!only_current_pods(&dep(4, 4, 1, 0, 1)), "none available");
    }
}
