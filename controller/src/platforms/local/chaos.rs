//! Chaos experiments on the local platform: the runtime advances each run on its ticks
//! with the steps every platform shares (`crate::experiment`): the steady state before,
//! inject (a zgate fault with its own expiry, or killed processes), checks during (a breach
//! reverts the fault at once), then recovery within the deadline. Verdicts: held, broken,
//! aborted, skipped.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use zdeploy_api::Pool;
use zdeploy_api::chaos::{
    ActiveRun, ChaosRun, ChaosSchedule, ChaosScheduleSpec, ChaosScheduleStatus, RunVerdict,
};
use zdeploy_chaos::run::Next;

use crate::analysis::promql::Target;
use crate::analysis::{Analyzer, Source, Span};
use crate::experiment::{Lookback, check_during, finished, next, steady_analysis, steady_before};

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

/// An experiment in progress: the run as the cluster records it, stepped by the same
/// `experiment::next`.
pub struct Experiment {
    /// Name of its ChaosSchedule.
    pub name: String,
    spec: ChaosScheduleSpec,
    /// The run: its times, what was hit, the recovery deadline once the fault is over.
    pub run: ActiveRun,
    next_check: Instant,
    analyzer: Option<Analyzer>,
}

/// What the runtime must do for an experiment now.
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Remove the zgate faults of these pools now.
    Revert(Vec<Pool>),
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
                pool,
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
            steady_before(a, Lookback::Scrape).await?;
        }
        let now = Timestamp::now();
        let ends =
            now + SignedDuration::try_from(spec.experiment.duration.get()).unwrap_or_default();
        Ok(Self {
            name: cs.name_any(),
            run: ActiveRun {
                scheduled: Time(scheduled),
                started: Time(now),
                fault_ends: Time(ends),
                recover_by: None,
                targets: Vec::new(),
                pods: Vec::new(),
                injected: true,
            },
            next_check: Instant::now(),
            analyzer,
            spec,
        })
    }

    /// The experiment's spec.
    pub fn spec(&self) -> &ChaosScheduleSpec {
        &self.spec
    }

    /// Stops the experiment at once (replaced, or a person asked).
    pub fn abort(&self, why: &str) -> ChaosRun {
        finished(&self.run, RunVerdict::Aborted, format!("aborted: {why}"))
    }

    /// Advances the experiment, checking the steady state when a check is due;
    /// `rollout_in_progress` (the canary revision) aborts it.
    pub async fn advance(&mut self, rollout_in_progress: Option<&str>) -> Step {
        let now = Instant::now();
        let mut check = None;
        if now >= self.next_check
            && let Some(a) = self.analyzer.as_mut()
        {
            self.next_check = now
                + self
                    .spec
                    .steady_state
                    .as_ref()
                    .map_or(Duration::from_secs(1), |s| s.interval.get());
            check = Some(check_during(a, &self.run, Timestamp::now()).await);
        }
        match next(
            &self.spec,
            &self.run,
            check.as_ref(),
            rollout_in_progress,
            Timestamp::now(),
        ) {
            Next::Wait => Step::Wait,
            Next::Recover { recover_by } => {
                self.run.recover_by = Some(Time(recover_by));
                // Recovery is looked at from the moment the fault is gone.
                self.next_check = now;
                Step::Revert(pools(self.spec.experiment.pool))
            }
            Next::Finish { verdict, reason } => Step::Done(finished(&self.run, verdict, reason)),
        }
    }
}
