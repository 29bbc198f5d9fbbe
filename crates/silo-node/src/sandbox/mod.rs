//! The sandbox lifecycle on this host: one verb per file, each checks the state, acts on
//! the runtime, and records the new state in the catalog (which checks the transition).
//!
//! - [`create`]: template → runtime start → agent `/init` → `Running`.
//! - [`kill`]: `Killing` → runtime destroy (idempotent) → `Killed`; a destroy that
//!   failed is tried again by the reaper.
//! - `network`: egress rules, replaced live.
//! - [`pause`]: checkpoint to disk and restore, after closing the sandbox's traffic.
//! - [`timeout`]: set/extend the end time, and the reaper that kills (or pauses)
//!   expired sandboxes.
//! - [`reconcile`]: at start, make the catalog and the runtime agree.
//! - `retry`: background steps tried again after failures, with a growing wait.
//! - [`metrics`]: the sampler: CPU, memory and disk samples of running sandboxes, kept
//!   in the catalog, and their logs collected (`logs`).
//! - `pool`: the warm pool, sandboxes booted ahead of demand and handed to creates.
//! - `traffic`: the token that ends a sandbox's proxied traffic when it pauses.
//! - `doze`: idle running sandboxes frozen in place, thawed by the next request.

mod create;
mod doze;
#[cfg(test)]
pub(crate) mod fake;
mod kill;
mod logs;
mod metrics;
mod network;
mod pause;
mod pool;
mod reconcile;
mod retry;
mod snapshot;
mod templates;
mod timeout;
mod traffic;
mod trial;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use silo_catalog::{Catalog, CatalogError, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

use crate::{Runtime, RuntimeError};
pub use create::CreateRequest;
pub use doze::{DozeMode, DozePolicy, InUse};
pub use metrics::SamplerConfig;
pub use pool::POOL_METADATA;
pub use templates::{
    check_tag, resources_of, write_resources, TemplateRef, Templates, RESOURCES_FILE,
};
pub use trial::TRIAL_METADATA;

/// Limits and defaults for sandboxes (documented on the CLI flags that set them).
#[derive(Debug, Clone)]
pub struct SandboxDefaults {
    pub timeout: Duration,
    pub max_timeout: Duration,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub max_cpu_count: u32,
    pub max_memory_mb: u32,
    pub max_disk_size_mb: u32,
    /// Tasks (processes and threads) each user in a sandbox may have (RLIMIT_NPROC).
    pub pids_limit: u32,
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        SandboxDefaults {
            timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
            max_cpu_count: 2,
            max_memory_mb: 8192,
            max_disk_size_mb: 10_240,
            pids_limit: 512,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {0} was not found")]
    NotFound(SandboxId),
    #[error("template {0:?} was not found; build it with `silo template build -n {0}` (`silo template list` shows what is built)")]
    TemplateNotFound(String),
    #[error("template {template:?} has no tag {tag:?}; its tags: {}", .tags.join(", "))]
    TagNotFound {
        template: String,
        tag: String,
        tags: Vec<String>,
    },
    #[error("{0}")]
    InvalidRequest(String),
    /// A template build's files are unreadable or cannot be written: the server's fault.
    #[error("{0}")]
    BrokenTemplate(String),
    #[error("the egress rules stored for sandbox {id} are unreadable: {reason}")]
    StoredNetwork { id: SandboxId, reason: String },
    #[error("cannot create the snapshots directory {path}")]
    SnapshotsDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {id} is {state}")]
    WrongState { id: SandboxId, state: SandboxState },
    #[error("sandbox {0} is already paused")]
    AlreadyPaused(SandboxId),
    /// As on E2B, where a paused sandbox is no longer among the live ones a timeout
    /// applies to.
    #[error("sandbox {0} is paused and has no timeout; connect to resume it with one")]
    TimeoutWhilePaused(SandboxId),
    #[error("cannot pause sandbox {id}; it keeps running")]
    Pause {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot apply the network rules of sandbox {id}")]
    Network {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot snapshot sandbox {id}; it runs on as it was")]
    Snapshot {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot wake sandbox {id} from its doze")]
    Wake {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot resume sandbox {id}; it stays paused")]
    Resume {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("sandbox {id} was thawed, but its agent did not answer; it runs")]
    ResumedSilent {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    // Runtime errors are boxed: they are large and rare, and this enum is on every path.
    #[error("cannot start sandbox {id}")]
    Start {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    /// A kill came while it booted; the kill released it.
    #[error("sandbox {0} was killed before it was up")]
    KilledWhileCreating(SandboxId),
    #[error("cannot stop sandbox {id}")]
    Destroy {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot tell whether sandbox {id} is paused")]
    PausedUnknown {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot list the runtime's sandboxes")]
    ListRuntime(#[source] Box<RuntimeError>),
    #[error("sandbox {id} agent did not accept its configuration")]
    Init {
        id: SandboxId,
        #[source]
        source: crate::agent::AgentError,
    },
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    /// The server stopped (its runtime shut down) before the operation ended.
    #[error("the server stopped before the operation ended")]
    Interrupted,
}

/// The node's sandboxes: the catalog says what should exist, the runtime runs it.
pub struct Manager {
    catalog: Arc<Catalog>,
    runtime: Arc<dyn Runtime>,
    templates: Templates,
    agent: crate::agent::AgentClient,
    defaults: SandboxDefaults,
    envd_version: String,
    /// Snapshot images, one directory per snapshot id.
    snapshots_dir: std::path::PathBuf,
    /// Teardowns running after their kill returned, the pool filler, and lifecycle
    /// operations run detached from their caller; awaited by [`Manager::shutdown`].
    tasks: tokio_util::task::TaskTracker,
    traffic: traffic::Traffic,
    /// One lifecycle operation at a time per sandbox: a create's boot, pause, resume,
    /// snapshot, the save of a fork, a kill's teardown.
    locks: Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
    pool: pool::Pool,
    activity: doze::Activity,
    /// Pauses at timeout under way or failed (retried by the reaper).
    timeout_pauses: retry::Retries,
    /// Kills' teardowns under way or failed (retried by the reaper).
    teardowns: retry::Retries,
}

/// Where to send a request for a sandbox port, and the token that ends it when the
/// sandbox pauses.
#[derive(Debug, Clone)]
pub struct Route {
    pub addr: SocketAddr,
    pub traffic: CancellationToken,
    /// Keeps the sandbox awake (see `doze`) until the request, its response and any
    /// stream or upgrade of it are done: hold it that long.
    pub in_use: Arc<InUse>,
}

/// Where the sandbox's agent listens, while it holds an address.
fn agent_of(rec: &SandboxRecord) -> Option<SocketAddr> {
    rec.ip()
        .map(|ip| SocketAddr::new(ip.into(), silo_protocol::ports::ENVD))
}

impl Manager {
    pub fn new(
        catalog: Arc<Catalog>,
        runtime: Arc<dyn Runtime>,
        templates: Templates,
        defaults: SandboxDefaults,
        envd_version: String,
        snapshots_dir: std::path::PathBuf,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            catalog,
            runtime,
            templates,
            agent: crate::agent::AgentClient::new(),
            defaults,
            envd_version,
            snapshots_dir,
            tasks: tokio_util::task::TaskTracker::new(),
            traffic: traffic::Traffic::default(),
            locks: Mutex::default(),
            pool: pool::Pool::default(),
            activity: doze::Activity::default(),
            timeout_pauses: retry::Retries::default(),
            teardowns: retry::Retries::default(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn envd_version(&self) -> &str {
        &self.envd_version
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn defaults(&self) -> &SandboxDefaults {
        &self.defaults
    }

    /// Destinations no sandbox reaches, whatever its rules say: a request naming one
    /// (as its resolver) is refused.
    pub fn blocked(&self) -> &[crate::network::Cidr] {
        self.runtime.blocked()
    }

    /// How many running sandboxes doze now (frozen until their next request).
    pub fn dozing(&self) -> usize {
        self.activity.dozing()
    }

    /// A sandbox a user can see: one being killed is already gone, and a pooled one is
    /// no one's yet.
    pub fn get(&self, id: &SandboxId) -> Result<SandboxRecord, SandboxError> {
        match self.catalog.get_sandbox(id)? {
            Some(rec)
                if !matches!(
                    rec.state,
                    SandboxState::Pooled | SandboxState::Killing | SandboxState::Killed
                ) =>
            {
                Ok(rec)
            }
            _ => Err(SandboxError::NotFound(id.clone())),
        }
    }

    /// silo is stopping: end every proxied stream and upgrade, and close the proxy's
    /// connections, as a pause does for one sandbox. A stream (a command's output, a
    /// watch) would otherwise last as long as its sandbox and hold the server's graceful
    /// shutdown open.
    pub fn end_traffic(&self) {
        self.traffic.close_all();
    }

    /// Wait for background teardowns (kills that already answered) to finish.
    pub async fn shutdown(&self) {
        self.close_pool().await;
        self.tasks.close();
        self.tasks.wait().await;
        self.runtime.shutdown().await;
    }

    /// Where to send traffic for `port` of `rec`, the sandbox as [`Manager::get`] read
    /// it. A paused sandbox created with `auto_resume` is resumed first, so whoever may
    /// not use the sandbox must be turned away on `rec`, before this.
    pub async fn route(
        self: &Arc<Self>,
        mut rec: SandboxRecord,
        port: u16,
    ) -> Result<Route, SandboxError> {
        let id = rec.id.clone();
        if rec.auto_resume && rec.state != SandboxState::Running {
            rec = self
                .resume(&id, None, "resumed by traffic to it (autoResume)")
                .await?
                .0;
        }
        if rec.state != SandboxState::Running {
            return Err(SandboxError::WrongState {
                id,
                state: rec.state,
            });
        }
        let ip = rec.ip().ok_or_else(|| SandboxError::NotFound(id.clone()))?;
        let in_use = self.enter(&id)?;
        Ok(Route {
            in_use,
            addr: SocketAddr::new(ip.into(), port),
            traffic: self.traffic.token(&id),
        })
    }

    /// Run a lifecycle operation to its end whether or not its caller waits for it. A
    /// client that hangs up makes hyper drop the request's future; an operation dropped
    /// mid-way would leave a row in `Creating` or `Pausing`, a container nobody owns, or
    /// a sandbox frozen for a snapshot and never thawed. Dropping the returned future
    /// only stops waiting; [`Manager::shutdown`] waits for the operation.
    async fn detached<T, F>(
        self: &Arc<Self>,
        op: impl FnOnce(Arc<Manager>) -> F,
    ) -> Result<T, SandboxError>
    where
        F: Future<Output = Result<T, SandboxError>> + Send + 'static,
        T: Send + 'static,
    {
        match self.tasks.spawn(op(Arc::clone(self))).await {
            Ok(outcome) => outcome,
            Err(err) => match err.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: only the runtime shutting down does that.
                Err(_) => Err(SandboxError::Interrupted),
            },
        }
    }

    fn clamp_timeout(&self, seconds: Option<u64>) -> Duration {
        seconds
            .map(Duration::from_secs)
            .unwrap_or(self.defaults.timeout)
            .min(self.defaults.max_timeout)
    }
}
