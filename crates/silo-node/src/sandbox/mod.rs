//! The sandbox lifecycle on this host: one verb per file, each checks the state, acts on
//! the runtime, and records the new state in the catalog (which checks the transition).
//!
//! - [`create`]: template → runtime start → agent `/init` → `Running`.
//! - [`kill`]: `Killing` → runtime destroy (idempotent) → `Killed`.
//! - [`timeout`]: set/extend the end time, and the reaper that kills expired sandboxes.
//! - [`reconcile`]: at start, make the catalog and the runtime agree.

mod create;
mod kill;
mod reconcile;
mod templates;
mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use silo_catalog::{Catalog, CatalogError, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

use crate::{Runtime, RuntimeError};
pub use create::CreateRequest;
pub use templates::Templates;

/// Limits and defaults for sandboxes (documented on the CLI flags that set them).
#[derive(Debug, Clone)]
pub struct SandboxDefaults {
    pub timeout: Duration,
    pub max_timeout: Duration,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        SandboxDefaults {
            timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {0} was not found")]
    NotFound(SandboxId),
    #[error("template {0:?} was not found; build it with `silo template build {0}`")]
    TemplateNotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("sandbox {id} is {state}")]
    WrongState { id: SandboxId, state: SandboxState },
    // Runtime errors are boxed: they are large and rare, and this enum is on every path.
    #[error("cannot start sandbox {id}")]
    Start {
        id: SandboxId,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot stop sandbox {id}")]
    Destroy {
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
}

/// The node's sandboxes: the catalog says what should exist, the runtime runs it.
pub struct Manager {
    catalog: Arc<Catalog>,
    runtime: Arc<dyn Runtime>,
    templates: Templates,
    agent: crate::agent::AgentClient,
    defaults: SandboxDefaults,
    envd_version: String,
    /// Teardowns running after their kill returned; awaited by [`Manager::shutdown`].
    tasks: tokio_util::task::TaskTracker,
}

impl Manager {
    pub fn new(
        catalog: Arc<Catalog>,
        runtime: Arc<dyn Runtime>,
        templates: Templates,
        defaults: SandboxDefaults,
        envd_version: String,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            catalog,
            runtime,
            templates,
            agent: crate::agent::AgentClient::new(),
            defaults,
            envd_version,
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn defaults(&self) -> &SandboxDefaults {
        &self.defaults
    }

    /// A sandbox a user can see: one being killed is already gone.
    pub fn get(&self, id: &SandboxId) -> Result<SandboxRecord, SandboxError> {
        match self.catalog.get_sandbox(id)? {
            Some(rec) if !matches!(rec.state, SandboxState::Killing | SandboxState::Killed) => {
                Ok(rec)
            }
            _ => Err(SandboxError::NotFound(id.clone())),
        }
    }

    /// Wait for background teardowns (kills that already answered) to finish.
    pub async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Where to send traffic for `port` of a running sandbox.
    pub fn route(&self, id: &SandboxId, port: u16) -> Result<SocketAddr, SandboxError> {
        let rec = self.get(id)?;
        if rec.state != SandboxState::Running {
            return Err(SandboxError::WrongState {
                id: id.clone(),
                state: rec.state,
            });
        }
        let ip = rec
            .address
            .as_deref()
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| SandboxError::NotFound(id.clone()))?;
        Ok(SocketAddr::new(ip, port))
    }

    fn clamp_timeout(&self, seconds: Option<u64>) -> Duration {
        seconds
            .map(Duration::from_secs)
            .unwrap_or(self.defaults.timeout)
            .min(self.defaults.max_timeout)
    }
}
