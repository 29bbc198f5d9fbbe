//! Dozing: a running sandbox that is truly idle is frozen in place (the cgroup freezer),
//! so it stops costing CPU, and thawed by the next request to it, which does not notice.
//! An idle gVisor sandbox on systrap otherwise burns ~2-3 % of a core: on a small host
//! that, not memory, bounds how many sandboxes it holds (README, Speed).
//!
//! Idle means, for `--doze-after` seconds: no request to it in flight or begun
//! (commands, files, code runs, a terminal, traffic to its servers: everything goes
//! through [`Manager::route`]), and, by [`DozeMode`], nothing running in it but the
//! agent and its waiting shell (`empty`, the default: nothing in it could notice), or
//! no process started through its agent still running (`idle`: a background command or
//! a template's start command keeps it awake, a daemon left behind or an interpreter
//! kernel does not). The catalog still says `Running`: dozing is invisible but for the
//! time to thaw (microseconds).
//! Pooled sandboxes doze too, whatever `--doze-after` says, from a second after they
//! join the pool until their first request after the hand-out (the proxy's preconnect as
//! the create answers), or the hand-out itself when it must reconfigure the agent
//! (`pool.rs`).
//!
//! One mutex ([`Activity`]) orders the two sides: a request counts itself in and thaws
//! the sandbox under it; the sampler freezes only under it, and only when nothing is in
//! flight and nothing began since it looked at the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use silo_catalog::{SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};
use crate::RuntimeError;

/// Which running sandboxes doze once idle (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DozeMode {
    /// Those in which nothing runs but the agent and its waiting shell.
    Empty,
    /// Also those running processes no request started: daemons left behind by ended
    /// commands, interpreter kernels. They sleep with the sandbox until its next request.
    Idle,
}

/// Doze sandboxes of `mode` once idle for `after`.
#[derive(Debug, Clone, Copy)]
pub struct DozePolicy {
    pub after: Duration,
    pub mode: DozeMode,
}

#[derive(Default)]
struct Entry {
    in_flight: usize,
    last_request: Option<Instant>,
    dozing: bool,
}

/// Requests in flight per sandbox, when the last began, and which sandboxes doze.
#[derive(Clone, Default)]
pub(super) struct Activity(Arc<Mutex<HashMap<SandboxId, Entry>>>);

impl Activity {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sandboxes doze now.
    pub(super) fn dozing(&self) -> usize {
        self.map().values().filter(|e| e.dozing).count()
    }

    fn is_dozing(&self, id: &SandboxId) -> bool {
        self.map().get(id).is_some_and(|e| e.dozing)
    }

    /// A sandbox that is gone.
    pub(super) fn forget(&self, id: &SandboxId) {
        self.map().remove(id);
    }
}

/// A request to a sandbox, counted while it lasts (held by the proxy until the response
/// body, stream or WebSocket ends).
#[derive(Debug)]
pub struct InUse {
    activity: Activity,
    id: SandboxId,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activity")
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(entry) = self.activity.map().get_mut(&self.id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last_request = Some(Instant::now());
        }
    }
}

impl Manager {
    /// Count a request to the sandbox (or an operation on it: pause, snapshot, fork, a
    /// kill's last look) in and make sure it is awake; it stays awake while the
    /// returned guard lives.
    pub(super) fn enter(&self, id: &SandboxId) -> Result<Arc<InUse>, SandboxError> {
        let mut map = self.activity.map();
        let entry = map.entry(id.clone()).or_default();
        // Woken before the request counts in: a guard made first would, dropped on the
        // error path, lock the map this thread holds.
        if entry.dozing {
            self.runtime
                .set_frozen(id, false)
                .map_err(|source| SandboxError::Wake {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
            entry.dozing = false;
            tracing::debug!(sandbox_id = %id, "woken by a request");
        }
        entry.in_flight += 1;
        entry.last_request = Some(Instant::now());
        Ok(Arc::new(InUse {
            activity: self.activity.clone(),
            id: id.clone(),
        }))
    }

    /// Freeze the sandbox now, as dozing: a pooled one, which no request can be using.
    pub(super) fn doze_now(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let mut map = self.activity.map();
        let entry = map.entry(id.clone()).or_default();
        if entry.in_flight > 0 || entry.dozing {
            return Ok(());
        }
        self.runtime.set_frozen(id, true)?;
        entry.dozing = true;
        Ok(())
    }

    /// Whether the sandbox is frozen in a doze (a request would wake it).
    pub fn is_dozing(&self, id: &SandboxId) -> bool {
        self.activity.is_dozing(id)
    }

    /// Freeze those of `running` that `policy` lets doze (see the module doc).
    pub(super) async fn doze_idle(&self, running: &[SandboxRecord], policy: DozePolicy) {
        let after = policy.after;
        for rec in running {
            let looked_at = Instant::now();
            let quiet = |entry: &Entry| {
                entry.in_flight == 0
                    && !entry.dozing
                    && entry.last_request.is_none_or(|t| t.elapsed() >= after)
            };
            let candidate = self.activity.map().get(&rec.id).is_none_or(quiet);
            // Never seen a request: idle since it started.
            if !candidate || silo_catalog::now_ms() - rec.started_at_ms < after.as_millis() as i64 {
                continue;
            }
            if !self.agent_is_idle(rec, policy.mode).await {
                continue;
            }
            let mut map = self.activity.map();
            let entry = map.entry(rec.id.clone()).or_default();
            // Something began while the agent was asked: not idle after all. Nor is a
            // sandbox paused or killed since the round read the catalog (a pause holds
            // it awake while it works, so the state read here is settled).
            let still_running = self
                .catalog
                .get_sandbox(&rec.id)
                .is_ok_and(|now| now.is_some_and(|now| now.state == SandboxState::Running));
            if !quiet(entry) || entry.last_request.is_some_and(|t| t > looked_at) || !still_running
            {
                continue;
            }
            match self.runtime.set_frozen(&rec.id, true) {
                Ok(()) => {
                    entry.dozing = true;
                    tracing::debug!(sandbox_id = %rec.id, "dozing: idle for {after:?}");
                }
                Err(err) => {
                    tracing::warn!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "cannot freeze an idle sandbox");
                }
            }
        }
    }

    /// Nothing `mode` counts as work runs in the sandbox. An agent that cannot say (one
    /// from before silo had `/silo/activity`, still running after an upgrade) is busy.
    async fn agent_is_idle(&self, rec: &SandboxRecord, mode: DozeMode) -> bool {
        let Some(agent) = super::agent_of(rec) else {
            return false;
        };
        self.agent
            .activity(agent, rec.envd_access_token.as_deref())
            .await
            .is_ok_and(|activity| match mode {
                DozeMode::Empty => activity.started == 0 && activity.others == 0,
                DozeMode::Idle => activity.started == 0,
            })
    }
}
