//! A sandbox's disk: an ext4 image of its size in its directory, loop-mounted at
//! `<dir>/disk`. runsc keeps the sandbox's writes (the root filesystem's overlay and
//! /tmp's, `--overlay2=all:dir=<dir>/disk`) in a file there, so writing past the size
//! fails with ENOSPC inside while the sandbox runs on, and the data sits in the host's
//! page cache (reclaimable), not in the sandbox's memory.
//!
//! runsc 20240729 has no size option for its overlay (it makes the upper tmpfs
//! unlimited); a filesystem that is full is the limit it cannot ignore.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const IMAGE: &str = "disk.img";
const MOUNT_POINT: &str = "disk";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("create disk image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} {path}: {detail}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        detail: String,
    },
}

/// Where the sandbox whose directory is `dir` keeps its writes.
pub fn mount_point(dir: &Path) -> PathBuf {
    dir.join(MOUNT_POINT)
}

/// Make and mount the disk of `size_mb` MiB at [`mount_point`].
pub async fn create(dir: &Path, size_mb: u32) -> Result<(), DiskError> {
    let image = dir.join(IMAGE);
    let mount_point = mount_point(dir);
    let io_err = |source| DiskError::Image {
        path: image.clone(),
        source,
    };
    // Sparse: blocks are allocated as the sandbox writes.
    let file = std::fs::File::create(&image).map_err(io_err)?;
    file.set_len(u64::from(size_mb) << 20).map_err(io_err)?;
    drop(file);
    std::fs::create_dir_all(&mount_point).map_err(io_err)?;
    // No journal and no reserved blocks: a scratch disk that lives as long as the
    // sandbox; lazy inode tables keep mkfs to milliseconds.
    tool(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-O".as_ref(),
            "^has_journal".as_ref(),
            "-E".as_ref(),
            "lazy_itable_init=1,nodiscard".as_ref(),
            image.as_os_str(),
        ],
        &image,
    )
    .await?;
    tool(
        "mount",
        &[
            "-o".as_ref(),
            "loop,nosuid,nodev".as_ref(),
            image.as_os_str(),
            mount_point.as_os_str(),
        ],
        &mount_point,
    )
    .await
}

/// Unmount (the loop device goes with it) and delete the image; gone already is fine.
/// The container must be gone first: its store file keeps the mount busy.
pub async fn remove(dir: &Path) -> Result<(), DiskError> {
    let mount_point = mount_point(dir);
    let wanted = mount_point.to_string_lossy();
    if crate::leaks::count_mounts(|mounted| mounted == wanted) > 0 {
        tool("umount", &[mount_point.as_os_str()], &mount_point).await?;
    }
    let image = dir.join(IMAGE);
    match std::fs::remove_file(&image) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DiskError::Image {
            path: image,
            source: e,
        }),
        _ => Ok(()),
    }
}

async fn tool(name: &'static str, args: &[&std::ffi::OsStr], path: &Path) -> Result<(), DiskError> {
    let fail = |detail: String| DiskError::Tool {
        tool: name,
        path: path.to_owned(),
        detail,
    };
    let out = Command::new(name)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TOOL_TIMEOUT, out)
        .await
        .map_err(|_| fail(format!("timed out after {TOOL_TIMEOUT:?}")))?
        .map_err(|e| {
            fail(format!(
                "cannot run it ({e}); is e2fsprogs/util-linux installed?"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removing_what_is_not_there_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove(dir.path()).await.expect("no disk");
    }
}
