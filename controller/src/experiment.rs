//! What a chaos experiment means on every platform: the zgate fault of a gateway
//! experiment, the steady-state hypothesis as an analysis and its checks (before and
//! during a run), one step of a run in progress, the record of a run, and the count of
//! runs by verdict that `/metrics` shows. Each platform only measures, injects and records.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::Pool;
use zdeploy_api::chaos::{
    ActiveRun, ChaosRun, ChaosSchedule, ChaosScheduleSpec, Experiment, Fault, RunVerdict,
    SelectionMode, SteadyState,
};
use zdeploy_api::service::{Analysis, Verdict};
use zdeploy_chaos::run::{Check, Next};
use zdeploy_gateway::FaultSpec;

use crate::analysis::{AnalysisRun, Analyzer};
use crate::engine::Severity;

/// What an experiment's fault does, for a platform to carry out. Every platform matches
/// every kind, so a new kind does not compile until each one handles it.
#[derive(Clone, Debug, PartialEq)]
pub enum Injection {
    /// zgate applies this fault to the pool's requests.
    Gateway(FaultSpec),
    /// Pods of the pool are deleted through the Kubernetes API.
    PodKill,
    /// Processes of the pool are killed (`zdeploy up`).
    ProcessKill,
}

/// The injection of fault `f` lasting `duration`.
pub fn injection(f: &Fault, duration: zdeploy_api::Duration) -> Injection {
    let base = FaultSpec {
        latency: zdeploy_api::Duration::default(),
        error_ratio: 0.0,
        drop_ratio: 0.0,
        duration,
    };
    match f {
        Fault::GatewayLatency { latency } => Injection::Gateway(FaultSpec {
            latency: *latency,
            ..base
        }),
        Fault::GatewayErrors { ratio } => Injection::Gateway(FaultSpec {
            error_ratio: *ratio,
            ..base
        }),
        Fault::GatewayDrop { ratio } => Injection::Gateway(FaultSpec {
            drop_ratio: *ratio,
            ..base
        }),
        Fault::PodKill {} => Injection::PodKill,
        Fault::ProcessKill {} => Injection::ProcessKill,
    }
}

/// Why a cluster refuses a process kill.
pub const PROCESS_KILL_IN_A_CLUSTER: &str =
    "processKill runs on the local platform (zdeploy up); use podKill in a cluster";

/// The steady-state hypothesis as an analysis: any failing metric breaks it.
pub fn steady_analysis(ss: &SteadyState) -> Analysis {
    Analysis {
        interval: ss.interval,
        failure_limit: 0,
        inconclusive_limit: u32::MAX,
        min_samples: 10,
        alpha: 0.01,
        metrics: ss.metrics.clone(),
    }
}

/// One line per measurement: metric, value, verdict, reason.
pub fn summary(run: &AnalysisRun) -> String {
    run.measurements
        .iter()
        .map(|m| {
            let v = m
                .value
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into());
            format!("{} {v} {:?}: {}", m.metric, m.verdict, m.reason)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The steady-state check of `analyzer` over the last `age`.
pub async fn check(analyzer: &mut Analyzer, age: Duration) -> Check {
    let run = analyzer.run(age).await;
    match run.verdict {
        Verdict::Pass => Check::Pass,
        Verdict::Fail => Check::Fail(summary(&run)),
        Verdict::Inconclusive => Check::Inconclusive,
    }
}

/// How far back the steady state before a run is looked at.
#[derive(Clone, Copy, Debug)]
pub enum Lookback {
    /// A scrape sees rates only between two looks: look, wait a second, judge both.
    Scrape,
    /// A query reaches back over this window by itself.
    Window(Duration),
}

/// The steady state before a run; `Err` is why the run is skipped.
pub async fn steady_before(analyzer: &mut Analyzer, lookback: Lookback) -> Result<(), String> {
    let age = match lookback {
        Lookback::Scrape => {
            analyzer.observe().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The window reaches back past the first scrape, one second ago.
            Duration::from_millis(1500)
        }
        Lookback::Window(w) => w,
    };
    match check(analyzer, age).await {
        Check::Pass => Ok(()),
        Check::Fail(values) => Err(format!("not steady before the experiment: {values}")),
        Check::Inconclusive => {
            Err("not steady before the experiment: not enough data to tell".into())
        }
    }
}

/// The steady-state check of a run in progress, over the time since its fault began (or,
/// recovering, since it ended), at least a second.
pub async fn check_during(analyzer: &mut Analyzer, run: &ActiveRun, now: Timestamp) -> Check {
    let since = match &run.recover_by {
        None => run.started.0,
        Some(_) => run.fault_ends.0,
    };
    let age: Duration = now.duration_since(since).try_into().unwrap_or_default();
    check(analyzer, age.max(Duration::from_secs(1))).await
}

/// One step of the run of `spec` in progress, given the check just made (if one was) and
/// the target's rollout in progress: what every platform then carries out.
pub fn next(
    spec: &ChaosScheduleSpec,
    run: &ActiveRun,
    check: Option<&Check>,
    rollout_in_progress: Option<&str>,
    now: Timestamp,
) -> Next {
    let ss = spec.steady_state.as_ref();
    let recovery = ss.map_or(Duration::ZERO, |s| s.recovery_deadline.get());
    zdeploy_chaos::run::advance(run, check, ss.is_some(), recovery, rollout_in_progress, now)
}

/// The record of `run`, ended now with `verdict`.
pub fn finished(run: &ActiveRun, verdict: RunVerdict, reason: String) -> ChaosRun {
    ChaosRun {
        scheduled: run.scheduled.clone(),
        started: Some(run.started.clone()),
        ended: Some(Time(Timestamp::now())),
        targets: run.targets.clone(),
        verdict,
        reason,
    }
}

/// How a recorded run is told: a broken or aborted run is a warning; the Event reason.
pub fn notice(verdict: RunVerdict) -> (Severity, &'static str) {
    match verdict {
        RunVerdict::Held => (Severity::Normal, "ChaosHeld"),
        RunVerdict::Skipped => (Severity::Normal, "ChaosSkipped"),
        RunVerdict::Broken => (Severity::Warning, "ChaosBroken"),
        RunVerdict::Aborted => (Severity::Warning, "ChaosAborted"),
    }
}

/// A finished run that never started.
pub fn skipped(scheduled: Timestamp, reason: String) -> ChaosRun {
    ChaosRun {
        scheduled: Time(scheduled),
        started: None,
        ended: None,
        targets: Vec::new(),
        verdict: RunVerdict::Skipped,
        reason,
    }
}

/// How many targets a kill hits, in words: `1`, `2`, `50% (at most 3)`.
fn kill_count(x: &Experiment) -> String {
    let wanted = match x.mode {
        SelectionMode::One => "1".to_string(),
        SelectionMode::Fixed => x.value.unwrap_or(1).to_string(),
        SelectionMode::Percent => format!("{}%", x.value.unwrap_or(100)),
    };
    format!("{wanted} (at most {})", x.max_targets)
}

/// A dry run's account of `cs` that needs no platform: the fault, the schedule and its
/// next runs at `now`, the guards, the steady state; then what it hits as far as the
/// manifest says (which pods or processes is known only where the service runs).
pub fn describe_plan(cs: &ChaosSchedule, now: Timestamp) -> String {
    let (spec, x) = (&cs.spec, &cs.spec.experiment);
    let pools = zdeploy_chaos::target::pools(x.pool);
    let names: Vec<&str> = pools.iter().map(|p| p.name()).collect();
    let mut out = format!(
        "{}: an experiment on {}, pool {}\n",
        cs.metadata.name.as_deref().unwrap_or_default(),
        x.service,
        names.join(" and ")
    );
    let fault = match injection(&x.fault, x.duration) {
        Injection::Gateway(f) => pools
            .iter()
            .map(|p| describe_fault(*p, &f))
            .collect::<Vec<_>>()
            .join("; "),
        Injection::PodKill => format!("delete {} of the pool's pods", kill_count(x)),
        Injection::ProcessKill => format!(
            "kill {} of the pool's processes (zdeploy up only)",
            kill_count(x)
        ),
    };
    out.push_str(&format!("  fault:        {fault}\n"));
    let mut schedule = format!(
        "{} ({}), concurrencyPolicy {:?}, startingDeadlineSeconds {}",
        spec.schedule, spec.time_zone, spec.concurrency_policy, spec.starting_deadline_seconds
    );
    if spec.suspend {
        schedule.push_str("; suspended: no run starts");
    }
    out.push_str(&format!("  schedule:     {schedule}\n"));
    let next = match zdeploy_chaos::schedule::upcoming(spec, now, 3) {
        Ok(due) => due
            .iter()
            .map(|d| {
                let window = if d.allowed {
                    ""
                } else {
                    " (outside the allowed windows: skipped)"
                };
                format!("{}{window}", d.at.strftime("%a %Y-%m-%d %H:%M %Z"))
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => e.to_string(),
    };
    out.push_str(&format!("  next runs:    {next}\n"));
    out.push_str(&format!(
        "  guards:       skipped while a rollout of {} is in progress or an alert fires for it{}\n",
        x.service,
        if spec.steady_state.is_some() {
            ", or when the steady state does not hold before"
        } else {
            ""
        }
    ));
    let steady = match &spec.steady_state {
        Some(ss) => format!(
            "{} checked every {}; must recover within {} after the fault",
            ss.metrics
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            ss.interval,
            ss.recovery_deadline
        ),
        None => "none: the run holds when the fault has run its course".into(),
    };
    out.push_str(&format!("  steady state: {steady}"));
    out
}

/// What a dry run can say of the targets of `x` with no platform to look at.
pub fn targets_unknown(x: &Experiment) -> String {
    match injection(&x.fault, x.duration) {
        Injection::Gateway(_) => format!("would hit {}'s zgate wherever it runs", x.service),
        Injection::PodKill | Injection::ProcessKill => format!(
            "which pods or processes it hits is known only where {} runs",
            x.service
        ),
    }
}

/// How a gateway fault on `pool` reads in a dry run.
pub fn describe_fault(pool: Pool, f: &FaultSpec) -> String {
    format!(
        "zgate pool {pool}: latency {}, error ratio {}, drop ratio {} for {}",
        f.latency, f.error_ratio, f.drop_ratio, f.duration
    )
}

/// Chaos runs recorded, by verdict, for `/metrics`.
#[derive(Debug, Default)]
pub struct RunCounts(std::sync::Mutex<[u64; 4]>);

const VERDICTS: [(RunVerdict, &str); 4] = [
    (RunVerdict::Held, "held"),
    (RunVerdict::Broken, "broken"),
    (RunVerdict::Aborted, "aborted"),
    (RunVerdict::Skipped, "skipped"),
];

impl RunCounts {
    /// Counts one recorded run.
    pub fn record(&self, verdict: RunVerdict) {
        let i = VERDICTS
            .iter()
            .position(|(v, _)| *v == verdict)
            .expect("every verdict is listed");
        self.0.lock().expect("run counts lock")[i] += 1;
    }

    /// `zdeploy_chaos_runs_total{verdict}` in the Prometheus text format.
    pub fn encode(&self) -> String {
        let counts = *self.0.lock().expect("run counts lock");
        let mut out = String::from("# TYPE zdeploy_chaos_runs_total counter\n");
        for ((_, name), n) in VERDICTS.iter().zip(counts) {
            out.push_str(&format!(
                "zdeploy_chaos_runs_total{{verdict=\"{name}\"}} {n}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_kind_is_its_own_injection_and_gateway_faults_carry_value_and_duration() {
        let d: zdeploy_api::Duration = "30s".parse().unwrap();
        let latency = "300ms".parse().unwrap();
        let gateway = |f: Fault| match injection(&f, d) {
            Injection::Gateway(spec) => spec,
            other => panic!("{f:?} is a gateway fault, not {other:?}"),
        };
        let l = gateway(Fault::GatewayLatency { latency });
        assert_eq!(
            (l.latency, l.error_ratio, l.drop_ratio, l.duration),
            (latency, 0.0, 0.0, d)
        );
        assert_eq!(
            gateway(Fault::GatewayErrors { ratio: 0.5 }).error_ratio,
            0.5
        );
        assert_eq!(gateway(Fault::GatewayDrop { ratio: 0.25 }).drop_ratio, 0.25);
        assert_eq!(injection(&Fault::PodKill {}, d), Injection::PodKill);
        assert_eq!(injection(&Fault::ProcessKill {}, d), Injection::ProcessKill);
    }
}
