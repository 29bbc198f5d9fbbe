//! The build cache every template shares: `<templates_dir>/<name>/<hash>/rootfs`.
//!
//! A build happens in `<name>/.tmp-<hash>-<pid>/` and is renamed to `<name>/<hash>/` only
//! when complete, so a directory named by a hash is always a whole build, and a crashed
//! build leaves only a `.tmp-` dir (removed by the prune of its template).

use std::io;
use std::path::{Path, PathBuf};

use crate::base::{BuildError, TemplatePath};

/// Where a build of `hash` stands.
pub(crate) enum Slot {
    /// A complete build exists.
    Cached(TemplatePath),
    /// Build into [`Work::rootfs`], then [`Work::publish`] (or [`Work::discard`]).
    Build(Work),
}

pub(crate) struct Work {
    dir: PathBuf,
    done: PathBuf,
    hash: String,
    pub(crate) rootfs: PathBuf,
}

/// Look up `hash` under `template_dir` and, if missing, prepare an empty work dir.
pub(crate) async fn slot(template_dir: &Path, hash: &str) -> Result<Slot, BuildError> {
    let done = template_dir.join(hash);
    if done.is_dir() {
        return Ok(Slot::Cached(TemplatePath {
            rootfs: done.join("rootfs"),
            hash: hash.to_owned(),
        }));
    }
    let dir = template_dir.join(format!(".tmp-{hash}-{}", std::process::id()));
    let prepare = |source| BuildError::PrepareDir {
        path: dir.clone(),
        source,
    };
    match remove_build_dir(&dir).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(prepare(e)),
        _ => {}
    }
    tokio::fs::create_dir_all(&dir).await.map_err(prepare)?;
    Ok(Slot::Build(Work {
        rootfs: dir.join("rootfs"),
        dir,
        done,
        hash: hash.to_owned(),
    }))
}

impl Work {
    /// Make the build visible under its hash.
    pub(crate) async fn publish(self) -> Result<TemplatePath, BuildError> {
        let result = TemplatePath {
            rootfs: self.done.join("rootfs"),
            hash: self.hash,
        };
        match tokio::fs::rename(&self.dir, &self.done).await {
            Ok(()) => Ok(result),
            // Another builder published the same recipe first: theirs is as good.
            Err(_) if self.done.is_dir() => {
                let _ = tokio::fs::remove_dir_all(&self.dir).await;
                Ok(result)
            }
            Err(source) => Err(BuildError::Publish {
                from: self.dir,
                to: self.done,
                source,
            }),
        }
    }

    /// Throw a failed build away.
    pub(crate) async fn discard(self) {
        let _ = remove_build_dir(&self.dir).await;
    }
}

/// Remove a build directory, first detaching anything still mounted inside it: a build
/// killed mid-step leaves the host's /dev bound into its chroot, and deleting through
/// that mount would delete the host's device nodes.
pub async fn remove_build_dir(dir: &Path) -> io::Result<()> {
    let mountinfo = tokio::fs::read_to_string("/proc/self/mountinfo")
        .await
        .unwrap_or_default();
    let mut inside: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    // Deepest first.
    inside.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in inside {
        let _ = tokio::process::Command::new("umount")
            .args(["-R", "-l", point])
            .status()
            .await;
    }
    tokio::fs::remove_dir_all(dir).await
}

/// Make `rootfs` the newest build of its template (see [`newest_build`]).
pub(crate) fn touch(rootfs: &Path) {
    let touched =
        std::fs::File::open(rootfs).and_then(|dir| dir.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::warn!(rootfs = %rootfs.display(), error = %e, "marking a build the newest");
    }
}

/// The rootfs of the newest complete build under `template_dir`, if any: builds only
/// ever appear complete, so any `<hash>/rootfs` is usable.
pub fn newest_build(template_dir: &Path) -> Option<TemplatePath> {
    std::fs::read_dir(template_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| TemplatePath {
            rootfs: entry.path().join("rootfs"),
            hash: entry.file_name().to_string_lossy().into_owned(),
        })
        .filter(|build| build.rootfs.is_dir())
        .max_by_key(|build| build.rootfs.metadata().and_then(|m| m.modified()).ok())
}
