//! silo-node: the sandboxes of this host.
//!
//! The caller sees one small trait, [`Runtime`]: `start` a sandbox from a
//! [`SandboxSpec`] (returns once its agent answers `/health`), `destroy` it by id
//! (idempotent, works after a restart of silo), `list` what exists. [`RunscRuntime`]
//! implements it on gVisor; a microVM runtime could implement it on hosts where KVM
//! works.
//!
//! Inside:
//!
//! - [`runsc`]: the one place that runs the runsc binary (typed argv, timeouts,
//!   stderr in errors, `state`/`list` JSON).
//! - [`network`]: netns + veth + a /30 per sandbox, from a persisted address pool.
//! - [`bundle`]: the OCI `config.json` (template rootfs below a per-sandbox overlay,
//!   the agent bind-mounted read-only at /opt/silo).
//! - [`disk`]: each sandbox's size-limited disk, where its writes go.
//! - `cleanup`: the undo stack every acquisition registers with.
//! - [`sandbox`]: the lifecycle on top of the runtime: create, kill, timeouts and
//!   reconcile, each state change checked and recorded by the catalog.
//! - [`agent`]: the calls the node makes to a sandbox's agent (`/init`).
//! - [`leaks`]: counts what silo holds on the host, for leak tests and reconcile.
//! - [`usage`]: what a sandbox uses of the host (CPU, memory, disk), for its metrics.
//! - `step_network`: template builds' RUN steps get a sandbox's network
//!   ([`silo_templates::StepNetwork`] on [`RunscRuntime`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), silo_node::RuntimeError> {
//! use silo_node::{Runtime, RunscConfig, RunscRuntime, SandboxSpec};
//! use silo_protocol::ids::SandboxId;
//!
//! let runtime = RunscRuntime::new(RunscConfig::new("/var/lib/silo/node", "/usr/lib/silo"))?;
//! let spec = SandboxSpec::new(SandboxId::generate(), "/var/lib/silo/templates/base/h/rootfs");
//! let started = runtime.start(&spec).await?; // agent at started.agent
//! runtime.destroy(&spec.id).await?;
//! # Ok(()) }
//! ```

pub mod agent;
mod build_log;
pub mod builds;
pub mod bundle;
mod cleanup;
pub mod disk;
pub mod fds;
mod gvisor;
mod health;
pub mod leaks;
pub mod network;
pub mod runsc;
pub mod sandbox;
mod step_network;
pub mod usage;

use std::error::Error;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use silo_protocol::ids::SandboxId;

pub use cleanup::TeardownError;
pub use gvisor::{PauseMode, RunscConfig, RunscRuntime};
pub use leaks::HostUsage;

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: SandboxId,
    /// The template's rootfs: the read-only lower layer, shared, never written.
    pub rootfs: PathBuf,
    pub cpu_count: u32,
    pub memory_mb: u32,
    /// Room for its writes (root filesystem and /tmp).
    pub disk_size_mb: u32,
    /// Tasks (processes and threads) it may have.
    pub pids_limit: u32,
    pub hostname: String,
    /// What it may reach outside.
    pub egress: network::EgressPolicy,
    /// Restore this snapshot image (see [`Runtime::snapshot`]) instead of booting: the
    /// new sandbox starts with the saved memory, processes and files. `rootfs` must be
    /// the one the snapshot was taken on.
    pub from_image: Option<PathBuf>,
    /// Booted ahead of demand (a warm pool's): it gets the smallest CPU share, so that
    /// running sandboxes win the host's cores from its boot, until
    /// [`Runtime::set_background`] gives it the normal share.
    pub background: bool,
}

impl SandboxSpec {
    /// 2 CPUs, 512 MiB, 1 GiB of disk, 512 tasks per user, hostname `sandbox`.
    pub fn new(id: SandboxId, rootfs: impl Into<PathBuf>) -> Self {
        SandboxSpec {
            id,
            rootfs: rootfs.into(),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
            pids_limit: 512,
            hostname: "sandbox".into(),
            egress: network::EgressPolicy::default(),
            from_image: None,
            background: false,
        }
    }
}

/// A sandbox whose agent answered `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The sandbox's address, reachable from the host.
    pub ip: Ipv4Addr,
    /// The host side of its link.
    pub gateway: Ipv4Addr,
    /// The agent (envd) at `ip:49983`.
    pub agent: SocketAddr,
    /// From the call to `start` until the agent answered.
    pub ready_after: Duration,
}

/// What a pause kept of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// Frozen in place: memory, address and connections kept.
    Frozen,
    /// Saved to disk and stopped: no memory and no address; resume gives it a new one.
    Saved,
}

/// Runs sandboxes. Kept small so another isolation engine can implement it.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Start a sandbox; returns once its agent answers. On failure nothing is left
    /// behind.
    async fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError>;
    /// Pause the sandbox with everything in it (see [`PauseMode`]): it then uses no
    /// CPU. On failure it keeps running.
    async fn pause(&self, id: &SandboxId) -> Result<Paused, RuntimeError>;
    /// Save the whole sandbox (memory, processes, files) into `image`, which must not
    /// exist, and leave it as it was (running, or frozen). `image` exists afterwards
    /// only if it is complete. Close its connections first, as for a checkpoint pause.
    async fn snapshot(&self, id: &SandboxId, image: &std::path::Path) -> Result<(), RuntimeError>;
    /// Whether `pause` saves the sandbox's network state to disk (a checkpoint), so its
    /// connections must be closed at both ends first; freezing keeps them as they are.
    fn pause_saves_connections(&self) -> bool;
    /// Bring a paused sandbox back as it was, under `egress` (a saved sandbox gets its
    /// network anew). On failure it stays paused, unless it failed after the thaw and
    /// could not be paused again: [`Runtime::is_paused`] then tells.
    async fn resume(
        &self,
        id: &SandboxId,
        egress: &network::EgressPolicy,
    ) -> Result<Started, RuntimeError>;
    /// Destinations no sandbox reaches, whatever its rules say: its address pool and
    /// [`network::ALWAYS_BLOCKED`].
    fn blocked(&self) -> &[network::Cidr];
    /// Replace the egress rules of a sandbox that has its network (running, or paused
    /// in memory); new connections follow them at once.
    async fn set_egress(
        &self,
        id: &SandboxId,
        policy: &network::EgressPolicy,
    ) -> Result<(), RuntimeError>;
    /// Whether `id` is paused: frozen, or a complete checkpoint is on disk. `false` when
    /// its container is gone; an error when it is there but its state cannot be read
    /// now (a busy host): it may be paused, so it must not be taken for gone.
    async fn is_paused(&self, id: &SandboxId) -> Result<bool, RuntimeError>;
    /// Release everything the sandbox holds. Idempotent; needs only the id.
    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError>;
    /// Freeze (or thaw) the sandbox's every task in place, at once: it then costs no
    /// CPU, and a thaw gives it back as it was. Idempotent; no runsc call (see
    /// `sandbox::doze`).
    fn set_frozen(&self, id: &SandboxId, frozen: bool) -> Result<(), RuntimeError>;
    /// Give the sandbox the smallest CPU share (`true`) or the normal one. Idempotent.
    fn set_background(&self, id: &SandboxId, background: bool) -> Result<(), RuntimeError>;
    /// What the sandbox uses of the host now (CPU time so far, memory, disk).
    async fn usage(&self, id: &SandboxId) -> Result<usage::Usage, RuntimeError>;
    /// Sandboxes whose container is up (running or frozen).
    async fn running(&self) -> Result<Vec<SandboxId>, RuntimeError>;
    /// Every sandbox this runtime holds anything for, running or half-made (and the
    /// network of a template build's RUN step, under an id no sandbox has).
    async fn list(&self) -> Result<Vec<SandboxId>, RuntimeError>;
    /// silo is stopping: release what serves all sandboxes, if none is left (sandboxes
    /// outlive a restart, and need it then).
    async fn shutdown(&self);
}

/// Errors of the runtime's verbs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration")]
    InvalidConfig(#[source] network::NetworkError),
    #[error("create state directory {path}")]
    CreateStateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sandbox {id} already exists on this host")]
    SandboxExists { id: SandboxId },
    #[error("create the disk of sandbox {id}")]
    CreateDisk {
        id: SandboxId,
        #[source]
        source: disk::DiskError,
    },
    #[error("create directory {path} for sandbox {id}")]
    CreateSandboxDir {
        id: SandboxId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("set up network for sandbox {id}")]
    SetupNetwork {
        id: SandboxId,
        #[source]
        source: network::NetworkError,
    },
    #[error("write bundle for sandbox {id}")]
    WriteBundle {
        id: SandboxId,
        #[source]
        source: bundle::BundleError,
    },
    #[error("start container for sandbox {id}")]
    StartContainer {
        id: SandboxId,
        #[source]
        source: runsc::RunscError,
    },
    #[error("agent of sandbox {id} did not answer http://{agent}/health within {waited:?} (last: {last_error}); console: {log}")]
    WaitReady {
        id: SandboxId,
        agent: SocketAddr,
        waited: Duration,
        last_error: String,
        log: String,
    },
    #[error("sandbox {id} stopped before its agent answered; console: {log}")]
    AgentExited { id: SandboxId, log: String },
    #[error("tear down sandbox {id}: {}", errors.iter().map(|e| error_chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown {
        id: SandboxId,
        errors: Vec<TeardownError>,
    },
    #[error("cannot freeze sandbox {id}")]
    Freeze {
        id: SandboxId,
        #[source]
        source: runsc::RunscError,
    },
    #[error("sandbox {id} could not be thawed")]
    Thaw {
        id: SandboxId,
        #[source]
        source: runsc::RunscError,
    },
    #[error("cannot read the state of sandbox {id}")]
    State {
        id: SandboxId,
        #[source]
        source: runsc::RunscError,
    },
    #[error("cannot save sandbox {id} to {path}")]
    Checkpoint {
        id: SandboxId,
        path: PathBuf,
        #[source]
        source: CheckpointFailure,
    },
    #[error("sandbox {id} has no checkpoint to resume from")]
    NotPaused { id: SandboxId },
    #[error("cannot {} sandbox {id} through {path}", if *frozen { "freeze" } else { "thaw" })]
    Freezer {
        id: SandboxId,
        frozen: bool,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the CPU share of sandbox {id} through {path}")]
    CpuShare {
        id: SandboxId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read what sandbox {id} uses")]
    Usage {
        id: SandboxId,
        #[source]
        source: usage::UsageError,
    },
    #[error("list runsc containers")]
    ListContainers(#[source] runsc::RunscError),
    #[error("list address leases")]
    ListLeases(#[source] network::NetworkError),
    #[error("list sandbox directories in {path}")]
    ListSandboxDirs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error(transparent)]
    Runsc(runsc::RunscError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `error: cause: cause`, for errors that end up inside another message or a log.
pub(crate) fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
