//! Reconcile at start: after a crash or restart, the catalog and the runtime may disagree.
//! The catalog is the intent, the runtime the fact:
//! - running in both, and its agent answers: kept;
//! - running in the catalog but gone from the runtime or silent: it died, so it is
//!   killed (whatever is left of it is released);
//! - half-done (creating, killing, ...): finished by killing;
//! - in the runtime but not live in the catalog: a leak, destroyed.

use std::collections::HashSet;

use silo_catalog::SandboxState;

use super::{Manager, SandboxError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub kept: usize,
    pub lost: usize,
    pub finished: usize,
    pub leaked: usize,
}

impl Manager {
    pub async fn reconcile(&self) -> Result<ReconcileReport, SandboxError> {
        let mut report = ReconcileReport::default();
        let in_runtime: HashSet<_> = self
            .runtime
            .list()
            .await
            .map_err(|err| SandboxError::ListRuntime(Box::new(err)))?
            .into_iter()
            .collect();
        let live_states: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|state| state.is_live())
            .collect();
        let live = self.catalog.sandboxes_in(&live_states)?;
        let mut known = HashSet::new();
        for rec in live {
            known.insert(rec.id.clone());
            match rec.state {
                SandboxState::Running
                    if in_runtime.contains(&rec.id) && self.answers(&rec).await =>
                {
                    report.kept += 1
                }
                SandboxState::Paused => report.kept += 1,
                SandboxState::Killing => {
                    self.destroy_killing(&rec.id).await?;
                    report.finished += 1;
                }
                state => {
                    if state == SandboxState::Running {
                        report.lost += 1;
                    } else {
                        report.finished += 1;
                    }
                    self.finish_kill(&rec.id, state, "reconciled at start")
                        .await?;
                }
            }
        }
        for id in in_runtime.difference(&known) {
            tracing::warn!(sandbox_id = %id, "destroying a sandbox the catalog does not know");
            self.destroy_runtime(id).await?;
            report.leaked += 1;
        }
        Ok(report)
    }

    async fn answers(&self, rec: &silo_catalog::SandboxRecord) -> bool {
        let Some(ip) = rec.address.as_deref().and_then(|a| a.parse().ok()) else {
            return false;
        };
        let agent = std::net::SocketAddr::new(ip, silo_protocol::ports::ENVD);
        crate::health::probe(agent).await.is_ok()
    }
}
