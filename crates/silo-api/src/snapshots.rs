//! Snapshots and fork: `POST /sandboxes/{id}/snapshots`, `GET /snapshots`, `POST
//! /sandboxes/{id}/fork`. Deleting one is `DELETE /templates/{id}` (a snapshot is a
//! template to the SDK), in [`crate::templates`].

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use silo_catalog::SnapshotRecord;
use silo_protocol::rest::{ForkResult, ForkSandbox, NewSnapshot, SnapshotInfo};

use crate::error::ApiError;
use crate::extract::{ApiQuery, SandboxPath};
use crate::sandboxes::optional_body;
use crate::AppState;

fn info(snap: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: snap.id.clone(),
        names: snap.name.iter().cloned().collect(),
    }
}

/// `POST /sandboxes/{id}/snapshots`: 201 with the snapshot's id and names.
#[utoipa::path(post, path = "/sandboxes/{id}/snapshots", tag = "snapshots", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Option<NewSnapshot>), responses((status = 201, description = "Saved; usable as a template", body = SnapshotInfo), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 409, description = "not running or paused", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn create(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req = optional_body::<NewSnapshot>(&body, "snapshot")?;
    if req.memory == Some(false) {
        return Err(ApiError::BadRequest(
            "filesystem-only snapshots are not supported by silo; leave mode/memory out for a full snapshot".into(),
        ));
    }
    if let Some(name) = &req.name {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(ApiError::BadRequest(
                "snapshot name: 1 to 128 characters".into(),
            ));
        }
    }
    let snap = app.manager.snapshot(&id, req.name).await?;
    Ok((StatusCode::CREATED, Json(info(&snap))))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

/// `GET /snapshots`: newest first, paged by `limit` and `X-Next-Token`.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots", params(ListQuery), responses((status = 200, description = "Newest first", body = Vec<SnapshotInfo>, headers(("X-Next-Token" = String, description = "Present when more follow"))), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let of = match &query.sandbox_id {
        None => None,
        // A malformed id names no sandbox: no snapshots, as for an unknown one.
        Some(id) => match id.parse() {
            Ok(id) => Some(id),
            Err(_) => return Ok((HeaderMap::new(), Json(Vec::new()))),
        },
    };
    let snaps = app.manager.snapshots(of.as_ref())?.into_iter().filter(|s| {
        query
            .name
            .as_ref()
            .is_none_or(|name| s.name.as_ref() == Some(name))
    });
    let after = query
        .next_token
        .as_deref()
        .map(str::parse::<silo_catalog::Cursor>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (page, next_token) = silo_catalog::page(
        snaps,
        after.as_ref(),
        query.limit.map(|limit| limit.max(1)),
        |snap| silo_catalog::Cursor {
            at_ms: snap.created_at_ms,
            id: snap.id.clone(),
        },
    );
    let mut headers = HeaderMap::new();
    if let Some(token) = next_token.and_then(|t| HeaderValue::from_str(&t.to_string()).ok()) {
        headers.insert("x-next-token", token);
    }
    Ok((headers, Json(page.iter().map(info).collect::<Vec<_>>())))
}

/// `POST /sandboxes/{id}/fork`: 201 with one entry per copy, a sandbox or an error.
#[utoipa::path(post, path = "/sandboxes/{id}/fork", tag = "snapshots", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Option<ForkSandbox>), responses((status = 201, description = "One entry per copy: a sandbox or an error", body = Vec<ForkResult>), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 409, description = "not running or paused", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn fork(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req = optional_body::<ForkSandbox>(&body, "fork")?;
    let forks = app
        .manager
        .fork(&id, req.count.unwrap_or(1), req.timeout)
        .await?;
    let body: Vec<ForkResult> = forks
        .into_iter()
        .map(|fork| match fork {
            Ok(rec) => ForkResult::Sandbox(app.sandbox_body(&rec)),
            Err(err) => ForkResult::Error(ApiError::Sandbox(err).wire().1),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(body)))
}
