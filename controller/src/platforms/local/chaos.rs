//! Chaos experiments on the local platform. An experiment is a small state machine the
//! runtime advances on its ticks: check the steady state, inject (a zgate fault with its
//! own expiry, or killed processes), check during (a breach reverts the fault at once),
//! then require recovery within the deadline. Verdicts: held, broken, aborted, skipped.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use zdeploy_api::chaos::{ChaosRun, ChaosSchedule, ChaosScheduleStatus, RunVerdict};
use zdeploy_api::service::Verdict;

use crate::analysis::promql::Target;
use crate::analysis::{Analyzer, Source, Span};
use crate::experiment::{steady_analysis, summary};

/// A schedule the runtime runs, with its recorded status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scheduled {
    /// The ChaosSchedule.
    pub schedule: ChaosSchedule,
    /// Its status: last schedule time and history.
    pub status: ChaosScheduleStatus,
    /// When the runtime first saw it (the start of its schedule).
    pub since: Timestamp,
}

pub use crate::experiment::{Injection, injection, skipped};
pub use zdeploy_chaos::target::{count, pools};

/// Where a running experiment stands.
#[derive(Debug)]
enum Stage {
    /// The fault is in place until `until`.
    Injected { since: Instant, until: Instant },
    /// The fault is gone; the steady state must come back before `deadline`.
    Recovering { since: Instant, deadline: Instant },
}

/// An experiment in progress.
pub struct Experiment {
    /// Name of its ChaosSchedule.
    pub name: String,
    spec: zdeploy_api::chaos::ChaosScheduleSpec,
    scheduled: Timestamp,
    started: Timestamp,
    /// What was hit.
    pub targets: Vec<String>,
    stage: Stage,
    next_check: Instant,
    analyzer: Option<Analyzer>,
}

/// What the runtime must do for an experiment now.
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Remove the zgate faults of these pools now.
    Revert(Vec<&'static str>),
    /// The experiment is over: record this run (after reverting its faults).
    Done(ChaosRun),
}

impl Experiment {
    /// Checks the steady state before anything is injected; `Err` is the skip reason.
    pub async fn prepare(
        cs: &ChaosSchedule,
        scheduled: Timestamp,
        metrics_url: &str,
    ) -> Result<Self, String> {
        let spec = cs.spec.clone();
        let pool = pools(spec.experiment.pool)[0];
        let mut analyzer = spec.steady_state.as_ref().map(|ss| {
            let target = Target {
                service: spec.experiment.service.clone(),
                namespace: None,
                pool: pool.into(),
            };
            Analyzer::new(
                Source::scrape(metrics_url),
                target,
                steady_analysis(ss),
                None,
                Span::Window,
            )
        });
        if let Some(a) = analyzer.as_mut() {
            a.observe().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The window reaches back past the first scrape, one second ago.
            let before = a.run(Duration::from_millis(1500)).await;
            if before.verdict != Verdict::Pass {
                return Err(format!(
                    "not steady before the experiment: {}",
                    summary(&before)
                ));
            }
        }
        let now = Instant::now();
        Ok(Self {
            name: cs.name_any(),
            scheduled,
            started: Timestamp::now(),
            targets: Vec::new(),
            stage: Stage::Injected {
                since: now,
                until: now + spec.experiment.duration.get(),
            },
            next_check: now,
            analyzer,
            spec,
        })
    }

    /// The experiment's spec.
    pub fn spec(&self) -> &zdeploy_api::chaos::ChaosScheduleSpec {
        &self.spec
    }

    fn run(&self, verdict: RunVerdict, reason: String) -> ChaosRun {
        ChaosRun {
            scheduled: Time(self.scheduled),
            started: Some(Time(self.started)),
            ended: Some(Time(Timestamp::now())),
            targets: self.targets.clone(),
            verdict,
            reason,
        }
    }

    /// Stops the experiment at once (a rollout started, or a person asked).
    pub fn abort(&self, why: &str) -> ChaosRun {
        self.run(RunVerdict::Aborted, format!("aborted: {why}"))
    }

    /// Advances the experiment: checks the steady state when one is due.
    pub async fn advance(&mut self) -> Step {
        let now = Instant::now();
        let every = self.check_interval();
        match self.stage {
            Stage::Injected { since, until } => {
                if now >= until {
                    let deadline = now
                        + self
                            .spec
                            .steady_state
                            .as_ref()
                            .map_or(Duration::ZERO, |s| s.recovery_deadline.get());
                    self.stage = Stage::Recovering {
                        since: now,
                        deadline,
                    };
                    self.next_check = now;
                    return Step::Revert(pools(self.spec.experiment.pool));
                }
                if now < self.next_check {
                    return Step::Wait;
                }
                let Some(a) = self.analyzer.as_mut() else {
                    return Step::Wait;
                };
                self.next_check = now + every;
                let during = a.run(since.elapsed()).await;
                if during.verdict == Verdict::Fail {
                    let seen = since.elapsed();
                    return Step::Done(self.run(
                        RunVerdict::Broken,
                        format!("the steady state broke {:.2}s into the fault, which was reverted at once: {}", seen.as_secs_f64(), summary(&during)),
                    ));
                }
                Step::Wait
            }
            Stage::Recovering { since, deadline } => {
                let Some(a) = self.analyzer.as_mut() else {
                    return Step::Done(self.run(
                        RunVerdict::Held,
                        "no steady-state hypothesis: the fault ran its course".into(),
                    ));
                };
                if now < self.next_check {
                    return Step::Wait;
                }
                self.next_check = now + every;
                let after = a.run(since.elapsed()).await;
                if after.verdict == Verdict::Pass {
                    return Step::Done(self.run(
                        RunVerdict::Held,
                        format!(
                            "recovered {:.2}s after the fault: {}",
                            since.elapsed().as_secs_f64(),
                            summary(&after)
                        ),
                    ));
                }
                if now >= deadline {
                    return Step::Done(self.run(
                        RunVerdict::Broken,
                        format!(
                            "did not recover within {}: {}",
                            zdeploy_api::Duration::from(deadline - since),
                            summary(&after)
                        ),
                    ));
                }
                Step::Wait
            }
        }
    }

    fn check_interval(&self) -> Duration {
        self.spec
            .steady_state
            .as_ref()
            .map_or(Duration::from_secs(1), |s| s.interval.get())
    }
}
