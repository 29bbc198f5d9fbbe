//! `Remove`: delete a file, symlink or whole directory tree. Removing what is already
//! gone succeeds, as envd's `os.RemoveAll` does.

use std::path::Path;

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{Empty, RemoveRequest};

use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn remove(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<RemoveRequest>,
) -> Result<Json<Empty>, Error> {
    let (user, _) = state.user(username.as_deref())?;
    let path = state.resolve_path(&req.path, &user)?;
    // A tree such as node_modules takes seconds to remove.
    blocking::run(move || remove_path(&path)).await?;
    Ok(Json(Empty {}))
}

/// Remove `path` (a symlink itself, not what it points to), and a directory with all
/// below it.
fn remove_path(path: &Path) -> Result<(), Error> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_trees_files_and_links_and_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&tree, &link).unwrap();

        remove_path(&link).unwrap();
        assert!(
            !link.exists() && tree.join("a/b/f").exists(),
            "the link, not its target"
        );
        remove_path(&tree).unwrap();
        assert!(!tree.exists());
        remove_path(&tree).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        remove_path(&file).unwrap();
        assert!(!file.exists());
    }
}
