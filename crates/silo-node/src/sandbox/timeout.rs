//! Timeouts: the end time lives in the catalog (so it survives restarts); one reaper task
//! kills what has expired.

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

    /// Connect: the sandbox must be running; a timeout given only ever extends its life.
    pub fn connect(
        &self,
        id: &SandboxId,
        seconds: Option<u64>,
    ) -> Result<silo_catalog::SandboxRecord, SandboxError> {
        let mut rec = self.get(id)?;
        if rec.state != SandboxState::Running {
            return Err(SandboxError::WrongState {
                id: id.clone(),
                state: rec.state,
            });
        }
        if let Some(seconds) = seconds {
            let end = now_ms() + self.clamp_timeout(Some(seconds)).as_millis() as i64;
            if end > rec.end_at_ms {
                self.catalog.set_end_at(id, end)?;
                rec.end_at_ms = end;
            }
        }
        Ok(rec)
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
            for id in expired {
                match self.kill(&id, "timeout") {
                    Ok(()) | Err(SandboxError::NotFound(_)) => {}
                    Err(err) => {
                        tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "kill at timeout failed")
                    }
                }
            }
        }
    }
}
