//! The `ChaosSchedule` custom resource: a fault experiment on a ZmqService, run on a cron schedule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::service::Metric;

/// A chaos experiment against a ZmqService, run on a cron schedule with guards.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "zdeploy.io",
    version = "v1alpha1",
    kind = "ChaosSchedule",
    namespaced,
    status = "ChaosScheduleStatus",
    shortname = "cs",
    category = "zdeploy",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosScheduleSpec {
    /// Cron expression (5 fields), e.g. `0 3 1 * *` for 03:00 on the first of every month.
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// No new runs while true.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a run is due while another is still going.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run missed by more than this is skipped and recorded, never replayed.
    #[serde(default = "default_starting_deadline")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: i64,
    /// Finished runs kept in status.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
    /// The experiment.
    pub experiment: Experiment,
    /// What must hold before, during and after the experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_state: Option<SteadyState>,
    /// When runs may start; empty means any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_windows: Vec<AllowedWindow>,
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_starting_deadline() -> i64 {
    300
}

fn default_history_limit() -> u32 {
    10
}

/// Overlapping runs policy, as for a Kubernetes CronJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip a run while another is in progress.
    #[default]
    Forbid,
    /// Stop the running one and start the new one.
    Replace,
}

/// What is done to whom, for how long.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Experiment {
    /// Name of the ZmqService in the same namespace.
    pub service: String,
    /// Which pool is hit.
    #[serde(default)]
    pub pool: TargetPool,
    /// The fault.
    pub fault: Fault,
    /// How targets are chosen (pod and process faults).
    #[serde(default)]
    pub mode: SelectionMode,
    /// The count (`fixed`) or percentage (`percent`) that `mode` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// Upper bound on targets, whatever the mode says.
    #[serde(default = "default_max_targets")]
    #[schemars(range(min = 1))]
    pub max_targets: u32,
    /// How long the fault lasts.
    pub duration: Duration,
}

fn default_max_targets() -> u32 {
    1
}

/// Pool an experiment targets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetPool {
    /// The stable pool.
    Stable,
    /// The canary pool.
    #[default]
    Canary,
    /// Every pool.
    All,
}

/// The longest a fault lasts and the longest delay it adds: an experiment is a drill, and
/// zgate refuses anything longer.
pub const MAX_FAULT: Duration = Duration::from_secs(24 * 3600);

/// A fault zdeploy can inject; all of them work for Windows pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Fault {
    /// Delete pods through the Kubernetes API.
    PodKill {},
    /// zgate delays requests to the pool by this much.
    GatewayLatency {
        /// Added delay per request.
        latency: Duration,
    },
    /// zgate answers this share of the pool's requests with an error.
    GatewayErrors {
        /// Share of requests, 0..1.
        ratio: f64,
    },
    /// zgate drops this share of the pool's requests (the client sees a timeout error).
    GatewayDrop {
        /// Share of requests, 0..1.
        ratio: f64,
    },
    /// Kill a local process of the pool (`zdeploy up` only).
    ProcessKill {},
}

/// How many targets are chosen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SelectionMode {
    /// One target.
    #[default]
    One,
    /// `value` targets.
    Fixed,
    /// `value` percent of the targets, rounded up.
    Percent,
}

/// The hypothesis that the service is healthy, in canary-analysis metric syntax.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SteadyState {
    /// Metrics that must pass before, during and after the fault.
    pub metrics: Vec<Metric>,
    /// Time between checks during the experiment.
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    /// After the fault ends, the metrics must pass again within this long.
    #[serde(default = "default_recovery_deadline")]
    pub recovery_deadline: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_recovery_deadline() -> Duration {
    Duration::from_secs(120)
}

/// Days and hours when runs may start, in the schedule's time zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedWindow {
    /// Days, `Mon` to `Sun`; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// First hour allowed (0..=23).
    #[schemars(range(max = 23))]
    pub start_hour: u32,
    /// Hour at which the window closes (1..=24).
    #[schemars(range(min = 1, max = 24))]
    pub end_hour: u32,
}

/// How a chaos run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunVerdict {
    /// The steady state held throughout and recovered after.
    Held,
    /// The steady state broke, or did not recover in time.
    Broken,
    /// Stopped early by a guard or by hand; the fault was reverted.
    Aborted,
    /// Not started: a guard said no, or the run was missed past its deadline.
    Skipped,
}

/// One run of the experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChaosRun {
    /// When the run was due.
    pub scheduled: Time,
    /// When it started, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Time>,
    /// What was hit (pods, processes or the pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The verdict.
    pub verdict: RunVerdict,
    /// Why, with the measured values.
    pub reason: String,
}

/// The observed state of a ChaosSchedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChaosScheduleStatus {
    /// When the last run was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// Runs, newest first, at most `historyLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ChaosRun>,
    /// The last `zdeploy.io/run-now` request carried out (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_request: Option<String>,
    /// The run in progress, recorded so a restarted controller carries it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveRun>,
}

/// A run in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRun {
    /// When it was due.
    pub scheduled: Time,
    /// When the fault was injected.
    pub started: Time,
    /// When the fault ends (a gateway fault also carries this end inside zgate).
    pub fault_ends: Time,
    /// Set once the fault is over: the steady state must be back by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_by: Option<Time>,
    /// What was hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Pods a pod kill deletes (recorded before they are deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The fault is in place: the run is recorded first and injected after, so a failure
    /// in between is completed from the record, never repeated.
    #[serde(default)]
    pub injected: bool,
}
