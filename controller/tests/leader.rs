//! Leader election against a mock API server that keeps one Lease: the first replica
//! creates and takes it, a standby waits for a live holder and takes over when the holder
//! stops renewing, and a leader that stops gives the Lease up. Every request is checked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use kube::Client;
use serde_json::{Value, json};
use zdeploy_controller::platforms::kubernetes::leader::{LEASE_NAME, LEASE_SECONDS, Leader};
use zdeploy_testkit::apiserver::{MockApiServer, merge_patch, not_found, pair};

const NS: &str = "zdeploy-system";

/// Requests seen, as `METHOD path` plus the body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Serves one Lease: GET, POST (create), PATCH (merge of `spec`, null removes a field).
async fn lease_server(server: MockApiServer, mut lease: Option<Value>, seen: Seen) {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let item = format!("{path}/{LEASE_NAME}");
    server
        .serve(move |call| {
            let (method, p, body) = (&call.method, call.path.as_str(), &call.body);
            seen.lock()
                .unwrap()
                .push((format!("{method} {p}"), body.clone()));
            let reply = match (method, p) {
                (&Method::GET, x) if x == item => lease.clone(),
                (&Method::POST, x) if x == path => {
                    assert_eq!(
                        body["metadata"]["name"], LEASE_NAME,
                        "created lease: {body}"
                    );
                    lease = Some(body.clone());
                    lease.clone()
                }
                (&Method::PATCH, x) if x == item => {
                    let l = lease.as_mut().expect("patch of a missing lease");
                    merge_patch(&mut l["spec"], &body["spec"]);
                    lease.clone()
                }
                other => panic!("unexpected request {other:?}"),
            };
            match reply {
                Some(l) => (200, l),
                None => (404, not_found()),
            }
        })
        .await;
}

fn start(lease: Option<Value>) -> (Client, Seen) {
    let (client, server) = pair(NS);
    let seen = Seen::default();
    tokio::spawn(lease_server(server, lease, seen.clone()));
    (client, seen)
}

fn holder_patches(seen: &Seen, identity: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(r, b)| r.starts_with("PATCH") && b["spec"]["holderIdentity"] == identity)
        .count()
}

fn micro_time(ago: Duration) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::try_from(ago).unwrap();
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[tokio::test]
async fn the_first_replica_creates_the_lease_takes_it_and_gives_it_back() {
    let (client, seen) = start(None);
    let mut leader = Leader::join(client, NS, "controller-a").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), leader.acquired())
        .await
        .expect("the free Lease was not taken within 5 s");
    assert!(leader.is_leader());
    {
        let seen = seen.lock().unwrap();
        let create = seen.iter().find(|(r, _)| r.starts_with("POST")).unwrap();
        assert_eq!(
            create.0,
            format!("POST /apis/coordination.k8s.io/v1/namespaces/{NS}/leases")
        );
    }
    assert_eq!(holder_patches(&seen, "controller-a"), 1);
    let take = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(r, b)| r.starts_with("PATCH") && b["spec"]["holderIdentity"] == "controller-a")
        .cloned()
        .unwrap();
    assert_eq!(take.1["spec"]["leaseDurationSeconds"], LEASE_SECONDS);
    leader.release().await;
    let seen = seen.lock().unwrap();
    every_request_is_granted(&seen);
    let (last, body) = seen
        .iter()
        .rev()
        .find(|(r, _)| r.starts_with("PATCH"))
        .unwrap();
    assert_eq!(
        last,
        &format!("PATCH /apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE_NAME}")
    );
    assert!(
        body["spec"]["holderIdentity"].is_null(),
        "release must clear the holder: {body}"
    );
}

#[tokio::test]
async fn a_standby_waits_for_a_live_holder_and_takes_over_when_it_stops_renewing() {
    // Held by another replica that renewed LEASE_SECONDS - 2 s ago and then stopped.
    let renewed = micro_time(Duration::from_secs(LEASE_SECONDS - 2));
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": NS},
        "spec": {
            "holderIdentity": "controller-a",
            "acquireTime": renewed,
            "renewTime": renewed,
            "leaseDurationSeconds": LEASE_SECONDS,
            "leaseTransitions": 1,
        }
    });
    let (client, seen) = start(Some(lease));
    let began = Instant::now();
    let mut standby = Leader::join(client, NS, "controller-b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !standby.is_leader(),
        "took a Lease another replica holds and renewed {} s ago",
        LEASE_SECONDS - 2
    );
    assert_eq!(holder_patches(&seen, "controller-b"), 0);
    tokio::time::timeout(Duration::from_secs(8), standby.acquired())
        .await
        .expect("the expired Lease was not taken over within 8 s");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "took over after {waited:?}, before the holder's Lease expired"
    );
    assert_eq!(holder_patches(&seen, "controller-b"), 1);
    standby.release().await;
}

/// The install's Role grants each verb these requests need, and nothing beyond leases.
fn every_request_is_granted(seen: &[(String, Value)]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("manifests/install/rbac.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "zdeploy-controller-leader")
        .expect("the leader-election Role");
    assert_eq!(role["metadata"]["namespace"], NS);
    let rules = role["rules"].as_array().unwrap();
    for r in rules {
        assert_eq!(r["resources"], json!(["leases"]), "{r}");
    }
    for (request, _) in seen {
        let (method, path) = request.split_once(' ').unwrap();
        let verb = match method {
            "GET" => "get",
            "POST" => "create",
            "PATCH" => "patch",
            other => panic!("unexpected {other}"),
        };
        let named = path.ends_with(LEASE_NAME);
        let granted = rules.iter().any(|r| {
            r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
                && (!named
                    || r["resourceNames"].is_null()
                    || r["resourceNames"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n == LEASE_NAME))
        });
        assert!(
            granted,
            "{request} needs {verb} on leases, which the Role does not grant"
        );
    }
}
