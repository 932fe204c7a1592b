//! Pod kill against a mock Kubernetes API server (tower_test): each request's method, path
//! and body are asserted, kube-rs style.

use http::Method;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use zdeploy_api::chaos::{Experiment, Fault, SelectionMode, TargetPool};
use zdeploy_chaos::podkill;

use zdeploy_testkit::apiserver::{MockApiServer, pair};

fn pod(name: &str, phase: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("trading".into()),
            ..Default::default()
        },
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn list(pods: Vec<Pod>) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

fn experiment(
    pool: TargetPool,
    mode: SelectionMode,
    value: Option<u32>,
    max_targets: u32,
) -> Experiment {
    Experiment {
        service: "echo".into(),
        pool,
        fault: Fault::PodKill {},
        mode,
        value,
        max_targets,
        duration: zdeploy_api::Duration::from_secs(60),
    }
}

/// Serves: one list (asserting the selector), then `deletes` deletes (recording names).
async fn api_server(
    server: MockApiServer,
    selector: &'static str,
    pods: Vec<Pod>,
    deletes: usize,
) -> Vec<String> {
    serve(server, selector, pods, deletes).await.0
}

async fn serve(
    mut server: MockApiServer,
    selector: &'static str,
    pods: Vec<Pod>,
    deletes: usize,
) -> (Vec<String>, MockApiServer) {
    let (list_call, reply) = server
        .expect(Method::GET, "/api/v1/namespaces/trading/pods")
        .await;
    assert_eq!(list_call.param("labelSelector").as_deref(), Some(selector));
    reply.json(200, &list(pods));
    let mut deleted = Vec::new();
    for _ in 0..deletes {
        let (call, reply) = server.next().await.expect("a delete request");
        assert_eq!(call.method, Method::DELETE);
        let name = call
            .path
            .strip_prefix("/api/v1/namespaces/trading/pods/")
            .unwrap_or_else(|| panic!("{}", call.path))
            .to_string();
        // Plain delete: the pod keeps its own grace period (Windows needs it to shut down).
        assert_eq!(call.body, serde_json::json!({}), "{}", call.body);
        deleted.push(name.clone());
        reply.json(200, &serde_json::to_value(pod(&name, "Running")).unwrap());
    }
    (deleted, server)
}

fn client() -> (Client, MockApiServer) {
    pair("trading")
}

const CANARY: &str =
    "app.kubernetes.io/name=echo,app.kubernetes.io/component=service,zdeploy.io/pool=canary";

#[tokio::test]
async fn one_running_canary_pod_is_deleted() {
    let (client, handle) = client();
    let pods = vec![
        pod("echo-canary-a", "Running"),
        pod("echo-canary-b", "Pending"),
    ];
    let server = tokio::spawn(api_server(handle, CANARY, pods, 1));
    let x = experiment(TargetPool::Canary, SelectionMode::One, None, 5);
    let killed = podkill::kill(client, "trading", &x, &mut fastrand::Rng::with_seed(7))
        .await
        .unwrap();
    assert_eq!(killed, ["echo-canary-a"], "only a Running pod is a target");
    assert_eq!(server.await.unwrap(), killed);
}

#[tokio::test]
async fn max_targets_caps_a_fixed_count() {
    let (client, handle) = client();
    let pods = (0..6)
        .map(|i| pod(&format!("echo-canary-{i}"), "Running"))
        .collect();
    let server = tokio::spawn(api_server(handle, CANARY, pods, 2));
    let x = experiment(TargetPool::Canary, SelectionMode::Fixed, Some(4), 2);
    let killed = podkill::kill(client, "trading", &x, &mut fastrand::Rng::with_seed(1))
        .await
        .unwrap();
    assert_eq!(killed.len(), 2);
    assert_eq!(server.await.unwrap(), killed);
}

#[tokio::test]
async fn percent_rounds_up_and_targets_only_the_stable_pool() {
    let (client, handle) = client();
    let pods = (0..5)
        .map(|i| pod(&format!("echo-stable-{i}"), "Running"))
        .collect();
    let selector =
        "app.kubernetes.io/name=echo,app.kubernetes.io/component=service,zdeploy.io/pool=stable";
    let server = tokio::spawn(api_server(handle, selector, pods, 2));
    let x = experiment(TargetPool::Stable, SelectionMode::Percent, Some(30), 10);
    let killed = podkill::kill(client, "trading", &x, &mut fastrand::Rng::with_seed(3))
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "30% of 5 rounds up to 2");
    assert!(killed.iter().all(|k| k.starts_with("echo-stable-")));
    assert_eq!(server.await.unwrap(), killed);
}

#[tokio::test]
async fn a_dry_run_lists_and_deletes_nothing() {
    let (client, handle) = client();
    let pods = vec![pod("echo-canary-a", "Running")];
    let x = experiment(TargetPool::Canary, SelectionMode::One, None, 1);
    let server = tokio::spawn(serve(handle, CANARY, pods, 0));
    let chosen = podkill::choose(client, "trading", &x, &mut fastrand::Rng::with_seed(1))
        .await
        .unwrap();
    assert_eq!(chosen, ["echo-canary-a"]);
    let (deleted, mut server) = server.await.unwrap();
    assert!(deleted.is_empty());
    let more = tokio::time::timeout(std::time::Duration::from_millis(100), server.next()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "a dry run sent another request"
    );
}
