//! What a chaos experiment means on every platform: the zgate fault of a gateway
//! experiment, the steady-state hypothesis as an analysis, the record of a run, and the
//! count of runs by verdict that `/metrics` shows.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::chaos::{ChaosRun, Fault, RunVerdict, SteadyState};
use zdeploy_api::service::Analysis;
use zdeploy_gateway::FaultSpec;

use crate::analysis::AnalysisRun;

/// The zgate fault for a gateway experiment, if it is one.
pub fn gateway_fault(f: &Fault, duration: zdeploy_api::Duration) -> Option<FaultSpec> {
    let base = FaultSpec {
        latency: zdeploy_api::Duration::default(),
        error_ratio: 0.0,
        drop_ratio: 0.0,
        duration,
    };
    match f {
        Fault::GatewayLatency { latency } => Some(FaultSpec {
            latency: *latency,
            ..base
        }),
        Fault::GatewayErrors { ratio } => Some(FaultSpec {
            error_ratio: *ratio,
            ..base
        }),
        Fault::GatewayDrop { ratio } => Some(FaultSpec {
            drop_ratio: *ratio,
            ..base
        }),
        Fault::PodKill {} | Fault::ProcessKill {} => None,
    }
}

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

/// How a gateway fault on `pool` reads in a dry run.
pub fn describe_fault(pool: &str, f: &FaultSpec) -> String {
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
