//! The loopback admin API of `zdeploy up`, which the CLI verbs talk to. Every call needs
//! the bearer token from the state directory, except `GET /metrics` (counts only).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use zdeploy_api::ZmqServiceStatus;
use zdeploy_api::command::CommandRequest;

use crate::engine::Command;

/// The answer to a command: the status after it, or why it was refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommandReply {
    /// Why the command was refused, if it was.
    pub refused: Option<String>,
    /// The status after the command.
    pub status: ZmqServiceStatus,
}

/// What `GET /v1/status` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// The service.
    pub name: String,
    /// The ZeroMQ endpoint clients connect to (zgate's frontend).
    pub frontend: String,
    /// zgate's metrics URL.
    pub metrics: String,
    /// The status.
    pub status: ZmqServiceStatus,
}

/// A command waiting for the driver, with the channel for its answer.
pub type Queued = (Command, oneshot::Sender<CommandReply>);

/// A chaos request from the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "camelCase")]
pub enum ChaosRequest {
    /// Run this experiment now (`dryRun`: only say what it would hit).
    Run {
        /// The experiment, as a ChaosSchedule.
        schedule: Box<zdeploy_api::ChaosSchedule>,
        /// Change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// The schedules and their history.
    List,
    /// Suspend (true) or resume (false) a schedule.
    Suspend {
        /// The schedule.
        name: String,
        /// Suspend it.
        suspend: bool,
    },
}

/// The answer to a chaos request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChaosReply {
    /// The finished run, for `Run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<zdeploy_api::chaos::ChaosRun>,
    /// What a dry run would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The schedules the runtime knows.
    #[serde(default)]
    pub schedules: Vec<super::chaos::Scheduled>,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A chaos request waiting for the driver, with the channel for its answer.
pub type ChaosQueued = (ChaosRequest, oneshot::Sender<ChaosReply>);

struct Shared {
    token: String,
    view: watch::Receiver<StatusView>,
    commands: mpsc::Sender<Queued>,
    chaos: mpsc::Sender<ChaosQueued>,
    manifest_image: String,
}

/// The admin API router.
pub fn router(
    token: String,
    view: watch::Receiver<StatusView>,
    commands: mpsc::Sender<Queued>,
    chaos: mpsc::Sender<ChaosQueued>,
    manifest_image: String,
) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/commands", post(command))
        .route("/v1/chaos", post(chaos_request))
        .with_state(Arc::new(Shared {
            token,
            view,
            commands,
            chaos,
            manifest_image,
        }))
}

/// `GET /metrics`: chaos runs by verdict (read-only counts; no token, like any metrics).
pub fn metrics_router(runs: Arc<crate::experiment::RunCounts>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let runs = runs.clone();
            async move { runs.encode() }
        }),
    )
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({"error": message.to_string()})),
    )
        .into_response()
}

/// Checks the token, parses the body, hands the request to the driver and waits for its answer.
async fn forward<Req, Item, Reply>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    queue: &mpsc::Sender<(Item, oneshot::Sender<Reply>)>,
    convert: impl FnOnce(Req) -> Item,
) -> Response
where
    Req: serde::de::DeserializeOwned,
    Reply: Serialize,
{
    if !authorized(shared, headers) {
        return unauthorized();
    }
    let req: Req = match zdeploy_api::strict_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (tx, rx) = oneshot::channel();
    if queue.send((convert(req), tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "zdeploy up is stopping");
    }
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "zdeploy up is stopping"),
    }
}

async fn chaos_request(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    forward(&shared, &headers, &body, &shared.chaos, |r: ChaosRequest| r).await
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    zdeploy_gateway::admin::bearer_matches(headers, &shared.token)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    Json(shared.view.borrow().clone()).into_response()
}

async fn command(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let image = shared.manifest_image.clone();
    forward(
        &shared,
        &headers,
        &body,
        &shared.commands,
        move |req: CommandRequest| Command::from_request(req, image),
    )
    .await
}
