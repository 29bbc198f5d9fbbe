//! silo's HTTP edge, on one listener:
//!
//! - the E2B control plane ([`sandboxes`]: `/sandboxes`, `/v2/sandboxes`, ...), behind
//!   API-key auth;
//! - the sandbox proxy ([`proxy`]), which takes every request that names a sandbox (by
//!   header or Host) before routing and forwards it to that sandbox's agent;
//! - the web dashboard at `/dashboard/` ([`dashboard`]) and its terminals
//!   ([`terminal`]);
//! - `GET /health` for the server itself, `GET /metrics` for Prometheus ([`telemetry`]),
//!   and `GET /openapi.json`, this API described (generated from the handlers' own
//!   annotations, see `routes`);
//! - `/mcp`, the MCP server over streamable HTTP ([`silo_mcp::http`]), behind the same
//!   API-key check, when the server mounts it.
//!
//! Handlers are thin: they extract ([`extract`]), call the [`manager`], and map errors to
//! the wire once ([`error`]).

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod logs;
pub mod proxy;
pub mod sandboxes;
pub mod snapshots;
pub mod telemetry;
pub mod templates;
pub mod terminal;
#[cfg(test)]
mod testing;
pub mod usage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tracing::Instrument;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, REQUEST_ID};
use silo_node::sandbox::Manager;

/// What silo reports as the E2B `clientID` of its sandboxes.
pub const CLIENT_ID: &str = "silo";

/// The header that carries the API key (E2B's `X-API-Key`).
const API_KEY_HEADER: &str = "x-api-key";

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
    let (router, doc) = routes(state.clone()).split_for_parts();
    let doc = bytes::Bytes::from(doc.to_json().expect("the OpenAPI document serializes"));
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        )
        // Not in the document: a WebSocket, and the dashboard's own files.
        .route("/sandboxes/{id}/terminal", get(terminal::terminal))
        .route("/dashboard", get(dashboard::root))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{*path}", get(dashboard::file))
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

/// Every route with its OpenAPI description: registering a handler documents it, so
/// `/openapi.json` cannot drift from the router.
fn routes(state: AppState) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(sandboxes::create_v1, sandboxes::list_v1))
        .routes(routes!(sandboxes::create, sandboxes::list_v2))
        .routes(routes!(sandboxes::get_info, sandboxes::kill))
        .routes(routes!(usage::latest))
        .routes(routes!(usage::of_sandbox))
        .routes(routes!(logs::v1))
        .routes(routes!(logs::v2))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(sandboxes::connect_v1))
        .routes(routes!(sandboxes::connect))
        .routes(routes!(sandboxes::pause))
        .routes(routes!(sandboxes::update_network))
        .routes(routes!(sandboxes::resume))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::fork))
        .routes(routes!(snapshots::list))
        .routes(routes!(templates::list))
        .routes(routes!(templates::get, templates::delete))
        .routes(routes!(templates::request_build))
        .routes(routes!(templates::file_upload))
        .routes(routes!(templates::start_build))
        .routes(routes!(templates::build_status))
        .routes(routes!(templates::assign_tags, templates::remove_tags))
        .routes(routes!(templates::tags))
        .routes(routes!(
            templates::get_alias,
            templates::set_alias,
            templates::delete_alias
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    // MCP speaks its own protocol on one path: behind the key, outside the document.
    let mcp = match &state.mcp {
        Some(mcp) => Router::new()
            .route_service("/mcp", mcp.clone())
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            )),
        None => Router::new(),
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(telemetry::scrape))
        // The one-time token in the URL is the right to upload (see templates::file_upload).
        .routes(routes!(templates::upload))
        .merge(api)
        .merge(OpenApiRouter::from(mcp))
}

/// The document's frame; the paths come from the handlers (see [`routes`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "silo",
        description = "Self-hosted sandboxes for AI agents. The control plane speaks E2B's REST API \
            (the official e2b SDKs work against it unchanged) plus silo's own endpoints; \
            traffic to a sandbox's ports (envd, the code interpreter, your servers) goes \
            through the same listener with the E2b-Sandbox-Id and E2b-Sandbox-Port headers \
            and is not described here."
    ),
    // Schemas only query parameters use (the handlers' bodies bring their own).
    components(schemas(
        silo_protocol::rest::LogLevel,
        silo_protocol::rest::LogsDirection
    )),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "sandboxes", description = "Create, list, pause, resume and kill sandboxes"),
        (name = "snapshots", description = "Save sandboxes whole, start copies"),
        (name = "templates", description = "Build and manage templates"),
        (name = "observe", description = "Metrics, logs and timelines of sandboxes"),
        (name = "server", description = "The server itself"),
    )
)]
struct ApiDoc;

/// `X-API-Key`, as `silo keys` prints it (E2B_API_KEY).
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
            );
    }
}

/// The server's health.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok` when it answers.
    status: &'static str,
    /// Sandboxes waiting in each template's warm pool.
    pooled: std::collections::BTreeMap<String, usize>,
    /// Running sandboxes frozen while idle (`--doze-after`).
    dozing: usize,
}

/// `GET /health`: up, and how many sandboxes wait in each warm pool.
#[utoipa::path(get, path = "/health", tag = "server", responses((status = 200, description = "Up, and how many sandboxes wait in each warm pool", body = Health)))]
async fn health(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        pooled: app.manager.pooled(),
        dozing: app.manager.dozing(),
    })
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
        .get(API_KEY_HEADER)
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
