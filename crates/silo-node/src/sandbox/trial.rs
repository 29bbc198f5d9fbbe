//! A template build's trial: boot a sandbox from it before it is published, so its
//! start and ready commands are known to work before any user gets one.

use std::collections::BTreeMap;
use std::path::Path;

use silo_catalog::SandboxState;

use super::create::{config_of, CreateRequest, Origin};
use super::{Manager, SandboxError};

/// Sandboxes booted for a trial carry this metadata key (value: the template's name).
pub const TRIAL_METADATA: &str = "silo.template-check";

impl Manager {
    /// Boot a sandbox from the build at `rootfs` (which runs the template's start command
    /// and waits for its ready command), then tear it down.
    pub async fn trial(&self, name: &str, rootfs: &Path) -> Result<(), SandboxError> {
        let origin = Origin {
            pin: None,
            name: name.to_owned(),
            rootfs: rootfs.to_owned(),
            resources: super::resources_of(rootfs)?,
            config: config_of(rootfs)?,
            snapshot: None,
        };
        let req = CreateRequest {
            template: name.to_owned(),
            metadata: BTreeMap::from([(TRIAL_METADATA.to_owned(), name.to_owned())]),
            public_traffic: true,
            ..CreateRequest::default()
        };
        let rec = self.create_from(req, origin, SandboxState::Running).await?;
        self.finish_kill(&rec.id, rec.state, "template check done")
            .await
    }
}
