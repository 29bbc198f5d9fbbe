//! A sandbox's log and timeline, as E2B serves them: `GET /v2/sandboxes/{id}/logs`
//! (structured entries) and `GET /sandboxes/{id}/logs` (v1: plain lines and the same
//! entries). One time-ordered stream merges
//!
//! - the lifecycle from the catalog's history (created, handed out from the pool, paused,
//!   resumed, killed, each with why and who asked: "killed by request (API key e2b_…)",
//!   "timeout", ...; and OOM kills inside it), and
//! - what the sandbox's processes did, collected from its agent (started with their
//!   command line, each line of stdout/stderr, exited with their code).
//!
//! Killed sandboxes stay readable until the retention window forgets them.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use silo_catalog::{LogLine, LogQuery, SandboxEvent, SandboxState};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{
    LogLevel, LogsDirection, LogsQueryV1, LogsQueryV2, SandboxLogEntry, SandboxLogLine,
    SandboxLogs, SandboxLogsV2,
};

use crate::error::ApiError;
use crate::extract::{ApiQuery, SandboxPath};
use crate::sandboxes::rfc3339;
use crate::AppState;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// `GET /v2/sandboxes/{id}/logs?cursor&limit&direction&level&search`.
#[utoipa::path(get, path = "/v2/sandboxes/{id}/logs", tag = "observe", params(("id" = String, Path, description = "Sandbox id"), LogsQueryV2), responses((status = 200, description = "Log and timeline entries", body = SandboxLogsV2), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn v2(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiQuery(query): ApiQuery<LogsQueryV2>,
) -> Result<Json<SandboxLogsV2>, ApiError> {
    let entries = read(
        &app,
        &id,
        LogQuery {
            cursor_ms: query.cursor,
            backward: query.direction == Some(LogsDirection::Backward),
            search: query.search.filter(|s| !s.is_empty()),
            level: query.level.unwrap_or(LogLevel::Debug),
            limit: query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT),
        },
    )?;
    Ok(Json(SandboxLogsV2 { logs: entries }))
}

/// `GET /sandboxes/{id}/logs?start&limit` (v1).
#[utoipa::path(get, path = "/sandboxes/{id}/logs", tag = "observe", params(("id" = String, Path, description = "Sandbox id"), LogsQueryV1), responses((status = 200, description = "Log and timeline entries", body = SandboxLogs), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn v1(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiQuery(query): ApiQuery<LogsQueryV1>,
) -> Result<Json<SandboxLogs>, ApiError> {
    let entries = read(
        &app,
        &id,
        LogQuery {
            cursor_ms: query.start,
            backward: false,
            search: None,
            level: LogLevel::Debug,
            limit: query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT),
        },
    )?;
    Ok(Json(SandboxLogs {
        logs: entries
            .iter()
            .map(|e| SandboxLogLine {
                timestamp: e.timestamp.clone(),
                line: e.message.clone(),
            })
            .collect(),
        log_entries: entries,
    }))
}

/// The merged stream: `query.limit` entries of at least `query.level`, in time order
/// (newest first when backward). The catalog filters process lines before its limit;
/// the history, a few entries, is filtered here.
fn read(app: &AppState, id: &SandboxId, query: LogQuery) -> Result<Vec<SandboxLogEntry>, ApiError> {
    let catalog = app.manager.catalog();
    match catalog.get_sandbox(id)? {
        Some(rec) if rec.state != SandboxState::Pooled => {}
        _ => return Err(ApiError::NotFound(format!("sandbox {id} was not found"))),
    }
    let in_window = |at_ms: i64| match (query.cursor_ms, query.backward) {
        (None, _) => true,
        (Some(cursor), false) => at_ms >= cursor,
        (Some(cursor), true) => at_ms <= cursor,
    };
    let mut timed: Vec<(i64, SandboxLogEntry)> = catalog
        .events(id)?
        .iter()
        .filter(|e| in_window(e.at_ms))
        .map(|e| (e.at_ms, lifecycle_entry(e)))
        .filter(|(_, e)| e.level >= query.level)
        .filter(|(_, e)| {
            query
                .search
                .as_deref()
                .is_none_or(|s| e.message.contains(s))
        })
        .chain(
            catalog
                .logs(id, &query)?
                .iter()
                .map(|line| (line.at_ms, process_entry(line))),
        )
        .collect();
    // Stable: entries of one millisecond keep their order (history, then processes).
    timed.sort_by_key(|(at, _)| *at);
    if query.backward {
        timed.reverse();
    }
    timed.truncate(query.limit);
    Ok(timed.into_iter().map(|(_, e)| e).collect())
}

fn entry(
    at_ms: i64,
    level: LogLevel,
    message: String,
    fields: &[(&str, String)],
) -> SandboxLogEntry {
    SandboxLogEntry {
        timestamp: rfc3339(at_ms),
        level,
        message,
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn lifecycle_entry(e: &SandboxEvent) -> SandboxLogEntry {
    let to = e.to.as_str().to_owned();
    if e.from == Some(e.to) {
        // Not a state change: something that happened to it (an OOM kill).
        return entry(
            e.at_ms,
            LogLevel::Warn,
            e.detail.clone(),
            &[("type", "event".into()), ("reason", e.detail.clone())],
        );
    }
    let mut fields = vec![("type", "lifecycle".to_owned()), ("state", to.clone())];
    let message = match e.from {
        Some(from) => {
            fields.push(("from", from.as_str().to_owned()));
            format!("{} → {to}: {}", from.as_str(), e.detail)
        }
        None => format!("{to}: {}", e.detail),
    };
    fields.push(("reason", e.detail.clone()));
    entry(e.at_ms, LogLevel::Info, message, &fields)
}

fn process_entry(line: &LogLine) -> SandboxLogEntry {
    let pid = ("pid", line.pid.to_string());
    let (message, fields) = match line.kind.as_str() {
        "start" => (
            format!("process {} started: {}", line.pid, line.text),
            vec![
                ("type", "process.start".into()),
                pid,
                ("cmd", line.text.clone()),
            ],
        ),
        "exit" => {
            let code = line.exit_code.unwrap_or(-1);
            (
                format!(
                    "process {} exited with code {code} ({})",
                    line.pid, line.text
                ),
                vec![
                    ("type", "process.exit".into()),
                    pid,
                    ("exitCode", code.to_string()),
                ],
            )
        }
        "dropped" => (line.text.clone(), vec![("type", "dropped".into())]),
        stream => (line.text.clone(), vec![("type", stream.to_owned()), pid]),
    };
    entry(line.at_ms, line.level(), message, &fields)
}
