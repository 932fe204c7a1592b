//! The HTTP side of zgate: `/metrics` for Prometheus, and the admin API for weights and
//! faults (bearer token when configured; the gateway refuses a non-loopback admin address
//! without one).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use zdeploy_api::{Duration, Weight};

use crate::config::check_shadow;
use crate::config::check_weights;
use crate::control::{ActiveFault, BackendView, Control, FaultSpec};
use crate::heartbeat::Heartbeat;
use crate::metrics::GatewayMetrics;
use crate::routes::{Route, check_routes};
use crate::shadow::MismatchSample;
use zdeploy_api::shadow::ShadowCopy;
use zdeploy_api::strict_json;

/// `/healthz` and `/readyz`: 503 with the reason while the data plane is stalled or
/// stopped (and, for `/readyz`, before the frontend serves).
pub fn health_router(heartbeat: Arc<Heartbeat>) -> Router {
    let health = heartbeat.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let outcome = health.check(Instant::now());
                async move {
                    match outcome {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = heartbeat.ready(Instant::now());
                async move {
                    match ready {
                        true => (StatusCode::OK, "ready\n"),
                        false => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the data plane is not turning, or a pool with weight has no live backend yet\n",
                        ),
                    }
                }
            }),
        )
}

/// The `/metrics` endpoint, with `/healthz` and `/readyz`.
pub fn metrics_router(metrics: Arc<GatewayMetrics>) -> Router {
    let health = health_router(metrics.heartbeat.clone());
    Router::new().merge(health).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// The admin API: `GET|PUT /weights`, `GET|PUT /routes`, `GET|PUT /shadow`, `GET /faults`,
/// `PUT|DELETE /faults/{pool}`, `GET /endpoints`, `GET /healthz`, `GET /readyz`.
pub fn admin_router(
    control: Arc<Control>,
    heartbeat: Arc<Heartbeat>,
    token: Option<String>,
) -> Router {
    let api = Router::new()
        .route("/weights", get(get_weights).put(put_weights))
        .route("/routes", get(get_routes).put(put_routes))
        .route("/shadow", get(get_shadow).put(put_shadow))
        .route("/faults", get(get_faults))
        .route("/endpoints", get(get_endpoints))
        .route("/faults/{pool}", put(put_fault).delete(delete_fault))
        .with_state(control);
    let api = match token {
        Some(t) => api.layer(middleware::from_fn_with_state(Arc::new(t), require_token)),
        None => api,
    };
    api.merge(health_router(heartbeat))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// True when the request carries `Authorization: Bearer <token>` (compared in constant
/// time, so the token does not leak through response timing).
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    if !bearer_matches(req.headers(), &token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
    }
    next.run(req).await
}

fn weights_json(control: &Control) -> BTreeMap<String, Weight> {
    control
        .pools()
        .iter()
        .cloned()
        .zip(control.snapshot().weights)
        .collect()
}

/// Each pool's backends as the data plane sees them: address, state, live.
async fn get_endpoints(
    State(control): State<Arc<Control>>,
) -> Json<BTreeMap<String, Vec<BackendView>>> {
    Json(
        control
            .pools()
            .iter()
            .cloned()
            .zip(control.backends())
            .collect(),
    )
}

async fn get_weights(State(control): State<Arc<Control>>) -> Json<BTreeMap<String, Weight>> {
    Json(weights_json(&control))
}

/// The weights a `PUT /weights` body asks for, in pool order; pools left out get 0 (the
/// body is the whole new split). No I/O: the handler calls it, and the fuzzer.
pub fn weights_from_body(pools: &[String], body: &[u8]) -> Result<Vec<Weight>, String> {
    let wanted: BTreeMap<String, i64> = strict_json::from_slice(body).map_err(|e| {
        format!("body must be a JSON object like {{\"stable\":90,\"canary\":10}}: {e}")
    })?;
    let mut weights = BTreeMap::new();
    for (pool, n) in wanted {
        let w = Weight::new(n).map_err(|e| format!("{pool}: {e}"))?;
        weights.insert(pool, w);
    }
    check_weights(pools, &weights).map_err(|e| e.to_string())?;
    Ok(pools
        .iter()
        .map(|p| weights.get(p).copied().unwrap_or(Weight::ZERO))
        .collect())
}

/// The fault a `PUT /faults/{pool}` body asks for, checked. No I/O.
pub fn fault_from_body(body: &[u8]) -> Result<FaultSpec, String> {
    let spec: FaultSpec = strict_json::from_slice(body).map_err(|e| {
        format!(
            "body must be like {{\"latency\":\"200ms\",\"errorRatio\":0.1,\"dropRatio\":0,\"duration\":\"30s\"}}: {e}"
        )
    })?;
    match spec.problem() {
        Some(problem) => Err(problem),
        None => Ok(spec),
    }
}

async fn put_weights(State(control): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let ordered = match weights_from_body(control.pools(), &body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let weights: BTreeMap<&String, Weight> = control
        .pools()
        .iter()
        .zip(ordered.iter().copied())
        .collect();
    control.update(|s| s.weights = ordered);
    tracing::info!(?weights, "weights changed");
    Json(weights_json(&control)).into_response()
}

async fn get_routes(State(control): State<Arc<Control>>) -> Json<Vec<Route>> {
    Json(control.snapshot().routes)
}

/// `PUT /routes`: the whole list, e.g. `["canary=identity:tester-"]`; `[]` removes them.
async fn put_routes(State(control): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let routes: Vec<Route> = match strict_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("routes: {e}; send a list such as [\"canary=identity:tester-\"]"),
            );
        }
    };
    if let Err(e) = check_routes(control.pools(), &routes) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let shown: Vec<String> = routes.iter().map(Route::to_string).collect();
    control.update(|s| s.routes = routes);
    tracing::info!(?shown, "routes changed");
    Json(control.snapshot().routes).into_response()
}

/// `GET /shadow`: the copy setting and the mismatching pairs kept since it last changed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShadowOut {
    shadow: Option<ShadowCopy>,
    mismatches: Vec<MismatchSample>,
}

async fn get_shadow(State(control): State<Arc<Control>>) -> Json<ShadowOut> {
    Json(ShadowOut {
        shadow: control.snapshot().shadow,
        mismatches: control.samples(),
    })
}

/// `PUT /shadow`: `{"pool": "canary", "percent": 5}`, or `null` to stop copying.
async fn put_shadow(State(control): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let shadow: Option<ShadowCopy> = match strict_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "shadow: {e}; send {{\"pool\": \"canary\", \"percent\": 5}}, or null to stop"
                ),
            );
        }
    };
    if let Some(s) = &shadow
        && let Err(e) = check_shadow(control.pools(), s)
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    tracing::info!(shadow = ?shadow.as_ref().map(ShadowCopy::to_string), "shadow changed");
    control.update(|s| s.shadow = shadow);
    get_shadow(State(control)).await.into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FaultOut {
    #[serde(flatten)]
    spec: FaultSpec,
    remaining: Duration,
}

async fn get_faults(State(control): State<Arc<Control>>) -> Json<BTreeMap<String, FaultOut>> {
    let now = Instant::now();
    let faults = control.snapshot().faults;
    let out = control
        .pools()
        .iter()
        .zip(faults)
        .filter_map(|(pool, f)| {
            let f = f.filter(|f| f.until > now)?;
            let remaining = Duration::from(f.until - now);
            Some((
                pool.clone(),
                FaultOut {
                    spec: f.spec,
                    remaining,
                },
            ))
        })
        .collect();
    Json(out)
}

async fn put_fault(
    State(control): State<Arc<Control>>,
    Path(pool): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(i) = control.pool_index(&pool) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no pool {pool:?}; pools are: {}",
                control.pools().join(", ")
            ),
        );
    };
    let spec = match fault_from_body(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let until = crate::deadline::after(Instant::now(), spec.duration.get());
    tracing::info!(pool, ?spec, "fault injected");
    control.update(|s| {
        s.faults[i] = Some(ActiveFault {
            spec: spec.clone(),
            until,
        })
    });
    (StatusCode::OK, Json(json!({ "pool": pool, "fault": spec }))).into_response()
}

async fn delete_fault(State(control): State<Arc<Control>>, Path(pool): Path<String>) -> Response {
    let Some(i) = control.pool_index(&pool) else {
        return error(StatusCode::NOT_FOUND, format!("no pool {pool:?}"));
    };
    control.update(|s| s.faults[i] = None);
    tracing::info!(pool, "fault removed");
    StatusCode::NO_CONTENT.into_response()
}
