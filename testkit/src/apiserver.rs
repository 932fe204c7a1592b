//! A mock Kubernetes API server in the kube-rs manner (tower_test): a `kube::Client`
//! whose requests the test receives one by one, checks, and answers. Either step by step
//! (`expect`: each request in order, as controller-rs' `ApiServerVerifier` does) or with a
//! responder for a whole reconcile (`serve`), which returns every call for the asserts.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The server side of a mock API: what the client sends arrives here.
pub struct MockApiServer(Handle);

/// A client talking to a new mock server, with `namespace` as its default namespace.
pub fn pair(namespace: &str) -> (kube::Client, MockApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, namespace), MockApiServer(handle))
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Call {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: String,
    /// Its query string (`""` when none).
    pub query: String,
    /// Its headers.
    pub headers: http::HeaderMap,
    /// Its body as JSON (`null` when empty or not JSON).
    pub body: Value,
}

impl Call {
    /// The decoded value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// The answer still owed to one request.
pub struct Reply(tower_test::mock::SendResponse<Response<Body>>);

impl Reply {
    /// Answers with `status` and the JSON `body`.
    pub fn json(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(
                serde_json::to_vec(body).expect("JSON serializes"),
            ))
            .expect("a valid response");
        self.0.send_response(response);
    }
}

impl MockApiServer {
    /// The next request, `None` once the client is dropped.
    pub async fn next(&mut self) -> Option<(Call, Reply)> {
        let (req, send) = self.0.next_request().await?;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let headers = req.headers().clone();
        let bytes = req
            .into_body()
            .collect_bytes()
            .await
            .expect("reading the request body");
        let call = Call {
            method,
            path,
            query,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        Some((call, Reply(send)))
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> (Call, Reply) {
        let (call, reply) = self
            .next()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, but the client is gone"));
        assert!(
            call.method == method && call.path == path,
            "expected {method} {path}, got {} {}?{}",
            call.method,
            call.path,
            call.query
        );
        (call, reply)
    }

    /// Answers every request with `respond`'s status and body until the client is
    /// dropped; returns every call, in order.
    pub async fn serve(mut self, mut respond: impl FnMut(&Call) -> (u16, Value)) -> Vec<Call> {
        let mut calls = Vec::new();
        while let Some((call, reply)) = self.next().await {
            let (status, body) = respond(&call);
            reply.json(status, &body);
            calls.push(call);
        }
        calls
    }
}

/// Applies a JSON merge patch (RFC 7386) as the API server does: `null` removes a field,
/// objects merge field by field, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in fields {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The API server's answer for a missing object.
pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let call = Call {
            method: Method::GET,
            path: "/api/v1/pods".into(),
            query: "labelSelector=app%3Decho%2Cpool+in+%28canary%29&limit=1".into(),
            headers: Default::default(),
            body: Value::Null,
        };
        assert_eq!(
            call.param("labelSelector").as_deref(),
            Some("app=echo,pool in (canary)")
        );
        assert_eq!(call.param("limit").as_deref(), Some("1"));
        assert_eq!(call.param("watch"), None);
    }

    #[test]
    fn a_merge_patch_removes_nulls_and_merges_objects() {
        let mut v = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &serde_json::json!({"a": null, "b": {"c": 4}}));
        assert_eq!(v, serde_json::json!({"b": {"c": 4, "d": 3}}));
    }
}
