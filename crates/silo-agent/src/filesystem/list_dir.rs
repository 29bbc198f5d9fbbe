//! `ListDir`: the entries under a directory, down to `depth` levels (0 means 1).
//! Symlinked directories are listed but not descended into, so loops cannot recurse.

use std::path::Path;

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryInfo, ListDirRequest, ListDirResponse};

use super::entry::entry_info;
use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;
use crate::users::Users;

pub async fn list_dir(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<ListDirRequest>,
) -> Result<Json<ListDirResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let path = state.resolve_path(&req.path, &user)?;
    // A deep listing stats every entry of the tree.
    let entries = blocking::run(move || list(&path, req.depth.max(1), &users)).await?;
    Ok(Json(ListDirResponse { entries }))
}

fn list(path: &Path, depth: u32, users: &Users) -> Result<Vec<EntryInfo>, Error> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    let mut entries = Vec::new();
    walk(path, depth, users, &mut entries)?;
    Ok(entries)
}

fn walk(dir: &Path, depth: u32, users: &Users, out: &mut Vec<EntryInfo>) -> Result<(), Error> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("read directory {}", dir.display()), e))?;
    let mut children: Vec<_> = read.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    children.sort();
    for child in children {
        let info = match entry_info(&child, users) {
            Ok(info) => info,
            // Removed while we were listing: not an error of the listing.
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let descend = depth > 1 && !info.is_symlink && child.is_dir();
        out.push(info);
        if descend {
            walk(&child, depth - 1, users, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_to_the_depth_asked_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/deep.txt"), "d").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        let users = Users::default();
        let names = |depth| -> Vec<String> {
            let entries = list(dir.path(), depth, &users).unwrap();
            let root = format!("{}/", dir.path().display());
            entries
                .iter()
                .map(|e| e.path.strip_prefix(&root).unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(1), ["a", "link"]);
        assert_eq!(names(3), ["a", "a/b", "a/b/deep.txt", "link"]);
        assert!(matches!(
            list(&dir.path().join("a/b/deep.txt"), 1, &users),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            list(&dir.path().join("nope"), 1, &users),
            Err(Error::NotFound(_))
        ));
    }
}
