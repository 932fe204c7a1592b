//! The controller against a mock API server (tower_test), kube-rs style: every request's
//! method, path and body is checked. One scenario per test.

mod support;

use std::sync::Arc;

use http::Method;
use kube::ResourceExt;
use serde_json::{Value, json};
use zdeploy_api::command::COMMAND_ANNOTATION;
use zdeploy_controller::platforms::kubernetes::errors::{Error, ErrorKind};
use zdeploy_controller::platforms::kubernetes::measure::MetricsSource;
use zdeploy_controller::platforms::kubernetes::service::{
    Context, FINALIZER, error_policy, reconcile,
};
use zdeploy_testkit::apiserver::{Call, MockApiServer, merge_patch, pair};
use zdeploy_testkit::fixtures::{CANARY, STABLE, ServiceFixture, ago, echo, status};

fn is_apply(call: &Call, kind_path: &str, name: &str) -> bool {
    call.method == Method::PATCH
        && call.path.ends_with(&format!("/{kind_path}/{name}"))
        && call.query.contains("fieldManager=zdeploy")
}

/// Answers like the API server; `conflict_on_status` answers the first status patch with
/// 409. Applies and status patches are echoed back, as the server would; a GET finds what
/// was applied at its path before, or nothing (404).
/// `stored` are objects (by path) it holds from the start.
async fn api_server_holding(
    server: MockApiServer,
    object: Value,
    conflict_on_status: bool,
    mut stored: std::collections::HashMap<String, Value>,
) -> Vec<Call> {
    let mut object = object;
    let mut conflicted = false;
    server
        .serve(move |call| {
            if call.method == Method::GET && !call.path.contains("/zmqservices/") {
                let collection = call.path.rsplit('/').next().unwrap_or_default();
                if ["configmaps", "secrets"].contains(&collection) {
                    // A list of what was applied there (a label selector is not applied).
                    let prefix = format!("{}/", call.path);
                    let items: Vec<Value> = stored
                        .iter()
                        .filter(|(p, _)| p.starts_with(&prefix))
                        .map(|(_, o)| Value::clone(o))
                        .collect();
                    return (200, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}));
                }
                return match stored.get(&call.path) {
                    Some(o) => (200, Value::clone(o)),
                    None => (404, zdeploy_testkit::apiserver::not_found()),
                };
            }
            if call.method == Method::PATCH && call.query.contains("fieldManager") {
                stored.insert(call.path.clone(), call.body.clone());
            }
            if call.path.ends_with("/status") {
                if conflict_on_status && !conflicted {
                    conflicted = true;
                    return (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the object has been modified", "reason": "Conflict", "code": 409}),
                    );
                }
                merge_patch(&mut object["status"], &call.body["status"]);
                (200, object.clone())
            } else if call.path.contains("/zmqservices/") {
                // The finalizer's JSON patch: remove it from our copy.
                object["metadata"]["finalizers"] = json!([]);
                (200, object.clone())
            } else {
                (200, call.body.clone())
            }
        })
        .await
}

/// The example as the controller finds it (its finalizer added), with `image` in the spec.
fn service(image: &str) -> ServiceFixture {
    echo().image(image).finalized(FINALIZER)
}

/// The rollback command the CLI writes.
const ROLLBACK: &str = r#"{"id":"c-1","command":"rollback","reason":"paged"}"#;

/// Analysis against a loopback port where nothing listens: measurements are inconclusive.
fn no_metrics() -> MetricsSource {
    MetricsSource::Prometheus {
        url: format!("http://127.0.0.1:{}", zdeploy_testkit::ports::free_port()),
        namespace_label: true,
    }
}

/// The reconcile's result, every request, and the status as the server holds it after
/// the status patches (merged as a real server merges them).
type Outcome = (
    Result<kube::runtime::controller::Action, Error>,
    Vec<Call>,
    Value,
);

async fn run(svc: ServiceFixture, conflict: bool) -> Outcome {
    run_with(svc, conflict, no_metrics()).await
}

async fn run_with(svc: ServiceFixture, conflict: bool, metrics: MetricsSource) -> Outcome {
    run_holding(svc, conflict, metrics, Default::default()).await
}

async fn run_holding(
    svc: ServiceFixture,
    conflict: bool,
    metrics: MetricsSource,
    stored: std::collections::HashMap<String, Value>,
) -> Outcome {
    let (client, server) = pair("trading");
    let svc = svc.build();
    let object = serde_json::to_value(&svc).unwrap();
    let server = tokio::spawn(api_server_holding(server, object.clone(), conflict, stored));
    let ctx = Arc::new(Context::new(client, metrics));
    let result = reconcile(Arc::new(svc), ctx).await;
    // Dropping the client ends the mock server.
    let calls = server.await.unwrap();
    let mut status = object["status"].clone();
    for c in calls.iter().filter(|c| c.path.ends_with("/status")) {
        merge_patch(&mut status, &c.body["status"]);
    }
    (result, calls, status)
}

fn applies(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == Method::PATCH && c.query.contains("fieldManager"))
        .map(|c| {
            c.path
                .rsplit('/')
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

fn find<'a>(calls: &'a [Call], kind_path: &str, name: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| is_apply(c, kind_path, name))
        .unwrap_or_else(|| panic!("no apply of {kind_path}/{name} in {:?}", applies(calls)))
}

#[tokio::test]
async fn first_deploy_applies_everything_and_records_stable() {
    let (result, calls, recorded) = run(service(STABLE), false).await;
    result.unwrap();
    let mut applied = applies(&calls);
    // First the record of the stable revision (its pod template; it reads no config).
    let record = applied.remove(0);
    assert!(record.starts_with("configmaps/echo-rev-"), "{record}");
    assert_eq!(
        applied,
        [
            "serviceaccounts/echo-service",
            "serviceaccounts/echo-zgate",
            "roles/echo-zgate",
            "rolebindings/echo-zgate",
            "configmaps/echo-weights",
            "services/echo-stable",
            "services/echo-canary",
            "services/echo",
            "deployments/echo-zgate",
            "deployments/echo-stable",
            "deployments/echo-canary",
            "poddisruptionbudgets/echo-stable",
            "poddisruptionbudgets/echo-zgate",
        ]
    );
    for c in calls.iter().filter(|c| c.query.contains("fieldManager")) {
        assert!(
            c.query.contains("fieldManager=zdeploy") && c.query.contains("force=true"),
            "{c:?}"
        );
        assert!(
            c.path.starts_with("/api/v1/namespaces/trading/") || c.path.starts_with("/apis/"),
            "{c:?}"
        );
        assert_eq!(
            c.body["metadata"]["ownerReferences"][0]["kind"], "ZmqService",
            "{c:?}"
        );
    }
    let stable = find(&calls, "deployments", "echo-stable");
    assert_eq!(stable.body["spec"]["replicas"], 3);
    assert_eq!(
        stable.body["spec"]["template"]["spec"]["os"]["name"],
        "windows"
    );
    assert_eq!(
        find(&calls, "deployments", "echo-canary").body["spec"]["replicas"],
        0
    );
    let status = &recorded;
    // The image, and the digest of the pod template it runs with (recorded above).
    let stable = status["stableRevision"].as_str().unwrap();
    let digest = stable
        .strip_prefix("registry.example.com/trading/echo:2.0.3-ltsc2022+")
        .unwrap();
    assert_eq!(record, format!("configmaps/echo-rev-{digest}"));
    assert_eq!(status["phase"], "Healthy");
    assert_eq!(
        conditions(status),
        [
            ("Available", "True", "StableServing"),
            ("Progressing", "False", "NoRollout"),
            ("RolledBack", "False", "NotRolledBack")
        ]
    );
}

/// `(type, status, reason)` of each recorded condition.
fn conditions(status: &Value) -> Vec<(&str, &str, &str)> {
    status["conditions"]
        .as_array()
        .expect("conditions recorded")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_image_starts_a_canary() {
    let (result, calls, recorded) =
        run(service(CANARY).with_status(status::healthy()), false).await;
    result.unwrap();
    let canary = find(&calls, "deployments", "echo-canary");
    // Sized for its first step, 10% of 3 pods: one pod, not a copy of stable.
    assert_eq!(canary.body["spec"]["replicas"], 1);
    assert_eq!(
        find(&calls, "deployments", "echo-stable").body["spec"]["replicas"],
        3
    );
    assert_eq!(
        canary.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/trading/echo:2.1.0-ltsc2022"
    );
    let stable = find(&calls, "deployments", "echo-stable");
    assert_eq!(
        stable.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/trading/echo:2.0.3-ltsc2022"
    );
    // No zgate replica reports a live canary pod here: the canary gets no weight yet.
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":100,"canary":0}"#
    );
    let status = &recorded;
    assert_eq!(
        (
            status["phase"].as_str(),
            status["currentStep"].as_u64(),
            status["canaryWeight"].as_u64(),
            status["message"].as_str()
        ),
        (
            Some("Progressing"),
            Some(0),
            Some(0),
            Some("waiting for zgate to reach a canary pod")
        )
    );
    assert_eq!(
        conditions(status),
        [
            ("Available", "True", "StableServing"),
            ("Progressing", "True", "CanaryProgressing"),
            ("RolledBack", "False", "NotRolledBack")
        ]
    );
    let events: Vec<(&Value, &Value)> = calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/events"))
        .map(|c| (&c.body["reason"], &c.body["note"]))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "Changes");
    assert!(
        events[0]
            .1
            .as_str()
            .unwrap()
            .contains(&format!("changes image {STABLE} -> {CANARY}")),
        "{events:?}"
    );
    assert_eq!(events[1].0, "RolloutStarted");
    assert_eq!(
        status["changes"],
        json!([format!("image {STABLE} -> {CANARY}")])
    );
}

/// Reconciles the example with its 2.1.0 canary in the spec and `status` recorded.
async fn reconcile_canary(status: zdeploy_api::ZmqServiceStatus) -> Outcome {
    run(service(CANARY).with_status(status), false).await
}

#[tokio::test]
async fn a_restarted_controller_resumes_from_the_recorded_status() {
    let status = status::progressing(ago(10));
    let (result, calls, recorded) = reconcile_canary(status).await;
    result.unwrap();
    // Still in the 2-minute pause of step 1: same step and weight, no second canary start.
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":90,"canary":10}"#
    );
    // At 10% with 25% next: ceil(3 x 25%) pods.
    assert_eq!(
        find(&calls, "deployments", "echo-canary").body["spec"]["replicas"],
        1
    );
    let status = &recorded;
    assert_eq!(
        (
            status["currentStep"].as_u64(),
            status["canaryWeight"].as_u64()
        ),
        (Some(1), Some(10))
    );
    assert_eq!(
        status["analysis"][0]["verdict"], "inconclusive",
        "no metrics source: never a failure"
    );
    assert!(
        !calls.iter().any(|c| c.body["reason"] == "RolloutStarted"),
        "the canary was not started again"
    );
}

#[tokio::test]
async fn a_controller_back_after_a_long_absence_does_not_count_it_against_the_deadline() {
    // At the analysis step since an hour, six times the progress deadline: no controller
    // ran meanwhile (a restart, a new leader), so that hour is nobody's lack of progress.
    let mut status = status::progressing(ago(3600));
    status.current_step = Some(2);
    let (result, _, recorded) = reconcile_canary(status).await;
    result.unwrap();
    assert_eq!(recorded["phase"], "Progressing", "{recorded}");
    let progress: jiff::Timestamp = recorded["rollout"]["lastProgress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        jiff::Timestamp::now().duration_since(progress) < jiff::SignedDuration::from_secs(60),
        "progress counted from the controller's return: {recorded}"
    );
}

#[tokio::test]
async fn a_finished_pause_advances_the_step() {
    let status = status::progressing(ago(121));
    let (result, _, recorded) = reconcile_canary(status).await;
    result.unwrap();
    let status = &recorded;
    assert_eq!(
        status["currentStep"], 2,
        "on to the analysis step: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_in_prometheus_is_rolled_back_by_the_controller() {
    let target = support::Target::start("echo").await;
    let _errors = target.traffic(1, 60, 40, 0.002);
    let prom = support::Prometheus::start(&target.addr, None, None).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let metrics = MetricsSource::Prometheus {
        url: prom.url.clone(),
        namespace_label: false,
    };
    let object = service(CANARY).with_status(status::progressing(ago(10)));
    let (result, calls, recorded) = run_with(object, false, metrics).await;
    result.unwrap();
    let status = &recorded;
    assert_eq!(status["phase"], "RolledBack", "{status}");
    assert!(
        status["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("error-ratio"),
        "{status}"
    );
    let order = applies(&calls);
    let weights = order
        .iter()
        .position(|p| p == "configmaps/echo-weights")
        .unwrap();
    let canary = order
        .iter()
        .position(|p| p == "deployments/echo-canary")
        .unwrap();
    assert!(weights < canary);
    assert_eq!(
        find(&calls, "deployments", "echo-canary").body["spec"]["replicas"],
        1,
        "weight 0 now; the canary drains at its peak size (10%) before it scales down"
    );
}

#[tokio::test]
async fn a_rollback_writes_weight_zero_before_the_canary_scales_down() {
    let object = service(CANARY)
        .with_status(status::progressing(ago(10)))
        .annotated(COMMAND_ANNOTATION, ROLLBACK);
    let (result, calls, recorded) = run(object, false).await;
    let action = result.unwrap();
    let order = applies(&calls);
    let weights = order
        .iter()
        .position(|p| p == "configmaps/echo-weights")
        .unwrap();
    let zgate = order
        .iter()
        .position(|p| p == "deployments/echo-zgate")
        .unwrap();
    let canary = order
        .iter()
        .position(|p| p == "deployments/echo-canary")
        .unwrap();
    assert!(weights < canary && zgate < canary, "{order:?}");
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":100,"canary":0}"#
    );
    // The canary keeps its pods and revision while requests already sent to it finish
    // (the request timeout, 2 s, plus 1 s); the controller comes back to scale it down.
    let canary = &find(&calls, "deployments", "echo-canary").body["spec"];
    assert_eq!(canary["replicas"], 1, "the size it had at its peak, 10%");
    assert_eq!(
        canary["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/trading/echo:2.1.0-ltsc2022"
    );
    let requeue = format!("{action:?}");
    assert!(
        requeue.contains("requeue_after: Some(3.") || requeue.contains("requeue_after: Some(2."),
        "back after the drain: {requeue}"
    );
    let status = recorded.clone();
    assert_eq!(status["phase"], "RolledBack");
    assert_eq!(status["lastCommand"], "c-1");
    assert_eq!(
        conditions(&status)[1..],
        [
            ("Progressing", "False", "RolledBack"),
            ("RolledBack", "True", "CanaryRolledBack")
        ]
    );
    let runbook = status["history"][0]["runbook"].as_str().unwrap();
    assert!(runbook.starts_with("canary-error-ratio-high@"), "{runbook}");
    let event = calls
        .iter()
        .find(|c| c.method == Method::POST && c.body["reason"] == "RolledBack")
        .expect("a RolledBack Event");
    assert_eq!(event.body["type"], "Warning");
    assert!(
        event.body["note"].as_str().unwrap().contains(runbook),
        "{}",
        event.body
    );
}

#[tokio::test]
async fn a_stopped_canary_scales_down_once_it_has_drained() {
    let status = zdeploy_api::ZmqServiceStatus {
        last_command: Some("c-1".into()),
        ..status::rolled_back(ago(4), "paged")
    };
    let object = service(CANARY)
        .with_status(status)
        .annotated(COMMAND_ANNOTATION, ROLLBACK);
    let (result, calls, _) = run(object, false).await;
    let action = result.unwrap();
    assert_eq!(
        find(&calls, "deployments", "echo-canary").body["spec"]["replicas"],
        0,
        "4 s after the rollback, past the 3 s drain"
    );
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":100,"canary":0}"#
    );
    // Idle now: nothing on a timer; a change of the service or what it owns wakes it.
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

/// The watch cache is minutes behind (re-listing under load): the reconcile is handed a
/// rollout command that a rollback replaced, and carried out, since.
#[tokio::test]
async fn a_command_a_newer_one_replaced_is_not_carried_out_from_a_stale_cache() {
    let rollout = format!(r#"{{"id":"c-0","command":"rollout","image":"{CANARY}","canary":10}}"#);
    let stale = service(STABLE)
        .with_status(status::healthy())
        .annotated(COMMAND_ANNOTATION, &rollout)
        .build();
    let fresh = service(STABLE)
        .with_status(zdeploy_api::ZmqServiceStatus {
            last_command: Some("c-1".into()),
            ..status::rolled_back(ago(600), "paged")
        })
        .annotated(COMMAND_ANNOTATION, ROLLBACK)
        .build();
    let (client, server) = pair("trading");
    let server = tokio::spawn(api_server_holding(
        server,
        serde_json::to_value(&fresh).unwrap(),
        false,
        Default::default(),
    ));
    let ctx = Arc::new(Context::new(client, no_metrics()));
    reconcile(Arc::new(stale), ctx).await.unwrap();
    let calls = server.await.unwrap();
    let started: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == Method::POST && c.body["reason"] == "RolloutStarted")
        .map(|c| &c.body)
        .collect();
    assert!(started.is_empty(), "the replaced rollout ran: {started:?}");
    if let Some(canary) = calls
        .iter()
        .find(|c| is_apply(c, "deployments", "echo-canary"))
    {
        assert_eq!(canary.body["spec"]["replicas"], 0, "{}", canary.body);
    }
    for c in calls.iter().filter(|c| c.path.ends_with("/status")) {
        assert_ne!(c.body["status"]["lastCommand"], "c-0", "{}", c.body);
    }
}

#[tokio::test]
async fn a_conflict_is_retried_quickly_and_then_succeeds() {
    let object = service(CANARY).with_status(status::healthy());
    let (result, _, _) = run(object.clone(), true).await;
    let err = result.expect_err("the 409 surfaces");
    assert!(err.to_string().contains("modified"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let (client, _server) = pair("trading");
    let action = error_policy(
        Arc::new(object.clone().build()),
        &err,
        Arc::new(Context::new(client, MetricsSource::Scrape)),
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(200))
    );
    let (again, _, recorded) = run(object, false).await;
    again.unwrap();
    assert_eq!(recorded["phase"], "Progressing");
}

#[tokio::test]
async fn a_deleted_service_is_cleaned_up_and_released() {
    let deleting = service(STABLE).with_status(status::healthy()).deleting();
    let (result, calls, _) = run(deleting, false).await;
    result.unwrap();
    assert!(
        applies(&calls).is_empty(),
        "nothing is applied to a service being deleted"
    );
    let release = calls
        .iter()
        .find(|c| {
            c.method == Method::PATCH
                && c.path == "/apis/zdeploy.io/v1alpha1/namespaces/trading/zmqservices/echo"
        })
        .expect("finalizer removal");
    let ops = release.body.as_array().expect("a JSON patch");
    assert!(
        ops.iter()
            .any(|op| op["op"] == "remove" || (op["op"] == "test" && op["value"] == FINALIZER)),
        "{}",
        release.body
    );
    assert_eq!(service("x").deleting().build().finalizers(), [FINALIZER]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alertmanager_webhook_becomes_a_rollback_command() {
    use zdeploy_controller::analysis::webhook::{AlertInbox, router};
    let (client, mut server) = pair("default");
    let inbox = Arc::new(AlertInbox::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alertmanager", listener.local_addr().unwrap());
    let app = router(inbox.clone(), "t0k3n".into());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    tokio::spawn(
        zdeploy_controller::platforms::kubernetes::alerts::rollback_on_alerts(client, inbox),
    );
    zdeploy_controller::tls::install_ring_provider();
    let payload = json!({"alerts": [{"status": "firing", "labels": {"alertname": "CanaryErrorRateHigh", "service": "echo", "namespace": "trading", "pool": "canary"}}]});
    let sent = reqwest::Client::new()
        .post(&url)
        .bearer_auth("t0k3n")
        .json(&payload)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let path = "/apis/zdeploy.io/v1alpha1/namespaces/trading/zmqservices/echo";
    let (call, reply) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        server.expect(Method::PATCH, path),
    )
    .await
    .expect("a patch within 5 s");
    assert_eq!(call.headers["content-type"], "application/merge-patch+json");
    let body = call.body;
    let command: Value = serde_json::from_str(
        body["metadata"]["annotations"]["zdeploy.io/command"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(command["command"], "rollback");
    assert!(
        command["reason"]
            .as_str()
            .unwrap()
            .contains("CanaryErrorRateHigh")
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "only metadata is patched: {body}"
    );
    reply.json(200, &echo().image("echo:2").json());
}

#[tokio::test]
async fn a_release_from_the_cli_is_not_undone_by_the_spec_image() {
    // `zdeploy rollout --image 2.0.4` was promoted; the spec (kept in git) still names
    // 2.0.3, which the controller last acted on. Only a change of the spec starts a rollout.
    let released = zdeploy_api::ZmqServiceStatus {
        stable_revision: Some("registry.example.com/trading/echo:2.0.4-ltsc2022".into()),
        spec_revision: Some(STABLE.into()),
        ..status::healthy()
    };
    let (result, calls, recorded) = run(service(STABLE).with_status(released), false).await;
    result.unwrap();
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":100,"canary":0}"#
    );
    assert_ne!(recorded["phase"], "Progressing", "{recorded}");
    let stable = find(&calls, "deployments", "echo-stable");
    assert_eq!(
        stable.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/trading/echo:2.0.4-ltsc2022"
    );
}

#[tokio::test]
async fn a_rollouts_routes_by_client_reach_zgate_through_the_weights_configmap() {
    let routed = service(CANARY).with_status(status::healthy()).spec(|s| {
        s.strategy.canary.routes =
            serde_json::from_str(r#"[{"match": {"identityPrefix": "tester-"}}]"#).unwrap()
    });
    let (result, calls, recorded) = run(routed, false).await;
    result.unwrap();
    assert_eq!(recorded["routes"], json!(["canary=identity:tester-"]));
    let data = &find(&calls, "configmaps", "echo-weights").body["data"];
    assert_eq!(data["routes.json"], r#"["canary=identity:tester-"]"#);
    // With no rollout there is no route: the key is left out, so the apply removes it.
    let (result, calls, _) = run(service(STABLE).with_status(status::healthy()), false).await;
    result.unwrap();
    let data = &find(&calls, "configmaps", "echo-weights").body["data"];
    assert!(data.get("routes.json").is_none(), "{data}");
}

#[tokio::test]
async fn a_first_deploy_copies_the_config_its_pods_read_and_records_their_template() {
    let reads = |spec: &mut zdeploy_api::ZmqServiceSpec| {
        let c = &mut spec.template.spec.as_mut().unwrap().containers[0];
        c.env = Some(
            serde_json::from_value(json!([
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "echo-config", "key": "level"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "echo-token", "key": "token"}}}
            ]))
            .unwrap(),
        );
    };
    let ns = "/api/v1/namespaces/trading";
    let stored = std::collections::HashMap::from([
        (
            format!("{ns}/configmaps/echo-config"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "echo-config"}, "data": {"level": "info"}, "binaryData": {"blob": "/wA="}}),
        ),
        (
            format!("{ns}/secrets/echo-token"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "echo-token"}, "type": "Opaque", "data": {"token": "czNjcjN0"}}),
        ),
    ]);
    let (result, calls, recorded) =
        run_holding(service(STABLE).spec(reads), false, no_metrics(), stored).await;
    result.unwrap();
    let digest = recorded["stableRevision"]
        .as_str()
        .unwrap()
        .rsplit_once('+')
        .unwrap()
        .1
        .to_string();
    let order: Vec<String> = calls
        .iter()
        .filter(|c| !c.path.contains("/zmqservices/"))
        .map(|c| format!("{} {}", c.method, c.path.trim_start_matches(ns)))
        .take(6)
        .collect();
    assert_eq!(
        order,
        [
            "GET /configmaps/echo-config".to_string(),
            "GET /secrets/echo-token".into(),
            format!("GET /configmaps/echo-rev-{digest}"),
            format!("PATCH /configmaps/echo-config-{digest}"),
            format!("PATCH /secrets/echo-token-{digest}"),
            format!("PATCH /configmaps/echo-rev-{digest}"),
        ],
        "reads, then copies, then the record, before any workload"
    );
    let copy = &find(&calls, "configmaps", &format!("echo-config-{digest}")).body;
    assert_eq!(copy["data"], json!({"level": "info"}));
    assert_eq!(copy["binaryData"], json!({"blob": "/wA="}));
    assert_eq!(copy["immutable"], true);
    let secret = &find(&calls, "secrets", &format!("echo-token-{digest}")).body;
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"], json!({"token": "czNjcjN0"}));
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "ZmqService"
    );
    let env = &find(&calls, "deployments", "echo-stable").body["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    assert_eq!(
        env[0]["valueFrom"]["configMapKeyRef"]["name"],
        format!("echo-config-{digest}")
    );
    assert_eq!(
        env[1]["valueFrom"]["secretKeyRef"]["name"],
        format!("echo-token-{digest}")
    );
    assert!(
        !calls.iter().any(|c| c.body.to_string().contains("s3cr3t")),
        "a Secret's value is only ever sent encoded"
    );
}
