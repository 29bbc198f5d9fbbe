//! `MakeDir`: create a directory and its parents; an existing one is `already_exists`
//! (the SDKs answer false), anything else in its place `invalid_argument` (they raise),
//! as with envd.

use std::path::Path;

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryResponse, MakeDirRequest};

use super::create_dirs;
use super::entry::entry_info;
use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;
use crate::users::User;

pub async fn make_dir(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<MakeDirRequest>,
) -> Result<Json<EntryResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let path = state.resolve_path(&req.path, &user)?;
    let entry = blocking::run(move || {
        make(&path, &user)?;
        entry_info(&path, &users)
    })
    .await?;
    Ok(Json(EntryResponse { entry }))
}

fn make(path: &Path, user: &User) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::AlreadyExists(format!(
            "directory {} already exists",
            path.display()
        ))),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{} already exists and is not a directory",
            path.display()
        ))),
        Err(_) => create_dirs(path, user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_directory_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = crate::users::Users::default().lookup("root").unwrap();
        let new = dir.path().join("a/b");
        make(&new, &user).unwrap();
        assert!(new.is_dir());
        assert!(matches!(make(&new, &user), Err(Error::AlreadyExists(_))));
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(make(&file, &user), Err(Error::InvalidArgument(_))));
    }
}
