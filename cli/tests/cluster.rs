//! The verbs against a cluster, through the real binary and a kubeconfig pointing at a
//! mock API server on 127.0.0.1 that checks each request's method, path and body and
//! answers as the controller would.

mod support;

use support::zdeploy;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::any;
use serde_json::{Value, json};

#[derive(Default)]
struct Api {
    calls: Vec<(Method, String, String, Value)>,
    last_command: Option<String>,
    run_now: Option<String>,
}

fn object(last_command: Option<&str>) -> Value {
    json!({
        "apiVersion": "zdeploy.io/v1alpha1", "kind": "ZmqService",
        "metadata": {"name": "echo", "namespace": "trading", "uid": "u-1", "resourceVersion": "7"},
        "spec": {"windows": {"build": "2022"}, "template": {"spec": {"containers": [{"name": "echo", "image": "echo:2"}]}}, "zmq": {"port": 5555}},
        "status": {"phase": if last_command.is_some() { "RolledBack" } else { "Progressing" }, "canaryWeight": 0,
                   "stableRevision": "echo:1", "lastCommand": last_command,
                   "history": [{"revision": "echo:2", "stableRevision": "echo:1", "started": "2026-11-25T10:00:00Z", "ended": "2026-11-25T10:01:00Z", "outcome": "RolledBack", "reason": "rolled back by hand: paged"}]}
    })
}

async fn handle(
    State(api): State<Arc<Mutex<Api>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut a = api.lock().unwrap();
    a.calls.push((
        method.clone(),
        uri.path().to_string(),
        content_type,
        body.clone(),
    ));
    if uri.path().contains("/chaosschedules") {
        let mut drill = json!({
            "apiVersion": "zdeploy.io/v1alpha1", "kind": "ChaosSchedule",
            "metadata": {"name": "drill", "namespace": "trading", "uid": "c-1"},
            "spec": {"schedule": "0 3 1 * *", "experiment": {"service": "echo", "fault": {"gatewayLatency": {"latency": "300ms"}}, "duration": "5m"}},
            "status": {"lastScheduleTime": "2026-11-01T03:00:00Z", "history": [
                {"scheduled": "2026-11-01T03:00:00Z", "started": "2026-11-01T03:00:01Z", "ended": "2026-11-01T03:00:09Z",
                 "targets": ["zgate pool canary"], "verdict": "broken", "reason": "the steady state broke 8.00s into the fault"}]}
        });
        if let Some(id) = body["metadata"]["annotations"]["zdeploy.io/run-now"].as_str() {
            a.run_now = Some(id.to_string());
        }
        if method == Method::PATCH {
            drill["metadata"]["annotations"] = body["metadata"]["annotations"].clone();
            return axum::Json(drill);
        }
        if uri.path().ends_with("/drill") {
            // The controller has carried out the run asked for.
            drill["status"]["lastRunRequest"] = json!(a.run_now);
            drill["status"]["history"][0]["verdict"] = json!("held");
            drill["status"]["history"][0]["reason"] = json!("recovered 1.20s after the fault");
            return axum::Json(drill);
        }
        return axum::Json(
            json!({"apiVersion": "zdeploy.io/v1alpha1", "kind": "ChaosScheduleList", "metadata": {}, "items": [drill]}),
        );
    }
    if method == Method::PATCH {
        let raw = body["metadata"]["annotations"]["zdeploy.io/command"]
            .as_str()
            .unwrap_or_default();
        let command: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        a.last_command = command["id"].as_str().map(String::from);
        // The controller has not acted yet when the patch returns.
        return axum::Json(object(None));
    }
    axum::Json(object(a.last_command.as_deref()))
}

struct Mock {
    api: Arc<Mutex<Api>>,
    kubeconfig: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

/// Serves `router` as the API server on a free loopback port; returns a kubeconfig for it.
fn serve_api(rt: &tokio::runtime::Runtime, router: axum::Router) -> std::path::PathBuf {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, router).await.unwrap() });
    let kubeconfig = support::tempdir("cluster").join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster: {{server: 'http://{addr}'}}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: mock\n  context: {{cluster: mock, user: nobody, namespace: default}}\ncurrent-context: mock\n"),
    )
    .unwrap();
    kubeconfig
}

fn mock() -> Mock {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Arc::new(Mutex::new(Api::default()));
    let router = axum::Router::new()
        .fallback(any(handle))
        .with_state(api.clone());
    let kubeconfig = serve_api(&rt, router);
    Mock {
        api,
        kubeconfig,
        _rt: rt,
    }
}

#[test]
fn rollback_patches_only_the_command_annotation_and_waits_for_the_controller() {
    let m = mock();
    let kc = m.kubeconfig.to_str().unwrap();
    let (code, out, err) = zdeploy(&[
        "rollback",
        "echo",
        "-n",
        "trading",
        "--kubeconfig",
        kc,
        "--reason",
        "paged",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["status"]["phase"], "RolledBack");
    let calls = m.api.lock().unwrap().calls.clone();
    let (method, path, content_type, body) = &calls[0];
    assert_eq!(
        (method, path.as_str()),
        (
            &Method::PATCH,
            "/apis/zdeploy.io/v1alpha1/namespaces/trading/zmqservices/echo"
        )
    );
    assert_eq!(content_type, "application/merge-patch+json");
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["metadata"],
        "never the spec: {body}"
    );
    let command: Value = serde_json::from_str(
        body["metadata"]["annotations"]["zdeploy.io/command"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (command["command"].as_str(), command["reason"].as_str()),
        (Some("rollback"), Some("paged"))
    );
    assert!(
        calls[1..]
            .iter()
            .all(|(m, p, _, _)| m == Method::GET && p.ends_with("/zmqservices/echo")),
        "{calls:?}"
    );
}

#[test]
fn status_and_history_read_the_recorded_status() {
    let m = mock();
    let kc = m.kubeconfig.to_str().unwrap();
    let (code, out, err) = zdeploy(&["status", "echo", "-n", "trading", "--kubeconfig", kc]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Phase:     Progressing") && out.contains("Stable:    echo:1"),
        "{out}"
    );
    let (code, out, _) = zdeploy(&[
        "history",
        "echo",
        "-n",
        "trading",
        "--kubeconfig",
        kc,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["outcome"], "RolledBack");
    assert!(
        m.api
            .lock()
            .unwrap()
            .calls
            .iter()
            .all(|(m, _, _, _)| m == Method::GET),
        "reading never writes"
    );
}

/// The weights ConfigMap as the API server would hold it: served by GET, by a list with
/// a field selector, and by a watch that streams each change.
struct WeightsApi {
    object: tokio::sync::watch::Sender<Value>,
    requests: Mutex<Vec<String>>,
}

impl WeightsApi {
    fn set(&self, weights: &str, faults: Option<String>) {
        self.object.send_modify(|cm| {
            let rv: u64 = cm["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            cm["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
            cm["data"] = json!({"weights.json": weights});
            if let Some(f) = faults {
                cm["data"]["faults.json"] = json!(f);
            }
        });
    }
}

async fn weights_api(State(api): State<Arc<WeightsApi>>, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let query = uri.query().unwrap_or_default().to_string();
    api.requests
        .lock()
        .unwrap()
        .push(format!("{} {query}", uri.path()));
    let current = api.object.borrow().clone();
    if uri.path().ends_with("/echo-weights") {
        return axum::Json(current).into_response();
    }
    assert!(
        query.contains("fieldSelector=metadata.name%3Decho-weights"),
        "only the one ConfigMap is listed or watched (its Role names it): {query}"
    );
    if !query.contains("watch=true") {
        let rv = current["metadata"]["resourceVersion"].clone();
        return axum::Json(json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": rv}, "items": [current]})).into_response();
    }
    let changes = api.object.subscribe();
    let stream = futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        let event = json!({"type": "MODIFIED", "object": rx.borrow_and_update().clone()});
        Some((Ok::<_, std::io::Error>(format!("{event}\n")), rx))
    });
    axum::body::Body::from_stream(stream).into_response()
}

#[test]
fn zgate_follows_its_weights_and_faults_configmap_without_restarting() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (object, _) = tokio::sync::watch::channel(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "echo-weights", "namespace": "trading", "resourceVersion": "1"},
        "data": {"weights.json": r#"{"stable":70,"canary":30}"#}
    }));
    let api = Arc::new(WeightsApi {
        object,
        requests: Mutex::default(),
    });
    let router = axum::Router::new()
        .fallback(any(weights_api))
        .with_state(api.clone());
    let kubeconfig = serve_api(&rt, router);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    cmd.args([
        "gateway",
        "--frontend",
        "tcp://127.0.0.1:*",
        "--admin",
        "127.0.0.1:0",
        "--pool",
        "stable=tcp://127.0.0.1:9",
        "--pool",
        "canary=tcp://127.0.0.1:9",
        "--weights-configmap",
        "trading/echo-weights",
    ]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let mut gw = support::Proc::start(cmd, "zgate ready:");
    let admin = gw
        .ready
        .split_whitespace()
        .skip_while(|w| *w != "admin")
        .nth(1)
        .unwrap()
        .to_string();
    let get = || {
        support::http()
            .get(format!("{admin}/weights"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    assert_eq!(
        get(),
        r#"{"canary":30,"stable":70}"#,
        "the recorded weights apply before the first request"
    );
    // Settled: the watch is open, and nothing polls while nothing changes.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let idle = api.requests.lock().unwrap().clone();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        api.requests.lock().unwrap().len(),
        idle.len(),
        "requests while nothing changed: {idle:?}"
    );
    assert!(
        idle.iter().any(|r| r.contains("watch=true")),
        "zgate watches: {idle:?}"
    );
    api.set(r#"{"stable":100}"#, None);
    let changed = std::time::Instant::now();
    while get() != r#"{"canary":0,"stable":100}"# {
        assert!(
            changed.elapsed() < std::time::Duration::from_secs(5),
            "zgate never picked up the new weights"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "new weights applied {:?} after the ConfigMap changed",
        changed.elapsed()
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the same zgate process applied the change"
    );

    // A chaos fault written to the ConfigMap applies with its own end, and goes when removed.
    let faults_now = || {
        let text = support::http()
            .get(format!("{admin}/faults"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    api.set(
        r#"{"stable":100}"#,
        Some(format!(
            r#"{{"canary":{{"fault":{{"latency":"300ms","duration":"5m"}},"until":"{until}"}}}}"#
        )),
    );
    let written = std::time::Instant::now();
    while faults_now()["canary"]["latency"] != "300ms" {
        assert!(
            written.elapsed() < std::time::Duration::from_secs(5),
            "zgate never applied the fault: {}",
            faults_now()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let applied_in = written.elapsed();
    let remaining: zdeploy_api::Duration = faults_now()["canary"]["remaining"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining.get() <= std::time::Duration::from_secs(60)
            && remaining.get() > std::time::Duration::from_secs(50),
        "the fault ends at its recorded end (in 60s), not after its 5m duration: {remaining}"
    );
    api.set(r#"{"stable":100}"#, None);
    let removed = std::time::Instant::now();
    while faults_now() != json!({}) {
        assert!(
            removed.elapsed() < std::time::Duration::from_secs(5),
            "the removed fault stayed: {}",
            faults_now()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "fault applied in {applied_in:?}, reverted in {:?}",
        removed.elapsed()
    );
    // A fault whose end has passed is never applied (a runner that crashed mid-experiment).
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    api.set(
        r#"{"stable":100}"#,
        Some(format!(
            r#"{{"canary":{{"fault":{{"errorRatio":1,"duration":"5m"}},"until":"{past}"}}}}"#
        )),
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(faults_now(), json!({}), "an expired fault was applied");
}

#[test]
fn chaos_list_history_and_pause_work_on_the_clusters_schedules() {
    let m = mock();
    let kc = m.kubeconfig.to_str().unwrap();
    let (code, out, err) = zdeploy(&["chaos", "list", "-n", "trading", "--kubeconfig", kc]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("drill")
            && row.contains("echo")
            && row.contains("Broken at 2026-11-01T03:00:00Z"),
        "{out}"
    );
    let (code, out, err) = zdeploy(&[
        "chaos",
        "history",
        "drill",
        "-n",
        "trading",
        "--kubeconfig",
        kc,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["verdict"], "broken");
    let (code, out, err) = zdeploy(&[
        "chaos",
        "pause",
        "drill",
        "-n",
        "trading",
        "--kubeconfig",
        kc,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "drill: paused");
    let calls = m.api.lock().unwrap().calls.clone();
    let lists = calls
        .iter()
        .filter(|(m, p, _, _)| {
            m == Method::GET && p == "/apis/zdeploy.io/v1alpha1/namespaces/trading/chaosschedules"
        })
        .count();
    assert_eq!(lists, 2, "{calls:?}");
    let (method, path, content_type, body) = calls.last().unwrap();
    assert_eq!(
        (method, path.as_str(), content_type.as_str()),
        (
            &Method::PATCH,
            "/apis/zdeploy.io/v1alpha1/namespaces/trading/chaosschedules/drill",
            "application/merge-patch+json"
        )
    );
    assert_eq!(
        body,
        &json!({"metadata": {"annotations": {"zdeploy.io/suspend": "true"}}}),
        "only the annotation, never the spec kept in git"
    );
}

#[test]
fn chaos_run_applies_the_schedule_asks_the_controller_and_reports_its_verdict() {
    let m = mock();
    let kc = m.kubeconfig.to_str().unwrap();
    let dir = support::tempdir("chaos-run");
    let file = dir.join("drill.yaml");
    std::fs::write(
        &file,
        "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata: {name: drill, namespace: trading}\nspec:\n  schedule: \"0 3 1 * *\"\n  experiment: {service: echo, pool: canary, fault: {gatewayLatency: {latency: 300ms}}, duration: 5m}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = zdeploy(&["chaos", "run", "-f", f, "--kubeconfig", kc, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "dry run, nothing changed: would hit zgate pool canary: latency 300ms, error ratio 0, drop ratio 0 for 5m"
    );
    assert!(
        m.api.lock().unwrap().calls.is_empty(),
        "a dry run of a gateway fault asks nothing"
    );
    let (code, out, err) = zdeploy(&["chaos", "run", "-f", f, "--kubeconfig", kc, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["verdict"], "held");
    let calls = m.api.lock().unwrap().calls.clone();
    let item = "/apis/zdeploy.io/v1alpha1/namespaces/trading/chaosschedules/drill";
    let (method, path, content_type, body) = &calls[0];
    assert_eq!(
        (method, path.as_str(), content_type.as_str()),
        (&Method::PATCH, item, "application/apply-patch+yaml")
    );
    assert_eq!(body["spec"]["experiment"]["service"], "echo");
    let (method, path, content_type, body) = &calls[1];
    assert_eq!(
        (method, path.as_str(), content_type.as_str()),
        (&Method::PATCH, item, "application/merge-patch+json")
    );
    let id = body["metadata"]["annotations"]["zdeploy.io/run-now"]
        .as_str()
        .unwrap();
    assert!(!id.is_empty());
    assert!(
        calls[2..]
            .iter()
            .all(|(m, p, _, _)| m == Method::GET && p == item),
        "{calls:?}"
    );
}
