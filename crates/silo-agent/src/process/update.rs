//! `Update`: resize a process's pseudo-terminal.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{Empty, UpdateRequest};

use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn update(
    State(state): State<AppState>,
    Unary(req): Unary<UpdateRequest>,
) -> Result<Json<Empty>, Error> {
    let process = state.processes.get(&req.process)?;
    let Some(size) = req.pty.and_then(|p| p.size) else {
        return Ok(Json(Empty {})); // nothing to change
    };
    let pty = process
        .pty
        .as_ref()
        .ok_or_else(|| Error::FailedPrecondition(format!("process {} has no pty", process.pid)))?;
    pty.resize(&size)
        .map_err(|e| Error::io(format!("resize pty of process {}", process.pid), e))?;
    Ok(Json(Empty {}))
}
