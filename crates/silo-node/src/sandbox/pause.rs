//! Pause and resume: `Running → Pausing → Paused → Resuming → Running`.
//!
//! The runtime freezes the sandbox, or checkpoints it to disk (`PauseMode`). Before
//! either, every connection between the host and the sandbox is closed, so streams end
//! as on E2B. Before a checkpoint silo also waits until the sandbox has closed its ends
//! (see [`Manager::quiesce`]): runsc 20240729 resets connections still open *while* it
//! checkpoints, which can leave a process's epoll deaf after the restore. Closing first
//! avoids the common case; what still fails is in docs/adr/0006-pause.md.
//!
//! One lifecycle operation runs at a time per sandbox (its lock), so two connects to a
//! paused sandbox resume it once, and the second sees it running.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use silo_catalog::{now_ms, CatalogError, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};
use crate::Paused;

/// Why a sandbox is paused.
#[derive(Debug, Clone, Copy)]
pub(super) enum PauseCause<'a> {
    /// Asked for; the reason goes into its history.
    Asked(&'a str),
    /// Its end time passed. Paused only if it still has when the pause begins: a
    /// `set_timeout` may have moved it since the reaper looked.
    Timeout,
}

/// A state change another operation got in first with (a kill): "not found".
fn lost_race(id: &SandboxId, err: CatalogError) -> SandboxError {
    match err {
        CatalogError::StateChanged { .. } => SandboxError::NotFound(id.clone()),
        err => err.into(),
    }
}

/// How long a pause waits for the sandbox to close connections the host closed.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(3);
const QUIESCE_POLL: Duration = Duration::from_millis(5);
const QUIESCE_SETTLE: Duration = Duration::from_millis(100);

impl Manager {
    /// Pause a running sandbox. A paused one is [`SandboxError::AlreadyPaused`]; on
    /// failure the sandbox keeps running and the error says why. The pause ends even if
    /// the caller stops waiting.
    pub async fn pause(self: &Arc<Self>, id: &SandboxId, reason: &str) -> Result<(), SandboxError> {
        let (id, reason) = (id.clone(), reason.to_owned());
        self.detached(move |manager| async move {
            manager.pause_held(&id, PauseCause::Asked(&reason)).await
        })
        .await
    }

    pub(super) async fn pause_held(
        &self,
        id: &SandboxId,
        cause: PauseCause<'_>,
    ) -> Result<(), SandboxError> {
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let rec = self.get(id)?;
        match rec.state {
            SandboxState::Running => {}
            SandboxState::Paused => return Err(SandboxError::AlreadyPaused(id.clone())),
            state => {
                return Err(SandboxError::WrongState {
                    id: id.clone(),
                    state,
                })
            }
        }
        // A paused agent answers nothing: collect its log first (awake).
        let _awake = self.enter(id)?;
        self.collect_logs(&rec).await;
        let reason = match cause {
            PauseCause::Asked(reason) => {
                self.step(id, SandboxState::Running, SandboxState::Pausing, reason)?;
                reason
            }
            PauseCause::Timeout => {
                let expired = self
                    .catalog
                    .transition_if_expired(
                        id,
                        SandboxState::Running,
                        SandboxState::Pausing,
                        now_ms(),
                        "timeout",
                    )
                    .map_err(|err| lost_race(id, err))?;
                if !expired {
                    tracing::info!(sandbox_id = %id, "not paused at timeout: its end time moved");
                    return Ok(());
                }
                "timeout"
            }
        };
        if let Some(ip) = rec.ip() {
            self.quiesce(id, ip, self.runtime.pause_saves_connections())
                .await;
        }
        match self.runtime.pause(id).await {
            Ok(paused) => {
                if paused == Paused::Saved {
                    // Its address went back to the pool; resume gives it another.
                    self.catalog.set_address(id, None)?;
                }
                self.step(
                    id,
                    SandboxState::Pausing,
                    SandboxState::Paused,
                    "checkpointed",
                )?;
                tracing::info!(sandbox_id = %id, reason, "sandbox paused");
                Ok(())
            }
            Err(source) => {
                self.step(
                    id,
                    SandboxState::Pausing,
                    SandboxState::Running,
                    "pause failed",
                )?;
                Err(SandboxError::Pause {
                    id: id.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Resume a paused sandbox (a running one is returned as is) and give it `timeout`
    /// from now; `reason` goes into its history. Returns the record and whether it was
    /// resumed. The resume ends even if the caller stops waiting.
    pub async fn resume(
        self: &Arc<Self>,
        id: &SandboxId,
        timeout_seconds: Option<u64>,
        reason: &str,
    ) -> Result<(SandboxRecord, bool), SandboxError> {
        let (id, reason) = (id.clone(), reason.to_owned());
        self.detached(move |manager| async move {
            manager.resume_held(&id, timeout_seconds, &reason).await
        })
        .await
    }

    async fn resume_held(
        &self,
        id: &SandboxId,
        timeout_seconds: Option<u64>,
        reason: &str,
    ) -> Result<(SandboxRecord, bool), SandboxError> {
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let rec = self.get(id)?;
        match rec.state {
            SandboxState::Paused => {}
            SandboxState::Running => return Ok((rec, false)),
            state => {
                return Err(SandboxError::WrongState {
                    id: id.clone(),
                    state,
                })
            }
        }
        let egress = super::network::stored_policy(&rec)?;
        self.step(id, SandboxState::Paused, SandboxState::Resuming, reason)?;
        let began = Instant::now();
        match self.runtime.resume(id, &egress).await {
            Ok(started) => {
                let end = now_ms() + self.clamp_timeout(timeout_seconds).as_millis() as i64;
                self.catalog.set_end_at(id, end)?;
                self.catalog
                    .set_address(id, Some(&started.ip.to_string()))?;
                self.step(
                    id,
                    SandboxState::Resuming,
                    SandboxState::Running,
                    "restored",
                )?;
                tracing::info!(sandbox_id = %id, took = ?began.elapsed(), "sandbox resumed");
                Ok((self.get(id)?, true))
            }
            // The runtime leaves a sandbox paused when its resume fails, unless it failed
            // after the thaw and could not be frozen again: then it runs, and the catalog
            // says so (a row left paused over a running sandbox could never be resumed).
            Err(source) if self.still_paused(id).await => {
                self.step(
                    id,
                    SandboxState::Resuming,
                    SandboxState::Paused,
                    "resume failed",
                )?;
                Err(SandboxError::Resume {
                    id: id.clone(),
                    source: Box::new(source),
                })
            }
            Err(source) => {
                let end = now_ms() + self.clamp_timeout(timeout_seconds).as_millis() as i64;
                self.catalog.set_end_at(id, end)?;
                self.step(
                    id,
                    SandboxState::Resuming,
                    SandboxState::Running,
                    "thawed, but its agent did not answer and it could not be paused again",
                )?;
                Err(SandboxError::ResumedSilent {
                    id: id.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// A state change this operation owns; a kill that got in first makes it "not found".
    fn step(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        detail: &str,
    ) -> Result<(), SandboxError> {
        self.catalog
            .transition(id, from, to, detail)
            .map_err(|err| lost_race(id, err))
    }

    /// Close every proxied connection to the sandbox and, before a checkpoint
    /// (`saving`), wait (bounded) until the sandbox has closed its ends. Stragglers are
    /// logged; the checkpoint resets them.
    pub(super) async fn quiesce(&self, id: &SandboxId, ip: Ipv4Addr, saving: bool) {
        self.traffic.close(id);
        if !saving {
            return;
        }
        let began = Instant::now();
        loop {
            match crate::network::open_connections(ip) {
                Ok(0) => {
                    // The sandbox's last ACKs and FINs still cross the link after the
                    // host's side is done; let them land before the save.
                    tokio::time::sleep(QUIESCE_SETTLE).await;
                    return;
                }
                Ok(open) if began.elapsed() >= QUIESCE_TIMEOUT => {
                    tracing::warn!(sandbox_id = %id, open, "connections still open at pause; they are reset");
                    return;
                }
                Ok(_) => tokio::time::sleep(QUIESCE_POLL).await,
                Err(err) => {
                    tracing::warn!(sandbox_id = %id, error = %err, "cannot read /proc/net/tcp; pausing without waiting for connections to close");
                    return;
                }
            }
        }
    }

    /// Whether a sandbox whose resume failed is paused still; when the runtime cannot
    /// tell, taken as running (see `resume_held`): a kill releases it either way.
    async fn still_paused(&self, id: &SandboxId) -> bool {
        self.runtime.is_paused(id).await.unwrap_or_else(|err| {
            tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "cannot tell whether a sandbox whose resume failed is paused; recorded as running");
            false
        })
    }

    pub(super) fn lifecycle_lock(&self, id: &SandboxId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Locks of sandboxes nobody is operating on are dropped as others are taken.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(id.clone()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{running, Held, Verb};
    use super::*;

    fn state(manager: &Manager, id: &SandboxId) -> SandboxState {
        manager.catalog.get_sandbox(id).unwrap().unwrap().state
    }

    #[tokio::test]
    async fn a_pause_whose_caller_hangs_up_ends_paused() {
        let (runtime, manager, _dir, id) = running();
        runtime.hold(Verb::Pause);
        tokio::select! {
            _ = manager.pause(&id, "test") => panic!("the pause was held"),
            () = runtime.began() => {}
        }
        // Its caller is gone (the future dropped, as hyper drops a request's when the
        // client hangs up); the pause goes on to its end.
        runtime.release();
        manager.shutdown().await;
        assert_eq!(state(&manager, &id), SandboxState::Paused);
        assert_eq!(runtime.held(&id), Some(Held::Frozen));
    }

    #[tokio::test]
    async fn a_resume_whose_caller_hangs_up_ends_running() {
        let (runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        runtime.hold(Verb::Resume);
        tokio::select! {
            _ = manager.resume(&id, None, "test") => panic!("the resume was held"),
            () = runtime.began() => {}
        }
        runtime.release();
        manager.shutdown().await;
        assert_eq!(state(&manager, &id), SandboxState::Running);
        assert_eq!(runtime.held(&id), Some(Held::Running));
    }

    #[tokio::test]
    async fn a_resume_failing_after_the_thaw_leaves_it_paused_in_both() {
        let (runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        runtime.fail(Verb::ResumeAfterThaw);
        let err = manager.resume(&id, None, "test").await.unwrap_err();
        assert!(matches!(err, SandboxError::Resume { .. }), "{err}");
        assert_eq!(state(&manager, &id), SandboxState::Paused);
        assert_eq!(runtime.held(&id), Some(Held::Frozen));
    }

    #[tokio::test]
    async fn a_thawed_sandbox_that_cannot_be_frozen_again_is_recorded_running() {
        let (runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        runtime.fail(Verb::ResumeAfterThaw);
        runtime.fail(Verb::Refreeze);
        let err = manager.resume(&id, None, "test").await.unwrap_err();
        assert!(matches!(err, SandboxError::ResumedSilent { .. }), "{err}");
        assert_eq!(state(&manager, &id), SandboxState::Running);
        assert_eq!(runtime.held(&id), Some(Held::Running));
    }
}
