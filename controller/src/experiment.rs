//! What a chaos experiment means on every platform: the zgate fault of a gateway
//! experiment, the steady-state hypothesis as an analysis, and the record of a run.

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
