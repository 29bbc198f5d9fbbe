//! Timeouts: the end time lives in the catalog (so it survives restarts); one reaper task
//! kills what has expired, or pauses it when it was created with `auto_pause`.

use std::sync::Arc;
use std::time::Duration;

use silo_catalog::{now_ms, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

/// How often the reaper looks for expired sandboxes: the precision of timeouts.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

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
    /// live; for a running one a timeout given only ever extends its life.
    pub async fn connect(
        &self,
        id: &SandboxId,
        seconds: Option<u64>,
    ) -> Result<(silo_catalog::SandboxRecord, bool), SandboxError> {
        let mut rec = self.get(id)?;
        if rec.state != SandboxState::Running {
            let (resumed_rec, resumed) = self.resume(id, seconds).await?;
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

    /// Kill expired sandboxes until the process ends.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
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
