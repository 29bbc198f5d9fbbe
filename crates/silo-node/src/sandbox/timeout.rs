//! Timeouts: the end time lives in the catalog (so it survives restarts); one reaper task
//! kills what has expired, or pauses it when it was created with `auto_pause`.

use std::sync::Arc;
use std::time::Duration;

use silo_catalog::{now_ms, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

/// How often the reaper looks for expired sandboxes: the precision of timeouts.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many reaper rounds it also looks for sandboxes that died on their own.
const SWEEP_EVERY: u32 = 10;

impl Manager {
    /// Kill the sandbox `seconds` from now (shorter or longer than before).
    pub fn set_timeout(&self, id: &SandboxId, seconds: u64) -> Result<(), SandboxError> {
        let rec = self.get(id)?;
        if rec.state != SandboxState::Running && rec.state != SandboxState::Paused {
            return Err(SandboxError::WrongState {
                id: id.clone(),
                state: rec.state,
            });
        }
        let timeout = self.clamp_timeout(Some(seconds));
        self.catalog
            .set_end_at(id, now_ms() + timeout.as_millis() as i64)?;
        Ok(())
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
            let expired = match self.catalog.expired(now_ms()) {
                Ok(expired) => expired,
                Err(err) => {
                    tracing::error!(error = %crate::error_chain(&err), "reaper cannot read the catalog");
                    continue;
                }
            };
            for rec in expired {
                if rec.auto_pause {
                    let manager = Arc::clone(&self);
                    self.tasks.spawn(async move {
                        match manager.pause(&rec.id, "timeout").await {
                            Ok(()) | Err(SandboxError::NotFound(_) | SandboxError::AlreadyPaused(_) | SandboxError::WrongState { .. }) => {}
                            Err(err) => tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "pause at timeout failed"),
                        }
                    });
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
