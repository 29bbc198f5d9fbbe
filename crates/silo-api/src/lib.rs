//! silo's HTTP edge, on one listener:
//!
//! - the E2B control plane ([`sandboxes`]: `/sandboxes`, `/v2/sandboxes`, ...), behind
//!   API-key auth;
//! - the sandbox proxy ([`proxy`]), which takes every request that names a sandbox (by
//!   header or Host) before routing and forwards it to that sandbox's agent;
//! - `GET /health` for the server itself, and `GET /metrics` for Prometheus
//!   ([`telemetry`]);
//! - `/mcp`, the MCP server over streamable HTTP ([`silo_mcp::http`]), behind the same
//!   API-key check, when the server mounts it.
//!
//! Handlers are thin: they extract ([`extract`]), call the [`manager`], and map errors to
//! the wire once ([`error`]).

pub mod error;
pub mod extract;
pub mod logs;
pub mod proxy;
pub mod sandboxes;
pub mod snapshots;
pub mod telemetry;
pub mod templates;
pub mod usage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tracing::Instrument;

use crate::error::{ApiError, REQUEST_ID};
use silo_node::sandbox::Manager;

/// What silo reports as the E2B `clientID` of its sandboxes.
pub const CLIENT_ID: &str = "silo";

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub builder: Arc<silo_node::builds::Builder>,
    pub upstreams: proxy::Upstreams,
    /// The domain sandboxes are reached under (`{port}-{id}.{domain}`), if configured.
    pub domain: Option<String>,
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The MCP endpoint served at `/mcp`, if any.
    pub mcp: Option<silo_mcp::http::Service>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    if let Some(mcp) = &state.mcp {
        api = api.route_service("/mcp", mcp.clone());
    }
    let api = api
        .route(
            "/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v1),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v2),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_info).delete(sandboxes::kill),
        )
        .route("/sandboxes/metrics", get(usage::latest))
        .route("/sandboxes/{id}/metrics", get(usage::of_sandbox))
        .route("/sandboxes/{id}/logs", get(logs::v1))
        .route("/v2/sandboxes/{id}/logs", get(logs::v2))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/network", put(sandboxes::update_network))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/snapshots", get(snapshots::list))
        .route("/templates", get(templates::list))
        .route(
            "/templates/{id}",
            get(templates::get).delete(templates::delete),
        )
        .route("/v3/templates", post(templates::request_build))
        .route("/templates/{id}/files/{hash}", get(templates::file_upload))
        .route(
            "/v2/templates/{id}/builds/{build}",
            post(templates::start_build),
        )
        .route(
            "/templates/{id}/builds/{build}/status",
            get(templates::build_status),
        )
        .route(
            "/templates/aliases/{alias}",
            get(templates::get_alias)
                .put(templates::set_alias)
                .delete(templates::delete_alias),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(telemetry::scrape))
        // The one-time token in the URL is the right to upload (see templates::file_upload).
        .route("/uploads/{token}", put(templates::upload))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            proxy::route_sandbox_traffic,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            telemetry::count_errors,
        ))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// `GET /health`: up, and how many sandboxes wait in each warm pool.
async fn health(State(app): State<AppState>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "pooled": app.manager.pooled() }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn require_api_key(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    match app.manager.catalog().is_valid_api_key(key) {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::Unauthorized.into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// Gives every request an id (for error bodies and logs) and a trace span.
async fn request_context(req: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!(
        "{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span)
        .await;
    if let Ok(value) = id.parse() {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}
