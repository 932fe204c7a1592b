//! ChaosSchedules reconciled against a mock API server (tower_test) that checks each
//! request's method, path and body: a due gateway experiment, the rollout and alert
//! guards, a run finishing or aborted from its recorded status, pod kill, and deletion
//! mid-run; and a steady state that breaks during the fault, measured by a real
//! Prometheus. One scenario per test.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use zdeploy_api::chaos::ChaosSchedule;
use zdeploy_controller::analysis::webhook::AlertInbox;
use zdeploy_controller::platforms::kubernetes::chaos::{
    CHAOS_FIELD_MANAGER, CHAOS_FINALIZER, ChaosContext, aimed_at, reconcile,
};
use zdeploy_controller::platforms::kubernetes::measure::MetricsSource;
use zdeploy_controller::platforms::kubernetes::stats::Stats;
use zdeploy_testkit::apiserver::{Call, MockApiServer, pair};
use zdeploy_testkit::fixtures::{CANARY, ago as ago_s, echo, status};

const SCHEDULES: &str = "/apis/zdeploy.io/v1alpha1/namespaces/trading/chaosschedules/drill";
const SERVICE: &str = "/apis/zdeploy.io/v1alpha1/namespaces/trading/zmqservices/echo";
const WEIGHTS: &str = "/api/v1/namespaces/trading/configmaps/echo-weights";
const PODS: &str = "/api/v1/namespaces/trading/pods";

/// What the mock cluster holds besides the schedule.
struct World {
    schedule: Value,
    service: Option<Value>,
    weights: Value,
    pods: Vec<Value>,
}

async fn api_server(server: MockApiServer, mut world: World) -> Vec<Call> {
    server.serve(move |call| {
        let (method, path, body) = (call.method.as_str(), call.path.as_str(), &call.body);
        match (method, path) {
            ("GET", SERVICE) => match &world.service {
                Some(s) => (200, s.clone()),
                None => (404, zdeploy_testkit::apiserver::not_found()),
            },
            ("GET", WEIGHTS) => (200, world.weights.clone()),
            ("PATCH", WEIGHTS) => {
                world.weights["data"] = body["data"].clone();
                (200, world.weights.clone())
            }
            ("PATCH", p) if p == format!("{SCHEDULES}/status") => {
                world.schedule["status"] = body["status"].clone();
                (200, world.schedule.clone())
            }
            // The finalizer's JSON patch on the schedule.
            ("PATCH", SCHEDULES) => {
                world.schedule["metadata"]["finalizers"] = json!([]);
                (200, world.schedule.clone())
            }
            ("GET", PODS) => (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": world.pods}),
            ),
            ("DELETE", p) if p.starts_with(PODS) => {
                let name = p.rsplit('/').next().unwrap();
                world.pods.retain(|pod| pod["metadata"]["name"] != name);
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}),
                )
            }
            ("POST", p) if p.ends_with("/events") => (200, body.clone()),
            other => panic!("unexpected request {other:?}"),
        }
    })
    .await
}

fn ago(d: Duration) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::try_from(d).unwrap()).to_string()
}

fn from_now(d: Duration) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap()).to_string()
}

/// The start of the previous minute: with `* * * * *`, exactly one run is due now.
fn previous_minute() -> String {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now - now % 60 - 60)
        .unwrap()
        .to_string()
}

fn schedule(fault: Value, status: Value) -> Value {
    json!({
        "apiVersion": "zdeploy.io/v1alpha1", "kind": "ChaosSchedule",
        "metadata": {"name": "drill", "namespace": "trading", "uid": "c-1", "resourceVersion": "3",
                     "creationTimestamp": ago(Duration::from_secs(3600)), "finalizers": [CHAOS_FINALIZER]},
        "spec": {"schedule": "* * * * *", "experiment": {"service": "echo", "pool": "canary", "fault": fault, "duration": "5m", "mode": "fixed", "value": 3, "maxTargets": 2}},
        "status": status,
    })
}

/// The target service, healthy.
fn healthy() -> Value {
    echo().with_status(status::healthy()).json()
}

/// The target service in a rollout of `fixtures::CANARY`, started 30 s ago.
fn in_rollout() -> Value {
    echo().with_status(status::progressing(ago_s(30))).json()
}

fn weights(faults: Option<&str>) -> Value {
    let mut data = json!({"weights.json": "{\"stable\":100,\"canary\":0}"});
    if let Some(f) = faults {
        data["faults.json"] = json!(f);
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "echo-weights", "namespace": "trading"}, "data": data})
}

fn pod(name: &str, pool: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "trading", "labels": {"zdeploy.io/pool": pool}},
           "status": {"phase": "Running"}})
}

fn world(schedule: Value, service: Option<Value>, faults: Option<&str>) -> World {
    World {
        schedule,
        service,
        weights: weights(faults),
        pods: Vec::new(),
    }
}

struct Outcome {
    result: Result<kube::runtime::controller::Action, String>,
    calls: Vec<Call>,
    metrics: String,
}

async fn run(world: World, alerts: Option<Arc<AlertInbox>>) -> Outcome {
    run_with(world, alerts, MetricsSource::Scrape).await
}

async fn run_with(
    world: World,
    alerts: Option<Arc<AlertInbox>>,
    metrics: MetricsSource,
) -> Outcome {
    let (client, server) = pair("trading");
    let cs: ChaosSchedule = serde_json::from_value(world.schedule.clone()).unwrap();
    let server = tokio::spawn(api_server(server, world));
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(ChaosContext::new(client, metrics, alerts, stats.clone()));
    let result = reconcile(Arc::new(cs), ctx)
        .await
        .map_err(|e| e.to_string());
    let calls = server.await.unwrap();
    every_request_is_granted(&calls);
    Outcome {
        result,
        calls,
        metrics: stats.encode(),
    }
}

/// The install's RBAC (the controller's ClusterRole and the pod-kill one) grants each request.
fn every_request_is_granted(calls: &[Call]) {
    let mut rules = Vec::new();
    for file in ["rbac.yaml", "chaos-rbac.yaml"] {
        let text = std::fs::read_to_string(zdeploy_testkit::fixtures::repo(&format!(
            "manifests/install/{file}"
        )))
        .unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        for d in docs.iter().filter(|d| d["kind"] == "ClusterRole") {
            rules.extend(d["rules"].as_array().unwrap().iter().cloned());
        }
    }
    for c in calls {
        // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/GROUP/VERSION/namespaces/NS/...
        let parts: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match parts[0] {
            "api" => ("", &parts[4..]),
            _ => (parts[1], &parts[5..]),
        };
        let resource = match rest {
            [r, _, sub] => format!("{r}/{sub}"),
            [r, ..] => r.to_string(),
            [] => panic!("no resource in {}", c.path),
        };
        let verb = match (c.method.as_str(), rest.len()) {
            ("GET", 1) => "list",
            ("GET", _) => "get",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            (m, _) => panic!("unexpected {m}"),
        };
        let granted = rules.iter().any(|r| {
            let has = |key: &str, want: &str| r[key].as_array().unwrap().iter().any(|v| v == want);
            has("apiGroups", group) && has("resources", &resource) && has("verbs", verb)
        });
        assert!(
            granted,
            "{} {} needs {verb} on {group}/{resource}, which the install does not grant",
            c.method, c.path
        );
    }
}

impl Outcome {
    fn status(&self) -> &Value {
        &self
            .calls
            .iter()
            .find(|c| c.path == format!("{SCHEDULES}/status"))
            .expect("a status patch")
            .body["status"]
    }

    /// Where the first PATCH of `path` is in the order of requests.
    fn patch_at(&self, path: &str) -> Option<usize> {
        self.calls
            .iter()
            .position(|c| c.method == Method::PATCH && c.path == path)
    }

    fn weight_patches(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.method == Method::PATCH && c.path == WEIGHTS)
            .collect()
    }

    fn events(&self) -> Vec<(String, String)> {
        self.calls
            .iter()
            .filter(|c| c.path.ends_with("/events"))
            .map(|c| {
                (
                    c.body["reason"].as_str().unwrap().to_string(),
                    c.body["type"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn runs(&self, verdict: &str) -> u64 {
        let line = format!("zdeploy_chaos_runs_total{{verdict=\"{verdict}\"}} ");
        self.metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn active(fault_ends: String, recover_by: Option<String>) -> Value {
    let mut a = json!({"scheduled": previous_minute(), "started": ago(Duration::from_secs(300)),
                       "faultEnds": fault_ends, "targets": ["zgate pool canary"], "injected": true});
    if let Some(r) = recover_by {
        a["recoverBy"] = json!(r);
    }
    json!({"lastScheduleTime": previous_minute(), "active": a})
}

const FAULT: &str =
    r#"{"canary":{"fault":{"latency":"300ms","duration":"5m"},"until":"2026-11-25T12:05:00Z"}}"#;

#[tokio::test]
async fn a_due_gateway_experiment_writes_its_fault_with_its_end() {
    let cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        json!({"lastScheduleTime": previous_minute()}),
    );
    let out = run(world(cs, Some(healthy()), None), None).await;
    let action = out.result.as_ref().unwrap();
    let patches = out.weight_patches();
    assert_eq!(patches.len(), 1, "{:?}", out.calls);
    let apply = patches[0];
    assert!(
        apply
            .query
            .contains(&format!("fieldManager={CHAOS_FIELD_MANAGER}")),
        "server-side apply as {CHAOS_FIELD_MANAGER}: {}",
        apply.query
    );
    assert!(
        apply.body["data"].get("weights.json").is_none(),
        "chaos never touches the weights: {}",
        apply.body
    );
    let faults: Value =
        serde_json::from_str(apply.body["data"]["faults.json"].as_str().unwrap()).unwrap();
    assert_eq!(faults["canary"]["fault"]["latency"], "300ms");
    assert!(faults.get("stable").is_none(), "{faults}");
    let status = out.status();
    let a = &status["active"];
    assert_eq!(a["targets"], json!(["zgate pool canary"]));
    assert_eq!(
        faults["canary"]["until"], a["faultEnds"],
        "zgate ends the fault when the run does"
    );
    let ends: jiff::Timestamp = a["faultEnds"].as_str().unwrap().parse().unwrap();
    let started: jiff::Timestamp = a["started"].as_str().unwrap().parse().unwrap();
    assert_eq!(ends.duration_since(started).as_secs(), 300);
    assert_eq!(out.events(), vec![("ChaosStarted".into(), "Normal".into())]);
    let recorded = out.patch_at(&format!("{SCHEDULES}/status")).unwrap();
    assert!(
        recorded < out.patch_at(WEIGHTS).unwrap(),
        "the run is recorded before its fault is written"
    );
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
}

#[tokio::test]
async fn a_run_due_during_a_rollout_is_skipped_and_recorded() {
    let cs = schedule(
        json!({"gatewayErrors": {"ratio": 0.5}}),
        json!({"lastScheduleTime": previous_minute()}),
    );
    let out = run(world(cs, Some(in_rollout()), None), None).await;
    out.result.as_ref().unwrap();
    assert!(out.weight_patches().is_empty(), "nothing injected");
    let status = out.status();
    assert!(status["active"].is_null(), "{status}");
    assert_eq!(status["history"][0]["verdict"], "skipped");
    assert_eq!(
        status["history"][0]["reason"],
        format!("a rollout of echo ({CANARY}) is in progress")
    );
    assert_eq!(out.events(), vec![("ChaosSkipped".into(), "Normal".into())]);
    assert_eq!(out.runs("skipped"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_due_while_an_alert_fires_for_the_service_is_skipped() {
    // The alert arrives the way Alertmanager sends it: through the webhook, over HTTP.
    let inbox = Arc::new(AlertInbox::default());
    let url = support::webhook(inbox.clone(), "t").await;
    zdeploy_controller::tls::install_ring_provider();
    let body = r#"{"alerts":[{"status":"firing","fingerprint":"f1","labels":{"alertname":"ZgateStableErrors","service":"echo","namespace":"trading","pool":"stable"}}]}"#;
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth("t")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cs = schedule(
        json!({"gatewayDrop": {"ratio": 0.1}}),
        json!({"lastScheduleTime": previous_minute()}),
    );
    let out = run(world(cs, Some(healthy()), None), Some(inbox)).await;
    out.result.as_ref().unwrap();
    assert!(out.weight_patches().is_empty(), "nothing injected");
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "skipped");
    assert_eq!(
        status["history"][0]["reason"],
        "alert ZgateStableErrors is firing for echo"
    );
}

#[tokio::test]
async fn a_run_whose_fault_ended_removes_it_and_holds() {
    let cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        active(ago(Duration::from_secs(1)), None),
    );
    let out = run(world(cs, Some(healthy()), Some(FAULT)), None).await;
    out.result.as_ref().unwrap();
    let patches = out.weight_patches();
    assert_eq!(patches.len(), 1, "{:?}", out.calls);
    assert!(
        patches[0].body["data"].get("faults.json").is_none(),
        "the fault is removed: {}",
        patches[0].body
    );
    let status = out.status();
    assert!(
        status.get("active").is_some_and(Value::is_null),
        "`active: null` ends the run: {status}"
    );
    assert_eq!(status["history"][0]["verdict"], "held");
    assert_eq!(
        status["history"][0]["targets"],
        json!(["zgate pool canary"])
    );
    assert_eq!(out.events(), vec![("ChaosHeld".into(), "Normal".into())]);
    assert_eq!(out.runs("held"), 1);
}

#[tokio::test]
async fn a_rollout_aborts_a_running_experiment_and_removes_its_fault_first() {
    let cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        active(from_now(Duration::from_secs(120)), None),
    );
    let out = run(world(cs, Some(in_rollout()), Some(FAULT)), None).await;
    out.result.as_ref().unwrap();
    let revert = out.patch_at(WEIGHTS).expect("the fault is removed");
    let record = out
        .calls
        .iter()
        .position(|c| c.path == format!("{SCHEDULES}/status"))
        .unwrap();
    assert!(revert < record, "removed before the run is recorded");
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "aborted");
    assert!(
        status["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("rollout of the service ({CANARY})")),
        "{status}"
    );
    assert_eq!(
        out.events(),
        vec![("ChaosAborted".into(), "Warning".into())]
    );
    assert_eq!(out.runs("aborted"), 1);
}

#[tokio::test]
async fn a_pod_kill_deletes_at_most_max_targets_pods_of_the_targeted_pool() {
    let cs = schedule(
        json!({"podKill": {}}),
        json!({"lastScheduleTime": previous_minute()}),
    );
    let mut w = world(cs, Some(healthy()), None);
    w.pods = vec![
        pod("echo-canary-a", "canary"),
        pod("echo-canary-b", "canary"),
        pod("echo-canary-c", "canary"),
    ];
    let out = run(w, None).await;
    out.result.as_ref().unwrap();
    let list = out
        .calls
        .iter()
        .find(|c| c.method == Method::GET && c.path == PODS)
        .unwrap();
    let selector = list.param("labelSelector").unwrap();
    assert!(
        selector.ends_with("zdeploy.io/pool=canary")
            && selector.contains("app.kubernetes.io/name=echo"),
        "{selector}"
    );
    let deleted: Vec<&str> = out
        .calls
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .map(|c| c.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        deleted.len(),
        2,
        "mode fixed 3, capped by maxTargets 2: {deleted:?}"
    );
    assert!(deleted.iter().all(|p| p.starts_with("echo-canary-")));
    let targets = out.status()["active"]["targets"].clone();
    assert_eq!(targets.as_array().unwrap().len(), 2, "{targets}");
    let recorded = out.patch_at(&format!("{SCHEDULES}/status")).unwrap();
    let first_delete = out
        .calls
        .iter()
        .position(|c| c.method == Method::DELETE)
        .unwrap();
    assert!(
        recorded < first_delete,
        "the run is recorded before any pod is deleted, so a retry never kills twice"
    );
    assert!(out.weight_patches().is_empty());
}

#[tokio::test]
async fn deleting_a_schedule_mid_run_removes_its_fault_then_the_finalizer() {
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        active(from_now(Duration::from_secs(120)), None),
    );
    cs["metadata"]["deletionTimestamp"] = json!(ago(Duration::from_secs(1)));
    let out = run(world(cs, Some(healthy()), Some(FAULT)), None).await;
    out.result.as_ref().unwrap();
    let revert = out.patch_at(WEIGHTS).expect("the fault is removed");
    assert!(out.calls[revert].body["data"].get("faults.json").is_none());
    let release = out.patch_at(SCHEDULES).expect("the finalizer is removed");
    assert!(revert < release, "fault removed before the finalizer goes");
    assert!(
        out.calls[release]
            .body
            .to_string()
            .contains("/metadata/finalizers"),
        "{}",
        out.calls[release].body
    );
    assert_eq!(
        out.events(),
        vec![("ChaosReverted".into(), "Normal".into())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_state_that_breaks_in_prometheus_ends_the_run_broken_and_removes_the_fault() {
    let target = support::Target::start("echo").await;
    let _errors = target.traffic(1, 60, 40, 0.002);
    let prom = support::Prometheus::start(&target.addr, None, None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = MetricsSource::Prometheus {
        url: prom.url.clone(),
        namespace_label: false,
    };
    let mut cs = schedule(
        json!({"gatewayErrors": {"ratio": 0.4}}),
        active(from_now(Duration::from_secs(120)), None),
    );
    // Injected 10 s ago: the window reaches back no further.
    cs["status"]["active"]["started"] = json!(ago(Duration::from_secs(10)));
    cs["spec"]["steadyState"] = json!({"interval": "5s", "metrics": [
        {"name": "errors", "builtin": "errorRatio", "window": "1m", "max": 0.05, "minSamples": 10}
    ]});
    let out = run_with(world(cs, Some(healthy()), Some(FAULT)), None, metrics).await;
    out.result.as_ref().unwrap();
    let patches = out.weight_patches();
    assert_eq!(patches.len(), 1, "the fault is removed: {:?}", out.calls);
    assert!(patches[0].body["data"].get("faults.json").is_none());
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "broken", "{status}");
    let reason = status["history"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("into the fault, which was reverted at once")
            && (reason.contains("errors 0.3") || reason.contains("errors 0.4")),
        "{reason}"
    );
    assert_eq!(out.events(), vec![("ChaosBroken".into(), "Warning".into())]);
    assert_eq!(out.runs("broken"), 1);
}

#[tokio::test]
async fn a_schedule_paused_by_annotation_records_its_due_run_as_skipped() {
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        json!({"lastScheduleTime": previous_minute()}),
    );
    cs["metadata"]["annotations"] = json!({"zdeploy.io/suspend": "true"});
    let out = run(world(cs, Some(healthy()), None), None).await;
    out.result.as_ref().unwrap();
    assert!(out.weight_patches().is_empty(), "nothing injected");
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "skipped");
    assert_eq!(status["history"][0]["reason"], "the schedule is suspended");
}

/// This minute's start: no scheduled run is due after it.
fn this_minute() -> String {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now - now % 60)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_run_asked_for_by_annotation_starts_once_between_scheduled_times() {
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        json!({"lastScheduleTime": this_minute(), "lastRunRequest": "r-0"}),
    );
    cs["metadata"]["annotations"] = json!({"zdeploy.io/run-now": "r-1"});
    let out = run(world(cs.clone(), Some(healthy()), None), None).await;
    out.result.as_ref().unwrap();
    assert_eq!(out.weight_patches().len(), 1, "injected");
    let status = out.status().clone();
    assert_eq!(status["lastRunRequest"], "r-1");
    assert!(status["active"].is_object(), "{status}");
    // The same request seen again (the next reconcile) starts nothing new.
    let mut again = cs;
    again["status"]["lastRunRequest"] = json!("r-1");
    let out = run(world(again, Some(healthy()), None), None).await;
    out.result.as_ref().unwrap();
    assert!(out.weight_patches().is_empty(), "{:?}", out.calls);
}

#[tokio::test]
async fn a_run_asked_for_during_a_rollout_is_skipped_with_the_reason() {
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        json!({"lastScheduleTime": this_minute()}),
    );
    cs["metadata"]["annotations"] = json!({"zdeploy.io/run-now": "r-1"});
    let out = run(world(cs, Some(in_rollout()), None), None).await;
    out.result.as_ref().unwrap();
    assert!(out.weight_patches().is_empty());
    let status = out.status();
    assert_eq!(status["lastRunRequest"], "r-1");
    assert_eq!(status["history"][0]["verdict"], "skipped");
    assert_eq!(
        status["history"][0]["reason"],
        format!("a rollout of echo ({CANARY}) is in progress")
    );
}

#[test]
fn a_change_of_a_service_wakes_only_the_schedules_aimed_at_it() {
    let aimed = |name: &str, ns: &str, service: &str| {
        let mut cs = schedule(json!({"podKill": {}}), json!({}));
        cs["metadata"]["name"] = json!(name);
        cs["metadata"]["namespace"] = json!(ns);
        cs["spec"]["experiment"]["service"] = json!(service);
        Arc::new(serde_json::from_value::<ChaosSchedule>(cs).unwrap())
    };
    let all = [
        aimed("drill", "trading", "echo"),
        aimed("other-service", "trading", "quotes"),
        aimed("other-namespace", "staging", "echo"),
        aimed("second-drill", "trading", "echo"),
    ];
    let svc = echo().with_status(status::progressing(ago_s(30))).build();
    let woken: Vec<String> = aimed_at(&svc, &all).into_iter().map(|r| r.name).collect();
    assert_eq!(woken, ["drill", "second-drill"]);
}

#[tokio::test]
async fn a_run_recorded_but_not_injected_is_completed_from_the_record() {
    // The controller stopped between recording the run and injecting its fault.
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        active(from_now(Duration::from_secs(120)), None),
    );
    cs["status"]["active"]["injected"] = json!(false);
    // No run is due besides: only the completion is seen.
    cs["status"]["lastScheduleTime"] = json!(this_minute());
    let ends = cs["status"]["active"]["faultEnds"].clone();
    let out = run(world(cs, Some(healthy()), None), None).await;
    out.result.as_ref().unwrap();
    let patches = out.weight_patches();
    assert_eq!(patches.len(), 1, "{:?}", out.calls);
    let faults: Value =
        serde_json::from_str(patches[0].body["data"]["faults.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        faults["canary"]["until"], ends,
        "the recorded end, not a new one"
    );
    let status = out.status();
    assert_eq!(status["active"]["injected"], true, "{status}");
    assert_eq!(out.events(), vec![("ChaosStarted".into(), "Normal".into())]);
}

#[tokio::test]
async fn a_run_recorded_but_not_injected_before_its_end_is_aborted() {
    let mut cs = schedule(
        json!({"podKill": {}}),
        active(ago(Duration::from_secs(1)), None),
    );
    cs["status"]["active"]["injected"] = json!(false);
    cs["status"]["active"]["pods"] = json!(["echo-canary-a"]);
    let out = run(world(cs, Some(healthy()), None), None).await;
    out.result.as_ref().unwrap();
    assert!(
        out.calls.iter().all(|c| c.method != Method::DELETE),
        "nothing is killed after the run's end"
    );
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "aborted");
    assert!(status["active"].is_null(), "{status}");
}

/// A run in progress (its fault ends in 2 minutes) while the next one falls due.
fn overlapping(policy: &str) -> Value {
    let mut cs = schedule(
        json!({"gatewayLatency": {"latency": "300ms"}}),
        active(from_now(Duration::from_secs(120)), None),
    );
    // The run in progress was due last minute: with `* * * * *`, one is due now.
    cs["spec"]["concurrencyPolicy"] = json!(policy);
    cs
}

#[tokio::test]
async fn a_run_due_while_one_is_in_progress_is_skipped_under_forbid() {
    let cs = overlapping("Forbid");
    let running = cs["status"]["active"]["scheduled"].clone();
    let out = run(world(cs, Some(healthy()), Some(FAULT)), None).await;
    out.result.as_ref().unwrap();
    assert!(
        out.weight_patches().is_empty(),
        "the running fault stays: {:?}",
        out.calls
    );
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "skipped", "{status}");
    assert!(
        status["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("concurrencyPolicy: Forbid"),
        "{status}"
    );
    assert_eq!(
        status["active"]["scheduled"], running,
        "the run goes on: {status}"
    );
    assert_eq!(out.events(), vec![("ChaosSkipped".into(), "Normal".into())]);
}

#[tokio::test]
async fn a_run_due_while_one_is_in_progress_replaces_it_under_replace() {
    let cs = overlapping("Replace");
    let old = cs["status"]["active"]["scheduled"].clone();
    let out = run(world(cs, Some(healthy()), Some(FAULT)), None).await;
    out.result.as_ref().unwrap();
    let patches = out.weight_patches();
    assert_eq!(patches.len(), 2, "{:?}", out.calls);
    assert!(
        patches[0].body["data"].get("faults.json").is_none(),
        "the running fault is removed first: {}",
        patches[0].body
    );
    assert!(
        patches[1].body["data"]["faults.json"].is_string(),
        "then the new run's fault is written: {}",
        patches[1].body
    );
    let status = out.status();
    assert_eq!(status["history"][0]["verdict"], "aborted", "{status}");
    assert_eq!(status["history"][0]["scheduled"], old);
    assert!(
        status["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("concurrencyPolicy: Replace"),
        "{status}"
    );
    assert_ne!(status["active"]["scheduled"], old, "a new run: {status}");
    assert_eq!(
        out.events(),
        vec![
            ("ChaosStarted".into(), "Normal".into()),
            ("ChaosAborted".into(), "Warning".into())
        ]
    );
    every_request_is_granted(&out.calls);
}
