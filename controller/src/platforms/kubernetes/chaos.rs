//! ChaosSchedules in the cluster, in the style of the ZmqService controller. Each reconcile
//! plans the schedule with the sans-IO scheduler, starts a due run when the guards allow
//! (no rollout of the target, no alert firing for it, steady state before), advances a run
//! in progress from its recorded status (so a restarted controller carries it on), and
//! records each run in status history with an Event and a metric. Gateway faults go into
//! the target's weights ConfigMap (`faults.json`, field manager `zdeploy-chaos`) with
//! their end, which zgate enforces by itself; the finalizer removes them on delete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use zdeploy_api::ZmqService;
use zdeploy_api::chaos::{ActiveRun, ChaosRun, ChaosSchedule, ChaosScheduleStatus, RunVerdict};
use zdeploy_api::command::{RUN_NOW_ANNOTATION, SUSPEND_ANNOTATION};
use zdeploy_chaos::run::{Check, Next};
use zdeploy_chaos::schedule::{Decision, Guards, plan, refused_by};
use zdeploy_chaos::target::pools;
use zdeploy_gateway::follow::{FAULTS_KEY, StoredFault};

use super::endpoints::Endpoints;
use super::errors::{Error, backoff};
use super::events::publish;
use super::measure::{Analyzers, MetricsSource, SharedAnalyzer};
use super::render::weights_configmap;
use super::stats::Stats;
use crate::analysis::prometheus::Prometheus;
use crate::analysis::webhook::AlertInbox;
use crate::analysis::{Analyzer, Span};
use crate::engine::Severity;
use crate::experiment::{
    self, Injection, Lookback, PROCESS_KILL_IN_A_CLUSTER, finished, injection, skipped,
    steady_analysis,
};

/// The finalizer that removes a schedule's gateway faults before it goes.
pub const CHAOS_FINALIZER: &str = "zdeploy.io/chaos-revert";
/// The field manager that owns `faults.json` in a weights ConfigMap.
pub const CHAOS_FIELD_MANAGER: &str = "zdeploy-chaos";
/// The longest wait between two looks at a running experiment.
const ACTIVE_RECHECK: Duration = Duration::from_secs(5);
/// The longest wait between two looks at an idle schedule (guards and time move on).
const IDLE_RECHECK: Duration = Duration::from_secs(3600);

/// What every chaos reconcile shares.
pub struct ChaosContext {
    /// The API client.
    pub client: Client,
    recorder: Recorder,
    metrics: MetricsSource,
    /// The Prometheus whose firing alerts guard runs, when there is one.
    prometheus: Option<Prometheus>,
    alerts: Option<Arc<AlertInbox>>,
    stats: Arc<Stats>,
    /// One steady-state analyzer per schedule (the embedded scrape keeps history).
    analyzers: Analyzers,
    /// zgate's replicas, scraped one by one (a scrape through the Service reaches one at
    /// random and mixes their counters).
    endpoints: Endpoints,
}

impl ChaosContext {
    /// A context measuring through `metrics`, with Alertmanager's pushed alerts if any.
    pub fn new(
        client: Client,
        metrics: MetricsSource,
        alerts: Option<Arc<AlertInbox>>,
        stats: Arc<Stats>,
    ) -> Self {
        let reporter = Reporter {
            controller: "zdeploy-chaos".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let prometheus = match &metrics {
            MetricsSource::Prometheus { url, .. } => {
                Some(Prometheus::new(url, Duration::from_secs(5)))
            }
            MetricsSource::Scrape => None,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            prometheus,
            alerts,
            stats,
            analyzers: Default::default(),
            endpoints: Endpoints(kube::runtime::reflector::store().0),
        }
    }

    /// The same context, finding zgate's replicas in `endpoints`.
    pub fn with_endpoints(self, endpoints: Endpoints) -> Self {
        Self { endpoints, ..self }
    }

    /// An alert firing for `service` now, pushed by Alertmanager or listed by Prometheus;
    /// an error when Prometheus cannot say (a run is then skipped, never started blind).
    async fn alert_firing(&self, service: &str, ns: &str) -> Result<Option<String>, String> {
        if let Some(name) = self
            .alerts
            .as_ref()
            .and_then(|a| a.firing_for(service, Some(ns)))
        {
            return Ok(Some(name));
        }
        let Some(prometheus) = &self.prometheus else {
            return Ok(None);
        };
        let alerts = prometheus.alerts().await?;
        Ok(alerts
            .into_iter()
            .filter(|a| a.state == "firing")
            .find(|a| {
                a.labels.get("service").map(String::as_str) == Some(service)
                    && a.labels.get("namespace").is_none_or(|n| n == ns)
            })
            .and_then(|a| a.labels.get("alertname").cloned()))
    }

    /// The steady-state analyzer of `cs`, scraping zgate's replicas as they are now;
    /// `None` without a hypothesis.
    fn analyzer(&self, cs: &ChaosSchedule, ns: &str) -> Option<SharedAnalyzer> {
        let ss = cs.spec.steady_state.as_ref()?;
        let x = &cs.spec.experiment;
        let key = format!("{ns}/{}", cs.name_any());
        Some(self.analyzers.current(key, cs.metadata.generation, || {
            let (source, target) = self.metrics.source_for(&x.service, ns, pools(x.pool)[0]);
            Analyzer::new(source, target, steady_analysis(ss), None, Span::Window)
        }))
    }

    /// The steady state before a run of `cs`; `Err` is why the run is skipped.
    async fn steady_before(&self, cs: &ChaosSchedule, ns: &str) -> Result<(), String> {
        let (Some(ss), Some(analyzer)) = (&cs.spec.steady_state, self.analyzer(cs, ns)) else {
            return Ok(());
        };
        let lookback = match self.metrics {
            MetricsSource::Scrape => Lookback::Scrape,
            MetricsSource::Prometheus { .. } => Lookback::Window(
                ss.metrics
                    .iter()
                    .map(|m| m.window.get())
                    .max()
                    .unwrap_or(Duration::from_secs(60)),
            ),
        };
        let mut analyzer = analyzer.lock().await;
        analyzer.scrape_targets(
            self.endpoints
                .zgate_metrics(ns, &cs.spec.experiment.service),
        );
        experiment::steady_before(&mut analyzer, lookback).await
    }

    /// The steady-state check of the run in progress; `None` without a hypothesis.
    async fn check_during(
        &self,
        cs: &ChaosSchedule,
        ns: &str,
        run: &ActiveRun,
        now: Timestamp,
    ) -> Option<Check> {
        let analyzer = self.analyzer(cs, ns)?;
        let mut analyzer = analyzer.lock().await;
        analyzer.scrape_targets(
            self.endpoints
                .zgate_metrics(ns, &cs.spec.experiment.service),
        );
        Some(experiment::check_during(&mut analyzer, run, now).await)
    }

    /// Writes the gateway faults of `service` (none: removes them). Removing touches
    /// nothing when there is nothing to remove, so it never creates a ConfigMap.
    async fn set_faults(
        &self,
        ns: &str,
        service: &str,
        faults: Option<BTreeMap<String, StoredFault>>,
    ) -> Result<(), Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let name = weights_configmap(service);
        let mut data = BTreeMap::new();
        match faults {
            Some(f) => {
                let text = serde_json::to_string(&f).map_err(|e| Error::Invalid(e.to_string()))?;
                data.insert(FAULTS_KEY.to_string(), text);
            }
            None => {
                let current = api.get_opt(&name).await?;
                if current
                    .and_then(|c| c.data)
                    .is_none_or(|d| !d.contains_key(FAULTS_KEY))
                {
                    return Ok(());
                }
            }
        }
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "data": data,
        });
        api.patch(
            &name,
            &PatchParams::apply(CHAOS_FIELD_MANAGER),
            &Patch::Apply(&cm),
        )
        .await?;
        Ok(())
    }

    /// Prepares a run: the steady state before, what it will hit (for a pod kill, the
    /// pods). Nothing is injected yet; `Err` is why it cannot start.
    async fn prepare(
        &self,
        cs: &ChaosSchedule,
        ns: &str,
        scheduled: Timestamp,
    ) -> Result<Result<ActiveRun, String>, Error> {
        if let Err(why) = self.steady_before(cs, ns).await {
            return Ok(Err(why));
        }
        let x = &cs.spec.experiment;
        // Whole seconds: the recorded times (and so zgate's end) have no fraction.
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
        let ends = now + SignedDuration::try_from(x.duration.get()).unwrap_or_default();
        let (targets, pods) = match injection(&x.fault, x.duration) {
            Injection::PodKill => {
                let mut rng = fastrand::Rng::new();
                let pods =
                    zdeploy_chaos::podkill::choose(self.client.clone(), ns, x, &mut rng).await?;
                if pods.is_empty() {
                    return Ok(Err(format!(
                        "no running pods of {} in the targeted pool",
                        x.service
                    )));
                }
                (pods.iter().map(|p| format!("pod {p}")).collect(), pods)
            }
            Injection::ProcessKill => return Ok(Err(PROCESS_KILL_IN_A_CLUSTER.into())),
            Injection::Gateway(_) => (
                pools(x.pool)
                    .iter()
                    .map(|p| format!("zgate pool {p}"))
                    .collect(),
                Vec::new(),
            ),
        };
        Ok(Ok(ActiveRun {
            scheduled: Time(scheduled),
            started: Time(now),
            fault_ends: Time(ends),
            recover_by: None,
            targets,
            pods,
            injected: false,
        }))
    }

    /// Puts the recorded run's fault in place: the gateway fault with the run's end, or
    /// the pod deletions (a pod already gone counts). Safe to repeat.
    async fn inject(&self, cs: &ChaosSchedule, ns: &str, run: &ActiveRun) -> Result<(), Error> {
        let x = &cs.spec.experiment;
        match injection(&x.fault, x.duration) {
            Injection::Gateway(fault) => {
                let stored = pools(x.pool)
                    .into_iter()
                    .map(|p| {
                        let f = StoredFault {
                            fault: fault.clone(),
                            until: run.fault_ends.0,
                        };
                        (p.to_string(), f)
                    })
                    .collect();
                self.set_faults(ns, &x.service, Some(stored)).await
            }
            Injection::PodKill => {
                Ok(zdeploy_chaos::podkill::delete(self.client.clone(), ns, &run.pods).await?)
            }
            // Refused when the run was prepared; nothing to put in place.
            Injection::ProcessKill => Ok(()),
        }
    }

    async fn publish(&self, cs: &ChaosSchedule, severity: Severity, reason: &str, note: String) {
        let reference = cs.object_ref(&());
        publish(&self.recorder, &reference, severity, reason, note, "Chaos").await;
    }
}

/// The schedules whose experiments target `svc` (same namespace, same service).
pub fn aimed_at(
    svc: &ZmqService,
    schedules: &[Arc<ChaosSchedule>],
) -> Vec<kube::runtime::reflector::ObjectRef<ChaosSchedule>> {
    let ns = svc.namespace();
    let name = svc.name_any();
    schedules
        .iter()
        .filter(|cs| cs.namespace() == ns && cs.spec.experiment.service == name)
        .map(|cs| kube::runtime::reflector::ObjectRef::from_obj(&**cs))
        .collect()
}

/// True when the schedule starts no runs: suspended in its spec or paused by annotation.
pub fn suspended(cs: &ChaosSchedule) -> bool {
    cs.spec.suspend || cs.annotations().get(SUSPEND_ANNOTATION).map(String::as_str) == Some("true")
}

fn until(now: Timestamp, t: &Time) -> Duration {
    t.0.duration_since(now).try_into().unwrap_or_default()
}

/// What one reconcile found and decided about a schedule.
struct Turn<'a> {
    cs: &'a ChaosSchedule,
    ns: String,
    /// The target service, if it exists.
    svc: Option<ZmqService>,
    /// The target's rollout in progress (its canary revision), if any.
    rollout: Option<String>,
    status: ChaosScheduleStatus,
    /// Runs that ended (or never started) in this turn, to record.
    runs: Vec<ChaosRun>,
    now: Timestamp,
}

impl Turn<'_> {
    /// Advances the run in progress: checks the steady state, ends the fault, finishes.
    async fn advance_run(&mut self, ctx: &ChaosContext, active: ActiveRun) -> Result<(), Error> {
        let service = &self.cs.spec.experiment.service;
        if !active.injected {
            // Recorded but not injected (the controller stopped in between): the injection
            // is completed after this turn is recorded, unless the fault's time is over.
            if self.now >= active.fault_ends.0 {
                let why = "aborted: the fault could not be put in place before its end".into();
                self.runs.push(finished(&active, RunVerdict::Aborted, why));
                self.status.active = None;
            }
            return Ok(());
        }
        let check = ctx.check_during(self.cs, &self.ns, &active, self.now).await;
        let next = experiment::next(
            &self.cs.spec,
            &active,
            check.as_ref(),
            self.rollout.as_deref(),
            Timestamp::now(),
        );
        match next {
            Next::Wait => {}
            Next::Recover { recover_by } => {
                ctx.set_faults(&self.ns, service, None).await?;
                self.status.active = Some(ActiveRun {
                    recover_by: Some(Time(recover_by)),
                    ..active
                });
            }
            Next::Finish { verdict, reason } => {
                // Revert first: nothing is recorded while a fault might still be in place.
                ctx.set_faults(&self.ns, service, None).await?;
                self.runs.push(finished(&active, verdict, reason));
                self.status.active = None;
            }
        }
        Ok(())
    }

    /// Ends the run in progress for the one due at `scheduled` (`concurrencyPolicy:
    /// Replace`): its fault removed first, then recorded as aborted.
    async fn replace_active(
        &mut self,
        ctx: &ChaosContext,
        scheduled: Timestamp,
    ) -> Result<(), Error> {
        let Some(active) = self.status.active.take() else {
            return Ok(());
        };
        ctx.set_faults(&self.ns, &self.cs.spec.experiment.service, None)
            .await?;
        let why = format!("replaced by the run due at {scheduled} (concurrencyPolicy: Replace)");
        self.runs.push(finished(&active, RunVerdict::Aborted, why));
        Ok(())
    }

    /// Plans the schedule (and a run asked for by hand) and prepares a run that is due and
    /// allowed; returns when the next run is due.
    async fn start_due(&mut self, ctx: &ChaosContext) -> Result<Option<Timestamp>, Error> {
        let (cs, now) = (self.cs, self.now);
        let x = &cs.spec.experiment;
        let alerts = ctx.alert_firing(&x.service, &self.ns).await;
        let guards = Guards {
            rollout_in_progress: self.rollout.clone(),
            alert_firing: alerts.clone().ok().flatten(),
        };
        let mut spec = cs.spec.clone();
        spec.suspend = suspended(cs);
        let last = self
            .status
            .last_schedule_time
            .as_ref()
            .or(cs.metadata.creation_timestamp.as_ref())
            .map_or(now, |t| t.0);
        let running = self.status.active.is_some();
        let p =
            plan(&spec, last, running, &guards, now).map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(t) = p.last_schedule_time {
            self.status.last_schedule_time = Some(Time(t));
        }
        let mut decisions = p.decisions;
        // A run asked for by hand: the guards apply, the schedule's windows do not.
        if let Some(id) = cs.annotations().get(RUN_NOW_ANNOTATION)
            && self.status.last_run_request.as_deref() != Some(id.as_str())
        {
            self.status.last_run_request = Some(id.clone());
            decisions.push(match refused_by(&cs.spec, &guards) {
                Some(reason) => Decision::Skip {
                    scheduled: now,
                    reason,
                },
                None => Decision::Run {
                    scheduled: now,
                    replace: false,
                },
            });
        }
        for d in decisions {
            let scheduled = match d {
                Decision::Skip { scheduled, reason } => {
                    self.runs.push(skipped(scheduled, reason));
                    continue;
                }
                Decision::Run { scheduled, replace } => {
                    if replace {
                        self.replace_active(ctx, scheduled).await?;
                    }
                    scheduled
                }
            };
            let refused = if self.status.active.is_some() {
                Some("another run of this schedule is in progress".to_string())
            } else if self.svc.is_none() {
                Some(format!("no ZmqService {} in {}", x.service, self.ns))
            } else if let Err(e) = &alerts {
                Some(format!(
                    "cannot tell whether an alert fires for {}: {e}",
                    x.service
                ))
            } else {
                None
            };
            let prepared = match refused {
                Some(why) => Err(why),
                None => ctx.prepare(cs, &self.ns, scheduled).await?,
            };
            match prepared {
                Ok(active) => self.status.active = Some(active),
                Err(why) => self.runs.push(skipped(scheduled, why)),
            }
        }
        Ok(p.next)
    }
}

async fn apply(cs: Arc<ChaosSchedule>, ctx: &ChaosContext) -> Result<Action, Error> {
    let ns = cs
        .namespace()
        .ok_or_else(|| Error::Invalid("a ChaosSchedule must be namespaced".into()))?;
    let name = cs.name_any();
    zdeploy_chaos::schedule::check(&cs.spec).map_err(|e| Error::Invalid(e.to_string()))?;
    let svc = Api::<ZmqService>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&cs.spec.experiment.service)
        .await?;
    let rollout = svc
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.rollout_revision());
    let recorded = cs.status.clone().unwrap_or_default();
    let mut turn = Turn {
        cs: &cs,
        ns: ns.clone(),
        svc,
        rollout,
        status: recorded.clone(),
        runs: Vec::new(),
        now: Timestamp::now(),
    };
    let next_due = match turn.status.active.clone() {
        Some(active) => {
            turn.advance_run(ctx, active).await?;
            match turn.status.active {
                // Still running: a run due now meets the concurrency policy.
                Some(_) => turn.start_due(ctx).await?,
                // A run that ended here: plan the schedule again at once.
                None => Some(turn.now),
            }
        }
        None => turn.start_due(ctx).await?,
    };
    let Turn {
        mut status,
        runs,
        now,
        ..
    } = turn;
    for run in &runs {
        status.history.insert(0, run.clone());
        ctx.stats.chaos_runs.record(run.verdict);
    }
    status.history.truncate(cs.spec.history_limit as usize);
    // Record first, then inject: a failure in between is completed from the record.
    if status != recorded {
        write_status(ctx, &ns, &name, &status).await?;
    }
    if let Some(active) = status.active.as_mut().filter(|a| !a.injected) {
        ctx.inject(&cs, &ns, active).await?;
        active.injected = true;
        let note = format!("injected into {}", active.targets.join(", "));
        write_status(ctx, &ns, &name, &status).await?;
        ctx.publish(&cs, Severity::Normal, "ChaosStarted", note)
            .await;
    }
    for run in runs {
        let (severity, reason) = experiment::notice(run.verdict);
        ctx.publish(&cs, severity, reason, run.reason).await;
    }
    let wait = match &status.active {
        Some(active) => {
            // Look at least every few seconds: a rollout aborts the run.
            let every = cs
                .spec
                .steady_state
                .as_ref()
                .map_or(ACTIVE_RECHECK, |s| s.interval.get().min(ACTIVE_RECHECK));
            let edge = active.recover_by.as_ref().unwrap_or(&active.fault_ends);
            every.min(until(now, edge))
        }
        None => next_due.map_or(IDLE_RECHECK, |t| until(now, &Time(t)).min(IDLE_RECHECK)),
    };
    Ok(Action::requeue(wait.max(Duration::from_secs(1))))
}

async fn write_status(
    ctx: &ChaosContext,
    ns: &str,
    name: &str,
    status: &ChaosScheduleStatus,
) -> Result<(), Error> {
    // `active: null` removes a finished run (a merge patch keeps fields it does not name).
    let patch = serde_json::json!({
        "status": {
            "lastScheduleTime": status.last_schedule_time,
            "lastRunRequest": status.last_run_request,
            "history": status.history,
            "active": status.active,
        }
    });
    Api::<ChaosSchedule>::namespaced(ctx.client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn cleanup(cs: Arc<ChaosSchedule>, ctx: &ChaosContext) -> Result<Action, Error> {
    let ns = cs.namespace().unwrap_or_default();
    ctx.analyzers.forget(&format!("{ns}/{}", cs.name_any()));
    let active = cs.status.as_ref().and_then(|s| s.active.as_ref());
    if let Some(run) = active {
        ctx.set_faults(&ns, &cs.spec.experiment.service, None)
            .await?;
        ctx.publish(
            &cs,
            Severity::Normal,
            "ChaosReverted",
            format!(
                "schedule deleted during a run: faults on {} removed",
                run.targets.join(", ")
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Reconciles one ChaosSchedule.
pub async fn reconcile(cs: Arc<ChaosSchedule>, ctx: Arc<ChaosContext>) -> Result<Action, Error> {
    let ns = cs
        .namespace()
        .ok_or_else(|| Error::Invalid("a ChaosSchedule must be namespaced".into()))?;
    let api: Api<ChaosSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, CHAOS_FINALIZER, cs, |event| async {
        match event {
            Finalizer::Apply(c) => apply(c, &ctx).await,
            Finalizer::Cleanup(c) => cleanup(c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Backs off after a failed reconcile: conflicts retry at once, the rest after a pause.
pub fn error_policy(cs: Arc<ChaosSchedule>, error: &Error, _ctx: Arc<ChaosContext>) -> Action {
    tracing::warn!(schedule = %cs.name_any(), error = %error, kind = ?error.kind(), "chaos reconcile failed");
    backoff(error)
}
