//! `filesystem.Filesystem`: stat, make dir, move, list, remove and watch, on paths
//! resolved for the calling user ([`path`]). The agent acts as root; what it creates is
//! handed to the user ([`chown_to`]), as envd does.
//!
//! One file per RPC: [`stat`], [`make_dir`], [`move_entry`], [`list_dir`], [`remove`],
//! [`watch`] (WatchDir and the polling watcher RPCs). [`entry`] builds `EntryInfo`.

pub mod entry;
mod list_dir;
mod make_dir;
mod move_entry;
pub mod path;
mod remove;
mod stat;
pub mod watch;

use std::path::Path;

use axum::routing::post;
use axum::Router;

use crate::error::Error;
use crate::state::AppState;
use crate::users::User;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", post(stat::stat))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir::make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry::move_entry))
        .route("/filesystem.Filesystem/ListDir", post(list_dir::list_dir))
        .route("/filesystem.Filesystem/Remove", post(remove::remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch::watch_dir))
        .route(
            "/filesystem.Filesystem/CreateWatcher",
            post(watch::create_watcher),
        )
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(watch::get_watcher_events),
        )
        .route(
            "/filesystem.Filesystem/RemoveWatcher",
            post(watch::remove_watcher),
        )
}

/// The type of the filesystem `path` is on (`statfs`'s magic number), if it can be told.
pub fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills a zeroed struct through a valid pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// Give `path` (not following symlinks) to `user`. Without root this can only fail, and
/// then the file simply stays the agent's (development runs).
pub fn chown_to(path: &Path, user: &User) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))
}

/// Create `dir` and any missing parents, each owned by `user`.
pub fn create_dirs(dir: &Path, user: &User) -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() || std::fs::metadata(d).is_ok_and(|m| m.is_dir()) => break,
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} exists and is not a directory",
                    d.display()
                )))
            }
            Err(_) => missing.push(d),
        }
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => chown_to(d, user)?,
            // Someone else made it meanwhile: fine.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("create directory {}", d.display()), e)),
        }
    }
    Ok(())
}
