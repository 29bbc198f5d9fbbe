//! Reconcile at start: after a crash or restart, the catalog and the runtime may disagree.
//! The catalog is the intent, the runtime the fact:
//! - running in both, and its agent answers: kept;
//! - running in the catalog but gone from the runtime, or silent for [`ANSWER_WITHIN`]:
//!   it died, so it is killed (whatever is left of it is released);
//! - paused: kept if the runtime still holds it paused (frozen, or its checkpoint on
//!   disk), else killed: a frozen sandbox does not outlive a reboot of the host. One
//!   whose container is up but whose state cannot be read (a busy host) may be paused:
//!   it is left as it is, and the next start tries again;
//! - pausing or resuming when silo stopped: running if its agent answers, else paused
//!   if a complete checkpoint is on disk, else killed;
//! - half-done otherwise (creating, killing): finished by killing;
//! - in the runtime but not live in the catalog: a leak, destroyed;
//! - a snapshot image no snapshot row names: removed.

use std::collections::HashSet;
use std::time::Duration;

// Tokio's clock, which tests can stop and wind on.
use tokio::time::Instant;

use silo_catalog::SandboxState;
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};

/// How long reconcile keeps asking the agents of running sandboxes before it calls one
/// lost: a host that just restarted is busy, and a sandbox killed for one slow answer is
/// gone for good. Counted from the start of reconcile, so that many silent sandboxes
/// delay the start by this much, not by that many times it.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
const ASK_AGAIN: Duration = Duration::from_millis(250);
/// Why a sandbox paused in the catalog whose pause the runtime no longer holds is killed.
const LOST_PAUSE: &str = "lost its paused state: the host restarted";

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
        let patience = Instant::now() + ANSWER_WITHIN;
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
            match self
                .reconcile_one(&rec, in_runtime.contains(&rec.id), patience)
                .await
            {
                Ok(Outcome::Kept) => {
                    report.kept += 1;
                    self.readopt_host_name_rules(&rec).await;
                }
                Ok(outcome) => *report.count(outcome) += 1,
                Err(err) => {
                    tracing::error!(sandbox_id = %rec.id, state = %rec.state, error = %crate::error_chain(&err), "cannot reconcile sandbox; retried later (a teardown by the reaper, anything else at the next start)");
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
        patience: Instant,
    ) -> Result<Outcome, SandboxError> {
        Ok(match rec.state {
            SandboxState::Running if in_runtime && self.answers(rec, patience).await => {
                Outcome::Kept
            }
            SandboxState::Paused if self.held_paused(&rec.id, patience).await? => Outcome::Kept,
            SandboxState::Paused => {
                tracing::warn!(sandbox_id = %rec.id, "{LOST_PAUSE}; releasing it");
                self.finish_kill(&rec.id, rec.state, LOST_PAUSE).await?;
                Outcome::Lost
            }
            SandboxState::Pausing | SandboxState::Resuming
                if self.settle_interrupted(rec, in_runtime, patience).await? =>
            {
                Outcome::Kept
            }
            SandboxState::Killing => {
                self.release(&rec.id, false).await?;
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
        patience: Instant,
    ) -> Result<bool, SandboxError> {
        let detail = "reconciled at start";
        if in_runtime && self.answers(rec, patience).await {
            self.catalog
                .transition(&rec.id, rec.state, SandboxState::Running, detail)?;
            return Ok(true);
        }
        if self.held_paused(&rec.id, patience).await? {
            // A container left half-restored (or not yet deleted) goes at the resume.
            self.catalog
                .transition(&rec.id, rec.state, SandboxState::Paused, detail)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the runtime holds the sandbox paused, asked again until `patience` runs
    /// out while it cannot tell; then an error, so that the sandbox is not killed.
    async fn held_paused(&self, id: &SandboxId, patience: Instant) -> Result<bool, SandboxError> {
        loop {
            match self.runtime.is_paused(id).await {
                Ok(paused) => return Ok(paused),
                Err(err) if Instant::now() >= patience => {
                    return Err(SandboxError::PausedUnknown {
                        id: id.clone(),
                        source: Box::new(err),
                    })
                }
                Err(_) => tokio::time::sleep(ASK_AGAIN).await,
            }
        }
    }

    /// The egress filter lives in this process: give it back the host-name rules of a
    /// kept sandbox (which also puts its new ports into the firewall). Until then that
    /// sandbox's traffic on ports 80/443 and its DNS are refused, never let through.
    async fn readopt_host_name_rules(&self, rec: &silo_catalog::SandboxRecord) {
        if !super::network::has_network(rec) {
            return;
        }
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

    /// Whether the sandbox's agent answers, asked again until `patience` runs out.
    async fn answers(&self, rec: &silo_catalog::SandboxRecord, patience: Instant) -> bool {
        let Some(agent) = super::agent_of(rec) else {
            return false;
        };
        loop {
            match crate::health::probe(agent).await {
                Ok(()) => return true,
                Err(err) if Instant::now() >= patience => {
                    tracing::warn!(sandbox_id = %rec.id, error = %err, "its agent does not answer");
                    return false;
                }
                Err(_) => tokio::time::sleep(ASK_AGAIN).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use silo_catalog::SandboxRecord;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::fake::{self, FakeRuntime, Held, Verb};
    use super::*;

    fn with_row(manager: &Manager, state: SandboxState) -> SandboxRecord {
        let rec = fake::record(state, 60_000);
        manager.catalog.insert_sandbox(&rec).unwrap();
        rec
    }

    fn state(manager: &Manager, rec: &SandboxRecord) -> SandboxState {
        manager.catalog.get_sandbox(&rec.id).unwrap().unwrap().state
    }

    #[tokio::test]
    async fn a_paused_sandbox_the_runtime_no_longer_holds_is_killed_with_why() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let frozen = with_row(&manager, SandboxState::Paused);
        runtime.insert(&frozen.id, Held::Frozen);
        // After a reboot: its directory and address lease are left, its frozen container
        // is not.
        let lost = with_row(&manager, SandboxState::Paused);
        runtime.insert(&lost.id, Held::Stopped);

        let report = manager.reconcile().await.unwrap();

        assert_eq!((report.kept, report.lost), (1, 1));
        assert_eq!(state(&manager, &frozen), SandboxState::Paused);
        assert_eq!(state(&manager, &lost), SandboxState::Killed);
        assert_eq!(
            runtime.held(&lost.id),
            None,
            "what was left of it is released"
        );
        let events = manager.catalog.events(&lost.id).unwrap();
        assert!(events.iter().any(|e| e.detail == LOST_PAUSE), "{events:?}");
    }

    // Paused time: the retries until the patience runs out take none.
    #[tokio::test(start_paused = true)]
    async fn a_paused_sandbox_whose_state_cannot_be_read_is_left_for_the_next_start() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let frozen = with_row(&manager, SandboxState::Paused);
        runtime.insert(&frozen.id, Held::Frozen);
        let lost = with_row(&manager, SandboxState::Paused);
        runtime.insert(&lost.id, Held::Stopped);
        // `runsc state` fails (a busy host) throughout.
        runtime.fail(Verb::State);

        let report = manager.reconcile().await.unwrap();

        assert_eq!((report.kept, report.lost, report.failed), (0, 1, 1));
        assert_eq!(state(&manager, &frozen), SandboxState::Paused);
        assert_eq!(runtime.held(&frozen.id), Some(Held::Frozen), "not released");
        assert_eq!(
            state(&manager, &lost),
            SandboxState::Killed,
            "a container that is gone needs no state to tell"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_sandbox_whose_state_is_unreadable_for_a_moment_is_kept() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let rec = with_row(&manager, SandboxState::Paused);
        runtime.insert(&rec.id, Held::Frozen);
        runtime.fail(Verb::State);
        let reconcile = tokio::spawn({
            let manager = Arc::clone(&manager);
            async move { manager.reconcile().await }
        });
        tokio::time::sleep(ANSWER_WITHIN / 2).await;
        runtime.mend(Verb::State);

        let report = reconcile.await.unwrap().unwrap();

        assert_eq!((report.kept, report.failed), (1, 0));
        assert_eq!(state(&manager, &rec), SandboxState::Paused);
    }

    #[tokio::test]
    async fn a_running_sandbox_whose_agent_answers_late_is_kept() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        // An agent that drops the first probe (a busy host) and answers the next.
        let ip = std::net::Ipv4Addr::new(127, 77, rand_octet(), rand_octet());
        let listener = tokio::net::TcpListener::bind((ip, silo_protocol::ports::ENVD))
            .await
            .unwrap();
        tokio::spawn(async move {
            let (first, _) = listener.accept().await.unwrap();
            drop(first);
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 512];
                let _ = conn.read(&mut request).await;
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        let mut rec = fake::record(SandboxState::Running, 60_000);
        rec.address = Some(ip.to_string());
        manager.catalog.insert_sandbox(&rec).unwrap();
        runtime.insert(&rec.id, Held::Running);

        let report = manager.reconcile().await.unwrap();

        assert_eq!((report.kept, report.lost), (1, 0));
        assert_eq!(state(&manager, &rec), SandboxState::Running);
    }

    /// 1 to 254, different per run, so that parallel test runs bind different addresses.
    fn rand_octet() -> u8 {
        (uuid::Uuid::new_v4().as_bytes()[0] % 254) + 1
    }
}
