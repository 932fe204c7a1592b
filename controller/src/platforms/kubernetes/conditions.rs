//! The standard conditions of a ZmqService's status, derived from the rest of it:
//! `Available` (a stable revision serves), `Progressing` (a canary is being released) and
//! `RolledBack` (the last canary was rolled back). A condition keeps its
//! `lastTransitionTime` until its status changes, as `kubectl wait` and Argo CD expect.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use zdeploy_api::ZmqServiceStatus;
use zdeploy_api::service::{Outcome, Phase};

fn condition(
    kind: &str,
    holds: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if holds { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The conditions for `status` at `now`, given the ones recorded before.
pub fn conditions(
    status: &ZmqServiceStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let previous = &status.conditions;
    let stable = status.stable_revision.clone().unwrap_or_default();
    let stable_share = 100 - u32::from(status.canary_weight.percent());
    let last = status.history.first();
    let available = condition(
        "Available",
        status.stable_revision.is_some(),
        if status.stable_revision.is_some() {
            "StableServing"
        } else {
            "NotDeployed"
        },
        format!("stable {stable} takes {stable_share}% of requests"),
        generation,
        previous,
        now,
    );
    let (progressing, reason, message) = match (&status.phase, &status.canary_revision) {
        (Phase::Progressing, Some(rev)) => (
            true,
            "CanaryProgressing",
            format!("canary {rev} at {}%", status.canary_weight.percent()),
        ),
        (Phase::Paused, Some(rev)) => (
            true,
            "CanaryPaused",
            format!("canary {rev} held at {}%", status.canary_weight.percent()),
        ),
        _ => match last {
            Some(r) if r.outcome == Outcome::Promoted => {
                (false, "Promoted", format!("{} was promoted", r.revision))
            }
            Some(r) => (
                false,
                "RolledBack",
                format!("{} was rolled back", r.revision),
            ),
            None => (false, "NoRollout", "no rollout has run".into()),
        },
    };
    let progressing = condition(
        "Progressing",
        progressing,
        reason,
        message,
        generation,
        previous,
        now,
    );
    let rolled_back = status.phase == Phase::RolledBack;
    let rolled_back = condition(
        "RolledBack",
        rolled_back,
        if rolled_back {
            "CanaryRolledBack"
        } else {
            "NotRolledBack"
        },
        match last.filter(|_| rolled_back) {
            Some(r) => format!("{} rolled back: {}", r.revision, r.reason),
            None => "the last canary was not rolled back".into(),
        },
        generation,
        previous,
        now,
    );
    vec![available, progressing, rolled_back]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_time_moves_only_when_the_status_does() {
        let t0: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-25T10:05:00Z".parse().unwrap();
        let mut status = ZmqServiceStatus {
            stable_revision: Some("echo:1".into()),
            ..Default::default()
        };
        status.conditions = conditions(&status, Some(1), t0);
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(status.conditions[1].status, "False");
        status.phase = Phase::Progressing;
        status.canary_revision = Some("echo:2".into());
        let next = conditions(&status, Some(2), t1);
        assert_eq!(
            next[0].last_transition_time,
            Time(t0),
            "Available stayed True"
        );
        assert_eq!(next[1].status, "True");
        assert_eq!(next[1].reason, "CanaryProgressing");
        assert_eq!(next[1].last_transition_time, Time(t1));
        assert_eq!(next[1].observed_generation, Some(2));
    }
}
