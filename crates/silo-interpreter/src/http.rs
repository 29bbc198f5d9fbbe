//! The HTTP surface (protocol spec §4): parse, call [`Interpreter`], map errors. Errors are
//! plain text, as the SDK shows the body verbatim in its exception.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::contexts::{ContextError, ContextInfo};
use crate::execute::{self, Job};
use crate::language::Language;
use crate::Interpreter;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("context_id and language cannot both be set: a context already has a language")]
    ContextAndLanguage,
    #[error("unknown language {given:?}; available: {available}")]
    UnknownLanguage { given: String, available: String },
    #[error(transparent)]
    Context(#[from] ContextError),
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Body(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Body(_) | ApiError::ContextAndLanguage | ApiError::UnknownLanguage { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Context(ContextError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Context(ContextError::NoKernel { .. } | ContextError::NoSuchCwd(_)) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Context(ContextError::Kernel(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The whole chain goes to the client too: the sandbox is the caller's own, and a
        // kernel that fails to start is best diagnosed from its stderr, which is in there.
        let mut message = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        if status.is_server_error() {
            tracing::error!(%message, "request failed");
        }
        (status, message).into_response()
    }
}

/// The routes of the code-interpreter port.
pub fn router(interpreter: Interpreter) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .with_state(interpreter)
}

async fn health() -> Json<&'static str> {
    Json("OK")
}

#[derive(Deserialize)]
struct ExecuteBody {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

/// An absent or blank language means the default.
fn parse_language(interpreter: &Interpreter, given: Option<&str>) -> Result<Language, ApiError> {
    match given.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Language::Python),
        Some(s) => s.parse().map_err(|_| ApiError::UnknownLanguage {
            given: s.to_string(),
            available: interpreter.contexts().available(),
        }),
    }
}

async fn execute(
    State(interpreter): State<Interpreter>,
    body: Result<Json<ExecuteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let context_id = body.context_id.filter(|s| !s.is_empty());
    let ctx = match (context_id, body.language.as_deref()) {
        (Some(_), Some(l)) if !l.trim().is_empty() => return Err(ApiError::ContextAndLanguage),
        (Some(id), _) => interpreter.contexts().get(&id)?,
        (None, language) => {
            let language = parse_language(&interpreter, language)?;
            interpreter.contexts().default_for(language).await?
        }
    };
    let job = Job {
        code: body.code,
        env_vars: body.env_vars.unwrap_or_default(),
    };
    let lines = execute::start(interpreter, ctx, job);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
struct CreateContextBody {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
}

async fn create_context(
    State(interpreter): State<Interpreter>,
    body: Result<Json<CreateContextBody>, JsonRejection>,
) -> Result<Json<ContextInfo>, ApiError> {
    let body = match body {
        Ok(Json(b)) => b,
        // The SDK posts `{}`, but an empty body means the same.
        Err(JsonRejection::MissingJsonContentType(_)) => CreateContextBody::default(),
        Err(e) => return Err(e.into()),
    };
    let language = parse_language(&interpreter, body.language.as_deref())?;
    let ctx = interpreter.contexts().create(language, body.cwd).await?;
    Ok(Json(ctx.info()))
}

async fn list_contexts(State(interpreter): State<Interpreter>) -> Json<Vec<ContextInfo>> {
    Json(interpreter.contexts().list())
}

async fn delete_context(
    State(interpreter): State<Interpreter>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    interpreter.contexts().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart_context(
    State(interpreter): State<Interpreter>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    interpreter.contexts().restart(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
