//! Engine scenarios, one per test, and property tests of its invariants.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;
use zdeploy_api::Weight;
use zdeploy_api::service::{
    Measurement, Outcome, Phase, Step, Verdict, ZmqServiceSpec, ZmqServiceStatus,
};

use super::*;
use zdeploy_api::service::RunbookRef;

const MANIFEST: &str = "\
apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {name: echo}
spec:
  windows: {build: \"2022\"}
  template: {spec: {containers: [{name: echo, image: echo:1}]}}
  zmq: {port: 5555}
  strategy:
    progressDeadline: 5m
    canary:
      steps:
        - setWeight: 10
        - pause: {duration: 30s}
        - analysis: {}
        - setWeight: 50
        - pause: {}
      analysis:
        failureLimit: 1
        inconclusiveLimit: 2
        metrics:
          - {name: error-ratio, builtin: errorRatio, max: 0.01}
  runbooks:
    - {id: canary-error-ratio-high, alerts: [CanaryErrorRateHigh]}
";

fn spec() -> ZmqServiceSpec {
    // Validation builds the CRD schema: do it once, not once per property-test case.
    static SPEC: std::sync::OnceLock<ZmqServiceSpec> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let mut svcs = zdeploy_api::validate::load_services(MANIFEST).expect("valid manifest");
        svcs.remove(0).spec
    })
    .clone()
}

fn t0() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn stable() -> ZmqServiceStatus {
    ZmqServiceStatus {
        stable_revision: Some("echo:1".into()),
        ..Default::default()
    }
}

fn cmd(c: Command) -> Input {
    Input::Command(c)
}

fn rollout(canary: Option<u8>) -> Input {
    cmd(Command::Rollout {
        revision: "echo:2".into(),
        canary: canary.map(|w| Weight::new(w.into()).unwrap()),
        origin: Origin::Named,
    })
}

/// zgate reports a live connection to a canary pod.
fn live() -> Input {
    Input::Reach(Reach::Live)
}

fn measured(verdict: Verdict, started: Timestamp) -> Input {
    Input::Analysis {
        verdict,
        measurements: vec![Measurement {
            evidence: None,
            metric: "error-ratio".into(),
            query: "q".into(),
            value: Some(0.0),
            verdict,
            reason: "r".into(),
            at: Time(started),
        }],
        started,
    }
}

/// A failed analysis whose only failure is alert `name` firing for the canary.
fn alert_fired(name: &str) -> Input {
    let Input::Analysis {
        mut measurements,
        started,
        ..
    } = measured(Verdict::Fail, t0())
    else {
        unreachable!("measured() is an analysis")
    };
    measurements[0].metric = Measurement::alert_metric(name);
    Input::Analysis {
        verdict: Verdict::Fail,
        measurements,
        started,
    }
}

/// Runs inputs in order, returning the last decision and every action.
fn run(status: ZmqServiceStatus, inputs: &[(i64, Input)]) -> (Decision, Vec<Action>) {
    run_spec(&spec(), status, inputs)
}

/// `run` with another spec.
fn run_spec(
    spec: &ZmqServiceSpec,
    status: ZmqServiceStatus,
    inputs: &[(i64, Input)],
) -> (Decision, Vec<Action>) {
    let mut s = status;
    let mut all = Vec::new();
    let mut last = None;
    for (secs, input) in inputs {
        let d = step(spec, &s, input, at(*secs));
        s = d.status.clone();
        all.extend(d.actions.clone());
        last = Some(d);
    }
    (last.expect("at least one input"), all)
}

#[test]
fn a_rollout_starts_the_canary_then_sets_the_first_weight() {
    let (d, actions) = run(stable(), &[(0, rollout(None)), (0, live())]);
    assert_eq!(
        actions[0],
        Action::StartCanary {
            revision: "echo:2".into()
        }
    );
    assert!(actions.contains(&Action::SetCanaryWeight(Weight::new(10).unwrap())));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.current_step, Some(1));
}

#[test]
fn a_timed_pause_ends_on_time() {
    let (d, _) = run(
        stable(),
        &[(0, rollout(None)), (0, live()), (29, Input::Tick)],
    );
    assert_eq!(d.status.current_step, Some(1));
    let (d, _) = run(
        stable(),
        &[(0, rollout(None)), (0, live()), (30, Input::Tick)],
    );
    assert_eq!(d.status.current_step, Some(2), "on to the analysis step");
}

#[test]
fn an_analysis_step_needs_a_pass_that_began_after_it() {
    let base = [(0, rollout(None)), (0, live()), (30, Input::Tick)];
    let mut early = base.to_vec();
    early.push((31, measured(Verdict::Pass, at(29))));
    assert_eq!(run(stable(), &early).0.status.current_step, Some(2));
    let mut late = base.to_vec();
    late.push((32, measured(Verdict::Pass, at(31))));
    let (d, actions) = run(stable(), &late);
    assert_eq!(
        d.status.current_step,
        Some(4),
        "passed, set 50%, now at the indefinite pause"
    );
    assert_eq!(d.status.phase, Phase::Paused);
    assert!(actions.contains(&Action::SetCanaryWeight(Weight::new(50).unwrap())));
}

#[test]
fn canary_flag_sets_the_first_weight_then_follows_the_steps() {
    let (d, actions) = run(stable(), &[(0, rollout(Some(30))), (0, live())]);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::SetCanaryWeight(_)))
            .count(),
        1
    );
    assert!(actions.contains(&Action::SetCanaryWeight(Weight::new(30).unwrap())));
    assert_eq!(
        d.status.current_step,
        Some(1),
        "continues after setWeight 10, at the pause"
    );
}

#[test]
fn a_breach_during_a_pause_rolls_back_weight_first() {
    let (d, actions) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (5, measured(Verdict::Fail, at(4))),
            (6, measured(Verdict::Fail, at(5))),
        ],
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert_eq!(d.status.canary_weight, Weight::ZERO);
    let zero = actions
        .iter()
        .rposition(|a| *a == Action::SetCanaryWeight(Weight::ZERO))
        .unwrap();
    let stop = actions
        .iter()
        .position(|a| *a == Action::StopCanary)
        .unwrap();
    assert!(
        zero < stop,
        "weight 0 must come before the canary stops: {actions:?}"
    );
    let record = &d.status.history[0];
    assert_eq!(
        (record.outcome, record.revision.as_str()),
        (Outcome::RolledBack, "echo:2")
    );
    assert_eq!(
        record.runbook.as_ref().map(RunbookRef::id),
        Some("canary-error-ratio-high")
    );
}

#[test]
fn failures_within_the_limit_are_tolerated() {
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (5, measured(Verdict::Fail, at(4))),
        ],
    );
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.rollout.unwrap().failures, 1);
}

#[test]
fn a_firing_alert_rolls_back_at_once_even_when_paused_and_failures_are_tolerated() {
    let mut spec = spec();
    spec.strategy.canary.analysis.failure_limit = 3;
    let (d, actions) = run_spec(
        &spec,
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Pause)),
            (2, alert_fired("CanaryErrorRateHigh")),
        ],
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(actions.contains(&Action::StopCanary));
    assert_eq!(
        d.status.history[0].runbook.as_ref().map(RunbookRef::id),
        Some("canary-error-ratio-high")
    );
}

#[test]
fn inconclusive_results_pause_and_never_promote() {
    let mut inputs = vec![(0, rollout(None)), (0, live()), (30, Input::Tick)];
    for i in 0..3 {
        inputs.push((31 + i, measured(Verdict::Inconclusive, at(31 + i))));
    }
    let (d, _) = run(stable(), &inputs);
    assert_eq!(d.status.current_step, Some(2));
    assert_eq!(d.status.phase, Phase::Paused);
    assert!(
        d.status
            .rollout
            .unwrap()
            .pause_reason
            .unwrap()
            .contains("inconclusive")
    );
}

#[test]
fn time_away_from_the_driver_does_not_count_against_the_progress_deadline() {
    // Stopped 30 s in, back 20 minutes later: the rollout resumes, the deadline restarts.
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (30, Input::Tick),
            (1230, Input::Restarted),
            (1231, Input::Tick),
        ],
    );
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.rollout.unwrap().last_progress, Time(at(1230)));
    let (d, _) = run(stable(), &[(0, Input::Restarted)]);
    assert_eq!(d.status, stable(), "nothing to resume: nothing changes");
}

#[test]
fn the_progress_deadline_rolls_back() {
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (30, Input::Tick),
            (331, Input::Tick),
        ],
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(d.status.history[0].reason.contains("progress deadline"));
}

#[test]
fn promote_skips_a_pause_but_not_an_analysis() {
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Promote { full: false })),
        ],
    );
    assert_eq!(d.status.current_step, Some(2));
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Promote { full: false })),
            (2, cmd(Command::Promote { full: false })),
        ],
    );
    assert!(d.refused.unwrap().contains("analysis"));
}

#[test]
fn promote_full_makes_the_canary_stable() {
    let (d, actions) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Promote { full: true })),
        ],
    );
    assert_eq!(d.status.phase, Phase::Healthy);
    assert_eq!(d.status.stable_revision.as_deref(), Some("echo:2"));
    let full = actions
        .iter()
        .position(|a| *a == Action::SetCanaryWeight(Weight::FULL))
        .unwrap();
    let deploy = actions
        .iter()
        .position(|a| matches!(a, Action::DeployStable { .. }))
        .unwrap();
    let back = actions
        .iter()
        .rposition(|a| *a == Action::SetCanaryWeight(Weight::ZERO))
        .unwrap();
    assert!(full < deploy && deploy < back, "{actions:?}");
}

#[test]
fn the_last_step_promotes_only_after_a_passing_analysis() {
    let inputs = [
        (0, rollout(None)),
        (0, live()),
        (30, Input::Tick),
        (32, measured(Verdict::Pass, at(31))),
        (40, cmd(Command::Promote { full: false })),
    ];
    let (d, _) = run(stable(), &inputs);
    assert_eq!(d.status.phase, Phase::Healthy, "{:?}", d.status.message);
    assert_eq!(d.status.history[0].outcome, Outcome::Promoted);
}

#[test]
fn pause_holds_and_resume_continues() {
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Pause)),
            (60, Input::Tick),
        ],
    );
    assert_eq!(
        (d.status.phase, d.status.current_step),
        (Phase::Paused, Some(1))
    );
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Pause)),
            (60, cmd(Command::Resume)),
            (95, Input::Tick),
        ],
    );
    assert_eq!(d.status.current_step, Some(2));
}

#[test]
fn retry_restarts_the_rolled_back_revision_and_rollout_is_refused_midway() {
    let (d, _) = run(
        stable(),
        &[(0, rollout(None)), (0, live()), (1, rollout(None))],
    );
    assert!(d.refused.unwrap().contains("in progress"));
    let (d, actions) = run(
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (
                1,
                cmd(Command::Abort {
                    reason: "test".into(),
                }),
            ),
            (2, cmd(Command::Retry)),
        ],
    );
    assert_eq!(d.status.canary_revision.as_deref(), Some("echo:2"));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::StartCanary { .. }))
            .count(),
        2
    );
}

#[test]
fn a_restart_resumes_from_the_recorded_status() {
    let inputs = [
        (0, rollout(None)),
        (0, live()),
        (30, Input::Tick),
        (32, measured(Verdict::Pass, at(31))),
        (33, Input::Tick),
    ];
    let (straight, _) = run(stable(), &inputs);
    let (half, _) = run(stable(), &inputs[..2]);
    let recorded = serde_json::to_string(&half.status).unwrap();
    let restored: ZmqServiceStatus = serde_json::from_str(&recorded).unwrap();
    let (resumed, _) = run(restored, &inputs[2..]);
    assert_eq!(resumed.status, straight.status);
}

fn any_input() -> impl Strategy<Value = Input> {
    let verdict = prop_oneof![
        Just(Verdict::Pass),
        Just(Verdict::Fail),
        Just(Verdict::Inconclusive)
    ];
    prop_oneof![
        4 => Just(Input::Tick),
        4 => verdict.prop_map(|v| measured(v, t0())),
        1 => Just(alert_fired("CanaryErrorRateHigh")),
        1 => (proptest::option::of(0u8..=100)).prop_map(rollout),
        1 => any::<bool>().prop_map(|full| cmd(Command::Promote { full })),
        1 => Just(cmd(Command::Abort { reason: "p".into() })),
        1 => Just(cmd(Command::Retry)),
        1 => Just(cmd(Command::Pause)),
        1 => Just(cmd(Command::Resume)),
        2 => Just(live()),
        1 => Just(Input::Reach(Reach::NotReady)),
        1 => Just(Input::Reach(Reach::Unreachable { handshake: None })),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_for_any_sequence(inputs in proptest::collection::vec((0i64..40, any_input()), 1..60)) {
        let spec = spec();
        let mut status = stable();
        let mut now = 0i64;
        let mut cap = Weight::ZERO;
        for (dt, input) in inputs {
            now += dt;
            let mut stamped = input.clone();
            if let Input::Analysis { started, measurements, .. } = &mut stamped {
                *started = at(now);
                measurements[0].at = Time(at(now));
            }
            let d = step(&spec, &status, &stamped, at(now));
            // Same inputs, same outputs.
            prop_assert_eq!(&d, &step(&spec, &status, &stamped, at(now)));
            if let Input::Command(Command::Rollout { canary: Some(w), .. }) = &stamped {
                cap = cap.max(*w);
            }
            if let Some(r) = &d.status.rollout && r.reached.is_none() {
                prop_assert_eq!(d.status.canary_weight, Weight::ZERO, "weight before zgate reached the canary");
            }
            if d.status.rollout.is_some() {
                let reached = d.status.current_step.unwrap_or(0) as usize;
                for s in &spec.strategy.canary.steps[..reached.min(spec.strategy.canary.steps.len())] {
                    if let Step::SetWeight(w) = s { cap = cap.max(*w); }
                }
                prop_assert!(d.status.canary_weight <= cap, "weight {} above the step's {}", d.status.canary_weight, cap);
            } else {
                prop_assert_eq!(d.status.canary_weight, Weight::ZERO);
                cap = Weight::ZERO;
            }
            if let Input::Analysis { verdict: Verdict::Inconclusive, .. } = stamped {
                prop_assert!(d.status.current_step <= status.current_step || status.rollout.is_none());
                prop_assert!(!(status.rollout.is_some() && d.status.phase == Phase::Healthy), "inconclusive promoted");
            }
            let promoted_now = status.rollout.is_some() && d.status.rollout.is_none() && d.status.phase == Phase::Healthy;
            if promoted_now && !matches!(stamped, Input::Command(Command::Promote { full: true })) {
                prop_assert!(d.status.history[0].outcome == Outcome::Promoted);
                prop_assert!(status.analysis.iter().chain(d.status.analysis.iter()).all(|m| m.verdict == Verdict::Pass) && !d.status.analysis.is_empty(),
                    "promoted without a passing analysis");
            }
            if let Some(stop) = d.actions.iter().position(|a| *a == Action::StopCanary) {
                let zero = d.actions.iter().position(|a| *a == Action::SetCanaryWeight(Weight::ZERO));
                prop_assert!(zero.is_some_and(|z| z < stop), "canary stopped before its weight was 0: {:?}", d.actions);
            }
            status = d.status;
        }
    }
}

#[test]
fn a_recorded_status_must_fit_the_manifest() {
    let spec = spec();
    let mut s = stable();
    assert_eq!(check_recorded(&spec, &s), Ok(()));
    s = step(&spec, &s, &rollout(None), at(0)).status;
    assert_eq!(check_recorded(&spec, &s), Ok(()));
    let steps = spec.strategy.canary.steps.len() as u32;
    s.current_step = Some(steps);
    assert_eq!(
        check_recorded(&spec, &s),
        Ok(()),
        "all steps done is a step"
    );
    s.current_step = Some(99);
    let e = check_recorded(&spec, &s).unwrap_err();
    assert!(e.contains("currentStep is 99"), "{e}");
    s.current_step = None;
    assert!(
        check_recorded(&spec, &s)
            .unwrap_err()
            .contains("currentStep is missing")
    );
}

#[test]
fn the_canary_gets_no_weight_before_zgate_reaches_it() {
    let (d, actions) = run(stable(), &[(0, rollout(Some(10)))]);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetCanaryWeight(w) if *w > Weight::ZERO)),
        "{actions:?}"
    );
    assert_eq!(d.status.canary_weight, Weight::ZERO);
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for zgate to reach a canary pod")
    );
    let (d, actions) = run(
        stable(),
        &[
            (0, rollout(Some(10))),
            (3, Input::Reach(Reach::NotReady)),
            (4, live()),
        ],
    );
    assert!(actions.contains(&Action::SetCanaryWeight(Weight::new(10).unwrap())));
    assert_eq!(d.status.rollout.unwrap().reached, Some(Time(at(4))));
}

#[test]
fn ready_pods_zgate_cannot_reach_roll_back_at_the_reach_deadline_with_the_cause() {
    let unreachable = Input::Reach(Reach::Unreachable { handshake: None });
    let mut inputs = vec![(0, rollout(None)), (5, unreachable.clone())];
    // 2m (the default) after it was first seen unreachable, not before.
    inputs.push((124, unreachable.clone()));
    let (d, _) = run(stable(), &inputs);
    assert_eq!(d.status.phase, Phase::Progressing);
    inputs.push((125, unreachable));
    let (d, actions) = run(stable(), &inputs);
    assert_eq!(d.status.phase, Phase::RolledBack);
    let record = &d.status.history[0];
    assert!(
        record.reason.contains("cannot reach them on port 5555")
            && record.reason.contains("Windows firewall and antivirus"),
        "{}",
        record.reason
    );
    assert_eq!(
        record.runbook.as_ref().map(RunbookRef::id),
        Some(UNREACHABLE_RUNBOOK)
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetCanaryWeight(w) if *w > Weight::ZERO)),
        "the unreachable canary never got weight: {actions:?}"
    );
}

#[test]
fn a_failing_handshake_is_the_reason_and_pods_not_ready_restart_the_count() {
    let refused = Input::Reach(Reach::Unreachable {
        handshake: Some(HandshakeFailure::Protocol),
    });
    let (d, _) = run(
        stable(),
        &[
            (0, rollout(None)),
            (5, refused.clone()),
            (100, Input::Reach(Reach::NotReady)),
            (110, refused.clone()),
            (200, refused.clone()),
        ],
    );
    assert_eq!(
        d.status.phase,
        Phase::Progressing,
        "counted from 110 s, not 5 s"
    );
    let (d, _) = run(
        stable(),
        &[(0, rollout(None)), (5, refused.clone()), (125, refused)],
    );
    assert!(
        d.status.history[0]
            .reason
            .contains("ZeroMQ handshake with zgate fails (protocol)"),
        "{}",
        d.status.history[0].reason
    );
}

#[test]
fn without_zgate_the_replicas_router_needs_no_reach() {
    let mut spec = spec();
    spec.strategy.router = Router::Replicas;
    let d = step(&spec, &stable(), &rollout(Some(10)), at(0));
    assert!(
        d.actions
            .contains(&Action::SetCanaryWeight(Weight::new(10).unwrap()))
    );
}

#[test]
fn routes_by_client_apply_from_the_canarys_start_and_go_before_it_stops() {
    let mut spec = spec();
    spec.strategy.canary.routes =
        serde_json::from_str(r#"[{"match": {"identityPrefix": "tester-"}}]"#).unwrap();
    let (d, actions) = run_spec(&spec, stable(), &[(0, rollout(None))]);
    let route: zdeploy_api::route::Route = "canary=identity:tester-".parse().unwrap();
    assert_eq!(d.status.routes, std::slice::from_ref(&route));
    let start = actions
        .iter()
        .position(|a| matches!(a, Action::StartCanary { .. }));
    let set = actions
        .iter()
        .position(|a| *a == Action::SetRoutes(vec![route.clone()]));
    assert!(start < set && set.is_some(), "{actions:?}");
    let (d, actions) = run_spec(
        &spec,
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Abort { reason: "p".into() })),
        ],
    );
    assert!(d.status.routes.is_empty());
    let tail: Vec<&Action> = actions.iter().rev().take(4).collect();
    let at = |a: &Action| actions.iter().rposition(|x| x == a).unwrap();
    assert!(
        at(&Action::SetCanaryWeight(Weight::ZERO)) < at(&Action::SetRoutes(Vec::new()))
            && at(&Action::SetRoutes(Vec::new())) < at(&Action::StopCanary),
        "weight 0 and no route before the canary stops: {tail:?}"
    );
}

fn shadowed() -> ZmqServiceSpec {
    let mut spec = spec();
    spec.strategy.canary.steps.insert(
        0,
        Step::Shadow(zdeploy_api::service::ShadowStep {
            percent: Weight::new(50).unwrap(),
        }),
    );
    spec
}

#[test]
fn a_shadow_step_copies_until_the_canary_stops_and_stops_before_it() {
    let (d, actions) = run_spec(&shadowed(), stable(), &[(0, rollout(None)), (0, live())]);
    assert_eq!(d.status.shadow_percent, Some(Weight::new(50).unwrap()));
    assert!(actions.contains(&Action::SetShadow(Weight::new(50).unwrap())));
    // Copies go on through the later steps: the first weight step keeps them.
    assert!(
        actions.contains(&Action::SetCanaryWeight(Weight::new(10).unwrap())),
        "{actions:?}"
    );
    let (d, actions) = run_spec(
        &shadowed(),
        stable(),
        &[
            (0, rollout(None)),
            (0, live()),
            (1, cmd(Command::Abort { reason: "p".into() })),
        ],
    );
    assert_eq!(d.status.shadow_percent, None);
    let at = |a: &Action| actions.iter().rposition(|x| x == a).unwrap();
    assert!(
        at(&Action::SetCanaryWeight(Weight::ZERO)) < at(&Action::SetShadow(Weight::ZERO))
            && at(&Action::SetShadow(Weight::ZERO)) < at(&Action::StopCanary),
        "weight 0 and no copies before the canary stops: {actions:?}"
    );
}

/// Every status field in the CRD is written by someone: the engine, or the controller (the
/// fields below, from the object it reconciles and the command it carries out). A field
/// in the schema that nobody writes (as `status.weights` once was) fails here.
#[test]
fn every_status_field_of_the_crd_is_written() {
    use kube::CustomResourceExt;
    let crd = zdeploy_api::ZmqService::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    let in_crd: std::collections::BTreeSet<String> = schema.properties.as_ref().unwrap()["status"]
        .properties
        .as_ref()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut routed = shadowed();
    routed.strategy.canary.routes =
        serde_json::from_str(r#"[{"match": {"identityPrefix": "t-"}}]"#).unwrap();
    let mut written = std::collections::BTreeSet::new();
    let mut note = |s: &ZmqServiceStatus| {
        if let serde_json::Value::Object(m) = serde_json::to_value(s).unwrap() {
            written.extend(m.keys().cloned());
        }
    };
    for inputs in [
        // failureLimit 1: the second failure rolls back.
        vec![
            (0, rollout(None)),
            (0, live()),
            (1, measured(Verdict::Fail, at(1))),
            (2, measured(Verdict::Fail, at(2))),
        ],
        vec![(0, rollout(None)), (0, live()), (1, cmd(Command::Pause))],
    ] {
        let mut s = stable();
        for (secs, input) in inputs {
            s = step(&routed, &s, &input, at(secs)).status;
            note(&s);
        }
    }
    for by_controller in [
        "conditions",
        "observedGeneration",
        "specRevision",
        "lastCommand",
        "lastCommandRefused",
        "replicas",
        "selector",
        "queuedSince",
        "changes",
        "handover",
    ] {
        written.insert(by_controller.to_string());
    }
    let unwritten: Vec<&String> = in_crd.difference(&written).collect();
    assert!(
        unwritten.is_empty(),
        "in the CRD, written by no one: {unwritten:?}"
    );
}

const BLUE_GREEN: &str = "\
apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {name: echo}
spec:
  windows: {build: \"2022\"}
  template: {spec: {containers: [{name: echo, image: echo:1}]}}
  zmq: {port: 5555, idempotent: true}
  strategy:
    progressDeadline: 5m
    blueGreen:
      preview:
        - shadow: {percent: 100}
        - analysis: {}
        - pause: {}
      scaleDownDelay: 60s
      analysis:
        metrics:
          - {name: error-ratio, builtin: errorRatio, max: 0.01}
";

fn blue_green() -> ZmqServiceSpec {
    let mut svcs = zdeploy_api::validate::load_services(BLUE_GREEN).expect("valid manifest");
    svcs.remove(0).spec
}

/// The weights the actions set, in order.
fn weights(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetCanaryWeight(w) => Some(w.percent()),
            _ => None,
        })
        .collect()
}

/// A blue-green rollout through its preview: shadowed, analysed, paused for a person.
fn previewed() -> Vec<(i64, Input)> {
    vec![
        (0, rollout(None)),
        (0, live()),
        (5, measured(Verdict::Pass, at(5))),
    ]
}

/// `previewed`, then promoted at 20 s: switched.
fn switched_at_20() -> Vec<(i64, Input)> {
    let mut inputs = previewed();
    inputs.push((20, cmd(Command::Promote { full: false })));
    inputs
}

#[test]
fn blue_green_previews_at_weight_zero_then_switches_all_at_once() {
    let spec = blue_green();
    let (d, actions) = run_spec(&spec, stable(), &previewed());
    assert_eq!(d.status.canary_weight, Weight::ZERO, "{actions:?}");
    assert_eq!(d.status.shadow_percent, Some(Weight::FULL));
    assert_eq!(d.status.phase, Phase::Paused, "the preview's pause holds");
    assert!(weights(&actions).is_empty(), "{actions:?}");

    let inputs = switched_at_20();
    let (d, actions) = run_spec(&spec, stable(), &inputs);
    assert_eq!(
        weights(&actions),
        vec![100],
        "one change, to all: {actions:?}"
    );
    assert_eq!(d.status.shadow_percent, None, "copies stop at the switch");
    let r = d
        .status
        .rollout
        .as_ref()
        .expect("still in the scale-down delay");
    assert_eq!(r.switched, Some(Time(at(20))));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StopCanary | Action::DeployStable { .. }))
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Event(n) if n.reason == Reason::Switched))
    );
    assert_eq!(
        clock::poll_timeout(&spec, &d.status, at(20)),
        Some(at(80)),
        "the engine wants the time when the delay ends"
    );
}

#[test]
fn blue_green_keeps_the_old_pool_for_the_delay_then_promotes() {
    let spec = blue_green();
    let mut inputs = switched_at_20();
    inputs.push((30, measured(Verdict::Pass, at(30))));
    inputs.push((79, Input::Tick));
    let (d, _) = run_spec(&spec, stable(), &inputs);
    assert!(d.status.rollout.is_some(), "59 s after the switch: kept");
    inputs.push((80, Input::Tick));
    let (d, actions) = run_spec(&spec, stable(), &inputs);
    assert!(d.status.rollout.is_none());
    assert_eq!(d.status.stable_revision.as_deref(), Some("echo:2"));
    assert_eq!(d.status.history[0].outcome, Outcome::Promoted);
    let tail: Vec<&Action> = actions.iter().rev().take(4).collect();
    assert!(
        tail.iter()
            .any(|a| matches!(a, Action::DeployStable { revision } if revision == "echo:2"))
            && tail.contains(&&Action::StopCanary),
        "{tail:?}"
    );
}

#[test]
fn blue_green_rollback_in_the_delay_is_one_weight_change_back() {
    let spec = blue_green();
    let inputs = switched_at_20();
    let (before, _) = run_spec(&spec, stable(), &inputs);
    let d = step(
        &spec,
        &before.status,
        &cmd(Command::Abort {
            reason: "paged".into(),
        }),
        at(40),
    );
    assert_eq!(weights(&d.actions), vec![0], "{:?}", d.actions);
    assert_eq!(
        d.actions.first(),
        Some(&Action::SetCanaryWeight(Weight::ZERO)),
        "weight back first, with nothing to start before it"
    );
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::DeployStable { .. } | Action::StartCanary { .. }))
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert_eq!(d.status.stable_revision.as_deref(), Some("echo:1"));
    // A failed analysis after the switch does the same by itself.
    let d = step(
        &spec,
        &before.status,
        &measured(Verdict::Fail, at(40)),
        at(40),
    );
    assert_eq!(
        d.actions.first(),
        Some(&Action::SetCanaryWeight(Weight::ZERO))
    );
    assert_eq!(d.status.phase, Phase::RolledBack);
}

#[test]
fn blue_green_after_the_delay_waits_for_a_passing_analysis() {
    let spec = blue_green();
    let mut inputs = switched_at_20();
    inputs.push((30, measured(Verdict::Inconclusive, at(30))));
    inputs.push((90, Input::Tick));
    let (d, _) = run_spec(&spec, stable(), &inputs);
    assert!(d.status.rollout.is_some(), "{:?}", d.status.message);
    assert_eq!(d.status.canary_weight, Weight::FULL);
}

#[test]
fn blue_green_promote_in_the_delay_ends_it_now() {
    let spec = blue_green();
    let mut inputs = switched_at_20();
    inputs.push((25, cmd(Command::Promote { full: false })));
    let (d, _) = run_spec(&spec, stable(), &inputs);
    assert!(d.status.rollout.is_none());
    assert_eq!(d.status.stable_revision.as_deref(), Some("echo:2"));
}

#[test]
fn a_switch_recorded_under_a_canary_strategy_is_refused() {
    let mut status = stable();
    status.canary_revision = Some("echo:2".into());
    status.current_step = Some(0);
    status.rollout = Some(RolloutState {
        switched: Some(Time(at(0))),
        ..RolloutState::started_at(Time(at(0)), None)
    });
    assert!(check_recorded(&blue_green(), &status).is_ok());
    let e = check_recorded(&spec(), &status).unwrap_err();
    assert!(e.contains("switched"), "{e}");
}

#[test]
fn blue_green_refuses_a_first_canary_weight() {
    let d = step(&blue_green(), &stable(), &rollout(Some(10)), at(0));
    assert!(
        d.refused
            .as_deref()
            .is_some_and(|r| r.contains("leave --canary out")),
        "{d:?}"
    );
    assert!(d.actions.is_empty());
}

#[test]
fn a_rollout_without_an_image_never_replaces_a_stable_the_manifest_does_not_name() {
    // echo:3 was released from the CLI; the manifest still says echo:1.
    let released = ZmqServiceStatus {
        stable_revision: Some("echo:3".into()),
        ..Default::default()
    };
    // `zdeploy rollout echo`, with or without --manifest-image.
    let without_image = |manifest_over_stable| {
        Command::from_request(
            zdeploy_api::command::CommandRequest::Rollout {
                image: None,
                canary: None,
                manifest_over_stable,
            },
            spec().image(),
        )
    };
    let by_default = without_image(false);
    let d = step(&spec(), &released, &cmd(by_default), t0());
    let why = d.refused.clone().expect("refused");
    assert!(why.contains("echo:3") && why.contains("echo:1"), "{why}");
    assert!(d.status.rollout.is_none() && d.actions.is_empty());
    // Named, it goes.
    let meant = without_image(true);
    let d = step(&spec(), &released, &cmd(meant), t0());
    assert_eq!(d.refused, None);
    assert_eq!(d.status.canary_revision.as_deref(), Some("echo:1"));
    // With stable as the manifest says, the manifest's image is the default as before.
    let d = step(&spec(), &stable(), &rollout(None), t0());
    assert_eq!(d.refused, None);
}
