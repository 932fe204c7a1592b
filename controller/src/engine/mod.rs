//! The rollout engine: a pure function of (spec, status, input, now) that returns the next
//! status and the actions to carry out, in order. No clock, no network, no Kubernetes:
//! the platform drivers feed it time and measurements and execute what it asks.
//!
//! Invariants (property-tested): the canary weight never exceeds the weight of the last
//! step reached; an analysis step is passed only by a passing analysis that began after
//! the step did; an inconclusive result never moves a rollout forward; a breach (failed
//! analysis, a firing alert whatever the failure limit) wins over any pause; a rollback sets the canary weight to 0
//! before it scales the canary down; behind zgate, the canary gets no weight before zgate
//! has reached one of its pods. Blue-green: the new revision (in the canary pool) has
//! weight 0 until its preview is done, then 100 in one change; the old pool stays up until
//! `scaleDownDelay` after that switch, so a rollback is again one change, back to 0.

pub mod clock;
pub mod sizing;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zdeploy_api::Weight;
use zdeploy_api::command::CommandRequest;
use zdeploy_api::revision::Revision;
use zdeploy_api::route::Route;
use zdeploy_api::service::{
    BlueGreen, HISTORY_LIMIT, Measurement, Outcome, Phase, Release, RolloutRecord, RolloutState,
    Router, RunbookRef, Step, Verdict, ZmqServiceSpec, ZmqServiceStatus,
};
use zdeploy_gateway::metrics::HandshakeFailure;

/// Something that happened: time passed, a measurement came in, or a person asked.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Time passed; move on if a step is done.
    Tick,
    /// A background analysis finished; `started` is when its measurements began.
    Analysis {
        /// The overall verdict.
        verdict: Verdict,
        /// Each measurement.
        measurements: Vec<Measurement>,
        /// When the analysis began (an analysis step only counts runs begun after it).
        started: Timestamp,
    },
    /// A command from the CLI.
    Command(Command),
    /// The driver was away and is back: the time nobody drove the rollout does not count
    /// against the canary's progress deadline.
    Restarted,
    /// What the driver sees of zgate's connections to the canary's pods.
    Reach(Reach),
}

/// Whether zgate can reach the canary's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// No canary pod is ready yet (the progress deadline bounds the wait).
    NotReady,
    /// Canary pods are ready and zgate has no live connection to any of them; `handshake`
    /// is why libzmq refused them, when it did.
    Unreachable {
        /// The handshake failure zgate counted for the canary, if any.
        handshake: Option<HandshakeFailure>,
    },
    /// zgate has a live connection to a canary pod.
    Live,
}

/// The runbook of a canary that zgate cannot reach.
pub const UNREACHABLE_RUNBOOK: &str = "canary-unreachable";

/// What a person can ask.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Release `revision`; `canary` sets the first weight before the manifest's steps.
    Rollout {
        /// The new revision (image).
        revision: String,
        /// Start at this weight.
        canary: Option<Weight>,
        /// Who chose the revision.
        origin: Origin,
    },
    /// Skip the current pause (`full`: finish the rollout now).
    Promote {
        /// Promote all the way.
        full: bool,
    },
    /// Roll back now.
    Abort {
        /// Why, in words.
        reason: String,
    },
    /// Start the last rolled-back revision again.
    Retry,
    /// Hold the rollout where it is (analysis still runs; a breach still rolls back).
    Pause,
    /// Continue a held rollout.
    Resume,
}

impl Command {
    /// The command a person's request asks for; a rollout without an image releases
    /// `manifest_image`.
    pub fn from_request(request: CommandRequest, manifest_image: String) -> Self {
        match request {
            CommandRequest::Rollout {
                image,
                canary,
                manifest_over_stable,
            } => Command::Rollout {
                origin: match (&image, manifest_over_stable) {
                    (None, false) => Origin::ManifestByDefault,
                    _ => Origin::Named,
                },
                revision: image.unwrap_or(manifest_image),
                canary,
            },
            CommandRequest::Promote { full } => Command::Promote { full },
            CommandRequest::Rollback { reason } => Command::Abort {
                reason: reason.unwrap_or_else(|| "zdeploy rollback".into()),
            },
            CommandRequest::Retry => Command::Retry,
            CommandRequest::Pause => Command::Pause,
            CommandRequest::Resume => Command::Resume,
        }
    }
}

/// Who chose a rollout's revision: a rollout nobody chose must not replace a stable that
/// differs from the manifest (a release made from the CLI that the manifest does not know
/// yet, or a newer one: that would be a silent downgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Named: `--image`, a manifest change the controller saw, or `--manifest-image`.
    Named,
    /// The manifest's, because no image was given.
    ManifestByDefault,
}

/// What the platform must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the canary pool with this revision and wait until it is ready.
    StartCanary {
        /// The revision to run.
        revision: String,
    },
    /// Route this share of requests to the canary (the rest to stable).
    SetCanaryWeight(Weight),
    /// Apply these routes by client in zgate (none: remove them).
    SetRoutes(Vec<Route>),
    /// Copy this share of stable's requests to the canary, replies compared (0: stop).
    SetShadow(Weight),
    /// Run `revision` in the stable pool and wait until it is ready.
    DeployStable {
        /// The revision to run.
        revision: String,
    },
    /// Stop the canary pool.
    StopCanary,
    /// Tell people (Kubernetes Event, CLI output).
    Event(Notice),
}

/// Something to tell people: a Kubernetes Event in a cluster, a line from `zdeploy up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Whether someone should look.
    pub severity: Severity,
    /// Why, as a Kubernetes Event reason.
    pub reason: Reason,
    /// What happened.
    pub message: String,
    /// The runbook to read, pinned to the version shown.
    pub runbook: Option<RunbookRef>,
}

impl Notice {
    /// The message with its runbook, as people read it.
    pub fn text(&self) -> String {
        match &self.runbook {
            Some(r) => format!("{} (runbook: {r})", self.message),
            None => self.message.clone(),
        }
    }
}

/// Whether a notice needs someone's attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// For the record.
    Normal,
    /// Someone should look.
    Warning,
}

impl Severity {
    /// `Normal` or `Warning`, as Kubernetes Events and `zdeploy up` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// Why the engine tells people something: the Kubernetes Event reasons of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A canary was started.
    RolloutStarted,
    /// zgate reached the canary's pods: it now takes weight.
    CanaryReached,
    /// Blue-green: all traffic switched to the new revision; the old pool is kept.
    Switched,
    /// Held by hand.
    Paused,
    /// Continued by hand.
    Resumed,
    /// Too many inconclusive analyses in a row: held.
    AnalysisInconclusive,
    /// The canary was rolled back.
    RolledBack,
    /// The canary became stable.
    Promoted,
}

impl Reason {
    /// The reason as Kubernetes shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RolloutStarted => "RolloutStarted",
            Reason::CanaryReached => "CanaryReached",
            Reason::Switched => "Switched",
            Reason::Paused => "Paused",
            Reason::Resumed => "Resumed",
            Reason::AnalysisInconclusive => "AnalysisInconclusive",
            Reason::RolledBack => "RolledBack",
            Reason::Promoted => "Promoted",
        }
    }
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to record before carrying out the actions.
    pub status: ZmqServiceStatus,
    /// The actions, in order.
    pub actions: Vec<Action>,
    /// Why a command was refused, if it was.
    pub refused: Option<String>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn elapsed(since: &Time, now: Timestamp) -> std::time::Duration {
    let d: SignedDuration = now.duration_since(since.0);
    d.try_into().unwrap_or_default()
}

fn notice(severity: Severity, reason: Reason, message: String) -> Action {
    Action::Event(Notice {
        severity,
        reason,
        message,
        runbook: None,
    })
}

/// Checks that a recorded status (read back after a restart) fits `spec`: a step the
/// manifest does not have would otherwise read as "all steps done" and promote the canary
/// without analysis. Returns the field and the rule broken.
pub fn check_recorded(spec: &ZmqServiceSpec, status: &ZmqServiceStatus) -> Result<(), String> {
    let steps = spec.strategy.steps().len();
    match (status.rollout.is_some(), status.current_step) {
        (true, None) => Err("currentStep is missing while a rollout is recorded".into()),
        (true, Some(s)) if s as usize > steps => Err(format!(
            "currentStep is {s}, but the manifest has {steps} steps (0 to {steps})"
        )),
        (false, Some(s)) => Err(format!("currentStep is {s}, but no rollout is recorded")),
        _ if status.rollout.is_some() && status.canary_revision.is_none() => {
            Err("canaryRevision is missing while a rollout is recorded".into())
        }
        _ if status
            .rollout
            .as_ref()
            .is_some_and(|r| r.switched.is_some())
            && spec.strategy.blue_green.is_none() =>
        {
            Err("rollout.switched is recorded, but the manifest's strategy is not blueGreen".into())
        }
        _ => Ok(()),
    }
}

/// Computes the next status and actions. Feeding the same inputs gives the same outputs.
pub fn step(
    spec: &ZmqServiceSpec,
    status: &ZmqServiceStatus,
    input: &Input,
    now: Timestamp,
) -> Decision {
    let mut d = Decision {
        status: status.clone(),
        actions: Vec::new(),
        refused: None,
    };
    // A rollout recorded before `reached` existed, with weight already: zgate reached it.
    if let Some(r) = d.status.rollout.as_mut()
        && r.reached.is_none()
        && d.status.canary_weight > Weight::ZERO
    {
        r.reached = Some(r.started.clone());
    }
    match input {
        Input::Tick => advance(spec, &mut d, now),
        Input::Restarted => {
            if let Some(r) = d.status.rollout.as_mut() {
                r.last_progress = time(now);
            }
        }
        Input::Analysis {
            verdict,
            measurements,
            started,
        } => {
            analysis(spec, &mut d, *verdict, measurements, *started, now);
        }
        Input::Command(c) => command(spec, &mut d, c, now),
        Input::Reach(reach) => reached(spec, &mut d, *reach, now),
    }
    d
}

/// Records what zgate sees of the canary before it first reaches it: live lets the steps
/// go on; ready and unreachable for the reach deadline rolls back, with the cause.
fn reached(spec: &ZmqServiceSpec, d: &mut Decision, reach: Reach, now: Timestamp) {
    let Some(r) = d.status.rollout.as_mut() else {
        return;
    };
    if r.reached.is_some() {
        return;
    }
    match reach {
        Reach::NotReady => r.unreachable_since = None,
        Reach::Live => {
            r.reached = Some(time(now));
            r.unreachable_since = None;
            r.last_progress = time(now);
            d.actions.push(notice(
                Severity::Normal,
                Reason::CanaryReached,
                "zgate reaches the canary's pods".into(),
            ));
            advance(spec, d, now);
        }
        Reach::Unreachable { handshake } => {
            let since = r.unreachable_since.get_or_insert_with(|| time(now)).clone();
            let deadline = spec.strategy.reach_deadline;
            if elapsed(&since, now) < deadline.get() {
                d.status.message = Some(format!(
                    "canary pods ready, zgate cannot reach them yet (rolled back after {deadline})"
                ));
                return;
            }
            let port = spec.zmq.port;
            let reason = match handshake {
                None => format!(
                    "canary pods ready but zgate cannot reach them on port {port} for {deadline}: check the Windows firewall and antivirus on the node"
                ),
                Some(why) => format!(
                    "canary pods ready but their ZeroMQ handshake with zgate fails ({}) on port {port} for {deadline}: check the libzmq version and security mechanism of the build",
                    why.label()
                ),
            };
            rollback(d, &reason, Some(UNREACHABLE_RUNBOOK.into()), now);
        }
    }
}

/// Behind zgate, the canary gets no weight (and no step runs) before zgate reached it.
pub fn waiting_for_reach(spec: &ZmqServiceSpec, r: &RolloutState) -> bool {
    spec.strategy.router == Router::Gateway && r.reached.is_none()
}

fn command(spec: &ZmqServiceSpec, d: &mut Decision, c: &Command, now: Timestamp) {
    let in_rollout = d.status.rollout.is_some();
    match c {
        Command::Rollout {
            revision,
            canary,
            origin,
        } => {
            let stable = d.status.stable_revision.clone();
            if in_rollout {
                let current = d.status.canary_revision.clone().unwrap_or_default();
                d.refused = Some(format!(
                    "a rollout of {current} is in progress: promote or roll it back first"
                ));
            } else if d.status.stable_revision.as_deref() == Some(revision.as_str()) {
                d.refused = Some(format!("{revision} is already the stable revision"));
            } else if let (Origin::ManifestByDefault, Some(stable)) = (origin, stable)
                && Revision::parse(&stable).image != Revision::parse(revision).image
            {
                d.refused = Some(format!(
                    "stable runs {stable}, not the manifest's {revision}: a rollout without --image would replace it with {revision} (a downgrade if {stable} is newer); give --image {revision} (or --manifest-image) to release it anyway, or --image with the revision you mean"
                ));
            } else if canary.is_some() && spec.strategy.blue_green.is_some() {
                d.refused = Some("--canary sets a first weight, and blue-green gives the new revision none until its preview is done, then all at once: leave --canary out".into());
            } else {
                start(spec, d, revision.clone(), *canary, now);
                advance(spec, d, now);
            }
        }
        Command::Retry => match (in_rollout, d.status.history.first()) {
            (false, Some(last)) if last.outcome == Outcome::RolledBack => {
                start(spec, d, last.revision.clone(), None, now);
                advance(spec, d, now);
            }
            _ => {
                d.refused =
                    Some("nothing to retry: retry restarts the last rolled-back revision".into())
            }
        },
        _ if !in_rollout => d.refused = Some("no rollout in progress".into()),
        Command::Abort { reason } => {
            let runbook = spec.runbooks.first().map(|r| r.id.clone());
            rollback(d, &format!("rolled back by hand: {reason}"), runbook, now);
        }
        Command::Pause => {
            let r = d.status.rollout.as_mut().expect("in rollout");
            r.paused = true;
            r.pause_reason = Some("paused by zdeploy pause".into());
            d.status.phase = Phase::Paused;
            d.actions.push(notice(
                Severity::Normal,
                Reason::Paused,
                "rollout paused by hand".into(),
            ));
        }
        Command::Resume => {
            let r = d.status.rollout.as_mut().expect("in rollout");
            r.paused = false;
            r.pause_reason = None;
            r.inconclusive_streak = 0;
            r.last_progress = time(now);
            d.status.phase = Phase::Progressing;
            d.actions.push(notice(
                Severity::Normal,
                Reason::Resumed,
                "rollout resumed".into(),
            ));
            advance(spec, d, now);
        }
        Command::Promote { full: true } => complete(d, "promoted by hand (--full)", now),
        Command::Promote { full: false } if switched(&d.status) => complete(
            d,
            "promoted by hand: the old pool goes without waiting for scaleDownDelay",
            now,
        ),
        Command::Promote { full: false } => {
            let i = d.status.current_step.unwrap_or(0) as usize;
            match spec.strategy.steps().get(i) {
                Some(Step::Analysis(_)) => {
                    d.refused = Some("the current step is an analysis: it passes only on a passing analysis (promote --full overrides)".into());
                }
                _ => {
                    let r = d.status.rollout.as_mut().expect("in rollout");
                    r.paused = false;
                    r.pause_reason = None;
                    d.status.phase = Phase::Progressing;
                    next_step(d, now);
                    advance(spec, d, now);
                }
            }
        }
    }
}

fn start(
    spec: &ZmqServiceSpec,
    d: &mut Decision,
    revision: String,
    canary: Option<Weight>,
    now: Timestamp,
) {
    d.status.canary_revision = Some(revision.clone());
    d.status.phase = Phase::Progressing;
    d.status.current_step = Some(0);
    d.status.canary_weight = Weight::ZERO;
    d.status.analysis.clear();
    // The platform says what this revision changes, when it can tell.
    d.status.changes.clear();
    d.status.message = Some(format!("starting canary {revision}"));
    d.status.rollout = Some(RolloutState::started_at(time(now), canary));
    d.actions.push(Action::StartCanary {
        revision: revision.clone(),
    });
    // Validated with the manifest; zgate applies a route once the canary is usable.
    let routes: Vec<Route> = spec
        .strategy
        .routes()
        .iter()
        .filter_map(|r| r.route().ok())
        .collect();
    if !routes.is_empty() {
        d.status.routes = routes.clone();
        d.actions.push(Action::SetRoutes(routes));
    }
    d.actions.push(notice(
        Severity::Normal,
        Reason::RolloutStarted,
        format!("canary {revision} started"),
    ));
}

fn next_step(d: &mut Decision, now: Timestamp) {
    d.status.current_step = Some(d.status.current_step.unwrap_or(0) + 1);
    let r = d.status.rollout.as_mut().expect("in rollout");
    r.step_started = time(now);
    r.last_progress = time(now);
}

fn set_weight(d: &mut Decision, w: Weight) {
    if let Some(r) = d.status.rollout.as_mut() {
        r.peak_weight = r.peak_weight.max(w);
    }
    if d.status.canary_weight != w {
        d.status.canary_weight = w;
        d.actions.push(Action::SetCanaryWeight(w));
    }
}

/// Moves through every step that is done at `now`.
fn advance(spec: &ZmqServiceSpec, d: &mut Decision, now: Timestamp) {
    let Some(r) = d.status.rollout.clone() else {
        return;
    };
    if r.paused {
        return;
    }
    if elapsed(&r.last_progress, now) > spec.strategy.progress_deadline.get() {
        let reason = format!(
            "no progress for {}: the progress deadline",
            spec.strategy.progress_deadline
        );
        rollback(d, &reason, spec.runbooks.first().map(|r| r.id.clone()), now);
        return;
    }
    if waiting_for_reach(spec, &r) {
        d.status.message = Some("waiting for zgate to reach a canary pod".into());
        return;
    }
    // `--canary N` applies first, then the steps after the last setWeight at or below N.
    if let Some(initial) = r.initial_weight {
        let steps = spec.strategy.steps();
        let skip_to = steps
            .iter()
            .rposition(|s| matches!(s, Step::SetWeight(w) if *w <= initial))
            .map_or(0, |i| i + 1);
        set_weight(d, initial);
        d.status.current_step = Some(skip_to as u32);
        d.status
            .rollout
            .as_mut()
            .expect("in rollout")
            .initial_weight = None;
    }
    loop {
        let i = d.status.current_step.unwrap_or(0) as usize;
        let r = d.status.rollout.as_ref().expect("in rollout");
        match spec.strategy.steps().get(i) {
            None => return steps_done(spec, d, now),
            Some(Step::SetWeight(w)) => {
                set_weight(d, *w);
                d.status.message = Some(format!("step {i}: canary at {w}%"));
                next_step(d, now);
            }
            Some(Step::Pause(p)) => match p.duration {
                Some(len) if elapsed(&r.step_started, now) >= len.get() => next_step(d, now),
                Some(len) => {
                    d.status.message = Some(format!(
                        "step {i}: pausing {len} at {}%",
                        d.status.canary_weight
                    ));
                    return;
                }
                None => {
                    d.status.phase = Phase::Paused;
                    d.status.message = Some(format!(
                        "step {i}: paused at {}% until `zdeploy promote`",
                        d.status.canary_weight
                    ));
                    return;
                }
            },
            Some(Step::Shadow(s)) => {
                set_shadow(d, s.percent);
                d.status.message = Some(format!(
                    "step {i}: {}% of stable's requests copied to the canary",
                    s.percent
                ));
                next_step(d, now);
            }
            Some(Step::Analysis(_)) => {
                d.status.message = Some(format!("step {i}: waiting for a passing analysis"));
                return;
            }
        }
    }
}

/// Every step is done. A canary is promoted on a passing analysis (an inconclusive or
/// failed one never promotes). Blue-green switches all traffic to the new revision, then
/// is promoted once `scaleDownDelay` is over and the analysis passes.
fn steps_done(spec: &ZmqServiceSpec, d: &mut Decision, now: Timestamp) {
    let switched = d.status.rollout.as_ref().and_then(|r| r.switched.clone());
    match (spec.strategy.release(), switched) {
        (Release::BlueGreen(bg), None) => switch(bg, d, now),
        (Release::BlueGreen(bg), Some(at)) if elapsed(&at, now) < bg.scale_down_delay.get() => {
            d.status.message = Some(format!(
                "all traffic on the new revision; the old pool stays up for {} after the switch",
                bg.scale_down_delay
            ));
        }
        _ if !last_analysis_passed(&d.status) => {
            d.status.message =
                Some("all steps done: waiting for a passing analysis to promote".into());
        }
        (Release::BlueGreen(_), Some(_)) => complete(d, "scale-down delay over", now),
        (Release::Canary(_), _) => complete(d, "all steps passed", now),
    }
}

/// Blue-green's switch: shadow copies stop and the new revision takes all traffic in one
/// weight change; the old pool keeps running.
fn switch(bg: &BlueGreen, d: &mut Decision, now: Timestamp) {
    set_shadow(d, Weight::ZERO);
    set_weight(d, Weight::FULL);
    let r = d.status.rollout.as_mut().expect("in rollout");
    r.switched = Some(time(now));
    r.last_progress = time(now);
    let revision = d.status.canary_revision.clone().unwrap_or_default();
    let old = d.status.stable_revision.clone().unwrap_or_default();
    let delay = bg.scale_down_delay;
    d.status.message = Some(format!(
        "all traffic on {revision}; {old} stays up for {delay}"
    ));
    d.actions.push(notice(
        Severity::Normal,
        Reason::Switched,
        format!("all traffic switched to {revision}; {old} stays up for {delay}: `zdeploy rollback` switches back at once"),
    ));
}

/// Whether a blue-green rollout has switched all traffic to the new revision.
fn switched(status: &ZmqServiceStatus) -> bool {
    status
        .rollout
        .as_ref()
        .is_some_and(|r| r.switched.is_some())
}

fn set_shadow(d: &mut Decision, w: Weight) {
    let wanted = (w != Weight::ZERO).then_some(w);
    if d.status.shadow_percent != wanted {
        d.status.shadow_percent = wanted;
        d.actions.push(Action::SetShadow(w));
    }
}

fn analysis(
    spec: &ZmqServiceSpec,
    d: &mut Decision,
    verdict: Verdict,
    measurements: &[Measurement],
    started: Timestamp,
    now: Timestamp,
) {
    let Some(r) = d.status.rollout.as_mut() else {
        return;
    };
    d.status.analysis = measurements.to_vec();
    let limits = &spec.strategy.analysis();
    match verdict {
        Verdict::Fail => {
            r.failures += 1;
            // A firing alert is a breach by itself: no failure limit applies to it.
            let alert = measurements
                .iter()
                .filter(|m| m.verdict == Verdict::Fail)
                .find_map(Measurement::alert);
            if r.failures > limits.failure_limit || alert.is_some() {
                let failed: Vec<String> = measurements
                    .iter()
                    .filter(|m| m.verdict == Verdict::Fail)
                    .map(|m| format!("{}: {}", m.metric, m.reason))
                    .collect();
                let runbook = alert
                    .and_then(|a| runbook_for(spec, a))
                    .or_else(|| spec.runbooks.first().map(|r| r.id.clone()));
                rollback(
                    d,
                    &format!("analysis failed: {}", failed.join("; ")),
                    runbook,
                    now,
                );
            }
        }
        Verdict::Inconclusive => {
            r.inconclusive_streak += 1;
            if r.inconclusive_streak > limits.inconclusive_limit && !r.paused {
                r.paused = true;
                r.pause_reason = Some(format!(
                    "{} inconclusive analyses in a row",
                    r.inconclusive_streak
                ));
                d.status.phase = Phase::Paused;
                d.actions.push(notice(Severity::Warning, Reason::AnalysisInconclusive, format!("rollout paused: {} inconclusive analyses in a row; check the canary has traffic, then `zdeploy resume`", r.inconclusive_streak)));
            }
        }
        Verdict::Pass => {
            r.inconclusive_streak = 0;
            let i = d.status.current_step.unwrap_or(0) as usize;
            if let Some(Step::Analysis(a)) = spec.strategy.steps().get(i) {
                let began_after_step = started >= r.step_started.0;
                let required: Vec<&String> = if a.metrics.is_empty() {
                    limits.metrics.iter().map(|m| &m.name).collect()
                } else {
                    a.metrics.iter().collect()
                };
                let all_passed = required.iter().all(|name| {
                    measurements
                        .iter()
                        .any(|m| &m.metric == *name && m.verdict == Verdict::Pass)
                });
                if began_after_step && all_passed && !r.paused {
                    next_step(d, now);
                    advance(spec, d, now);
                }
            }
        }
    }
}

fn last_analysis_passed(status: &ZmqServiceStatus) -> bool {
    !status.analysis.is_empty() && status.analysis.iter().all(|m| m.verdict == Verdict::Pass)
}

fn runbook_for(spec: &ZmqServiceSpec, alert: &str) -> Option<String> {
    spec.runbooks
        .iter()
        .find(|r| r.alerts.iter().any(|a| a == alert))
        .map(|r| r.id.clone())
}

fn finish(
    d: &mut Decision,
    outcome: Outcome,
    reason: &str,
    runbook: Option<RunbookRef>,
    now: Timestamp,
) {
    let r = d.status.rollout.take().expect("in rollout");
    let record = RolloutRecord {
        revision: d.status.canary_revision.take().unwrap_or_default(),
        stable_revision: d.status.stable_revision.clone().unwrap_or_default(),
        started: r.started,
        ended: time(now),
        outcome,
        reason: reason.to_string(),
        runbook,
        peak_weight: r.peak_weight,
        changes: std::mem::take(&mut d.status.changes),
    };
    d.status.history.insert(0, record);
    d.status.history.truncate(HISTORY_LIMIT);
    d.status.current_step = None;
    d.status.message = Some(reason.to_string());
}

/// Rolls back: the canary weight goes to 0 first, then the canary is stopped.
fn rollback(d: &mut Decision, reason: &str, runbook: Option<String>, now: Timestamp) {
    if d.status.rollout.is_none() {
        return;
    }
    let revision = d.status.canary_revision.clone().unwrap_or_default();
    stop_canary(d);
    // Pinned: the page linked now is the page read later.
    let runbook = runbook.map(|id| crate::runbooks::pin(&id));
    d.actions.push(Action::Event(Notice {
        severity: Severity::Warning,
        reason: Reason::RolledBack,
        message: format!("canary {revision} rolled back: {reason}"),
        runbook: runbook.clone(),
    }));
    d.status.phase = Phase::RolledBack;
    finish(d, Outcome::RolledBack, reason, runbook, now);
}

/// Takes every request off the canary (weight 0, shadow copies and routes gone), then
/// stops it (always, in this order).
fn stop_canary(d: &mut Decision) {
    d.status.canary_weight = Weight::ZERO;
    d.actions.push(Action::SetCanaryWeight(Weight::ZERO));
    set_shadow(d, Weight::ZERO);
    if !d.status.routes.is_empty() {
        d.status.routes.clear();
        d.actions.push(Action::SetRoutes(Vec::new()));
    }
    d.actions.push(Action::StopCanary);
}

/// Makes the canary the new stable: all traffic to it, stable pool updated, traffic back.
fn complete(d: &mut Decision, reason: &str, now: Timestamp) {
    let revision = d.status.canary_revision.clone().unwrap_or_default();
    // All traffic to the canary only while stable is replaced, not a share it is sized
    // for: its peak weight stays what the steps gave it.
    if d.status.canary_weight != Weight::FULL {
        d.status.canary_weight = Weight::FULL;
        d.actions.push(Action::SetCanaryWeight(Weight::FULL));
    }
    d.actions.push(Action::DeployStable {
        revision: revision.clone(),
    });
    stop_canary(d);
    d.actions.push(notice(
        Severity::Normal,
        Reason::Promoted,
        format!("{revision} is now stable: {reason}"),
    ));
    d.status.phase = Phase::Healthy;
    finish(d, Outcome::Promoted, reason, None, now);
    d.status.stable_revision = Some(revision);
}

#[cfg(test)]
mod tests;
