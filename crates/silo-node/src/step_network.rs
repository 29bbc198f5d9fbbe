//! The network of a template build's RUN step: a sandbox's, with the default egress
//! rules. A Dockerfile is untrusted, so its steps reach what a sandbox reaches (the
//! internet through NAT, its resolvers) and nothing a sandbox may not: the host (silo's
//! API included), other sandboxes, metadata addresses.
//!
//! Each step gets an id of its own (a [`SandboxId`] that no sandbox has), and with it
//! an address lease, netns, veth and firewall rules, made and released exactly as a
//! sandbox's ([`Undo::NETWORK`]). A server stopped mid-step leaves a lease whose id has
//! no sandbox dir: `list` reports it, and reconcile releases it at the next start.

use std::sync::Arc;

use async_trait::async_trait;
use silo_protocol::ids::SandboxId;
use silo_templates::dockerbuild::NetworkError;
use silo_templates::{StepNet, StepNetwork};
use tokio::process::Command;

use crate::cleanup::{Undo, UndoStack};
use crate::gvisor::RunscRuntime;
use crate::network::{EgressPolicy, NetNames};

#[async_trait]
impl StepNetwork for RunscRuntime {
    async fn acquire(&self) -> Result<StepNet, NetworkError> {
        let id = SandboxId::generate();
        let mut undo = UndoStack::new(Arc::clone(&self.inner), id.clone());
        match self
            .acquire_network(&id, &EgressPolicy::default(), &mut undo)
            .await
        {
            Ok(_) => {
                undo.disarm();
                Ok(StepNet {
                    netns: NetNames::of(&id).netns_path(),
                    id: id.to_string(),
                })
            }
            Err(err) => {
                for e in undo.run().await {
                    tracing::warn!(step_network = %id, error = %crate::error_chain(&e), "undo after a failed RUN step network");
                }
                Err(err.into())
            }
        }
    }

    async fn release(&self, net: &StepNet) -> Result<(), NetworkError> {
        let id: SandboxId = net.id.parse()?;
        Ok(RunscRuntime::release(self, &id, Undo::NETWORK.to_vec()).await?)
    }

    fn prepare(&self, runsc: &mut Command) {
        crate::runsc::procsys::install(runsc);
    }
}
