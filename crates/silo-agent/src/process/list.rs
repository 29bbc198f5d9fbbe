//! `List`: the processes started through the agent that are still running.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{Empty, ListResponse, ProcessInfo};

use crate::rpc::Unary;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, _: Unary<Empty>) -> Json<ListResponse> {
    let processes = state
        .processes
        .list()
        .into_iter()
        .map(|p| ProcessInfo {
            config: p.config.clone(),
            pid: p.pid,
            tag: p.tag.clone(),
        })
        .collect();
    Json(ListResponse { processes })
}
