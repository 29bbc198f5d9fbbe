//! `POST /init` (the control plane configures the agent right after start), `GET /envs`
//! (the global environment) and `GET /health`.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use silo_protocol::envd::InitRequest;
use std::collections::BTreeMap;

use crate::auth::check_init;
use crate::error::{Error, HttpFailure};
use crate::state::AppState;

/// How long `/init` waits for the default kernels when asked to.
const KERNELS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

pub async fn init(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, HttpFailure> {
    // An empty body is a valid "nothing to change" (envd accepts it too).
    let req: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidArgument(format!("invalid /init body: {e}")))?
    };
    if !check_init(&state, &headers, req.access_token.as_deref()) {
        return Err(Error::Unauthenticated("missing or invalid access token".into()).into());
    }
    if let Some(user) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        // Refuse a user the sandbox does not have now rather than fail every later call.
        state.user_db.load().lookup(user)?;
    }
    state.update_settings(|s| {
        if let Some(token) = req.access_token {
            s.access_token = Some(token).filter(|t| !t.is_empty());
        }
        if let Some(vars) = req.env_vars {
            s.env_vars.extend(vars);
        }
        if let Some(user) = req.default_user.filter(|u| !u.is_empty()) {
            s.default_user = user;
        }
        if let Some(dir) = req.default_workdir.filter(|d| !d.is_empty()) {
            s.default_workdir = Some(PathBuf::from(dir));
        }
    });
    tracing::info!("initialized by the control plane");
    crate::process::warm_up(&state);
    crate::process::ready::start_and_wait(
        &state,
        req.start_cmd.as_deref(),
        req.ready_cmd.as_deref(),
    )
    .await?;
    if req.wait_for_kernels == Some(true) {
        let mut settled = state.kernels_settled.subscribe();
        // A kernel slower than this is no reason to fail the sandbox: it answers anyway.
        let waited = tokio::time::timeout(KERNELS_WAIT, settled.wait_for(|settled| *settled)).await;
        if waited.is_err() {
            tracing::warn!(after = ?KERNELS_WAIT, "answering /init before the default kernels started");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn envs(State(state): State<AppState>) -> Json<BTreeMap<String, String>> {
    Json(state.settings().env_vars)
}
