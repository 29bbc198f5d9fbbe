//! The one place where errors become HTTP responses for the control plane: E2B's
//! `{"code": <status>, "message": "..."}`. Server-side failures say "internal error" and
//! the request id; their detail goes to the log, once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use silo_protocol::rest::ApiError as WireError;

use silo_node::builds::TemplateError;
use silo_node::sandbox::SandboxError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// An error and every source under it, joined: `a: b: c`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid API key: pass the key `silo keys` prints as X-API-KEY (E2B_API_KEY)")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Template(err) => match err {
                TemplateError::Invalid(_) => StatusCode::BAD_REQUEST,
                TemplateError::NotFound(_) => StatusCode::NOT_FOUND,
                TemplateError::Conflict(_) => StatusCode::CONFLICT,
                TemplateError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                TemplateError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                TemplateError::Sandbox(err) => sandbox_status(err),
            },
            ApiError::Sandbox(err) => sandbox_status(err),
        }
    }
}

/// The status of a sandbox error (alone, or under a template's).
fn sandbox_status(err: &SandboxError) -> StatusCode {
    match err {
        SandboxError::NotFound(_) | SandboxError::TemplateNotFound(_) => StatusCode::NOT_FOUND,
        SandboxError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        SandboxError::WrongState { .. } | SandboxError::AlreadyPaused(_) => StatusCode::CONFLICT,
        SandboxError::Pause { .. }
        | SandboxError::Resume { .. }
        | SandboxError::Snapshot { .. }
        | SandboxError::Network { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        SandboxError::Start { .. }
        | SandboxError::Destroy { .. }
        | SandboxError::Init { .. }
        | SandboxError::ListRuntime(_)
        | SandboxError::Catalog(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The status and body the client gets (server errors logged here, with their
    /// cause, under the request's id).
    pub fn wire(&self) -> (StatusCode, WireError) {
        let status = self.status();
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        // A failed pause, resume or snapshot leaves the sandbox as it was; its cause (a full
        // disk, a failed restore) is what the caller needs to act on, so it is not hidden.
        // So is an agent's refusal of its configuration: a template's ready command
        // that did not pass says why in it.
        let shown = matches!(
            self,
            ApiError::Sandbox(
                SandboxError::Pause { .. }
                    | SandboxError::Resume { .. }
                    | SandboxError::Snapshot { .. }
                    | SandboxError::Init { .. }
            )
        );
        let message = if shown {
            tracing::error!(request_id, error = %chain(self), "request failed");
            chain(self)
        } else if status.is_server_error() {
            tracing::error!(request_id, error = %chain(self), "request failed");
            format!("internal error (request id {request_id}); see the silo serve log")
        } else {
            self.to_string()
        };
        let body = WireError {
            code: status.as_u16(),
            message,
        };
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.wire();
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write state")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_sources() {
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&err), "cannot write state: disk full");
    }

    #[test]
    fn client_errors_keep_their_message_and_status() {
        let resp = ApiError::BadRequest("timeout must be a number".into()).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::Unauthorized.into_response().status(), 401);
    }
}
