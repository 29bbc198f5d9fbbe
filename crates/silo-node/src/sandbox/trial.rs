//! A template build's trial: boot a sandbox from it before it is published, so its
//! start and ready commands are known to work before any user gets one.

use std::collections::BTreeMap;
use std::path::Path;

use silo_catalog::SandboxState;
use tokio_util::sync::CancellationToken;

use super::create::{config_of, CreateRequest, Origin};
use super::{Manager, SandboxError};

/// Sandboxes booted for a trial carry this metadata key (value: the template's name).
pub const TRIAL_METADATA: &str = "silo.template-check";

impl Manager {
    /// Boot a sandbox from the build at `rootfs` (which runs the template's start command
    /// and waits for its ready command), then tear it down; given up as
    /// [`SandboxError::Interrupted`] when `stop` is cancelled.
    pub async fn trial(
        &self,
        name: &str,
        rootfs: &Path,
        stop: &CancellationToken,
    ) -> Result<(), SandboxError> {
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
        let rec = self
            .create_until(req, origin, SandboxState::Running, Some(stop))
            .await?;
        self.finish_kill(&rec.id, rec.state, "template check done")
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::fake::{self, FakeRuntime, Verb};
    use super::*;

    #[tokio::test]
    async fn a_trial_stopped_while_the_agent_readies_it_is_interrupted_and_released() {
        let runtime = Arc::new(FakeRuntime::default());
        runtime.silent_agent().await;
        let (manager, dir) = fake::manager(Arc::clone(&runtime));
        let rootfs = dir.path().join("app").join("h").join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let stop = CancellationToken::new();
        let trial = tokio::spawn({
            let (manager, stop) = (Arc::clone(&manager), stop.clone());
            async move { manager.trial("app", &rootfs, &stop).await }
        });
        while manager
            .catalog
            .sandboxes_in(&[SandboxState::Creating])
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.cancel();
        let err = trial.await.unwrap().unwrap_err();
        assert!(matches!(err, SandboxError::Interrupted), "{err}");
        manager.shutdown().await;

        assert_eq!(runtime.done(), [Verb::Start, Verb::Destroy]);
        let killed = manager
            .catalog
            .sandboxes_in(&[SandboxState::Killed])
            .unwrap();
        assert_eq!(killed.len(), 1);
        assert!(manager
            .catalog
            .sandboxes_in(&SandboxState::ALL)
            .unwrap()
            .iter()
            .all(|s| s.state == SandboxState::Killed));
    }
}
