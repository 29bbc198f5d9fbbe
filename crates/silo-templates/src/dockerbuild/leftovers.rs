//! What a build whose process died (a crash, SIGKILL, power loss) left behind, and its
//! removal.
//!
//! A build works in temp dirs named for its process, `.tmp-<hash>-<pid>` and
//! `.flatten-<pid>`: a step's layer in `.layers/.tmp-…`, its root an overlay mounted
//! there and a RUN step's runsc container bundled there (`bundle/`); the flattening
//! overlay in `.layers/.flatten-…`; the template copied into `<template>/.tmp-…`; an
//! image unpacked into `.images/.tmp-…`. Once that process is gone no one finishes or
//! removes them, and a RUN step's container keeps running: its `runsc run` outlives
//! the server. [`remove_dead_builds`] ends those containers and removes those dirs,
//! with whatever is still mounted in them. `silo serve` calls it at its start and every
//! build before its first step; what a live process builds (another server or
//! `silo template build` on the same dir) is left alone.
//!
//! A RUN step's network is not here: silo-node made it and releases it at its start
//! (its `step_network`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::run::{self, BuildRunsc};
use crate::base::builder_dead;
use crate::cache;

/// What [`remove_dead_builds`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// RUN steps' runsc containers, by id.
    pub containers: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.dirs.is_empty()
    }
}

/// End the RUN step containers of dead builds under `runsc`'s root, then remove dead
/// builds' temp dirs under `templates_dir` (unmounting what is mounted in them first).
/// Containers go first: a step's sandbox holds its root, the overlay in its dir.
/// Idempotent; what cannot be removed is logged and tried again next time.
pub async fn remove_dead_builds(templates_dir: &Path, runsc: &BuildRunsc) -> Removed {
    let mut removed = Removed::default();
    let mut failed = Vec::new();
    for id in dead_containers(&list_containers(runsc).await) {
        match run::delete_container(runsc, &id).await {
            Ok(()) => removed.containers.push(id),
            Err(e) => failed.push((id, e)),
        }
    }
    if !failed.is_empty() {
        // A delete may fail after removing the container, waiting for its sandbox
        // process to be reaped (a killed server's `runsc run` is its parent): what is
        // no longer listed is gone.
        let listed = list_containers(runsc).await;
        for (id, e) in failed {
            if listed.iter().any(|c| c.id == id) {
                tracing::warn!(container = id, error = %e, "deleting a dead build's RUN step container");
            } else {
                removed.containers.push(id);
            }
        }
    }
    for dir in dead_build_dirs(templates_dir) {
        match cache::remove_build_dir(&dir).await {
            Ok(()) => removed.dirs.push(dir),
            // Removed meanwhile, by whoever else cleans: as good.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "removing a dead build's temp dir")
            }
        }
    }
    removed
}

/// A container as `runsc list -format=json` reports it (the OCI state).
#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
    bundle: PathBuf,
}

/// The containers under the build root; none if runsc cannot say (logged: the next
/// call asks again).
async fn list_containers(runsc: &BuildRunsc) -> Vec<Listed> {
    if !runsc.root.is_dir() {
        return Vec::new();
    }
    let out = tokio::process::Command::new(&runsc.binary)
        .arg(format!("--root={}", runsc.root.display()))
        .args(["list", "-format=json"])
        .output()
        .await;
    let listed = match out {
        Ok(out) if out.status.success() => {
            // An empty root lists as `null`.
            serde_json::from_slice::<Option<Vec<Listed>>>(&out.stdout).map_err(|e| e.to_string())
        }
        Ok(out) => Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(e.to_string()),
    };
    match listed {
        Ok(listed) => listed.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(root = %runsc.root.display(), error, "listing build containers");
            Vec::new()
        }
    }
}

/// The containers no live build runs: their bundle is in a dead builder's dir, or gone.
fn dead_containers(listed: &[Listed]) -> Vec<String> {
    listed
        .iter()
        .filter(|c| {
            let builder = c.bundle.parent().and_then(Path::file_name);
            !c.bundle.is_dir() || builder.is_some_and(|name| builder_dead(&name.to_string_lossy()))
        })
        .map(|c| c.id.clone())
        .collect()
}

/// Dead builders' temp dirs: in `.layers`, `.images` and each template's dir. A
/// template dir linked in from elsewhere is that other place's to clean.
fn dead_build_dirs(templates_dir: &Path) -> Vec<PathBuf> {
    let entries = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
    };
    let templates = entries(templates_dir)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        // The entry's own type: a symlink is not followed.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path());
    let parents: Vec<PathBuf> = [templates_dir.join(".layers"), templates_dir.join(".images")]
        .into_iter()
        .chain(templates)
        .collect();
    let mut dead: Vec<PathBuf> = parents
        .iter()
        .flat_map(|dir| entries(dir))
        .filter(|e| builder_dead(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    dead.sort();
    dead
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has (above the kernel's maximum).
    const DEAD: u32 = 4_294_967_295;

    fn runsc_at(root: PathBuf) -> BuildRunsc {
        BuildRunsc {
            binary: "runsc".into(),
            platform: "systrap".into(),
            root,
        }
    }

    #[test]
    fn finds_dead_builders_dirs_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("templates");
        let me = std::process::id();
        let dead = [
            format!(".layers/.tmp-0123456789abcdef-{DEAD}"),
            format!(".layers/.flatten-{DEAD}"),
            format!(".images/.tmp-0123456789abcdef-{DEAD}"),
            format!("web/.tmp-0123456789abcdef-{DEAD}"),
        ];
        let kept = [
            // A live builder's, complete layers and builds, and what is no build's.
            format!(".layers/.tmp-fedcba9876543210-{me}"),
            format!("web/.tmp-fedcba9876543210-{me}"),
            ".layers/0123456789abcdef".to_owned(),
            "web/0123456789abcdef/rootfs".to_owned(),
            format!(".uploads/.tmp-0123456789abcdef-{DEAD}"),
            format!("web/.keep-{DEAD}"),
        ];
        for path in dead.iter().chain(&kept) {
            std::fs::create_dir_all(t.join(path)).unwrap();
        }
        // A template linked in from another template dir is not this one's to clean.
        let elsewhere = dir.path().join("shared/base");
        std::fs::create_dir_all(elsewhere.join(format!(".tmp-0123456789abcdef-{DEAD}"))).unwrap();
        std::os::unix::fs::symlink(&elsewhere, t.join("base")).unwrap();

        let found = dead_build_dirs(&t);
        let mut expected: Vec<PathBuf> = dead.iter().map(|p| t.join(p)).collect();
        expected.sort();
        assert_eq!(found, expected);
        assert!(dead_build_dirs(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn containers_of_dead_or_vanished_builds_are_dead() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join(".layers");
        let bundle = |builder: &str| {
            let path = layers.join(builder).join("bundle");
            std::fs::create_dir_all(&path).unwrap();
            path
        };
        let listed = [
            Listed {
                id: "silo-build-dead".into(),
                bundle: bundle(&format!(".tmp-0123456789abcdef-{DEAD}")),
            },
            Listed {
                id: "silo-build-live".into(),
                bundle: bundle(&format!(".tmp-0123456789abcdef-{}", std::process::id())),
            },
            Listed {
                id: "silo-build-gone".into(),
                bundle: layers.join("removed/bundle"),
            },
        ];
        assert_eq!(
            dead_containers(&listed),
            ["silo-build-dead", "silo-build-gone"]
        );
    }

    #[tokio::test]
    async fn removes_dead_builds_dirs_with_their_mounts_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("templates");
        let stale = t.join(format!(".layers/.tmp-0123456789abcdef-{DEAD}"));
        let merged = stale.join("merged");
        std::fs::create_dir_all(&merged).unwrap();
        std::fs::write(stale.join("diff"), "a layer cut short").unwrap();
        // As root, an overlay's stand-in stays mounted in it, as a killed build leaves it.
        let mounted = tokio::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&merged)
            .status()
            .await
            .is_ok_and(|s| s.success());
        if mounted {
            std::fs::write(merged.join("in-the-mount"), "x").unwrap();
        }
        let runsc = runsc_at(dir.path().join("no-runsc-root"));

        let removed = remove_dead_builds(&t, &runsc).await;
        assert_eq!(
            removed,
            Removed {
                containers: Vec::new(),
                dirs: vec![stale.clone()],
            }
        );
        assert!(!stale.exists());
        let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*merged.to_string_lossy()));
        assert!(!still_mounted);
        // Nothing is left to do a second time.
        assert!(remove_dead_builds(&t, &runsc).await.is_empty());
    }
}
