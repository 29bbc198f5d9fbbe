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

/// Mark `path` used now: a build's rootfs becomes the newest of its template (see
/// [`newest_build`]), a cache entry is kept longer (see [`prune_cache`]).
pub fn touch(path: &Path) {
    let touched =
        std::fs::File::open(path).and_then(|file| file.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::warn!(path = %path.display(), error = %e, "cannot mark as used");
    }
}

/// The stores of the build cache under a templates dir: step layers
/// (`.layers/<key>`) and unpacked images (`.images/<key>`).
const CACHE_STORES: [&str; 2] = [".layers", ".images"];

/// Where pulled image blobs are kept, among the unpacked images; not an entry.
const PULLED: &str = "pulled";

/// Remove the build cache's entries not used for `unused_for` (an entry is marked used
/// when made and when a build finds it), and return them. Only where no build is under
/// way: a build reads its entries without holding them. Half-made entries (`.tmp-`) are
/// [`crate::remove_dead_builds`]' to remove.
pub async fn prune_cache(templates_dir: &Path, unused_for: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for store in CACHE_STORES {
        for path in unused_entries(&templates_dir.join(store), unused_for) {
            if path.file_name().is_some_and(|name| name == PULLED) {
                continue;
            }
            match remove_build_dir(&path).await {
                Ok(()) => removed.push(path),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused cache entry");
                }
            }
        }
    }
    removed
}

/// The entries of the cache store `store` not used for `unused_for`, hidden ones (being
/// made) aside. An entry was last used when it, or its `rootfs` (what a build touches
/// of an unpacked image), was last modified.
pub fn unused_entries(store: &Path, unused_for: std::time::Duration) -> Vec<PathBuf> {
    let Some(cutoff) = std::time::SystemTime::now().checked_sub(unused_for) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .filter(|path| {
            let last_used = [path.clone(), path.join("rootfs")]
                .iter()
                .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
                .max();
            last_used.is_none_or(|used| used < cutoff)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn used_at(path: &Path, at: SystemTime) {
        std::fs::File::open(path)
            .and_then(|file| file.set_modified(at))
            .expect("set mtime");
    }

    #[tokio::test]
    async fn the_cache_prune_takes_only_entries_unused_for_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let week_ago = SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
        let entries = [
            ".layers/old",
            ".layers/fresh",
            ".layers/.tmp-old-1",
            ".images/old/rootfs",
            ".images/used-lately/rootfs",
            ".images/pulled/blobs",
        ];
        for entry in entries {
            std::fs::create_dir_all(dir.path().join(entry)).expect("mkdir");
        }
        for entry in entries.iter().filter(|e| !e.contains("fresh")) {
            let path = dir.path().join(entry);
            used_at(&path, week_ago);
            used_at(path.parent().expect("in a store"), week_ago);
        }
        // A build found this image: its rootfs was touched.
        touch(&dir.path().join(".images/used-lately/rootfs"));

        let mut removed = prune_cache(dir.path(), Duration::from_secs(24 * 3600)).await;
        removed.sort();
        assert_eq!(
            removed,
            [
                dir.path().join(".images/old"),
                dir.path().join(".layers/old")
            ]
        );
        for kept in [
            ".layers/fresh",
            ".layers/.tmp-old-1",
            ".images/used-lately",
            ".images/pulled",
        ] {
            assert!(dir.path().join(kept).is_dir(), "{kept}");
        }
    }
}
