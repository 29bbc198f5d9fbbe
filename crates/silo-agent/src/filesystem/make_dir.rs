//! `MakeDir`: create a directory and its parents; an existing one is `already_exists`.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryResponse, MakeDirRequest};

use super::create_dirs;
use super::entry::entry_info;
use super::path::resolve;
use crate::auth::RpcUser;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn make_dir(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<MakeDirRequest>,
) -> Result<Json<EntryResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let path = resolve(&req.path, &user.home)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(Error::AlreadyExists(format!(
                "directory {} already exists",
                path.display()
            )))
        }
        Ok(_) => {
            return Err(Error::AlreadyExists(format!(
                "{} already exists and is not a directory",
                path.display()
            )))
        }
        Err(_) => {}
    }
    create_dirs(&path, &user)?;
    Ok(Json(EntryResponse {
        entry: entry_info(&path, &users)?,
    }))
}
