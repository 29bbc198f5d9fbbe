//! The one place where errors become HTTP responses for the control plane: E2B's
//! `{"code": <status>, "message": "..."}`. Server-side failures say "internal error" and
//! the request id; their detail goes to the log, once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use silo_protocol::rest::ApiError as WireError;

use silo_node::builds::TemplateError;
use silo_node::sandbox::SandboxError;

use crate::telemetry::ErrorKind;

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

impl From<silo_catalog::CatalogError> for ApiError {
    fn from(err: silo_catalog::CatalogError) -> Self {
        ApiError::Sandbox(err.into())
    }
}

impl ApiError {
    /// The HTTP status, and the kind `silo_errors_total` counts it under.
    fn class(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Template(err) => match err {
                TemplateError::Invalid(_) => (StatusCode::BAD_REQUEST, "template_invalid"),
                TemplateError::NotFound(_) => (StatusCode::NOT_FOUND, "template_not_found"),
                TemplateError::Conflict(_) => (StatusCode::CONFLICT, "template_conflict"),
                TemplateError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large"),
                TemplateError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "template_io"),
                TemplateError::Sandbox(err) => sandbox_class(err),
            },
            ApiError::Sandbox(err) => sandbox_class(err),
        }
    }
}

/// The status and kind of a sandbox error (alone, or under a template's).
fn sandbox_class(err: &SandboxError) -> (StatusCode, &'static str) {
    const INTERNAL: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;
    match err {
        SandboxError::NotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
        SandboxError::TemplateNotFound(_) => (StatusCode::NOT_FOUND, "template_not_found"),
        SandboxError::TagNotFound { .. } => (StatusCode::NOT_FOUND, "tag_not_found"),
        SandboxError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        SandboxError::BrokenTemplate(_) => (INTERNAL, "template_broken"),
        SandboxError::StoredNetwork { .. } => (INTERNAL, "catalog_failed"),
        SandboxError::SnapshotsDir { .. } => (INTERNAL, "snapshot_failed"),
        SandboxError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
        SandboxError::AlreadyPaused(_) => (StatusCode::CONFLICT, "already_paused"),
        SandboxError::KilledWhileCreating(_) => (StatusCode::CONFLICT, "killed_while_creating"),
        // E2B's status: a paused sandbox is not among those a timeout applies to.
        SandboxError::TimeoutWhilePaused(_) => (StatusCode::NOT_FOUND, "sandbox_paused"),
        SandboxError::Pause { .. } => (INTERNAL, "pause_failed"),
        SandboxError::Resume { .. } | SandboxError::ResumedSilent { .. } => {
            (INTERNAL, "resume_failed")
        }
        SandboxError::Wake { .. } => (INTERNAL, "wake_failed"),
        SandboxError::Snapshot { .. } => (INTERNAL, "snapshot_failed"),
        SandboxError::Network { .. } => (INTERNAL, "network_failed"),
        SandboxError::Start { .. } => (INTERNAL, "start_failed"),
        SandboxError::Destroy { .. } => (INTERNAL, "destroy_failed"),
        SandboxError::Init { .. } => (INTERNAL, "agent_init_failed"),
        SandboxError::ListRuntime(_) | SandboxError::PausedUnknown { .. } => {
            (INTERNAL, "runtime_failed")
        }
        SandboxError::Catalog(_) => (INTERNAL, "catalog_failed"),
        SandboxError::Interrupted => (StatusCode::SERVICE_UNAVAILABLE, "interrupted"),
    }
}

impl ApiError {
    /// The status and body the client gets (server errors logged here, with their
    /// cause, under the request's id).
    pub fn wire(&self) -> (StatusCode, WireError) {
        let (status, _) = self.class();
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
                    | SandboxError::ResumedSilent { .. }
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
        let mut resp = (status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorKind(self.class().1));
        resp
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

    #[test]
    fn the_servers_own_faults_are_500_not_400() {
        let id: silo_protocol::ids::SandboxId = "i0000000000000000000".parse().unwrap();
        let faults = [
            SandboxError::BrokenTemplate("config.json is unreadable".into()),
            SandboxError::StoredNetwork {
                id,
                reason: "bad address".into(),
            },
            SandboxError::SnapshotsDir {
                path: "/var/lib/silo/snapshots".into(),
                source: std::io::Error::other("read-only file system"),
            },
        ];
        for fault in faults {
            let resp = ApiError::Sandbox(fault).into_response();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[test]
    fn a_timeout_for_a_paused_sandbox_is_404_as_on_e2b() {
        let id: silo_protocol::ids::SandboxId = "i0000000000000000000".parse().unwrap();
        let err = ApiError::Sandbox(SandboxError::TimeoutWhilePaused(id));
        let (status, body) = err.wire();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.message.contains("paused"), "{}", body.message);
    }
}
