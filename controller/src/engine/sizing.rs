//! How many pods the canary pool runs behind zgate: enough for the share of requests it
//! takes or is about to take, not as many as stable, so a canary at 10% does not hold a
//! copy of stable's pods. Blue-green's new pool takes everything at once: it runs at
//! stable's size. Stable keeps its own size throughout.

use zdeploy_api::service::{Release, Step};
use zdeploy_api::{Weight, ZmqServiceSpec, ZmqServiceStatus};

/// The share of requests the canary pool is sized for now: the most it has taken, its
/// weight, a `--canary N` still to apply, a shadow copy's share, and the next weight step
/// above its weight (so its pods are up before the traffic arrives, whether or not the
/// step that set the weight has been passed yet).
pub fn canary_share(spec: &ZmqServiceSpec, status: &ZmqServiceStatus) -> Weight {
    let Some(r) = &status.rollout else {
        return Weight::ZERO;
    };
    let at = status.current_step.unwrap_or(0) as usize;
    let next = spec
        .strategy
        .steps()
        .iter()
        .skip(at)
        .find_map(|s| match s {
            Step::SetWeight(w) if *w > status.canary_weight => Some(*w),
            _ => None,
        })
        .unwrap_or(Weight::ZERO);
    [
        r.peak_weight,
        status.canary_weight,
        r.initial_weight.unwrap_or(Weight::ZERO),
        status.shadow_percent.unwrap_or(Weight::ZERO),
        next,
    ]
    .into_iter()
    .max()
    .unwrap_or(Weight::ZERO)
}

/// Canary pods for `share` of what stable serves with `replicas` pods: the manifest's
/// `strategy.canary.replicas` when given, else ceil(replicas x share), at least one;
/// blue-green's new pool runs at stable's size.
pub fn canary_replicas(spec: &ZmqServiceSpec, share: Weight) -> i32 {
    match spec.strategy.release() {
        Release::BlueGreen(_) => spec.replicas.max(1),
        Release::Canary(c) => c
            .replicas
            .unwrap_or_else(|| proportional(spec.replicas, share))
            .max(1),
    }
}

/// ceil(replicas x share), in integers.
pub fn proportional(replicas: i32, share: Weight) -> i32 {
    let pods = i64::from(replicas.max(0)) * i64::from(share.percent());
    i32::try_from((pods + 99) / 100).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use zdeploy_api::service::{Pause, RolloutState};

    fn w(n: u8) -> Weight {
        Weight::new(i64::from(n)).unwrap()
    }

    #[test]
    fn pods_follow_the_share_rounded_up_and_at_least_one() {
        let mut spec = zdeploy_testkit::fixtures::echo().build().spec;
        spec.replicas = 6;
        assert_eq!(canary_replicas(&spec, w(0)), 1);
        assert_eq!(canary_replicas(&spec, w(10)), 1);
        assert_eq!(canary_replicas(&spec, w(20)), 2);
        assert_eq!(canary_replicas(&spec, w(50)), 3);
        assert_eq!(canary_replicas(&spec, w(100)), 6);
        spec.strategy.canary.replicas = Some(4);
        assert_eq!(
            canary_replicas(&spec, w(10)),
            4,
            "the manifest's count wins"
        );
    }

    #[test]
    fn the_share_looks_one_weight_step_ahead_and_never_shrinks_within_a_rollout() {
        let mut spec = zdeploy_testkit::fixtures::echo().build().spec;
        spec.strategy.canary.steps = vec![
            Step::SetWeight(w(10)),
            Step::Pause(Pause { duration: None }),
            Step::SetWeight(w(40)),
        ];
        let mut status = ZmqServiceStatus::default();
        assert_eq!(canary_share(&spec, &status), Weight::ZERO, "no rollout");
        status.rollout = Some(RolloutState::started_at(
            Time(jiff::Timestamp::UNIX_EPOCH),
            None,
        ));
        status.current_step = Some(0);
        assert_eq!(canary_share(&spec, &status), w(10), "before the first step");
        status.canary_weight = w(10);
        assert_eq!(
            canary_share(&spec, &status),
            w(40),
            "at 10, its step not yet passed: 40 next"
        );
        status.current_step = Some(1);
        assert_eq!(
            canary_share(&spec, &status),
            w(40),
            "pausing at 10, 40 next"
        );
        status.current_step = Some(3);
        status.canary_weight = w(5);
        status.rollout.as_mut().unwrap().peak_weight = w(40);
        assert_eq!(canary_share(&spec, &status), w(40), "the peak holds");
    }
}
