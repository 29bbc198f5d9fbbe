//! `Move`: rename a file or directory, creating the destination's parents.
//!
//! Within a filesystem that is one `rename`. Across filesystems (`/tmp` is its own mount
//! in the sandbox, while E2B's rootfs is one filesystem, so there every move renames) it
//! is what `mv` does: copy, then remove the source. The copy is made in a hidden staging
//! directory beside the destination ([`TEMP_PREFIX`], which watchers hide) and renamed
//! into place once complete, so the destination never shows half a tree and a failed
//! copy leaves nothing behind. Copies keep type (symlinks stay links), mode, owner,
//! timestamps and metadata; hard links within a moved tree become separate files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{EntryResponse, MoveRequest};

use super::create_dirs;
use super::entry::{cpath, entry_info, read_metadata, write_metadata};
use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::files::TEMP_PREFIX;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn move_entry(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<MoveRequest>,
) -> Result<Json<EntryResponse>, Error> {
    let (user, users) = state.user(username.as_deref())?;
    let source = state.resolve_path(&req.source, &user)?;
    let destination = state.resolve_path(&req.destination, &user)?;
    // A move across filesystems copies, which may take a while.
    let entry = blocking::run(move || {
        std::fs::symlink_metadata(&source)
            .map_err(|e| Error::io(format!("stat {}", source.display()), e))?;
        if let Some(parent) = destination.parent() {
            create_dirs(parent, &user)?;
        }
        move_path(&source, &destination)?;
        entry_info(&destination, &users)
    })
    .await?;
    Ok(Json(EntryResponse { entry }))
}

fn move_path(source: &Path, destination: &Path) -> Result<(), Error> {
    let context = || format!("move {} to {}", source.display(), destination.display());
    match std::fs::rename(source, destination) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            move_across(source, destination).map_err(|e| Error::io(context(), e))
        }
        Err(e) => Err(Error::io(context(), e)),
    }
}

/// Move `source` to `destination` on another filesystem (see the module docs). What
/// `destination` may be is what `rename` allows: absent, or of the same kind (an empty
/// directory for a directory).
fn move_across(source: &Path, destination: &Path) -> std::io::Result<()> {
    let parent = destination.parent().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "cannot move onto /")
    })?;
    // Dropped on any return: removes what is left of the copy.
    let staging = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(parent)?;
    let staged = staging.path().join("entry");
    copy_tree(source, &staged)?;
    std::fs::rename(&staged, destination)?;
    if std::fs::symlink_metadata(source)?.is_dir() {
        std::fs::remove_dir_all(source)
    } else {
        std::fs::remove_file(source)
    }
}

/// Copy `from` to the absent `to`: directories recursively, symlinks as symlinks, devices,
/// FIFOs and sockets as such; each with its owner, mode, timestamps and metadata.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if kind.is_file() {
        std::fs::copy(from, to)?;
    } else {
        // A FIFO, device or socket.
        let c = cpath(to).map_err(std::io::Error::other)?;
        // SAFETY: a valid NUL-terminated path; the result is checked.
        if unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Owner before mode: a chown clears the set-id bits.
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !kind.is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        // Where the destination keeps no metadata, the copy has none, as with `mv`.
        let metadata = read_metadata(from).map_err(std::io::Error::other)?;
        write_metadata(to, &metadata).map_err(std::io::Error::other)?;
    }
    // Last: copying a directory's entries changed its times.
    set_times(to, &meta)
}

/// Give `path` (not following a symlink) the access and modification times of `meta`.
fn set_times(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let c = cpath(path).map_err(std::io::Error::other)?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: a valid path and two timespecs; the result is checked.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn move_across_copies_the_tree_then_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(src.join("sub/run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("sub/run.sh", src.join("link")).unwrap();
        let fifo = cpath(&src.join("fifo")).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::File::options()
            .write(true)
            .open(src.join("sub/run.sh"))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        std::fs::set_permissions(&src, PermissionsExt::from_mode(0o700)).unwrap();
        let dst = dir.path().join("dst");

        move_across(&src, &dst).unwrap();
        assert!(!src.exists());
        let file = std::fs::metadata(dst.join("sub/run.sh")).unwrap();
        assert_eq!(file.mode() & 0o7777, 0o750);
        assert_eq!(file.mtime(), 1_000_000);
        assert_eq!(std::fs::read(dst.join("sub/run.sh")).unwrap(), b"#!/bin/sh");
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("sub/run.sh")
        );
        let fifo = std::fs::symlink_metadata(dst.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::metadata(&dst).unwrap().mode() & 0o7777, 0o700);
        // Nothing staged is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dst"]);
    }

    #[test]
    fn move_across_onto_a_full_directory_fails_and_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), "a").unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(dst.join("b"), "b").unwrap();
        let err = move_across(&src, &dst).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::DirectoryNotEmpty);
        assert!(src.join("a").exists() && dst.join("b").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
