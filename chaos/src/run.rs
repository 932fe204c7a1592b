//! A run in progress, sans-IO like the scheduler: given the recorded run, the result of
//! the steady-state check just made (if one was), whether a rollout of the target is in
//! progress, and the time, it says whether to wait, end the fault and watch recovery, or
//! finish with a verdict. The caller measures, removes faults and records.

use jiff::{SignedDuration, Timestamp};
use zdeploy_api::chaos::{ActiveRun, RunVerdict};

/// The steady-state check made at this step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The hypothesis holds.
    Pass,
    /// It does not, with the measured values.
    Fail(String),
    /// Not enough data to say.
    Inconclusive,
}

/// What to do with the run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing yet.
    Wait,
    /// The fault's time is over: remove it; the steady state must be back by `recover_by`.
    Recover {
        /// The recovery deadline.
        recover_by: Timestamp,
    },
    /// The run is over: remove any fault, then record the verdict.
    Finish {
        /// The verdict.
        verdict: RunVerdict,
        /// Why, with the measured values.
        reason: String,
    },
}

fn secs(d: SignedDuration) -> f64 {
    d.as_secs_f64().max(0.0)
}

/// Advances `run`. `check` is `None` when the experiment has no steady-state hypothesis
/// (or no check was due); `recovery` is the hypothesis' recovery deadline.
pub fn advance(
    run: &ActiveRun,
    check: Option<&Check>,
    has_hypothesis: bool,
    recovery: std::time::Duration,
    rollout_in_progress: Option<&str>,
    now: Timestamp,
) -> Next {
    let finish = |verdict, reason| Next::Finish { verdict, reason };
    if let Some(revision) = rollout_in_progress {
        return finish(
            RunVerdict::Aborted,
            format!("aborted: a rollout of the service ({revision}) started"),
        );
    }
    match &run.recover_by {
        None => {
            if let Some(Check::Fail(values)) = check {
                return finish(
                    RunVerdict::Broken,
                    format!(
                        "the steady state broke {:.2}s into the fault, which was reverted at once: {values}",
                        secs(now.duration_since(run.started.0))
                    ),
                );
            }
            if now < run.fault_ends.0 {
                return Next::Wait;
            }
            if !has_hypothesis {
                return finish(
                    RunVerdict::Held,
                    "no steady-state hypothesis: the fault ran its course".into(),
                );
            }
            Next::Recover {
                recover_by: now + SignedDuration::try_from(recovery).unwrap_or_default(),
            }
        }
        Some(deadline) => match check {
            Some(Check::Pass) => finish(
                RunVerdict::Held,
                format!(
                    "recovered {:.2}s after the fault",
                    secs(now.duration_since(run.fault_ends.0))
                ),
            ),
            _ if now >= deadline.0 => finish(
                RunVerdict::Broken,
                format!(
                    "did not recover within {:.0}s{}",
                    secs(deadline.0.duration_since(run.fault_ends.0)),
                    match check {
                        Some(Check::Fail(values)) => format!(": {values}"),
                        _ => String::new(),
                    }
                ),
            ),
            _ => Next::Wait,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::time::Duration;

    fn t(s: &str) -> Timestamp {
        format!("2026-11-25T12:{s}Z").parse().unwrap()
    }

    fn injected() -> ActiveRun {
        ActiveRun {
            scheduled: Time(t("00:00")),
            started: Time(t("00:01")),
            fault_ends: Time(t("05:01")),
            recover_by: None,
            targets: vec!["zgate pool canary".into()],
            pods: Vec::new(),
            injected: true,
        }
    }

    const RECOVERY: Duration = Duration::from_secs(120);

    #[test]
    fn a_breach_during_the_fault_finishes_broken_at_once() {
        let next = advance(
            &injected(),
            Some(&Check::Fail("p99 0.9".into())),
            true,
            RECOVERY,
            None,
            t("00:31"),
        );
        let Next::Finish { verdict, reason } = next else {
            panic!("{next:?}")
        };
        assert_eq!(verdict, RunVerdict::Broken);
        assert!(
            reason.contains("30.00s into the fault") && reason.ends_with("p99 0.9"),
            "{reason}"
        );
    }

    #[test]
    fn a_holding_or_unclear_state_waits_until_the_fault_ends_then_recovery_starts() {
        for check in [Some(&Check::Pass), Some(&Check::Inconclusive), None] {
            assert_eq!(
                advance(&injected(), check, true, RECOVERY, None, t("03:00")),
                Next::Wait
            );
        }
        assert_eq!(
            advance(&injected(), None, true, RECOVERY, None, t("05:02")),
            Next::Recover {
                recover_by: t("07:02")
            }
        );
    }

    #[test]
    fn without_a_hypothesis_the_run_holds_when_the_fault_ends() {
        let next = advance(&injected(), None, false, RECOVERY, None, t("05:01"));
        assert!(
            matches!(
                next,
                Next::Finish {
                    verdict: RunVerdict::Held,
                    ..
                }
            ),
            "{next:?}"
        );
    }

    #[test]
    fn recovery_holds_on_a_pass_and_breaks_past_the_deadline() {
        let recovering = ActiveRun {
            recover_by: Some(Time(t("07:01"))),
            ..injected()
        };
        let next = advance(
            &recovering,
            Some(&Check::Pass),
            true,
            RECOVERY,
            None,
            t("05:21"),
        );
        assert_eq!(
            next,
            Next::Finish {
                verdict: RunVerdict::Held,
                reason: "recovered 20.00s after the fault".into()
            }
        );
        let fail = Check::Fail("errors 0.3".into());
        assert_eq!(
            advance(&recovering, Some(&fail), true, RECOVERY, None, t("06:00")),
            Next::Wait
        );
        let next = advance(&recovering, Some(&fail), true, RECOVERY, None, t("07:01"));
        assert_eq!(
            next,
            Next::Finish {
                verdict: RunVerdict::Broken,
                reason: "did not recover within 120s: errors 0.3".into()
            }
        );
    }

    #[test]
    fn a_rollout_aborts_the_run_whatever_its_stage() {
        for run in [
            injected(),
            ActiveRun {
                recover_by: Some(Time(t("07:01"))),
                ..injected()
            },
        ] {
            let next = advance(
                &run,
                Some(&Check::Pass),
                true,
                RECOVERY,
                Some("echo:2"),
                t("02:00"),
            );
            assert_eq!(
                next,
                Next::Finish {
                    verdict: RunVerdict::Aborted,
                    reason: "aborted: a rollout of the service (echo:2) started".into()
                }
            );
        }
    }
}
