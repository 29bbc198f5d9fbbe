//! A [`Runtime`] in memory, for the lifecycle's unit tests: each sandbox is an entry in
//! a map, a test can make a verb fail, or hold it mid-way until it lets it go; and
//! [`manager`] builds a [`Manager`] over it with an in-memory catalog.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use silo_catalog::{Catalog, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Manager, SandboxDefaults, Templates};
use crate::network::EgressPolicy;
use crate::{Paused, Runtime, RuntimeError, SandboxSpec, Started};

/// What the fake holds of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Running,
    Frozen,
    /// Its container is gone (a reboot), its directory and address lease are not.
    Stopped,
}

/// The verbs a test can make fail or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Verb {
    Start,
    Pause,
    Resume,
    /// A resume that thaws the sandbox, then fails (its agent does not answer).
    ResumeAfterThaw,
    /// Freezing it again after that.
    Refreeze,
    Destroy,
    /// Reading the state of a sandbox whose container is up (`is_paused`).
    State,
    SetEgress,
}

#[derive(Default)]
pub(crate) struct FakeRuntime {
    held: Mutex<HashMap<SandboxId, Held>>,
    failing: Mutex<HashSet<Verb>>,
    holding: Mutex<HashSet<Verb>>,
    /// The verbs that ran to their end, in that order.
    done: Mutex<Vec<Verb>>,
    /// Signalled when a held verb has begun.
    began: tokio::sync::Notify,
    /// Lets the held verb go on.
    release: tokio::sync::Notify,
    /// Where started sandboxes' agent answers, if a test made one ([`FakeRuntime::answer_agent`]).
    agent: Mutex<Option<SocketAddr>>,
}

impl FakeRuntime {
    pub(super) fn insert(&self, id: &SandboxId, held: Held) {
        self.held.lock().unwrap().insert(id.clone(), held);
    }

    pub(super) fn held(&self, id: &SandboxId) -> Option<Held> {
        self.held.lock().unwrap().get(id).copied()
    }

    pub(super) fn fail(&self, verb: Verb) {
        self.failing.lock().unwrap().insert(verb);
    }

    /// Undo [`FakeRuntime::fail`].
    pub(super) fn mend(&self, verb: Verb) {
        self.failing.lock().unwrap().remove(&verb);
    }

    /// The verbs that ran to their end so far, in that order.
    pub(super) fn done(&self) -> Vec<Verb> {
        self.done.lock().unwrap().clone()
    }

    /// Make `verb` wait, once begun, until [`FakeRuntime::release`].
    pub(super) fn hold(&self, verb: Verb) {
        self.holding.lock().unwrap().insert(verb);
    }

    /// Until a held verb has begun.
    pub(super) async fn began(&self) {
        self.began.notified().await;
    }

    pub(super) fn release(&self) {
        self.release.notify_one();
    }

    /// Hold if asked to, then fail if asked to.
    async fn act(&self, verb: Verb, id: &SandboxId) -> Result<(), RuntimeError> {
        if self.holding.lock().unwrap().contains(&verb) {
            self.began.notify_one();
            self.release.notified().await;
        }
        if self.failing.lock().unwrap().contains(&verb) {
            return Err(RuntimeError::AgentExited {
                id: id.clone(),
                log: format!("{verb:?} fails on purpose"),
            });
        }
        self.done.lock().unwrap().push(verb);
        Ok(())
    }

    /// Give the sandboxes it starts from now on an agent that takes calls and never
    /// answers: one waiting for a ready command that never passes.
    pub(super) async fn silent_agent(&self) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the fake agent");
        *self.agent.lock().unwrap() = Some(listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
    }

    /// Give the sandboxes it starts from now on an agent that accepts every call.
    pub(super) async fn answer_agent(&self) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the fake agent");
        *self.agent.lock().unwrap() = Some(listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
    }

    fn started(&self) -> Started {
        let ip = Ipv4Addr::LOCALHOST;
        Started {
            ip,
            gateway: ip,
            // Unless a test made one, nothing listens there: agent calls fail at once.
            agent: self
                .agent
                .lock()
                .unwrap()
                .unwrap_or(SocketAddr::from((ip, 1))),
            ready_after: Duration::ZERO,
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.act(Verb::Start, &spec.id).await?;
        self.insert(&spec.id, Held::Running);
        Ok(self.started())
    }

    async fn pause(&self, id: &SandboxId) -> Result<Paused, RuntimeError> {
        self.act(Verb::Pause, id).await?;
        self.insert(id, Held::Frozen);
        Ok(Paused::Frozen)
    }

    async fn snapshot(&self, id: &SandboxId, _image: &Path) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotPaused { id: id.clone() })
    }

    fn pause_saves_connections(&self) -> bool {
        false
    }

    async fn resume(
        &self,
        id: &SandboxId,
        _egress: &EgressPolicy,
    ) -> Result<Started, RuntimeError> {
        self.act(Verb::Resume, id).await?;
        if self.held(id) != Some(Held::Frozen) {
            return Err(RuntimeError::NotPaused { id: id.clone() });
        }
        self.insert(id, Held::Running);
        if let Err(err) = self.act(Verb::ResumeAfterThaw, id).await {
            // As the runsc runtime: frozen again, so that it stays paused, if it can be.
            if self.act(Verb::Refreeze, id).await.is_ok() {
                self.insert(id, Held::Frozen);
            }
            return Err(err);
        }
        Ok(self.started())
    }

    fn blocked(&self) -> &[crate::network::Cidr] {
        &crate::network::ALWAYS_BLOCKED
    }

    async fn set_egress(&self, id: &SandboxId, _policy: &EgressPolicy) -> Result<(), RuntimeError> {
        self.act(Verb::SetEgress, id).await
    }

    async fn is_paused(&self, id: &SandboxId) -> Result<bool, RuntimeError> {
        // As the runsc runtime: a container that is gone is not asked.
        match self.held(id) {
            None | Some(Held::Stopped) => Ok(false),
            Some(held) => {
                self.act(Verb::State, id).await?;
                Ok(held == Held::Frozen)
            }
        }
    }

    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.act(Verb::Destroy, id).await?;
        self.held.lock().unwrap().remove(id);
        Ok(())
    }

    fn set_frozen(&self, _id: &SandboxId, _frozen: bool) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn set_background(&self, _id: &SandboxId, _background: bool) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn usage(&self, _id: &SandboxId) -> Result<crate::usage::Usage, RuntimeError> {
        Ok(crate::usage::Usage::default())
    }

    async fn running(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        let held = self.held.lock().unwrap();
        let up = held.iter().filter(|(_, held)| **held != Held::Stopped);
        Ok(up.map(|(id, _)| id.clone()).collect())
    }

    async fn list(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        Ok(self.held.lock().unwrap().keys().cloned().collect())
    }

    async fn shutdown(&self) {}
}

/// A manager over `runtime`, with an empty catalog in memory and no templates; the
/// directory holds its snapshots and must outlive it.
pub(crate) fn manager(runtime: Arc<FakeRuntime>) -> (Arc<Manager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = Manager::new(
        Arc::new(Catalog::open_in_memory().expect("catalog")),
        runtime,
        Templates::new(dir.path().join("templates")),
        SandboxDefaults::default(),
        "0.0.0-test".into(),
        dir.path().join("snapshots"),
    );
    (manager, dir)
}

/// A running sandbox (ending in a minute) in a manager over a fake runtime.
pub(super) fn running() -> (Arc<FakeRuntime>, Arc<Manager>, tempfile::TempDir, SandboxId) {
    let runtime = Arc::new(FakeRuntime::default());
    let (manager, dir) = manager(Arc::clone(&runtime));
    let rec = record(SandboxState::Running, 60_000);
    manager.catalog.insert_sandbox(&rec).expect("insert");
    runtime.insert(&rec.id, Held::Running);
    (runtime, manager, dir, rec.id)
}

/// A sandbox row in `state`, ending `end_in_ms` from now, with no address (so nothing
/// tries its agent) unless the test sets one.
pub(super) fn record(state: SandboxState, end_in_ms: i64) -> SandboxRecord {
    let rec = silo_catalog::testing::record(state);
    SandboxRecord {
        end_at_ms: rec.started_at_ms + end_in_ms,
        ..rec
    }
}
