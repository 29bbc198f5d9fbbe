//! `Stat`: the `EntryInfo` of one path.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryResponse, StatRequest};

use super::entry::entry_info;
use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn stat(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<StatRequest>,
) -> Result<Json<EntryResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let path = state.resolve_path(&req.path, &user)?;
    let entry = blocking::run(move || entry_info(&path, &users)).await?;
    Ok(Json(EntryResponse { entry }))
}
