//! The `ZmqService` custom resource: one ZeroMQ service on a Windows pool and how it is released.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Pool;
use crate::compare::ReplyComparison;
use crate::revision::ConfigRef;
use crate::route::Route;
use crate::{Duration, Weight, WindowsBuild};

/// How many finished rollouts `status.history` keeps.
pub const HISTORY_LIMIT: usize = 10;

/// A ZeroMQ service deployed to a Windows node pool and released by canary.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "zdeploy.io",
    version = "v1alpha1",
    kind = "ZmqService",
    namespaced,
    status = "ZmqServiceStatus",
    shortname = "zs",
    category = "zdeploy",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight","description":"canary weight in percent"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.currentStep"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZmqServiceSpec {
    /// Pods of the stable revision.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The Windows nodes the service runs on.
    pub windows: WindowsTarget,
    /// The pod template of the service; its first container (or `zmq.container`) serves ZeroMQ.
    pub template: PodTemplateSpec,
    /// The ZeroMQ side: socket pattern, port, timeout and what counts as an error reply.
    pub zmq: ZmqEndpoint,
    /// How a new revision is released.
    #[serde(default)]
    pub strategy: Strategy,
    /// How to run one revision on a workstation (`zdeploy up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRun>,
    /// Runbooks for this service's alerts, shown on rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runbooks: Vec<RunbookLink>,
    /// Which ConfigMaps and Secrets count in a revision besides those the pods read.
    #[serde(default, skip_serializing_if = "ConfigTracking::is_empty")]
    pub config_tracking: ConfigTracking,
}

/// Exceptions to "every ConfigMap and Secret the pod template reads is part of its
/// revision".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigTracking {
    /// Read by the pods but not part of a revision (a CA bundle shared by every service):
    /// a change of it starts no canary, and all pods read it as it is, uncopied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<ConfigRef>,
    /// Part of the revision though the pod template does not name it (read through the
    /// API, or by a sidecar injected later): a change of it is released by canary. The
    /// pods read it as it is (nothing points at a copy), stable's too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track: Vec<ConfigRef>,
}

impl ConfigTracking {
    fn is_empty(&self) -> bool {
        self.ignore.is_empty() && self.track.is_empty()
    }
}

fn default_replicas() -> i32 {
    2
}

impl ZmqServiceSpec {
    /// Index of the container that serves ZeroMQ: `zmq.container`, or the first.
    pub fn main_container(&self) -> Option<usize> {
        let containers = &self.template.spec.as_ref()?.containers;
        match &self.zmq.container {
            Some(name) => containers.iter().position(|c| &c.name == name),
            None => (!containers.is_empty()).then_some(0),
        }
    }

    /// The image of the ZeroMQ container: the revision the manifest asks for.
    pub fn image(&self) -> String {
        let pod = self.template.spec.as_ref();
        self.main_container()
            .and_then(|i| pod?.containers[i].image.clone())
            .unwrap_or_default()
    }
}

/// The Windows Server build and scheduling of the service's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowsTarget {
    /// `2019`, `2022`, `2025` or the build number `10.0.NNNNN`; must match the image's base.
    pub build: WindowsBuild,
    /// CPU architecture of the nodes.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// A RuntimeClass whose `scheduling` selects and tolerates the Windows nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

fn default_arch() -> String {
    "amd64".into()
}

/// ZeroMQ socket pattern the service speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SocketPattern {
    /// Clients REQ or DEALER, service REP.
    ReqRep,
    /// Clients DEALER, service ROUTER.
    DealerRouter,
    /// One-way PUSH to PULL.
    PushPull,
    /// One-way PUB to SUB.
    PubSub,
}

/// The ZeroMQ endpoint of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZmqEndpoint {
    /// Socket pattern.
    #[serde(default = "default_pattern")]
    pub pattern: SocketPattern,
    /// TCP port the service binds in its pod.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// The container that serves ZeroMQ (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A request without a reply after this long is answered with an error and counted as a timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// What reply counts as an error (the ZeroMQ "5xx").
    #[serde(default)]
    pub error_classifier: ErrorClassifier,
    /// A request may be sent twice without harm (it changes nothing, or the same each
    /// time): shadow steps copy requests to the canary, so they need this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
    /// How a shadowed request's canary reply is compared with stable's.
    #[serde(default, skip_serializing_if = "is_default")]
    pub compare: ReplyComparison,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_pattern() -> SocketPattern {
    SocketPattern::ReqRep
}

/// The longest request timeout zgate takes: a reply later than an hour is no reply.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Rules that mark a reply as an error; a reply matching either one is an error.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorClassifier {
    /// A reply whose first body frame starts with this text is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_prefix: Option<String>,
    /// A reply whose body frame at `frame` is a decimal status at or above `errorAtOrAbove` is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_frame: Option<StatusFrame>,
}

impl Default for ErrorClassifier {
    fn default() -> Self {
        Self {
            reply_prefix: Some("ERR".into()),
            status_frame: None,
        }
    }
}

/// A status code carried in one frame of the reply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusFrame {
    /// Index of the frame in the reply body (0 is the first frame after the envelope).
    #[serde(default)]
    pub frame: u32,
    /// Statuses at or above this value are errors.
    #[serde(default = "default_error_status")]
    pub error_at_or_above: u32,
}

fn default_error_status() -> u32 {
    500
}

/// How traffic is split between stable and canary.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Router {
    /// zgate splits every request by weight.
    #[default]
    Gateway,
    /// Fallback: the replica ratio approximates the weight (per connection, coarse).
    Replicas,
}

/// The release strategy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// Traffic router.
    #[serde(default)]
    pub router: Router,
    /// A rollout that makes no progress for this long is rolled back.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// Ready canary pods that zgate cannot reach for this long (a Windows firewall or an
    /// antivirus blocking the port, a ZeroMQ handshake that fails) roll the rollout back.
    /// No weight goes to the canary before zgate reaches one of its pods.
    #[serde(default = "default_reach_deadline")]
    pub reach_deadline: Duration,
    /// Canary steps and analysis.
    #[serde(default)]
    pub canary: Canary,
    /// Blue-green instead of canary steps: the new revision is previewed at weight 0, then
    /// takes all traffic at once while the old pool stays up for `scaleDownDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            router: Router::default(),
            progress_deadline: default_progress_deadline(),
            reach_deadline: default_reach_deadline(),
            canary: Canary::default(),
            blue_green: None,
        }
    }
}

/// How a new revision is released: the strategy the manifest chose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Release<'a> {
    /// Weights step by step (`strategy.canary`).
    Canary(&'a Canary),
    /// Preview, then all at once, the old pool kept (`strategy.blueGreen`).
    BlueGreen(&'a BlueGreen),
}

impl Strategy {
    /// The strategy in force: blue-green when `blueGreen` is given, else the canary.
    pub fn release(&self) -> Release<'_> {
        match &self.blue_green {
            Some(bg) => Release::BlueGreen(bg),
            None => Release::Canary(&self.canary),
        }
    }

    /// The steps a rollout runs: the canary's, or the blue-green preview's.
    pub fn steps(&self) -> &[Step] {
        match self.release() {
            Release::Canary(c) => &c.steps,
            Release::BlueGreen(bg) => &bg.preview,
        }
    }

    /// The analysis that judges the new revision.
    pub fn analysis(&self) -> &Analysis {
        match self.release() {
            Release::Canary(c) => &c.analysis,
            Release::BlueGreen(bg) => &bg.analysis,
        }
    }

    /// Routes by client while a rollout runs.
    pub fn routes(&self) -> &[ClientRoute] {
        match self.release() {
            Release::Canary(c) => &c.routes,
            Release::BlueGreen(bg) => &bg.routes,
        }
    }

    /// The field under `spec.strategy` that holds the steps, analysis and routes:
    /// `canary` or `blueGreen`.
    pub fn field(&self) -> &'static str {
        match self.release() {
            Release::Canary(_) => "canary",
            Release::BlueGreen(_) => "blueGreen",
        }
    }

    /// The name of the steps list under `field()`: `steps` or `preview`.
    pub fn steps_field(&self) -> &'static str {
        match self.release() {
            Release::Canary(_) => "steps",
            Release::BlueGreen(_) => "preview",
        }
    }
}

/// Blue-green: the new revision starts at full size beside the old one and takes no
/// weight while its preview runs (shadow copies, routes by client, analysis, a pause for a
/// person); then all traffic switches to it at once. The old pool keeps running for
/// `scaleDownDelay`, so a rollback is one weight change back with nothing to start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreen {
    /// Steps before the switch: `shadow`, `analysis` and `pause` (no `setWeight`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<Step>,
    /// How long the old pool keeps running after the switch; analysis goes on meanwhile
    /// and a breach switches back. Shorter than `progressDeadline`.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
    /// Analysis run every `interval` during the preview and after the switch.
    #[serde(default)]
    pub analysis: Analysis,
    /// Routes by client during the preview and the scale-down delay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ClientRoute>,
}

fn default_scale_down_delay() -> Duration {
    Duration::from_secs(30)
}

fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}

fn default_reach_deadline() -> Duration {
    Duration::from_secs(120)
}

/// The canary: steps run in order, analysis runs in the background throughout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// Steps in order; after the last one the canary is promoted to 100%.
    #[serde(default = "default_steps")]
    pub steps: Vec<Step>,
    /// Analysis run every `interval` while the canary takes traffic.
    #[serde(default)]
    pub analysis: Analysis,
    /// Routes by client while a rollout runs (behind zgate): matching requests go to their
    /// pool whatever the weights, from the canary's start until the rollout ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ClientRoute>,
    /// Canary pods behind zgate, fixed; by default the canary is sized for its share of
    /// the requests: ceil(replicas x weight), at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<i32>,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            analysis: Analysis::default(),
            routes: Vec::new(),
            replicas: None,
        }
    }
}

/// A route by client: requests that match go to `pool` (the canary unless said).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientRoute {
    /// What a request must match: one of `identityPrefix` or `framePrefix`.
    #[serde(rename = "match")]
    pub matcher: ClientMatch,
    /// Where matching requests go.
    #[serde(default = "canary_pool")]
    pub pool: Pool,
}

fn canary_pool() -> Pool {
    Pool::Canary
}

/// What a route matches (`\xNN` in a prefix for any byte).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientMatch {
    /// The client's ZeroMQ routing id (`ZMQ_ROUTING_ID`) starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_prefix: Option<String>,
    /// A frame of the request body starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_prefix: Option<FramePrefix>,
}

/// A body frame's prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FramePrefix {
    /// Which body frame (0: the first after the empty delimiter).
    pub frame: u32,
    /// What it starts with.
    pub prefix: String,
}

impl ClientRoute {
    /// The route zgate applies; `Err` says what is wrong with the match.
    pub fn route(&self) -> Result<Route, String> {
        let m = &self.matcher;
        let text = match (&m.identity_prefix, &m.frame_prefix) {
            (Some(p), None) => format!("{}=identity:{p}", self.pool),
            (None, Some(f)) => format!("{}=frame:{}:{}", self.pool, f.frame, f.prefix),
            _ => return Err("give exactly one of identityPrefix and framePrefix".into()),
        };
        text.parse()
    }
}

fn default_steps() -> Vec<Step> {
    let w = |p| Step::SetWeight(Weight::new(p).expect("constant weight"));
    let pause = || {
        Step::Pause(Pause {
            duration: Some(Duration::from_secs(60)),
        })
    };
    vec![w(10), pause(), w(25), pause(), w(50), pause()]
}

/// One canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Send this share of requests to the canary.
    SetWeight(Weight),
    /// Wait: for `duration`, or until promoted when no duration is given.
    Pause(Pause),
    /// Run the analysis now; the step passes only when every listed metric passes.
    Analysis(StepAnalysis),
    /// Copy this share of stable's requests to the canary as well (0 stops): clients get
    /// stable's replies only, the canary's are compared with them (`shadowMismatchRatio`).
    /// Needs `zmq.idempotent: true`; lasts until the next shadow step or the rollout's end.
    Shadow(ShadowStep),
}

/// A shadow step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowStep {
    /// Share of the requests stable serves that is copied to the canary.
    pub percent: Weight,
}

/// A pause step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pause {
    /// How long to wait; absent means until `zdeploy promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

/// An analysis step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepAnalysis {
    /// Names of the metrics to require (default: all of `strategy.canary.analysis.metrics`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// Background analysis of the canary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Time between two measurements.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Failed measurements tolerated before rollback (0: the first failure rolls back).
    #[serde(default)]
    pub failure_limit: u32,
    /// Consecutive inconclusive measurements tolerated before the rollout pauses.
    #[serde(default = "default_inconclusive_limit")]
    pub inconclusive_limit: u32,
    /// Canary requests needed before a metric can *pass*; a failure needs no minimum, only
    /// evidence (see `alpha`).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// The chance that a canary no worse than its gates is rolled back over the whole
    /// rollout, all count-judged checks and looks together (each gets an equal share).
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.000001, max = 0.5))]
    pub alpha: f64,
    /// The metrics judged; defaults to error ratio above 1% over 5m and p99 above 800ms over 3m.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<Metric>,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            failure_limit: 0,
            inconclusive_limit: default_inconclusive_limit(),
            min_samples: default_min_samples(),
            alpha: default_alpha(),
            metrics: default_metrics(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_inconclusive_limit() -> u32 {
    6
}

fn default_min_samples() -> u64 {
    50
}

fn default_alpha() -> f64 {
    0.01
}

fn default_metrics() -> Vec<Metric> {
    vec![
        Metric {
            name: "error-ratio".into(),
            builtin: Some(Builtin::ErrorRatio),
            query: None,
            counts: None,
            window: Duration::from_secs(300),
            max: Some(0.01),
            min: None,
            relative: None,
            min_samples: None,
        },
        Metric {
            name: "latency-p99".into(),
            builtin: Some(Builtin::LatencyP99),
            query: None,
            counts: None,
            window: Duration::from_secs(180),
            max: Some(0.8),
            min: None,
            relative: None,
            min_samples: None,
        },
    ]
}

/// A measurement zdeploy knows how to take from zgate's metrics without any PromQL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Builtin {
    /// Share of requests that ended in error, timeout or unavailable (0..1).
    ErrorRatio,
    /// 99th percentile request latency through the gateway, in seconds.
    LatencyP99,
    /// Median request latency through the gateway, in seconds.
    LatencyP50,
    /// Share of shadowed requests whose canary reply differs from stable's (by
    /// `zmq.compare`), is an error where stable's is not, or never came (0..1).
    ShadowMismatchRatio,
}

/// One metric of the analysis and its thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metric {
    /// Unique name, used in status and by analysis steps.
    pub name: String,
    /// A built-in measurement, judged from counts; give this, `query` or `counts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// A PromQL template giving one value, checked against the thresholds; `{{service}}`,
    /// `{{namespace}}`, `{{pool}}` and `{{interval}}` are filled in, escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Two PromQL templates giving the bad and all requests over `{{interval}}` (the
    /// canary's life), judged from counts like the built-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<CountQueries>,
    /// Range of the rates behind a `query`'s value (`{{interval}}`); count-judged metrics
    /// always count from the canary's start.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// Fail when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Fail when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Fail when the canary is worse than stable by more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<Relative>,
    /// Overrides `analysis.minSamples` for this metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
}

impl Metric {
    /// Whether the metric is a rate judged from counts (`errorRatio`,
    /// `shadowMismatchRatio` or `counts`), so that
    /// `max` and `min` are rates between 0 and 1.
    pub fn judges_rate(&self) -> bool {
        self.counts.is_some()
            || matches!(
                self.builtin,
                Some(Builtin::ErrorRatio | Builtin::ShadowMismatchRatio)
            )
    }

    /// The latency threshold that zgate's histogram needs as a bucket edge, in seconds: the
    /// `max` of a latency built-in.
    pub fn latency_edge(&self) -> Option<f64> {
        match self.builtin {
            Some(Builtin::LatencyP99 | Builtin::LatencyP50) => self.max,
            _ => None,
        }
    }
}

impl Builtin {
    /// For a latency built-in, the share of requests allowed above its threshold (p99: 1%).
    pub fn share_above(self) -> Option<f64> {
        match self {
            Builtin::LatencyP99 => Some(0.01),
            Builtin::LatencyP50 => Some(0.5),
            Builtin::ErrorRatio | Builtin::ShadowMismatchRatio => None,
        }
    }
}

/// `seconds` as a bucket edge zgate can have (whole milliseconds, at least one), or `None`.
pub fn bucket_edge(seconds: f64) -> Option<std::time::Duration> {
    let ms = (seconds * 1000.0).round();
    let whole = (seconds * 1000.0 - ms).abs() < 1e-6;
    (seconds.is_finite() && whole && ms >= 1.0).then(|| std::time::Duration::from_millis(ms as u64))
}

impl ZmqServiceSpec {
    /// Every latency threshold of the canary analysis: the bucket edges zgate must have.
    pub fn latency_edges(&self) -> Vec<std::time::Duration> {
        let mut edges: Vec<_> = self
            .strategy
            .analysis()
            .metrics
            .iter()
            .filter_map(Metric::latency_edge)
            .filter_map(bucket_edge)
            .collect();
        edges.sort();
        edges.dedup();
        edges
    }
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}

/// A metric from the service's own counters, e.g. HTTP 5xx among all HTTP requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CountQueries {
    /// PromQL template: bad requests over `{{interval}}`, e.g. `sum(increase(http_requests_total{code=~"5..",pool="{{pool}}"}[{{interval}}]))`.
    pub errors: String,
    /// PromQL template: all requests over `{{interval}}`.
    pub total: String,
}

/// A comparison of the canary against stable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Relative {
    /// Canary may exceed stable by at most this much (absolute, e.g. 0.005 for half a point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Canary may be at most this many times stable's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

/// How to run one revision of the service on a workstation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRun {
    /// The program and its arguments; `{{revision}}`, `{{image}}`, `{{port}}`, `{{endpoint}}` and `{{file:PATH}}` (the revision's copy of a tracked file) are substituted.
    pub command: Vec<String>,
    /// Extra environment variables for the process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files (relative to the manifest's folder) whose content is part of the revision: a
    /// change is released by canary, and each revision reads its own copy as `{{file:PATH}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track: Vec<String>,
    /// Processes per revision.
    #[serde(default = "default_local_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: u32,
}

fn default_local_replicas() -> u32 {
    1
}

/// A runbook linked to this service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunbookLink {
    /// The runbook's `id` in `runbooks/`.
    pub id: String,
    /// Alerts this runbook answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// Where the rendered page lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where a ZmqService stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Stable takes all traffic; no rollout is running.
    #[default]
    Healthy,
    /// A canary is taking traffic and being judged.
    Progressing,
    /// A canary is held at its weight until resumed or promoted.
    Paused,
    /// The last canary was rolled back; stable takes all traffic.
    RolledBack,
}

/// Verdict of one measurement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Within thresholds.
    Pass,
    /// A threshold was breached.
    Fail,
    /// Not enough data to judge; never a pass and never a failure.
    Inconclusive,
}

/// Requests of one pool since the canary started, and how many of them were bad (an
/// error, or slower than the latency threshold).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Requests counted.
    pub requests: u64,
    /// Bad ones among them.
    pub bad: u64,
}

impl Tally {
    /// The two tallies together (counts carried over a restart plus new ones).
    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            requests: self.requests + other.requests,
            bad: self.bad + other.bad,
        }
    }
}

/// Why a count-judged metric got its verdict: the counts, the test's statistic against the
/// level it must reach to fail, and an interval for the canary's rate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The canary's requests since it started.
    pub canary: Tally,
    /// Stable's over the same time, for relative checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Tally>,
    /// The sequential test's e-value: evidence that the canary breaks its gate.
    pub evidence: f64,
    /// The e-value at which it fails: 1 / (alpha / checks).
    pub fail_at: f64,
    /// A 95% (Wilson) interval for the canary's bad-request rate: [low, high].
    pub interval: [f64; 2],
}

/// One measurement, with the query that was actually run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// The metric's name.
    pub metric: String,
    /// The resolved query (or the built-in's description).
    pub query: String,
    /// The measured value, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The counts and the sequential test behind a count-judged verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// When it was taken.
    pub at: Time,
}

/// How the measurement of a firing alert is named: this prefix, then `alertname`.
const ALERT_PREFIX: &str = "alert:";

impl Measurement {
    /// The metric name of the measurement that alert `name` fires for the canary.
    pub fn alert_metric(name: &str) -> String {
        format!("{ALERT_PREFIX}{name}")
    }

    /// The alert's name, when this measurement is a firing alert.
    pub fn alert(&self) -> Option<&str> {
        self.metric.strip_prefix(ALERT_PREFIX)
    }
}

/// How a finished rollout ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// The canary became stable.
    Promoted,
    /// The canary was rolled back by analysis, deadline or hand.
    RolledBack,
}

/// A finished rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The revision released.
    pub revision: String,
    /// The stable revision it was compared with.
    pub stable_revision: String,
    /// When the canary first took traffic.
    pub started: Time,
    /// When it ended.
    pub ended: Time,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
    /// The runbook shown at the time, as `id@version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<RunbookRef>,
    /// The largest share of requests the canary took (its pods drain at that size).
    #[serde(default)]
    pub peak_weight: Weight,
    /// What the revision changed from the stable one ("env A", "ConfigMap x (1 key)").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// A runbook as it was shown: `id@version`, so the page read later is the page that was
/// linked; just `id` for a runbook the binary does not embed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct RunbookRef(String);

impl RunbookRef {
    /// The reference to version `version` of runbook `id` (`None`: not embedded).
    pub fn new(id: &str, version: Option<&str>) -> Self {
        match version {
            Some(v) => Self(format!("{id}@{v}")),
            None => Self(id.to_string()),
        }
    }

    /// The runbook's id.
    pub fn id(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(id, _)| id)
    }
}

impl std::fmt::Display for RunbookRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the rollout under way stands: everything the engine needs to resume it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// When the canary was started.
    pub started: Time,
    /// When the current step began.
    pub step_started: Time,
    /// When the rollout last moved forward (for the progress deadline).
    pub last_progress: Time,
    /// The weight given with `--canary`, applied before the manifest's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_weight: Option<Weight>,
    /// Failed analyses so far.
    #[serde(default)]
    pub failures: u32,
    /// Inconclusive analyses in a row.
    #[serde(default)]
    pub inconclusive_streak: u32,
    /// Held by `zdeploy pause` (or too many inconclusive results) until resumed.
    #[serde(default)]
    pub paused: bool,
    /// Why it is paused, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// When zgate first had a live connection to a canary pod; the canary gets no weight
    /// before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<Time>,
    /// Since when the canary's pods have been ready while zgate cannot reach any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<Time>,
    /// Blue-green: when all traffic switched to the new revision; the old pool runs until
    /// `scaleDownDelay` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched: Option<Time>,
    /// The largest weight the canary has had in this rollout.
    #[serde(default)]
    pub peak_weight: Weight,
}

/// The observed state of a ZmqService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZmqServiceStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the service stands.
    #[serde(default)]
    pub phase: Phase,
    /// Index of the current canary step while a rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<u32>,
    /// Share of requests the canary receives.
    #[serde(default)]
    pub canary_weight: Weight,
    /// Revision (image) serving as stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Revision (image) under test, while a rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The last measurement of every metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<Measurement>,
    /// Standard conditions (`Available`, `Progressing`, `RolledBack`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Progress of the rollout under way, recorded so that a restart resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
    /// Past rollouts, newest first, at most `HISTORY_LIMIT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
    /// Human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The spec's image the controller last acted on: a GitOps rollout starts when the
    /// spec's image changes from it, never because a CLI rollout left stable elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_revision: Option<String>,
    /// Id of the last `zdeploy.io/command` annotation carried out (each runs once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<String>,
    /// Routes by client zgate applies during the rollout (from `strategy.canary.routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Share of stable's requests copied to the canary now (a shadow step); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_percent: Option<Weight>,
    /// Why the last command was refused; absent when it was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command_refused: Option<String>,
    /// Pods of the stable pool now (the `/scale` subresource's current count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The label selector of the stable pool's pods, as a string (what an autoscaler
    /// measures through `/scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What the revision under test changes from stable ("image A -> B", "env A",
    /// "ConfigMap x (1 key)"); values are never shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Since when a change waits for its canary to start (the namespace's limit of
    /// canaries in flight is reached); the queue is served in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_since: Option<Time>,
    /// A promoted revision that still takes every request in the canary pool while the
    /// stable pool's pods are replaced by it (a cluster's stable Deployment rolls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// The hand-over of a promotion: the canary pool, which already runs the promoted revision,
/// takes every request until the stable pool's pods all run it and zgate reaches them;
/// then stable takes the requests back and the canary drains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// The canary's weight at its peak: the pool keeps the size it had then.
    pub peak_weight: Weight,
    /// When stable took the requests back; the canary drains from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_since: Option<Time>,
}

impl RolloutState {
    /// A rollout started at `now` (its step, and its progress, too), not yet reached by
    /// zgate; `initial_weight` is `--canary N`.
    pub fn started_at(now: Time, initial_weight: Option<Weight>) -> Self {
        Self {
            started: now.clone(),
            step_started: now.clone(),
            last_progress: now,
            initial_weight,
            failures: 0,
            inconclusive_streak: 0,
            paused: false,
            pause_reason: None,
            reached: None,
            unreachable_since: None,
            switched: None,
            peak_weight: Weight::ZERO,
        }
    }
}

impl ZmqServiceStatus {
    /// The revision being released while a rollout is in progress.
    pub fn rollout_revision(&self) -> Option<String> {
        self.rollout.as_ref().and(self.canary_revision.clone())
    }
}
