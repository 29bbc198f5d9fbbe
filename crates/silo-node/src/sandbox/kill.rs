//! Kill: `Killing` first (so no new traffic is routed and the sandbox disappears from the
//! API at once), then destroy in the background, then `Killed`.
//!
//! Destroying takes over a second (`runsc delete` dominates), so the caller does not wait
//! for it; `Manager::shutdown` does, and a crash in between is finished by reconcile. A
//! teardown that fails (`runsc delete` refused) leaves the row `Killing`; the reaper
//! tries it again, waiting longer after each failure, and the sandbox's history says
//! why it failed.
//!
//! The destroy runs under the sandbox's lifecycle lock: a create's boot, a pause, resume
//! or snapshot under way ends first (its next state change then finds the row `Killing`
//! and gives up), and what it left (a container, an address) is destroyed after it.
//! So nothing that holds that lock may wait for a teardown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use silo_catalog::{CatalogError, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

impl Manager {
    /// Kill a sandbox: it is gone for the API when this returns.
    pub fn kill(self: &Arc<Self>, id: &SandboxId, reason: &str) -> Result<(), SandboxError> {
        let from = self.begin_kill(id, self.get(id)?.state, reason)?;
        // The last of its log, while its agent still answers.
        self.spawn_release(id, from == SandboxState::Running);
        Ok(())
    }

    /// Release a sandbox in `Killing` in the background, unless its release is under
    /// way (the reaper may have seen the row first) or waits after a failure.
    fn spawn_release(self: &Arc<Self>, id: &SandboxId, collect_logs: bool) {
        if !self.teardowns.begin(id, Instant::now()) {
            return;
        }
        let manager = Arc::clone(self);
        let id = id.clone();
        self.tasks.spawn(async move {
            if let Err(err) = manager.release(&id, collect_logs).await {
                tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "releasing a killed sandbox failed; the reaper tries again");
            }
        });
    }

    /// Try again the teardowns that failed, and those of rows left `Killing` (by a
    /// failed reconcile), each once its wait after the last failure is over at `now`.
    pub(super) fn retry_teardowns(self: &Arc<Self>, now: Instant) {
        let killing = match self.catalog.sandboxes_in(&[SandboxState::Killing]) {
            Ok(killing) => killing,
            Err(err) => {
                tracing::error!(error = %crate::error_chain(&err), "reaper cannot read the catalog");
                return;
            }
        };
        let ids: HashSet<SandboxId> = killing.into_iter().map(|rec| rec.id).collect();
        self.teardowns.keep_only(&ids);
        for id in ids {
            if self.teardowns.begin(&id, now) {
                let manager = Arc::clone(self);
                self.tasks.spawn(async move {
                    if let Err(err) = manager.release(&id, false).await {
                        tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "releasing a killed sandbox failed again; tried later");
                    }
                });
            }
        }
    }

    /// [`Manager::destroy_killing`], its outcome recorded for the reaper: a failure
    /// sets when it is tried again, and goes into the sandbox's history.
    pub(super) async fn release(
        &self,
        id: &SandboxId,
        collect_logs: bool,
    ) -> Result<(), SandboxError> {
        let outcome = self.destroy_killing(id, collect_logs).await;
        match &outcome {
            Ok(()) => self.teardowns.succeeded(id),
            Err(err) => {
                let wait = self.teardowns.failed(id, Instant::now());
                let note = format!(
                    "release failed, tried again in {} s: {}",
                    wait.as_secs(),
                    crate::error_chain(err)
                );
                if let Err(err) = self.catalog.note(id, &note) {
                    tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "cannot record a failed release");
                }
            }
        }
        outcome
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
        // Under way, so the reaper does not start another; had it started one first,
        // the lock orders the two and the second finds the sandbox released.
        self.teardowns.begin(id, Instant::now());
        self.release(id, false).await
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
    /// failure it stays `Killing`, for the reaper to try again.
    async fn destroy_killing(
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
    use super::super::fake::{running, Verb};
    use super::super::retry::RETRY_MAX;
    use super::*;

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

    #[tokio::test]
    async fn a_release_that_failed_is_tried_again_by_the_reaper_and_noted() {
        let (runtime, manager, _dir, id) = running();
        runtime.fail(Verb::Destroy);
        let err = manager
            .finish_kill(&id, SandboxState::Running, "test")
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::Destroy { .. }), "{err}");
        assert_eq!(row(&manager, &id).state, SandboxState::Killing);
        let events = manager.catalog.events(&id).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.detail.starts_with("release failed")),
            "{events:?}"
        );

        runtime.mend(Verb::Destroy);
        let now = Instant::now();
        manager.retry_teardowns(now);
        assert!(manager.tasks.is_empty(), "waits after a failure");
        manager.retry_teardowns(now + RETRY_MAX);
        manager.shutdown().await;
        assert_eq!(row(&manager, &id).state, SandboxState::Killed);
        assert_eq!(runtime.held(&id), None);
    }

    #[tokio::test]
    async fn the_reaper_leaves_a_release_under_way_alone() {
        let (runtime, manager, _dir, id) = running();
        runtime.hold(Verb::Destroy);
        manager.kill(&id, "test").unwrap();
        runtime.began().await;
        manager.retry_teardowns(Instant::now() + RETRY_MAX);
        assert_eq!(manager.tasks.len(), 1, "the kill's release only");
        runtime.release();
        manager.shutdown().await;
        assert_eq!(runtime.done(), [Verb::Destroy], "released once");
        assert_eq!(row(&manager, &id).state, SandboxState::Killed);
    }
}
