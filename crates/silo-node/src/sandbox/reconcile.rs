//! Reconcile at start: after a crash or restart, the catalog and the runtime may disagree.
//! The catalog is the intent, the runtime the fact:
//! - running in both, and its agent answers: kept;
//! - running in the catalog but gone from the runtime or silent: it died, so it is
//!   killed (whatever is left of it is released);
//! - paused: kept (its checkpoint is on disk);
//! - pausing or resuming when silo stopped: running if its agent answers, else paused
//!   if a complete checkpoint is on disk, else killed;
//! - half-done otherwise (creating, killing): finished by killing;
//! - in the runtime but not live in the catalog: a leak, destroyed;
//! - a snapshot image no snapshot row names: removed.

use std::collections::HashSet;

use silo_catalog::SandboxState;

use super::{Manager, SandboxError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub kept: usize,
    pub lost: usize,
    pub finished: usize,
    pub leaked: usize,
    /// Could not be settled now (logged); the next start tries again.
    pub failed: usize,
    /// Snapshot images no snapshot names (a crash mid-save, a fork cut short): removed.
    pub orphan_images: usize,
}

enum Outcome {
    Kept,
    Lost,
    Finished,
}

impl ReconcileReport {
    fn count(&mut self, outcome: Outcome) -> &mut usize {
        match outcome {
            Outcome::Kept => &mut self.kept,
            Outcome::Lost => &mut self.lost,
            Outcome::Finished => &mut self.finished,
        }
    }
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
            // Dozes are not remembered across a restart: wake every running sandbox
            // (a frozen one would not answer the health check below).
            if rec.state == SandboxState::Running && in_runtime.contains(&rec.id) {
                let _ = self.runtime.set_frozen(&rec.id, false);
            }
            // One sandbox that cannot be settled must not keep silo from serving the
            // others: it is logged, stays as it is, and the next start tries again.
            match self.reconcile_one(&rec, in_runtime.contains(&rec.id)).await {
                Ok(Outcome::Kept) => {
                    report.kept += 1;
                    self.readopt_host_name_rules(&rec).await;
                }
                Ok(outcome) => *report.count(outcome) += 1,
                Err(err) => {
                    tracing::error!(sandbox_id = %rec.id, state = %rec.state, error = %crate::error_chain(&err), "cannot reconcile sandbox; retried at the next start");
                    report.failed += 1;
                }
            }
        }
        report.orphan_images = self.remove_orphan_images().await;
        for id in in_runtime.difference(&known) {
            tracing::warn!(sandbox_id = %id, "destroying a sandbox the catalog does not know");
            match self.destroy_runtime(id).await {
                Ok(()) => report.leaked += 1,
                Err(err) => {
                    tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "cannot destroy a leaked sandbox; retried at the next start");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    async fn reconcile_one(
        &self,
        rec: &silo_catalog::SandboxRecord,
        in_runtime: bool,
    ) -> Result<Outcome, SandboxError> {
        Ok(match rec.state {
            SandboxState::Running if in_runtime && self.answers(rec).await => Outcome::Kept,
            SandboxState::Paused => Outcome::Kept,
            SandboxState::Pausing | SandboxState::Resuming
                if self.settle_interrupted(rec, in_runtime).await? =>
            {
                Outcome::Kept
            }
            SandboxState::Killing => {
                self.destroy_killing(&rec.id).await?;
                Outcome::Finished
            }
            state => {
                self.finish_kill(&rec.id, state, "reconciled at start")
                    .await?;
                if state == SandboxState::Running {
                    Outcome::Lost
                } else {
                    Outcome::Finished
                }
            }
        })
    }

    /// A pause or resume cut short by a restart: settle it as running or paused if the
    /// sandbox is either; `false` when it is neither and must be killed.
    async fn settle_interrupted(
        &self,
        rec: &silo_catalog::SandboxRecord,
        in_runtime: bool,
    ) -> Result<bool, SandboxError> {
        let detail = "reconciled at start";
        if in_runtime && self.answers(rec).await {
            self.catalog
                .transition(&rec.id, rec.state, SandboxState::Running, detail)?;
            return Ok(true);
        }
        if self.runtime.is_paused(&rec.id).await {
            // A container left half-restored (or not yet deleted) goes at the resume.
            self.catalog
                .transition(&rec.id, rec.state, SandboxState::Paused, detail)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The egress filter lives in this process: give it back the host-name rules of a
    /// kept sandbox (which also puts its new ports into the firewall). Until then that
    /// sandbox's traffic on ports 80/443 and its DNS are refused, never let through.
    async fn readopt_host_name_rules(&self, rec: &silo_catalog::SandboxRecord) {
        let policy = match super::network::policy_of(&rec.network) {
            Ok(policy) if policy.filters_names() => policy,
            Ok(_) => return,
            Err(err) => {
                tracing::error!(sandbox_id = %rec.id, %err, "unreadable network rules in the catalog");
                return;
            }
        };
        if let Err(err) = self.runtime.set_egress(&rec.id, &policy).await {
            tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "cannot restore host-name rules; its web traffic and DNS stay refused");
        }
    }

    async fn answers(&self, rec: &silo_catalog::SandboxRecord) -> bool {
        let Some(ip) = rec.address.as_deref().and_then(|a| a.parse().ok()) else {
            return false;
        };
        let agent = std::net::SocketAddr::new(ip, silo_protocol::ports::ENVD);
        crate::health::probe(agent).await.is_ok()
    }
}
