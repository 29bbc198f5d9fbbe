//! Kill: `Killing` first (so no new traffic is routed and the sandbox disappears from the
//! API at once), then destroy in the background, then `Killed`.
//!
//! Destroying takes over a second (`runsc delete` dominates), so the caller does not wait
//! for it; `Manager::shutdown` does, and a crash in between is finished by reconcile.

use std::sync::Arc;

use silo_catalog::{CatalogError, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

impl Manager {
    /// Kill a sandbox: it is gone for the API when this returns.
    pub fn kill(self: &Arc<Self>, id: &SandboxId, reason: &str) -> Result<(), SandboxError> {
        let rec = self.get(id)?;
        self.begin_kill(id, rec.state, reason)?;
        let manager = Arc::clone(self);
        let id = id.clone();
        self.tasks.spawn(async move {
            // The last of its log, while its agent still answers (awake).
            if rec.state == SandboxState::Running {
                if let Ok(_awake) = manager.enter(&id) {
                    manager.collect_logs(&rec).await;
                }
            }
            if let Err(err) = manager.destroy_killing(&id).await {
                tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "releasing a killed sandbox failed; reconcile retries at the next start");
            }
        });
        Ok(())
    }

    /// Move a sandbox from `from` to `Killing`. Losing a race to another kill is
    /// "not found": that kill owns the teardown.
    fn begin_kill(
        &self,
        id: &SandboxId,
        from: SandboxState,
        reason: &str,
    ) -> Result<(), SandboxError> {
        match self
            .catalog
            .transition(id, from, SandboxState::Killing, reason)
        {
            Ok(()) => {
                self.traffic.close(id);
                Ok(())
            }
            Err(CatalogError::StateChanged { .. }) => Err(SandboxError::NotFound(id.clone())),
            Err(err) => Err(err.into()),
        }
    }

    /// Take a sandbox in `from` through `Killing` to `Killed`, waiting for its release.
    pub(super) async fn finish_kill(
        &self,
        id: &SandboxId,
        from: SandboxState,
        reason: &str,
    ) -> Result<(), SandboxError> {
        self.begin_kill(id, from, reason)?;
        self.destroy_killing(id).await
    }

    /// Release whatever the runtime holds for `id` (idempotent).
    pub(super) async fn destroy_runtime(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.runtime
            .destroy(id)
            .await
            .map_err(|source| SandboxError::Destroy {
                id: id.clone(),
                source: Box::new(source),
            })
    }

    /// Release the resources of a sandbox already in `Killing`, then mark it `Killed`.
    /// On failure it stays `Killing`, and reconcile retries at the next start.
    pub(super) async fn destroy_killing(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.destroy_runtime(id).await?;
        self.catalog.set_address(id, None)?;
        self.catalog
            .transition(id, SandboxState::Killing, SandboxState::Killed, "released")?;
        self.activity.forget(id);
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }
}
