//! The whole router over an in-memory catalog and a runtime that runs nothing, for tests
//! of the HTTP edge: a test puts the sandbox rows it needs in the catalog, and may point
//! one's address at a server of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use silo_catalog::{Catalog, SandboxRecord, SandboxState};
use silo_node::network::{Cidr, EgressPolicy};
use silo_node::sandbox::{Manager, SandboxDefaults, Templates};
use silo_node::{usage::Usage, Paused, Runtime, RuntimeError, SandboxSpec, Started};
use silo_protocol::ids::SandboxId;
use silo_templates::{StepNet, StepNetwork};

use crate::AppState;

pub struct TestApp {
    pub state: AppState,
    pub runtime: Arc<NoRuntime>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub fn new() -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = Arc::new(NoRuntime::default());
        let manager = Manager::new(
            Arc::new(Catalog::open_in_memory().expect("catalog")),
            runtime.clone(),
            Templates::new(dir.path().join("templates")),
            SandboxDefaults::default(),
            "0.0.0-test".into(),
            dir.path().join("snapshots"),
        );
        let builder = silo_node::builds::Builder::new(
            Arc::clone(&manager),
            silo_templates::BuildRunsc {
                binary: "runsc".into(),
                platform: "systrap".into(),
                root: dir.path().join("runsc"),
            },
            runtime.clone(),
            silo_node::builds::BuildSettings::default(),
        )
        .expect("builder");
        let state = AppState {
            manager,
            builder,
            upstreams: crate::proxy::Upstreams::default(),
            domain: None,
            telemetry: Arc::default(),
            mcp: None,
        };
        TestApp {
            state,
            runtime,
            _dir: dir,
        }
    }

    pub fn router(&self) -> axum::Router {
        crate::router(self.state.clone())
    }

    pub fn insert(&self, rec: &SandboxRecord) {
        self.state
            .manager
            .catalog()
            .insert_sandbox(rec)
            .expect("insert sandbox");
    }

    pub fn state_of(&self, id: &SandboxId) -> SandboxState {
        self.state.manager.get(id).expect("sandbox").state
    }
}

/// A sandbox row in `state` at `address`, public and not secure, living a minute more.
pub fn record(state: SandboxState, address: Option<&str>) -> SandboxRecord {
    SandboxRecord {
        address: address.map(str::to_owned),
        ..silo_catalog::testing::record(state)
    }
}

/// Fails every verb that would start, pause or resume something (counting resumes), and
/// reports a paused sandbox as still paused.
#[derive(Default)]
pub struct NoRuntime {
    pub resumes: AtomicUsize,
}

fn refused(id: &SandboxId) -> RuntimeError {
    RuntimeError::NotPaused { id: id.clone() }
}

#[async_trait]
impl Runtime for NoRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        Err(refused(&spec.id))
    }
    async fn pause(&self, id: &SandboxId) -> Result<Paused, RuntimeError> {
        Err(refused(id))
    }
    async fn snapshot(&self, id: &SandboxId, _: &std::path::Path) -> Result<(), RuntimeError> {
        Err(refused(id))
    }
    fn pause_saves_connections(&self) -> bool {
        false
    }
    async fn resume(&self, id: &SandboxId, _: &EgressPolicy) -> Result<Started, RuntimeError> {
        self.resumes.fetch_add(1, Ordering::SeqCst);
        Err(refused(id))
    }
    fn blocked(&self) -> &[Cidr] {
        &[]
    }
    async fn set_egress(&self, _: &SandboxId, _: &EgressPolicy) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn is_paused(&self, _: &SandboxId) -> Result<bool, RuntimeError> {
        Ok(true)
    }
    async fn destroy(&self, _: &SandboxId) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn set_frozen(&self, _: &SandboxId, _: bool) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn set_background(&self, _: &SandboxId, _: bool) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn usage(&self, _: &SandboxId) -> Result<Usage, RuntimeError> {
        Ok(Usage::default())
    }
    async fn running(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        Ok(Vec::new())
    }
    async fn list(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        Ok(Vec::new())
    }
    async fn shutdown(&self) {}
}

#[async_trait]
impl StepNetwork for NoRuntime {
    async fn acquire(&self) -> Result<StepNet, silo_templates::dockerbuild::NetworkError> {
        Err("no network in tests".into())
    }
    async fn release(&self, _: &StepNet) -> Result<(), silo_templates::dockerbuild::NetworkError> {
        Ok(())
    }
    fn prepare(&self, _: &mut tokio::process::Command) {}
}
