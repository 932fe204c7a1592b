//! The engine's times, for every driver: when it next needs to be given the time
//! (`poll_timeout`, in the manner of quinn-proto), how old the canary is, and how long a
//! stopped canary drains. Both platforms read them from here, so they cannot disagree.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use zdeploy_api::service::{RolloutState, Router, Step, ZmqServiceSpec, ZmqServiceStatus};

/// What a drain adds to the request timeout: zgate must first learn of weight 0 (in a
/// cluster through its weights ConfigMap) and then answer its last timeouts.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// How long a canary that stopped taking traffic keeps running, at most: requests already
/// sent to it get their replies (or zgate's timeout) instead of being cut off.
pub fn drain_window(spec: &ZmqServiceSpec) -> Duration {
    spec.zmq.request_timeout.get().saturating_add(DRAIN_MARGIN)
}

/// Until when the canary of the rollout that just ended drains; `None` when no rollout
/// ended or none runs behind zgate (without zgate, nothing holds requests to drain).
pub fn draining_until(spec: &ZmqServiceSpec, status: &ZmqServiceStatus) -> Option<Timestamp> {
    if status.rollout.is_some() || spec.strategy.router != Router::Gateway {
        return None;
    }
    let ended = status.history.first()?.ended.0;
    Some(later(ended, drain_window(spec)))
}

/// `t + d`, or the last timestamp there is when that is past it (never a panic).
fn later(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// How long the canary of `rollout` has run at `now`: the span its analysis covers.
pub fn canary_age(rollout: &RolloutState, now: Timestamp) -> Duration {
    now.duration_since(rollout.started.0)
        .try_into()
        .unwrap_or_default()
}

/// When the engine next needs `Input::Tick` to act on time alone (a timed pause ends, the
/// progress deadline passes, a blue-green scale-down delay ends, a stopped canary has
/// drained); `None` when nothing is timed.
/// A time before `now` means at once. Inputs from outside (measurements, commands, zgate
/// reaching the canary) come whenever they come.
pub fn poll_timeout(
    spec: &ZmqServiceSpec,
    status: &ZmqServiceStatus,
    now: Timestamp,
) -> Option<Timestamp> {
    let Some(r) = &status.rollout else {
        // A drain that is over needs nothing more.
        return draining_until(spec, status).filter(|t| *t > now);
    };
    if r.paused {
        return None;
    }
    let after = later;
    // The deadline is passed once the time since progress exceeds it.
    let deadline = after(
        r.last_progress.0,
        spec.strategy.progress_deadline.get() + Duration::from_millis(1),
    );
    let step = status.current_step.unwrap_or(0) as usize;
    let pause_ends = match spec.strategy.steps().get(step) {
        Some(Step::Pause(p)) => p.duration.map(|d| after(r.step_started.0, d.get())),
        _ => None,
    };
    // Blue-green: the old pool goes once the scale-down delay after the switch is over.
    let scale_down = match (&spec.strategy.blue_green, &r.switched) {
        (Some(bg), Some(at)) => Some(after(at.0, bg.scale_down_delay.get())),
        _ => None,
    };
    Some(
        [pause_ends, scale_down]
            .into_iter()
            .flatten()
            .fold(deadline, Timestamp::min),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use zdeploy_api::Weight;
    use zdeploy_api::service::{Outcome, RolloutRecord};

    fn spec() -> ZmqServiceSpec {
        let text = include_str!("../../../manifests/examples/echo.yaml");
        zdeploy_api::validate::load_services(text)
            .expect("the example is valid")
            .remove(0)
            .spec
    }

    fn t(s: &str) -> Timestamp {
        format!("2026-12-02T10:{s}Z").parse().unwrap()
    }

    fn rollout(started: &str) -> RolloutState {
        RolloutState {
            reached: Some(Time(t(started))),
            ..RolloutState::started_at(Time(t(started)), None)
        }
    }

    #[test]
    fn a_stopped_canary_drains_for_the_request_timeout_and_the_margin() {
        let spec = spec();
        let ended = ZmqServiceStatus {
            history: vec![RolloutRecord {
                revision: "echo:2".into(),
                stable_revision: "echo:1".into(),
                started: Time(t("00:00")),
                ended: Time(t("01:00")),
                outcome: Outcome::RolledBack,
                reason: "r".into(),
                runbook: None,
                peak_weight: Weight::ZERO,
                changes: Vec::new(),
            }],
            ..Default::default()
        };
        let window = spec.zmq.request_timeout.get() + Duration::from_secs(1);
        assert_eq!(drain_window(&spec), window);
        let until = t("01:00") + SignedDuration::try_from(window).unwrap();
        assert_eq!(draining_until(&spec, &ended), Some(until));
        assert_eq!(poll_timeout(&spec, &ended, t("01:00")), Some(until));
        assert_eq!(poll_timeout(&spec, &ended, until), None, "drained");
    }

    #[test]
    fn a_rollout_is_next_looked_at_when_its_timed_pause_ends_or_its_deadline_passes() {
        let spec = spec();
        let step = spec
            .strategy
            .canary
            .steps
            .iter()
            .position(|s| matches!(s, Step::Pause(p) if p.duration.is_some()))
            .expect("the example has a timed pause");
        let Step::Pause(p) = &spec.strategy.canary.steps[step] else {
            unreachable!()
        };
        let mut status = ZmqServiceStatus {
            rollout: Some(rollout("00:00")),
            current_step: Some(step as u32),
            ..Default::default()
        };
        let pause_ends = t("00:00") + SignedDuration::try_from(p.duration.unwrap().get()).unwrap();
        assert_eq!(poll_timeout(&spec, &status, t("00:01")), Some(pause_ends));
        status.current_step = Some(0);
        let deadline = t("00:00")
            + SignedDuration::try_from(spec.strategy.progress_deadline.get()).unwrap()
            + SignedDuration::from_millis(1);
        assert_eq!(poll_timeout(&spec, &status, t("00:01")), Some(deadline));
        status.rollout.as_mut().unwrap().paused = true;
        assert_eq!(
            poll_timeout(&spec, &status, t("00:01")),
            None,
            "a held rollout waits for a person"
        );
        assert_eq!(
            canary_age(status.rollout.as_ref().unwrap(), t("00:42")),
            Duration::from_secs(42)
        );
    }
}
