//! `process.Process`: starting, watching, feeding and signalling processes.
//!
//! A started process lives in the [`ProcessTable`] until it ends, independent of the request
//! that started it: the Start stream and any Connect streams are only *subscribers*. Output
//! is read by one task per stream (stdout, stderr or the pty) and fanned out to the current
//! subscribers; a supervisor task waits for the exit status (from the [`Reaper`]), lets the
//! readers drain what the process wrote, sends the end event and removes the entry.
//!
//! One file per RPC: [`start`], [`connect`], [`list`], [`input`] (SendInput, StreamInput,
//! CloseStdin), [`signal`], [`update`].

mod connect;
mod exec;
mod input;
mod list;
mod output;
mod pty;
pub mod ready;
mod reaper;
mod signal;
mod spawn;
mod start;
mod update;
mod warm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Router;
use silo_protocol::envd::{ProcessConfig, ProcessEvent, ProcessSelector};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

pub(crate) use exec::{note_signal_handlers, Child, Credentials, ExecPlan, Terminal};
pub use reaper::Reaper;

use crate::error::Error;
use crate::journal::Journal;
use crate::state::AppState;
use warm::WarmShells;

/// Start a warm shell for the SDKs' `commands.run` (`bash -l -c`) as the default user in
/// the default directory with the global environment, so the next command starts warm.
pub fn warm_up(state: &AppState) {
    let shell = ProcessConfig {
        cmd: "/bin/bash".into(),
        args: vec!["-l".into(), "-c".into(), String::new()],
        ..ProcessConfig::default()
    };
    if let Ok(spec) = start::resolve(state, None, &shell, None, false) {
        state.processes.warm.prepare(&spec);
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/process.Process/Start", post(start::start))
        .route("/process.Process/Connect", post(connect::connect))
        .route("/process.Process/List", post(list::list))
        .route("/process.Process/SendInput", post(input::send_input))
        .route("/process.Process/StreamInput", post(input::stream_input))
        .route("/process.Process/CloseStdin", post(input::close_stdin))
        .route("/process.Process/SendSignal", post(signal::send_signal))
        .route("/process.Process/Update", post(update::update))
}

/// Events queued per subscriber before the output readers wait for it. Waiting (rather
/// than dropping output) keeps every stream complete; a subscriber that goes away is
/// removed at its next send.
const SUBSCRIBER_QUEUE: usize = 256;

type Subscriber = mpsc::Sender<Result<ProcessEvent, Error>>;

/// A running process.
pub struct Process {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    pty: Option<pty::PtyMaster>,
    subscribers: Mutex<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    /// Set when the end event has been sent: nobody may subscribe after that, or they
    /// would wait forever for an end that already happened.
    ended: bool,
}

impl Process {
    fn subscribers(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new event stream for this process, starting with the start event.
    pub fn subscribe(&self) -> Result<mpsc::Receiver<Result<ProcessEvent, Error>>, Error> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut subs = self.subscribers();
        if subs.ended {
            return Err(Error::NotFound(format!("process {} has ended", self.pid)));
        }
        tx.try_send(Ok(ProcessEvent::Start { pid: self.pid }))
            .expect("a fresh channel has room");
        subs.list.push(tx);
        Ok(rx)
    }

    /// Send `event` to every subscriber, waiting for slow ones.
    async fn broadcast(&self, event: ProcessEvent) {
        let subs: Vec<Subscriber> = self.subscribers().list.clone();
        let mut gone = false;
        for s in &subs {
            gone |= s.send(Ok(event.clone())).await.is_err();
        }
        if gone {
            self.subscribers().list.retain(|s| !s.is_closed());
        }
    }

    /// Send the end event and close every subscriber's stream.
    async fn finish(&self, event: ProcessEvent) {
        let subs = {
            let mut guard = self.subscribers();
            guard.ended = true;
            std::mem::take(&mut guard.list)
        };
        for s in subs {
            let _ = s.send(Ok(event.clone())).await;
        }
    }

    /// Signal the process's group (it leads its own session), or just the process if the
    /// group is gone.
    pub fn signal(&self, sig: libc::c_int) -> Result<(), Error> {
        let pid = libc::pid_t::try_from(self.pid).expect("pids fit in pid_t");
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(-pid, sig) } == 0 || unsafe { libc::kill(pid, sig) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Err(Error::NotFound(format!("process {} not found", self.pid)));
        }
        Err(Error::io(format!("signal process {}", self.pid), err))
    }
}

/// The processes started through the agent that have not ended yet, and the journal of
/// all of them.
pub struct ProcessTable {
    reaper: Arc<Reaper>,
    processes: Mutex<HashMap<u32, Arc<Process>>>,
    warm: Arc<WarmShells>,
    pub journal: Journal,
}

impl ProcessTable {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        ProcessTable {
            warm: WarmShells::new(reaper.clone()),
            reaper,
            processes: Mutex::new(HashMap::new()),
            journal: Journal::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, sel: &ProcessSelector) -> Result<Arc<Process>, Error> {
        let map = self.map();
        let found = match sel {
            ProcessSelector::Pid(pid) => map.get(pid).cloned(),
            ProcessSelector::Tag(tag) => map
                .values()
                .find(|p| p.tag.as_deref() == Some(tag.as_str()))
                .cloned(),
        };
        found.ok_or_else(|| Error::NotFound(format!("process with {sel} not found")))
    }

    pub fn list(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<_> = self.map().values().cloned().collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// The pid of the warm shell waiting for a command, if one is.
    pub fn waiting_shell(&self) -> Option<u32> {
        self.warm.waiting()
    }

    fn insert(&self, process: Arc<Process>) {
        self.map().insert(process.pid, process);
    }

    fn remove(&self, pid: u32) {
        self.map().remove(&pid);
    }
}
