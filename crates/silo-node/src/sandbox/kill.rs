//! Kill: `Killing` first (so no new traffic is routed and the sandbox disappears from the
//! API at once), then destroy in the background, then `Killed`.
//!
//! Destroying takes over a second (`runsc delete` dominates), so the caller does not wait
//! for it; `Manager::shutdown` does, and a crash in between is finished by reconcile.
//!
//! The destroy runs under the sandbox's lifecycle lock: a pause, resume or snapshot
//! under way ends first (its next state change then finds the row `Killing` and gives
//! up), and what it left (a restored container, an address) is destroyed after it.
//! So nothing that holds that lock may wait for a teardown.

use std::sync::Arc;

use silo_catalog::{CatalogError, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

impl Manager {
    /// Kill a sandbox: it is gone for the API when this returns.
    pub fn kill(self: &Arc<Self>, id: &SandboxId, reason: &str) -> Result<(), SandboxError> {
        let from = self.begin_kill(id, self.get(id)?.state, reason)?;
        let manager = Arc::clone(self);
        let id = id.clone();
        self.tasks.spawn(async move {
            // The last of its log, while its agent still answers.
            let collect_logs = from == SandboxState::Running;
            if let Err(err) = manager.destroy_killing(&id, collect_logs).await {
                tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "releasing a killed sandbox failed; reconcile retries at the next start");
            }
        });
        Ok(())
    }

    /// Move a sandbox from `from` to `Killing`; returns the state it was killed in. A
    /// pause or resume may have moved it since `from` was read: the kill then goes on
    /// from where it is. Losing the race to another kill is "not found": that kill owns
    /// the teardown.
    fn begin_kill(
        &self,
        id: &SandboxId,
        mut from: SandboxState,
        reason: &str,
    ) -> Result<SandboxState, SandboxError> {
        loop {
            match self
                .catalog
                .transition(id, from, SandboxState::Killing, reason)
            {
                Ok(()) => {
                    self.traffic.close(id);
                    return Ok(from);
                }
                Err(CatalogError::StateChanged { actual, .. })
                    if !matches!(actual, SandboxState::Killing | SandboxState::Killed) =>
                {
                    from = actual;
                }
                Err(CatalogError::StateChanged { .. }) => {
                    return Err(SandboxError::NotFound(id.clone()))
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Take a sandbox in `from` through `Killing` to `Killed`, waiting for its release.
    /// The caller must not hold the sandbox's lifecycle lock.
    pub(super) async fn finish_kill(
        &self,
        id: &SandboxId,
        from: SandboxState,
        reason: &str,
    ) -> Result<(), SandboxError> {
        self.begin_kill(id, from, reason)?;
        self.destroy_killing(id, false).await
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

    /// Release the resources of a sandbox in `Killing` (its log collected first if
    /// `collect_logs`), then mark it `Killed`; one already released is left as it is.
    /// Waits for the lifecycle operation under way, if any (see the module doc). On
    /// failure it stays `Killing`, and reconcile retries at the next start.
    pub(super) async fn destroy_killing(
        &self,
        id: &SandboxId,
        collect_logs: bool,
    ) -> Result<(), SandboxError> {
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let rec = match self.catalog.get_sandbox(id)? {
            Some(rec) if rec.state == SandboxState::Killing => rec,
            _ => return Ok(()),
        };
        if collect_logs {
            if let Ok(_awake) = self.enter(id) {
                self.collect_logs(&rec).await;
            }
        }
        self.destroy_runtime(id).await?;
        self.catalog.set_address(id, None)?;
        self.catalog
            .transition(id, SandboxState::Killing, SandboxState::Killed, "released")?;
        self.activity.forget(id);
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, FakeRuntime, Held, Verb};
    use super::*;

    fn running() -> (Arc<FakeRuntime>, Arc<Manager>, tempfile::TempDir, SandboxId) {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, dir) = fake::manager(Arc::clone(&runtime));
        let rec = fake::record(SandboxState::Running, 60_000);
        manager.catalog.insert_sandbox(&rec).unwrap();
        runtime.insert(&rec.id, Held::Running);
        (runtime, manager, dir, rec.id)
    }

    fn row(manager: &Manager, id: &SandboxId) -> silo_catalog::SandboxRecord {
        manager.catalog.get_sandbox(id).unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_kill_that_read_a_state_since_changed_goes_on_from_the_new_one() {
        let (_runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        // The kill read `Running` just before the pause landed.
        let from = manager
            .begin_kill(&id, SandboxState::Running, "test")
            .unwrap();
        assert_eq!(from, SandboxState::Paused);
        assert_eq!(row(&manager, &id).state, SandboxState::Killing);
    }

    #[tokio::test]
    async fn a_kill_that_lost_the_race_to_another_kill_is_not_found() {
        let (_runtime, manager, _dir, id) = running();
        manager
            .begin_kill(&id, SandboxState::Running, "first")
            .unwrap();
        let err = manager
            .begin_kill(&id, SandboxState::Running, "second")
            .unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
    }

    #[tokio::test]
    async fn a_kill_during_a_resume_destroys_after_the_resume_ends() {
        let (runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        runtime.hold(Verb::Resume);
        let resume = tokio::spawn({
            let (manager, id) = (Arc::clone(&manager), id.clone());
            async move { manager.resume(&id, None, "test").await }
        });
        runtime.began().await;
        manager.kill(&id, "test").unwrap();
        // Its teardown's turn, were it not waiting for the resume.
        tokio::task::yield_now().await;
        runtime.release();
        let err = resume.await.unwrap().unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
        manager.shutdown().await;

        assert_eq!(
            runtime.done(),
            [
                Verb::Pause,
                Verb::Resume,
                Verb::ResumeAfterThaw,
                Verb::Destroy
            ],
            "destroyed after the restore, not under it"
        );
        assert_eq!(runtime.held(&id), None);
        let rec = row(&manager, &id);
        assert_eq!(rec.state, SandboxState::Killed);
        assert_eq!(rec.address, None, "the address the resume wrote is gone");
    }

    #[tokio::test]
    async fn a_pause_asked_during_a_teardown_waits_for_it_and_finds_nothing() {
        let (runtime, manager, _dir, id) = running();
        runtime.hold(Verb::Destroy);
        manager.kill(&id, "test").unwrap();
        runtime.began().await;
        let pause = tokio::spawn({
            let (manager, id) = (Arc::clone(&manager), id.clone());
            async move { manager.pause(&id, "test").await }
        });
        tokio::task::yield_now().await;
        runtime.release();
        let err = pause.await.unwrap().unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
        manager.shutdown().await;
        assert_eq!(runtime.done(), [Verb::Destroy]);
        assert_eq!(row(&manager, &id).state, SandboxState::Killed);
    }
}
