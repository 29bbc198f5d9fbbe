//! Timeouts: the end time lives in the catalog (so it survives restarts); one reaper task
//! kills what has expired, or pauses it when it was created with `auto_pause`. The
//! reaper also releases sandboxes that died on their own, and tries again the kills
//! whose teardown failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use silo_catalog::{now_ms, SandboxState};
use silo_protocol::ids::SandboxId;

use super::pause::PauseCause;
use super::{Manager, SandboxError};

/// How often the reaper looks for expired sandboxes: the precision of timeouts.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many reaper rounds it also looks for sandboxes that died on their own.
const SWEEP_EVERY: u32 = 10;

impl Manager {
    /// End a running sandbox (kill, or pause if `auto_pause`) `seconds` from now,
    /// sooner or later than before. A paused sandbox has none to set: it gets one when
    /// it resumes (E2B answers 404 there too).
    /// Checked and written at once, so a pause at timeout that begins meanwhile either
    /// sees the new end time or makes this a [`SandboxError::WrongState`].
    pub fn set_timeout(&self, id: &SandboxId, seconds: u64) -> Result<(), SandboxError> {
        let end = now_ms() + self.clamp_timeout(Some(seconds)).as_millis() as i64;
        if self
            .catalog
            .set_end_at_in(id, end, &[SandboxState::Running])?
        {
            return Ok(());
        }
        match self.get(id)?.state {
            SandboxState::Paused => Err(SandboxError::TimeoutWhilePaused(id.clone())),
            state => Err(SandboxError::WrongState {
                id: id.clone(),
                state,
            }),
        }
    }

    /// Pause a sandbox whose end time passed, if it still has (see
    /// [`PauseCause::Timeout`]). One that fails is tried again later, and its history
    /// says why.
    async fn pause_at_timeout(&self, id: &SandboxId) {
        match self.pause_held(id, PauseCause::Timeout).await {
            Ok(())
            | Err(
                SandboxError::NotFound(_)
                | SandboxError::AlreadyPaused(_)
                | SandboxError::WrongState { .. },
            ) => self.timeout_pauses.succeeded(id),
            Err(err) => {
                let wait = self.timeout_pauses.failed(id, Instant::now());
                let why = crate::error_chain(&err);
                tracing::error!(sandbox_id = %id, error = %why, ?wait, "pause at timeout failed; tried again later");
                let note = format!(
                    "pause at timeout failed, tried again in {} s: {why}",
                    wait.as_secs()
                );
                if let Err(err) = self.catalog.note(id, &note) {
                    tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "cannot record a failed pause");
                }
            }
        }
    }

    /// Connect: a paused sandbox is resumed (then `true` is returned) with `seconds` to
    /// live, `reason` recorded; for a running one a timeout given only ever extends its
    /// life.
    pub async fn connect(
        self: &Arc<Self>,
        id: &SandboxId,
        seconds: Option<u64>,
        reason: &str,
    ) -> Result<(silo_catalog::SandboxRecord, bool), SandboxError> {
        let mut rec = self.get(id)?;
        if rec.state != SandboxState::Running {
            let (resumed_rec, resumed) = self.resume(id, seconds, reason).await?;
            if resumed {
                return Ok((resumed_rec, true));
            }
            rec = resumed_rec;
        }
        if let Some(seconds) = seconds {
            let end = now_ms() + self.clamp_timeout(Some(seconds)).as_millis() as i64;
            if end > rec.end_at_ms {
                self.catalog.set_end_at(id, end)?;
                rec.end_at_ms = end;
            }
        }
        Ok((rec, false))
    }

    /// Sandboxes the catalog has running whose container is gone (the host's OOM killer
    /// took it, or someone killed it outside silo) are recorded as killed, with why, and
    /// what is left of them is released.
    async fn sweep_dead(self: &Arc<Self>) {
        // The catalog first: a sandbox running in it was started before the listing.
        let running = match self.catalog.sandboxes_in(&[SandboxState::Running]) {
            Ok(running) => running,
            Err(err) => {
                tracing::error!(error = %crate::error_chain(&err), "sweep cannot read the catalog");
                return;
            }
        };
        if running.is_empty() {
            return;
        }
        let alive: std::collections::HashSet<_> = match self.runtime.running().await {
            Ok(ids) => ids.into_iter().collect(),
            Err(err) => {
                tracing::warn!(error = %crate::error_chain(&err), "sweep cannot list containers");
                return;
            }
        };
        for rec in running.iter().filter(|rec| !alive.contains(&rec.id)) {
            // A pause may have stopped its container since the catalog was read (a
            // checkpoint does): look again, with no pause or resume under way.
            let lock = self.lifecycle_lock(&rec.id);
            let _held = lock.lock().await;
            let still_running = self
                .get(&rec.id)
                .is_ok_and(|now| now.state == SandboxState::Running);
            let container_gone = self
                .runtime
                .running()
                .await
                .is_ok_and(|ids| !ids.contains(&rec.id));
            if !(still_running && container_gone) {
                continue;
            }
            tracing::warn!(sandbox_id = %rec.id, "sandbox died outside silo's control; releasing it");
            let reason = "died: its container exited (out of memory, or killed outside silo)";
            match self.kill(&rec.id, reason) {
                Ok(()) | Err(SandboxError::NotFound(_)) => {}
                Err(err) => {
                    tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "releasing a dead sandbox failed")
                }
            }
        }
    }

    /// Kill expired sandboxes until the process ends.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u32;
        loop {
            tick.tick().await;
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(SWEEP_EVERY) {
                self.sweep_dead().await;
            }
            self.retry_teardowns(Instant::now());
            let expired = match self.catalog.expired(now_ms()) {
                Ok(expired) => expired,
                Err(err) => {
                    tracing::error!(error = %crate::error_chain(&err), "reaper cannot read the catalog");
                    continue;
                }
            };
            self.timeout_pauses
                .keep_only(&expired.iter().map(|rec| rec.id.clone()).collect());
            for rec in expired {
                if rec.auto_pause {
                    if self.timeout_pauses.begin(&rec.id, Instant::now()) {
                        let manager = Arc::clone(&self);
                        self.tasks
                            .spawn(async move { manager.pause_at_timeout(&rec.id).await });
                    }
                    continue;
                }
                match self.kill(&rec.id, "timeout") {
                    Ok(()) | Err(SandboxError::NotFound(_)) => {}
                    Err(err) => {
                        tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "kill at timeout failed")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, FakeRuntime, Held, Verb};
    use super::super::retry::RETRY_MAX;
    use super::*;

    fn with_row(
        runtime: &Arc<FakeRuntime>,
        manager: &Manager,
        end_in_ms: i64,
    ) -> silo_catalog::SandboxRecord {
        let rec = fake::record(SandboxState::Running, end_in_ms);
        manager.catalog.insert_sandbox(&rec).unwrap();
        runtime.insert(&rec.id, Held::Running);
        rec
    }

    fn state(manager: &Manager, id: &SandboxId) -> SandboxState {
        manager.catalog.get_sandbox(id).unwrap().unwrap().state
    }

    #[tokio::test]
    async fn a_pause_at_timeout_honours_a_timeout_set_since_the_reaper_looked() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&runtime, &manager, -1_000);
        // The reaper saw it expired; a set_timeout lands before the pause begins.
        manager.set_timeout(&rec.id, 60).unwrap();
        manager.pause_at_timeout(&rec.id).await;
        assert_eq!(state(&manager, &rec.id), SandboxState::Running);
        assert_eq!(runtime.held(&rec.id), Some(Held::Running));
    }

    #[tokio::test]
    async fn a_pause_at_timeout_that_fails_is_tried_again_later_and_noted() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&runtime, &manager, -1_000);
        runtime.fail(Verb::Pause);
        let now = Instant::now();
        assert!(manager.timeout_pauses.begin(&rec.id, now));
        assert!(!manager.timeout_pauses.begin(&rec.id, now), "one under way");
        manager.pause_at_timeout(&rec.id).await;

        assert_eq!(state(&manager, &rec.id), SandboxState::Running);
        assert!(!manager.timeout_pauses.begin(&rec.id, now), "backed off");
        assert!(
            manager.timeout_pauses.begin(&rec.id, now + RETRY_MAX),
            "tried again"
        );
        let events = manager.catalog.events(&rec.id).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.detail.starts_with("pause at timeout failed")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_pause_at_timeout_pauses_an_expired_sandbox() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&runtime, &manager, -1_000);
        manager.pause_at_timeout(&rec.id).await;
        assert_eq!(state(&manager, &rec.id), SandboxState::Paused);
        assert_eq!(runtime.held(&rec.id), Some(Held::Frozen));
    }

    #[tokio::test]
    async fn a_sandbox_found_dead_is_released_though_the_sweep_holds_its_lock() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&runtime, &manager, 60_000);
        runtime.insert(&rec.id, Held::Stopped);
        // The sweep kills under the lifecycle lock, and the teardown takes it: the kill
        // must not wait for its teardown there.
        manager.sweep_dead().await;
        manager.shutdown().await;
        assert_eq!(state(&manager, &rec.id), SandboxState::Killed);
        assert_eq!(runtime.held(&rec.id), None);
    }

    #[tokio::test]
    async fn a_paused_sandbox_has_no_timeout_to_set_and_resumes_with_its_own() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&runtime, &manager, 60_000);
        manager.pause(&rec.id, "test").await.unwrap();
        let before = manager.catalog.get_sandbox(&rec.id).unwrap().unwrap();

        let err = manager.set_timeout(&rec.id, 3_600).unwrap_err();
        assert!(matches!(err, SandboxError::TimeoutWhilePaused(_)), "{err}");
        let after = manager.catalog.get_sandbox(&rec.id).unwrap().unwrap();
        assert_eq!(after.end_at_ms, before.end_at_ms, "nothing written");

        let asked_at = now_ms();
        manager.resume(&rec.id, Some(120), "test").await.unwrap();
        let resumed = manager.catalog.get_sandbox(&rec.id).unwrap().unwrap();
        assert!(
            (asked_at + 120_000..asked_at + 3_600_000).contains(&resumed.end_at_ms),
            "the resume's timeout: {}",
            resumed.end_at_ms - asked_at
        );
    }
}
