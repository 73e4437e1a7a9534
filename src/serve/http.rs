//! The routes: the open inference protocol's health, metadata and
//! inference endpoints, and `/metrics`. Every error is the protocol's
//! `{"error": "..."}` with its status.

use super::batcher::Message;
use super::metrics::Metrics;
use super::model::{self, Model};
use super::protocol::{self, ErrorBody, InferResponse, OutputData, ResponseOutput, ServerMeta};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

pub struct AppState {
    pub model: Model,
    /// The model's queue; `None` once the server has stopped taking work.
    pub jobs: Mutex<Option<Sender<Message>>>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: new requests get 503, readiness fails.
    pub draining: AtomicBool,
    /// Inference requests being received and checked, not yet queued:
    /// what a batch may wait for.
    pub arriving: Arc<AtomicUsize>,
    pub body_limit: usize,
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2", get(server_meta))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_meta))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every answer by status.
async fn count(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics.request(response.status().as_u16());
    response
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn server_meta() -> Json<ServerMeta> {
    Json(ServerMeta {
        name: "nnc",
        version: env!("CARGO_PKG_VERSION"),
        extensions: Vec::new(),
    })
}

async fn live() -> StatusCode {
    StatusCode::OK
}

fn readiness(state: &AppState) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
    } else {
        StatusCode::OK.into_response()
    }
}

async fn ready(State(state): State<Shared>) -> Response {
    readiness(&state)
}

/// The model of `name`, or the 404 answer.
fn find<'s>(state: &'s AppState, name: &str) -> Result<&'s Model, Response> {
    if name == state.model.name {
        Ok(&state.model)
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no model `{name}`; this server serves `{}`",
                state.model.name
            ),
        ))
    }
}

async fn model_ready(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&state, &name) {
        Ok(_) => readiness(&state),
        Err(r) => r,
    }
}

async fn model_meta(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&state, &name) {
        Ok(m) => Json(m.meta.clone()).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn infer(
    State(state): State<Shared>,
    Path(name): Path<String>,
    request: Request<Body>,
) -> Response {
    let started = Instant::now();
    let arriving = Arriving::new(&state.arriving);
    let response = answer(&state, &name, request, arriving).await;
    state.metrics.infer_latency(started.elapsed());
    response
}

/// Counts a request as arriving until it is queued or refused.
struct Arriving<'a>(&'a AtomicUsize);

impl<'a> Arriving<'a> {
    fn new(count: &'a AtomicUsize) -> Arriving<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Arriving(count)
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    state: &AppState,
    name: &str,
    request: Request<Body>,
    arriving: Arriving<'_>,
) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let model = match find(state, name) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let body = match read_body(request, state.body_limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Checked and encoded here, before the request joins a batch: a bad
    // one never touches the others.
    let (id, samples, wanted) = match protocol::parse_infer(&body, &model.input, &model.outputs) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let field = match model.encode(samples) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reply, answer) = oneshot::channel();
    let job = model::job(field, reply);
    // No longer arriving before it is queued: the model's thread, woken
    // by the job, must not wait for the job itself.
    drop(arriving);
    let queued = match state.jobs.lock() {
        Ok(jobs) => jobs
            .as_ref()
            .is_some_and(|tx| tx.send(Message::Job(job)).is_ok()),
        Err(_) => false,
    };
    if !queued {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let answers = match answer.await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model failed: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        }
    };
    let outputs = answers
        .into_iter()
        .filter(|a| wanted.contains(&a.name))
        .map(|a| ResponseOutput {
            datatype: protocol::datatype(a.dtype),
            data: OutputData::new(a.dtype, &a.values),
            name: a.name,
            shape: a.shape,
        })
        .collect();
    Json(InferResponse {
        model_name: model.name.clone(),
        id,
        outputs,
    })
    .into_response()
}

/// The body, at most `limit` bytes (413 past it).
async fn read_body(request: Request<Body>, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // The other way reading fails, a connection closed mid-body, leaves
    // nobody to answer: the limit is the one failure worth reporting.
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| too_large())
}
