//! Validation of ZmqService and ChaosSchedule documents: defaults, field paths, lines.

use zdeploy_api::service::{Builtin, Step};
use zdeploy_api::validate::{Resource, validate_str};
use zdeploy_api::{Duration, WindowsBuild};

const MINIMAL: &str = "\
apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata:
  name: quotes
spec:
  windows:
    build: 10.0.17763
  template:
    spec:
      containers:
        - name: quotes
          image: registry.example.com/quotes:1.0
  zmq:
    port: 7000
";

fn problems(text: &str) -> Vec<String> {
    validate_str(text)
        .expect("valid YAML")
        .into_iter()
        .flat_map(|d| d.problems)
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn defaults_come_from_the_production_alert_thresholds() {
    let docs = validate_str(MINIMAL).unwrap();
    let Some(Resource::ZmqService(svc)) = &docs[0].resource else {
        panic!("minimal manifest refused: {:?}", docs[0].problems);
    };
    assert_eq!(svc.spec.windows.build, WindowsBuild::Ws2019);
    assert_eq!(svc.spec.zmq.request_timeout, Duration::from_secs(2));
    let metrics = &svc.spec.strategy.canary.analysis.metrics;
    assert_eq!(metrics[0].builtin, Some(Builtin::ErrorRatio));
    assert_eq!(
        (metrics[0].max, metrics[0].window),
        (Some(0.01), Duration::from_secs(300))
    );
    assert_eq!(metrics[1].builtin, Some(Builtin::LatencyP99));
    assert_eq!(
        (metrics[1].max, metrics[1].window),
        (Some(0.8), Duration::from_secs(180))
    );
    assert!(matches!(svc.spec.strategy.canary.steps[0], Step::SetWeight(w) if w.percent() == 10));
}

#[test]
fn a_step_must_be_exactly_one_kind() {
    let text = MINIMAL.to_string()
        + "  strategy:\n    canary:\n      steps:\n        - setWeight: 10\n          pause: {}\n";
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.strategy.canary.steps[0]: must set exactly one of"),
        "{found:?}"
    );
    assert!(found[0].starts_with("line 18:"), "{found:?}");
}

#[test]
fn every_structural_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace("port: 7000", "port: \"7000\"\n    patern: req-rep")
        .replace("build: 10.0.17763", "build: 2019");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p
                .contains("spec.windows.build: must be a string, not the number 2019: quote it")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.zmq.port: must be a whole number")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.zmq.patern: unknown field; did you mean \"pattern\"?")),
        "{found:?}"
    );
}

#[test]
fn analysis_rules_name_the_metric() {
    let text = MINIMAL.to_string()
        + "  strategy:\n    canary:\n      steps:\n        - analysis: {metrics: [nope]}\n      analysis:\n        metrics:\n          - name: a\n            builtin: errorRatio\n            query: up\n          - name: a\n            builtin: latencyP99\n";
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("steps[0].analysis.metrics[0]: names no metric")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("metrics[0]: must set exactly one of builtin, query and counts")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("metrics[1].name: must be unique")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("metrics[1]: must set a threshold")),
        "{found:?}"
    );
}

#[test]
fn documents_are_judged_one_by_one() {
    let bad = MINIMAL.replace("name: quotes\nspec", "name: Quotes_Feed\nspec");
    let docs = validate_str(&format!("{MINIMAL}---\n{bad}---\nkind: Deployment\n")).unwrap();
    assert_eq!(docs.len(), 3);
    assert!(docs[0].problems.is_empty());
    assert_eq!(docs[1].problems[0].path.to_string(), "metadata.name");
    assert_eq!(docs[1].problems[0].line, Some(19));
    assert!(
        docs[2]
            .problems
            .iter()
            .any(|p| p.path.to_string() == "kind")
    );
}

#[test]
fn syntax_errors_are_reported_with_their_position() {
    let err = validate_str("spec: [1, 2\n").unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn chaos_schedule_validates_its_experiment() {
    let text = "\
apiVersion: zdeploy.io/v1alpha1
kind: ChaosSchedule
metadata: {name: drill}
spec:
  schedule: \"0 3 1 *\"
  experiment:
    service: echo
    fault: {gatewayErrors: {ratio: 1.5}}
    duration: 5m
";
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.schedule: must be a cron expression")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p
                .contains("spec.experiment.fault.gatewayErrors.ratio: must be between 0 and 1")),
        "{found:?}"
    );
}

#[test]
fn the_zmq_container_names_the_image_of_the_revision() {
    let text = MINIMAL
        .replace(
            "        - name: quotes\n          image: registry.example.com/quotes:1.0\n",
            "        - name: log-shipper\n          image: registry.example.com/shipper:9\n        - name: quotes\n          image: registry.example.com/quotes:1.0\n",
        )
        .replace("    port: 7000\n", "    port: 7000\n    container: quotes\n");
    let docs = validate_str(&text).unwrap();
    let Some(Resource::ZmqService(svc)) = &docs[0].resource else {
        panic!("{:?}", docs[0].problems);
    };
    assert_eq!(svc.spec.main_container(), Some(1));
    assert_eq!(svc.spec.image(), "registry.example.com/quotes:1.0");
    let wrong = text.replace("container: quotes", "container: quote");
    let found = problems(&wrong);
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.zmq.container: names no container")),
        "{found:?}"
    );
}

fn with_metrics(metrics: &str) -> String {
    MINIMAL.to_string() + "  strategy:\n    canary:\n      analysis:\n        metrics:\n" + metrics
}

#[test]
fn a_latency_threshold_must_be_a_bucket_edge_below_the_timeout() {
    let found = problems(&with_metrics(
        "          - {name: p99, builtin: latencyP99, max: 0.8005}\n          - {name: p50, builtin: latencyP50, max: 2.5}\n",
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("metrics[0].max: is not a bucket edge zgate can have"),
        "{}",
        found[0]
    );
    assert!(found[0].contains("whole milliseconds"), "{}", found[0]);
    assert!(
        found[1].contains("metrics[1].max: must be below zmq.requestTimeout (2s)"),
        "{}",
        found[1]
    );
    // Whole milliseconds below the timeout are edges zgate is given.
    assert!(
        problems(&with_metrics(
            "          - {name: p99, builtin: latencyP99, max: 0.35}\n"
        ))
        .is_empty()
    );
}

#[test]
fn a_counted_rate_is_strictly_between_0_and_1_and_a_metric_has_one_source() {
    let found = problems(&with_metrics(
        "          - {name: e, builtin: errorRatio, max: 0}\n          - {name: c, builtin: errorRatio, counts: {errors: a, total: b}, max: 0.01}\n",
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("metrics[0].max: must be a rate between 0 and 1"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("must set exactly one of builtin, query and counts"),
        "{}",
        found[1]
    );
    let counts = "          - name: http-5xx\n            counts:\n              errors: 'sum(increase(http_requests_total{code=~\"5..\",pool=\"{{pool}}\"}[{{interval}}]))'\n              total: 'sum(increase(http_requests_total{pool=\"{{pool}}\"}[{{interval}}]))'\n            max: 0.01\n";
    assert!(
        problems(&with_metrics(counts)).is_empty(),
        "{:?}",
        problems(&with_metrics(counts))
    );
}

#[test]
fn alpha_is_a_probability_the_schema_bounds() {
    let text =
        MINIMAL.to_string() + "  strategy:\n    canary:\n      analysis:\n        alpha: 0.9\n";
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.strategy.canary.analysis.alpha"),
        "{}",
        found[0]
    );
    let docs = validate_str(MINIMAL).unwrap();
    let Some(Resource::ZmqService(svc)) = &docs[0].resource else {
        panic!("minimal manifest refused");
    };
    assert_eq!(svc.spec.strategy.canary.analysis.alpha, 0.01);
}

#[test]
fn a_route_matches_one_way_and_needs_zgate() {
    let routed = |routes: &str, router: &str| {
        MINIMAL.to_string()
            + &format!("  strategy:\n    router: {router}\n    canary:\n      routes: {routes}\n")
    };
    assert_eq!(
        problems(&routed("[{match: {identityPrefix: tester-}}]", "gateway")),
        Vec::<String>::new()
    );
    let both = problems(&routed(
        "[{match: {identityPrefix: a, framePrefix: {frame: 0, prefix: b}}}]",
        "gateway",
    ));
    assert!(
        both.len() == 1
            && both[0].contains("spec.strategy.canary.routes[0].match: give exactly one of"),
        "{both:?}"
    );
    let bad = problems(&routed(
        r#"[{match: {identityPrefix: "a\\xZZ"}}]"#,
        "gateway",
    ));
    assert!(bad[0].contains("two hex digits"), "{bad:?}");
    let replicas = problems(&routed("[{match: {identityPrefix: t}}]", "replicas"));
    assert!(
        replicas
            .iter()
            .any(|p| p.contains("spec.strategy.canary.routes: routes by client need zgate")),
        "{replicas:?}"
    );
}

#[test]
fn blue_green_is_an_alternative_to_canary_steps() {
    let blue_green = |extra: &str, preview: &str| {
        MINIMAL.to_string()
            + &format!(
                "  strategy:\n{extra}    blueGreen:\n      scaleDownDelay: 30s\n      preview: {preview}\n"
            )
    };
    assert_eq!(
        problems(&blue_green("", "[{analysis: {}}, {pause: {}}]")),
        Vec::<String>::new()
    );
    let weighted = problems(&blue_green("", "[{setWeight: 10}]"));
    assert!(
        weighted.len() == 1
            && weighted[0].contains("spec.strategy.blueGreen.preview[0].setWeight: blue-green gives the new revision all traffic at once"),
        "{weighted:?}"
    );
    let both = problems(&blue_green(
        "    canary:\n      steps: [{setWeight: 10}]\n",
        "[]",
    ));
    assert!(
        both.len() == 1
            && both[0].contains(
                "spec.strategy.canary: give strategy.canary or strategy.blueGreen, not both"
            ),
        "{both:?}"
    );
    let replicas = problems(&blue_green("    router: replicas\n", "[]"));
    assert!(
        replicas
            .iter()
            .any(|p| p
                .contains("spec.strategy.blueGreen: blue-green switches traffic through zgate")),
        "{replicas:?}"
    );
    let long = problems(&blue_green("    progressDeadline: 20s\n", "[]"));
    assert!(
        long.len() == 1
            && long[0].contains("spec.strategy.blueGreen.scaleDownDelay: must be shorter than strategy.progressDeadline (20s)"),
        "{long:?}"
    );
    let unknown = problems(&blue_green("", "[{analysis: {metrics: [nope]}}]"));
    assert!(
        unknown.len() == 1
            && unknown[0].contains("spec.strategy.blueGreen.preview[0].analysis.metrics[0]: names no metric of strategy.blueGreen.analysis.metrics"),
        "{unknown:?}"
    );
}

#[test]
fn a_duration_past_its_maximum_is_refused_naming_the_field_and_the_limit() {
    let huge = MINIMAL.replace(
        "    port: 7000\n",
        "    port: 7000\n    requestTimeout: 2562047788015215h\n",
    );
    let found = problems(&huge);
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.zmq.requestTimeout") && p.contains("8760h")),
        "{found:?}"
    );
    let long = MINIMAL.replace(
        "    port: 7000\n",
        "    port: 7000\n    requestTimeout: 2h\n",
    );
    let found = problems(&long);
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.zmq.requestTimeout: must be above 0s and at most 1h")),
        "{found:?}"
    );
    let drill = |fault: &str, duration: &str| {
        format!(
            "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata: {{name: drill}}\nspec:\n  schedule: \"0 3 * * *\"\n  experiment:\n    service: echo\n    fault: {fault}\n    duration: {duration}\n"
        )
    };
    let found = problems(&drill(
        "{gatewayLatency: {latency: 9223372036854775807s}}",
        "5m",
    ));
    assert!(
        found.iter().any(
            |p| p.contains("spec.experiment.fault.gatewayLatency.latency") && p.contains("8760h")
        ),
        "{found:?}"
    );
    let found = problems(&drill("{gatewayLatency: {latency: 25h}}", "48h"));
    assert!(
        found
            .iter()
            .any(|p| p.contains("gatewayLatency.latency: must be at most 24h")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("spec.experiment.duration: must be above 0s and at most 24h")),
        "{found:?}"
    );
    assert!(problems(&drill("{gatewayLatency: {latency: 200ms}}", "5m")).is_empty());
}

#[test]
fn a_tracked_local_file_is_named_under_the_manifest_folder_once() {
    let text = MINIMAL.to_string()
        + "  local:\n    command: [svc]\n    track: [conf/app.toml, ../secrets.env, /etc/app.toml, conf/app.toml]\n";
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("spec.local.track[1]"), "{found:?}");
    assert!(found[0].contains("no .."), "{found:?}");
    assert!(found[1].contains("spec.local.track[2]"), "{found:?}");
    assert!(found[2].contains("spec.local.track[3]"), "{found:?}");
    assert!(found[2].contains("named twice"), "{found:?}");
}
