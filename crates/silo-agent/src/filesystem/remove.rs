//! `Remove`: delete a file, symlink or whole directory tree. Removing what is already
//! gone succeeds, as envd's `os.RemoveAll` does.

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{Empty, RemoveRequest};

use super::path::resolve;
use crate::auth::RpcUser;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn remove(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<RemoveRequest>,
) -> Result<Json<Empty>, Error> {
    let (user, _) = state.user(username.as_deref())?;
    let path = resolve(&req.path, &user.home)?;
    let result = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(Json(Empty {})),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Json(Empty {})),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}
