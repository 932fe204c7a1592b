//! The controller against a mock API server (tower_test), kube-rs style: every request's
//! method, path and body is checked. One scenario per test.

mod support;

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::Call;
use zdeploy_api::ZmqService;
use zdeploy_controller::platforms::kubernetes::errors::{Error, ErrorKind};
use zdeploy_controller::platforms::kubernetes::measure::MetricsSource;
use zdeploy_controller::platforms::kubernetes::service::{
    Context, FINALIZER, error_policy, reconcile,
};

fn is_apply(call: &Call, kind_path: &str, name: &str) -> bool {
    call.method == Method::PATCH
        && call.path.ends_with(&format!("/{kind_path}/{name}"))
        && call.query.contains("fieldManager=zdeploy")
}

/// Answers like the API server; `conflict_on_status` answers the first status patch with
/// 409. Applies and status patches are echoed back, as the server would.
async fn api_server(
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    object: Value,
    conflict_on_status: bool,
) -> Vec<Call> {
    let mut object = object;
    let mut conflicted = false;
    support::serve_api(handle, move |call| {
        if call.path.ends_with("/status") {
            if conflict_on_status && !conflicted {
                conflicted = true;
                return (
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the object has been modified", "reason": "Conflict", "code": 409}),
                );
            }
            support::merge_patch(&mut object["status"], &call.body["status"]);
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

fn service(image: &str, status: Option<Value>, annotations: Value, deleting: bool) -> Value {
    let text = std::fs::read_to_string(support::repo("manifests/examples/echo.yaml")).unwrap();
    let mut svc: Value = serde_saphyr::from_str(&text).unwrap();
    svc["metadata"]["uid"] = json!("0c8f2a2e-0000-4000-8000-000000000001");
    svc["metadata"]["generation"] = json!(1);
    svc["metadata"]["finalizers"] = json!([FINALIZER]);
    svc["metadata"]["annotations"] = annotations;
    if deleting {
        svc["metadata"]["deletionTimestamp"] = json!("2026-11-25T10:00:00Z");
    }
    svc["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    if let Some(s) = status {
        svc["status"] = s;
    }
    svc
}

/// Analysis against a loopback port where nothing listens: measurements are inconclusive.
fn no_metrics() -> MetricsSource {
    MetricsSource::Prometheus {
        url: format!("http://127.0.0.1:{}", support::free_port()),
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

async fn run(object: Value, conflict: bool) -> Outcome {
    run_with(object, conflict, no_metrics()).await
}

async fn run_with(object: Value, conflict: bool, metrics: MetricsSource) -> Outcome {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "trading");
    let server = tokio::spawn(api_server(handle, object.clone(), conflict));
    let object_sent = object.clone();
    let svc: ZmqService = serde_json::from_value(object_sent).unwrap();
    let ctx = Arc::new(Context::new(client, metrics));
    let result = reconcile(Arc::new(svc), ctx).await;
    // Dropping the client ends the mock server.
    let calls = server.await.unwrap();
    let mut status = object["status"].clone();
    for c in calls.iter().filter(|c| c.path.ends_with("/status")) {
        support::merge_patch(&mut status, &c.body["status"]);
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
    let (result, calls, recorded) = run(
        service(
            "registry.example.com/trading/echo:2.0.3-ltsc2022",
            None,
            json!({}),
            false,
        ),
        false,
    )
    .await;
    result.unwrap();
    assert_eq!(
        applies(&calls),
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
    assert_eq!(
        status["stableRevision"],
        "registry.example.com/trading/echo:2.0.3-ltsc2022"
    );
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

fn healthy() -> Value {
    json!({"phase": "Healthy", "stableRevision": "registry.example.com/trading/echo:2.0.3-ltsc2022", "canaryWeight": 0, "observedGeneration": 1})
}

#[tokio::test]
async fn a_new_image_starts_a_canary() {
    let (result, calls, recorded) = run(
        service(
            "registry.example.com/trading/echo:2.1.0-ltsc2022",
            Some(healthy()),
            json!({}),
            false,
        ),
        false,
    )
    .await;
    result.unwrap();
    let canary = find(&calls, "deployments", "echo-canary");
    assert_eq!(canary.body["spec"]["replicas"], 3);
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
    let event = calls
        .iter()
        .find(|c| c.method == Method::POST && c.path.ends_with("/events"))
        .expect("an Event");
    assert_eq!(event.body["reason"], "RolloutStarted");
}

fn progressing(step_started: &str) -> Value {
    json!({
        "phase": "Progressing", "currentStep": 1, "canaryWeight": 10,
        "stableRevision": "registry.example.com/trading/echo:2.0.3-ltsc2022",
        "canaryRevision": "registry.example.com/trading/echo:2.1.0-ltsc2022",
        "message": "step 1: pausing 2m at 10%",
        "observedGeneration": 1,
        "rollout": {"started": step_started, "stepStarted": step_started, "lastProgress": step_started, "failures": 0, "inconclusiveStreak": 0, "paused": false}
    })
}

/// Reconciles the example with its 2.1.0 canary in the spec and `status` recorded.
async fn reconcile_canary(status: Value) -> Outcome {
    let image = "registry.example.com/trading/echo:2.1.0-ltsc2022";
    run(service(image, Some(status), json!({}), false), false).await
}

fn seconds_ago(s: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)).to_string()
}

#[tokio::test]
async fn a_restarted_controller_resumes_from_the_recorded_status() {
    let status = progressing(&seconds_ago(10));
    let (result, calls, recorded) = reconcile_canary(status).await;
    result.unwrap();
    // Still in the 2-minute pause of step 1: same step and weight, no second canary start.
    assert_eq!(
        find(&calls, "configmaps", "echo-weights").body["data"]["weights.json"],
        r#"{"stable":90,"canary":10}"#
    );
    assert_eq!(
        find(&calls, "deployments", "echo-canary").body["spec"]["replicas"],
        3
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
    let mut status = progressing(&seconds_ago(3600));
    status["currentStep"] = json!(2);
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
    let status = progressing(&seconds_ago(121));
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
    let object = service(
        "registry.example.com/trading/echo:2.1.0-ltsc2022",
        Some(progressing(&seconds_ago(10))),
        json!({}),
        false,
    );
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
        3,
        "weight 0 now; the canary drains before it scales down"
    );
}

#[tokio::test]
async fn a_rollback_writes_weight_zero_before_the_canary_scales_down() {
    let command =
        json!({"zdeploy.io/command": r#"{"id":"c-1","command":"rollback","reason":"paged"}"#});
    let (result, calls, recorded) = run(
        service(
            "registry.example.com/trading/echo:2.1.0-ltsc2022",
            Some(progressing(&seconds_ago(10))),
            command,
            false,
        ),
        false,
    )
    .await;
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
    assert_eq!(canary["replicas"], 3);
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
    let mut status = progressing(&seconds_ago(60));
    status["phase"] = json!("RolledBack");
    status["rollout"] = Value::Null;
    status["canaryWeight"] = json!(0);
    status["lastCommand"] = json!("c-1");
    status["history"] = json!([{"revision": "registry.example.com/trading/echo:2.1.0-ltsc2022",
        "stableRevision": "registry.example.com/trading/echo:2.0.3-ltsc2022",
        "started": seconds_ago(60), "ended": seconds_ago(4), "outcome": "RolledBack", "reason": "paged"}]);
    let command =
        json!({"zdeploy.io/command": r#"{"id":"c-1","command":"rollback","reason":"paged"}"#});
    let (result, calls, _) = run(
        service(
            "registry.example.com/trading/echo:2.1.0-ltsc2022",
            Some(status),
            command,
            false,
        ),
        false,
    )
    .await;
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
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(300))
    );
}

#[tokio::test]
async fn a_conflict_is_retried_quickly_and_then_succeeds() {
    let object = service(
        "registry.example.com/trading/echo:2.1.0-ltsc2022",
        Some(healthy()),
        json!({}),
        false,
    );
    let (result, _, _) = run(object.clone(), true).await;
    let err = result.expect_err("the 409 surfaces");
    assert!(err.to_string().contains("modified"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let (mock, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let svc: ZmqService = serde_json::from_value(object.clone()).unwrap();
    let action = error_policy(
        Arc::new(svc),
        &err,
        Arc::new(Context::new(
            Client::new(mock, "trading"),
            MetricsSource::Scrape,
        )),
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
    let (result, calls, _) = run(
        service(
            "registry.example.com/trading/echo:2.0.3-ltsc2022",
            Some(healthy()),
            json!({}),
            true,
        ),
        false,
    )
    .await;
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
    let svc: ZmqService = serde_json::from_value(service("x", None, json!({}), true)).unwrap();
    assert_eq!(svc.finalizers(), [FINALIZER]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alertmanager_webhook_becomes_a_rollback_command() {
    use zdeploy_controller::analysis::webhook::{AlertInbox, router};
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
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
    let (req, send) =
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
            .await
            .expect("a patch within 5 s")
            .unwrap();
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/zdeploy.io/v1alpha1/namespaces/trading/zmqservices/echo"
    );
    assert_eq!(
        req.headers()["content-type"],
        "application/merge-patch+json"
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
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
    send.send_response(
        Response::builder()
            .body(Body::from(
                serde_json::to_vec(&service("echo:2", None, json!({}), false)).unwrap(),
            ))
            .unwrap(),
    );
}

#[tokio::test]
async fn a_release_from_the_cli_is_not_undone_by_the_spec_image() {
    // `zdeploy rollout --image 2.0.4` was promoted; the spec (kept in git) still names
    // 2.0.3, which the controller last acted on. Only a change of the spec starts a rollout.
    let status = json!({"phase": "Healthy", "stableRevision": "registry.example.com/trading/echo:2.0.4-ltsc2022",
        "specRevision": "registry.example.com/trading/echo:2.0.3-ltsc2022", "canaryWeight": 0, "observedGeneration": 1});
    let (result, calls, recorded) = run(
        service(
            "registry.example.com/trading/echo:2.0.3-ltsc2022",
            Some(status),
            json!({}),
            false,
        ),
        false,
    )
    .await;
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
