//! `Move`: rename a file or directory, creating the destination's parents.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryResponse, MoveRequest};

use super::create_dirs;
use super::entry::entry_info;
use super::path::resolve;
use crate::auth::RpcUser;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn move_entry(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<MoveRequest>,
) -> Result<Json<EntryResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let source = resolve(&req.source, &user.home)?;
    let destination = resolve(&req.destination, &user.home)?;
    std::fs::symlink_metadata(&source)
        .map_err(|e| Error::io(format!("stat {}", source.display()), e))?;
    if let Some(parent) = destination.parent() {
        create_dirs(parent, &user)?;
    }
    std::fs::rename(&source, &destination).map_err(|e| {
        Error::io(
            format!("move {} to {}", source.display(), destination.display()),
            e,
        )
    })?;
    Ok(Json(EntryResponse {
        entry: entry_info(&destination, &users)?,
    }))
}
