//! Snapshots and fork: a sandbox saved whole (memory, processes, files) into an image,
//! and new sandboxes restored from it, each with its own address, token and timeout.
//!
//! - `snapshot`: the image goes to `<snapshots>/<id>/` and a catalog row names it; the
//!   source runs on (or stays paused). Sandboxes are created from it by id or name, as
//!   from a template.
//! - `fork`: the same save into a temporary image, `count` sandboxes restored from it,
//!   the image removed.
//!
//! Before the save every connection to the sandbox is closed at both ends, as for a
//! checkpoint pause (docs/adr/0006-pause.md): a connection saved open can leave the
//! restored agent deaf with this runsc.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use silo_catalog::{now_ms, SandboxRecord, SandboxState, SnapshotRecord};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::Resources;

use super::create::{config_of, CreateRequest, Origin, SavedState};
use super::{Manager, SandboxError};

/// Most copies one fork may ask for (E2B's limit).
const MAX_FORKS: u32 = 20;

impl Manager {
    pub(super) fn snapshot_image(&self, snapshot_id: &str) -> PathBuf {
        self.snapshots_dir.join(snapshot_id)
    }

    /// The root filesystem `rec` was booted on: a saved state restores only onto the files
    /// it was saved over, and a template rebuilt since has a newer build. A sandbox from
    /// before silo recorded it gets its template's newest.
    fn booted_on(&self, rec: &SandboxRecord) -> Result<PathBuf, SandboxError> {
        match &rec.rootfs {
            Some(rootfs) => Ok(PathBuf::from(rootfs)),
            None => Ok(self.origin(&rec.template_id)?.rootfs),
        }
    }

    /// Save a running or paused sandbox as a snapshot; it stays as it was. The save
    /// ends (and the sandbox is thawed) even if the caller stops waiting.
    pub async fn snapshot(
        self: &Arc<Self>,
        id: &SandboxId,
        name: Option<String>,
    ) -> Result<SnapshotRecord, SandboxError> {
        let id = id.clone();
        self.detached(move |manager| async move { manager.snapshot_held(&id, name).await })
            .await
    }

    async fn snapshot_held(
        &self,
        id: &SandboxId,
        name: Option<String>,
    ) -> Result<SnapshotRecord, SandboxError> {
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let rec = self.get(id)?;
        let _awake = self.enter(id)?;
        let rootfs = self.booted_on(&rec)?;
        let snapshot_id = format!("snap{}", SandboxId::generate());
        let image = self.snapshot_image(&snapshot_id);
        self.save(&rec, &image).await?;
        let snap = SnapshotRecord {
            id: snapshot_id,
            name,
            sandbox_id: rec.id.clone(),
            template_id: rec.template_id.clone(),
            rootfs: rootfs.display().to_string(),
            cpu_count: rec.cpu_count,
            memory_mb: rec.memory_mb,
            disk_size_mb: rec.disk_size_mb,
            env_vars: rec.env_vars.clone(),
            access_token: rec.envd_access_token.clone(),
            created_at_ms: now_ms(),
        };
        if let Err(err) = self.catalog.insert_snapshot(&snap) {
            remove_image(&image).await;
            return Err(err.into());
        }
        tracing::info!(sandbox_id = %id, snapshot_id = %snap.id, "snapshot saved");
        Ok(snap)
    }

    /// `count` new sandboxes from the sandbox's state now, each succeeding or failing on
    /// its own. The source runs on. The fork ends (every copy running or released, the
    /// image removed) even if the caller stops waiting.
    pub async fn fork(
        self: &Arc<Self>,
        id: &SandboxId,
        count: u32,
        timeout_seconds: Option<u64>,
    ) -> Result<Vec<Result<SandboxRecord, SandboxError>>, SandboxError> {
        let id = id.clone();
        self.detached(
            move |manager| async move { manager.fork_held(&id, count, timeout_seconds).await },
        )
        .await
    }

    async fn fork_held(
        &self,
        id: &SandboxId,
        count: u32,
        timeout_seconds: Option<u64>,
    ) -> Result<Vec<Result<SandboxRecord, SandboxError>>, SandboxError> {
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(SandboxError::InvalidRequest(format!(
                "count {count}: fork 1 to {MAX_FORKS} sandboxes at a time"
            )));
        }
        let (rec, egress, origin) = {
            let lock = self.lifecycle_lock(id);
            let _held = lock.lock().await;
            let rec = self.get(id)?;
            let _awake = self.enter(id)?;
            let egress = super::network::stored_policy(&rec)?;
            let rootfs = self.booted_on(&rec)?;
            let config = config_of(&rootfs)?;
            let image = self
                .snapshots_dir
                .join(format!("fork{}", SandboxId::generate()));
            self.save(&rec, &image).await?;
            let origin = Origin {
                pin: None,
                name: format!("fork of {id}"),
                rootfs,
                config,
                resources: Resources {
                    cpu_count: Some(rec.cpu_count),
                    memory_mb: Some(rec.memory_mb),
                    disk_size_mb: Some(rec.disk_size_mb),
                },
                snapshot: Some(SavedState {
                    image,
                    access_token: rec.envd_access_token.clone(),
                    env_vars: rec.env_vars.clone(),
                }),
            };
            (rec, egress, origin)
        };
        let mut forks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let req = CreateRequest {
                template: rec.template_id.clone(),
                timeout_seconds,
                metadata: rec.metadata.clone(),
                env_vars: Default::default(),
                secure: rec.envd_access_token.is_some(),
                auto_pause: rec.auto_pause,
                auto_resume: rec.auto_resume,
                egress: egress.clone(),
                public_traffic: rec.traffic_access_token.is_none(),
                resources: Resources::default(),
            };
            forks.push(
                self.create_from(req, origin.clone(), SandboxState::Running)
                    .await,
            );
        }
        if let Some(saved) = &origin.snapshot {
            remove_image(&saved.image).await;
        }
        tracing::info!(sandbox_id = %id, count, ok = forks.iter().filter(|f| f.is_ok()).count(), "forked");
        Ok(forks)
    }

    /// Snapshots, newest first, optionally of one sandbox only.
    pub fn snapshots(&self, of: Option<&SandboxId>) -> Result<Vec<SnapshotRecord>, SandboxError> {
        Ok(self.catalog.snapshots(of)?)
    }

    /// Delete a snapshot by id or name; `false` when there is none. Sandboxes made from
    /// it run on (their memory is their own).
    pub async fn delete_snapshot(&self, id_or_name: &str) -> Result<bool, SandboxError> {
        let Some(snap) = self.catalog.snapshot(id_or_name)? else {
            return Ok(false);
        };
        // Row first: a crash between leaves an image without a row, removed at start.
        self.catalog.delete_snapshot(&snap.id)?;
        remove_image(&self.snapshot_image(&snap.id)).await;
        tracing::info!(snapshot_id = %snap.id, "snapshot deleted");
        Ok(true)
    }

    /// Images on disk no catalog row names (a crash mid-save or mid-delete, a fork cut
    /// short): removed. Returns how many.
    pub(super) async fn remove_orphan_images(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.snapshots_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if matches!(self.catalog.snapshot(&name), Ok(Some(snap)) if snap.id == name) {
                continue;
            }
            remove_image(&entry.path()).await;
            removed += 1;
        }
        removed
    }

    /// Close the sandbox's connections (it must be running or paused) and save it.
    async fn save(&self, rec: &SandboxRecord, image: &Path) -> Result<(), SandboxError> {
        match rec.state {
            SandboxState::Running => {
                if let Some(ip) = rec.ip() {
                    self.quiesce(&rec.id, ip, true).await;
                }
            }
            SandboxState::Paused => {}
            state => {
                return Err(SandboxError::WrongState {
                    id: rec.id.clone(),
                    state,
                })
            }
        }
        if let Some(parent) = image.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|source| {
                SandboxError::SnapshotsDir {
                    path: parent.to_owned(),
                    source,
                }
            })?;
        }
        self.runtime
            .snapshot(&rec.id, image)
            .await
            .map_err(|source| SandboxError::Snapshot {
                id: rec.id.clone(),
                source: Box::new(source),
            })
    }
}

async fn remove_image(image: &Path) {
    match tokio::fs::remove_dir_all(image).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(image = %image.display(), error = %e, "removing a snapshot image"),
    }
}
