//! Create: record `Creating`, start the runtime sandbox, configure its agent, go `Running`.
//! Any failure after the record exists kills what was started, so nothing is left behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use silo_catalog::{now_ms, CatalogError, SandboxRecord, SandboxState};
use silo_protocol::ids::{generate_access_token, SandboxId};
use silo_protocol::rest::Resources;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use silo_templates::TemplateConfig;

use super::templates::Pin;
use super::{Manager, SandboxError, TemplateRef};
use crate::SandboxSpec;
use silo_protocol::envd::InitRequest;

/// What a caller asks for; the REST layer fills it from the v1 or v2 body.
#[derive(Debug, Default)]
pub struct CreateRequest {
    pub template: String,
    pub timeout_seconds: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Whether envd demands an access token (E2B's `secure`, on by default).
    pub secure: bool,
    /// Pause instead of kill at the end time.
    pub auto_pause: bool,
    /// Resume a paused sandbox when traffic for it arrives.
    pub auto_resume: bool,
    /// What it may reach outside.
    pub egress: crate::network::EgressPolicy,
    /// Whether its ports answer without the traffic access token (E2B's
    /// `allowPublicTraffic`, on by default).
    pub public_traffic: bool,
    /// Resources asked for; what is not takes the origin's, else the server's default.
    pub resources: Resources,
}

/// What a new sandbox starts from: a template booted fresh, or a snapshot restored.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    /// The template's canonical name, or the snapshot's id (for logs).
    pub(super) name: String,
    pub(super) rootfs: PathBuf,
    /// Its defaults: a template's, or what a snapshot was saved with.
    pub(super) resources: Resources,
    /// The template's defaults for its sandboxes (env, user, workdir).
    pub(super) config: TemplateConfig,
    pub(super) snapshot: Option<SavedState>,
    /// A template's build, held against a prune until the sandbox's row names it (a
    /// snapshot's or another sandbox's rootfs is held by its own row).
    pub(super) pin: Option<Pin>,
}

/// The user commands run as, and their directory, unless the template says otherwise.
const DEFAULT_USER: &str = "user";
const DEFAULT_WORKDIR: &str = "/home/user";

pub(super) fn config_of(rootfs: &std::path::Path) -> Result<TemplateConfig, SandboxError> {
    TemplateConfig::of(rootfs).map_err(SandboxError::BrokenTemplate)
}

/// A snapshot image and what its agent was configured with when saved.
#[derive(Debug, Clone)]
pub(super) struct SavedState {
    pub(super) image: PathBuf,
    /// The envd token the saved agent holds: the new configuration must present it.
    pub(super) access_token: Option<String>,
    pub(super) env_vars: BTreeMap<String, String>,
}

impl Manager {
    /// Create a sandbox from a template, or from a snapshot named by id or name. The
    /// create ends (running, or released) even if the caller stops waiting.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRequest,
    ) -> Result<SandboxRecord, SandboxError> {
        self.detached(move |manager| async move { manager.create_held(req).await })
            .await
    }

    async fn create_held(&self, req: CreateRequest) -> Result<SandboxRecord, SandboxError> {
        let origin = self.origin(&req.template)?;
        // A sandbox from the warm pool has the template's defaults: only a create that
        // asks for no others can take one.
        if origin.snapshot.is_none() && req.resources == Resources::default() {
            if let Some(rec) = self.hand_out(&req, &origin).await {
                return Ok(rec);
            }
        }
        self.create_from(req, origin, SandboxState::Running).await
    }

    /// The canonical name of the template `name` (a name or alias, untagged) means.
    pub fn template_named(&self, name: &str) -> Result<String, SandboxError> {
        let canonical = self.templates.canonical(name)?;
        if !self.templates.is_built(canonical) {
            if let Some(target) = self.catalog.alias(canonical)? {
                return Ok(target);
            }
        }
        Ok(canonical.to_owned())
    }

    /// A snapshot by id or name, else a template by name or alias (silo's own, or one
    /// set with `silo template alias`), with a tag or not (`name:tag`).
    pub(super) fn origin(&self, name: &str) -> Result<Origin, SandboxError> {
        if let Some(snap) = self.catalog.snapshot(name)? {
            let rootfs = PathBuf::from(snap.rootfs);
            return Ok(Origin {
                config: config_of(&rootfs)?,
                rootfs,
                resources: Resources {
                    cpu_count: Some(snap.cpu_count),
                    memory_mb: Some(snap.memory_mb),
                    disk_size_mb: Some(snap.disk_size_mb),
                },
                snapshot: Some(SavedState {
                    image: self.snapshot_image(&snap.id),
                    access_token: snap.access_token,
                    env_vars: snap.env_vars,
                }),
                pin: None,
                name: snap.id,
            });
        }
        let named = TemplateRef::parse(name)?;
        let template = self.template_named(named.name)?;
        let (rootfs, pin) = self
            .templates
            .pinned_rootfs(&self.catalog, &template, named.tag)?;
        Ok(Origin {
            resources: super::resources_of(&rootfs)?,
            config: config_of(&rootfs)?,
            rootfs,
            snapshot: None,
            pin: Some(pin),
            name: template,
        })
    }

    /// Boot a sandbox from `origin` and take it to `target`: `Running` for a user, or
    /// `Pooled` to wait in the warm pool (with no end time until it is handed out).
    pub(super) async fn create_from(
        &self,
        req: CreateRequest,
        origin: Origin,
        target: SandboxState,
    ) -> Result<SandboxRecord, SandboxError> {
        self.create_until(req, origin, target, None).await
    }

    /// [`Manager::create_from`], given up as [`SandboxError::Interrupted`] (and what it
    /// made released) if `stop` is cancelled while the agent readies the sandbox: the
    /// wait for a template's ready command, which may be long.
    pub(super) async fn create_until(
        &self,
        req: CreateRequest,
        mut origin: Origin,
        target: SandboxState,
        stop: Option<&CancellationToken>,
    ) -> Result<SandboxRecord, SandboxError> {
        let timeout = match target {
            SandboxState::Pooled => super::pool::NEVER,
            _ => self.clamp_timeout(req.timeout_seconds),
        };
        let d = &self.defaults;
        let asked = req.resources.or(origin.resources);
        let cpu_count = within("cpuCount", asked.cpu_count, d.cpu_count, d.max_cpu_count)?;
        let memory_mb = within("memoryMB", asked.memory_mb, d.memory_mb, d.max_memory_mb)?;
        let disk_size_mb = within(
            "diskSizeMB",
            asked.disk_size_mb,
            d.disk_size_mb,
            d.max_disk_size_mb,
        )?;
        let saved = origin.snapshot.as_ref();
        let mut env_vars = saved.map(|s| s.env_vars.clone()).unwrap_or_default();
        env_vars.extend(req.env_vars);
        let now = now_ms();
        let mut rec = SandboxRecord {
            id: SandboxId::generate(),
            // The SDK compares nothing here, but users see the name they asked for.
            template_id: req.template.clone(),
            state: SandboxState::Creating,
            started_at_ms: now,
            end_at_ms: now + timeout.as_millis() as i64,
            metadata: req.metadata,
            env_vars,
            envd_access_token: req.secure.then(generate_access_token),
            envd_version: self.envd_version.clone(),
            cpu_count,
            memory_mb,
            disk_size_mb,
            address: None,
            auto_pause: req.auto_pause,
            auto_resume: req.auto_resume,
            network: super::network::rules_of(&req.egress),
            traffic_access_token: (!req.public_traffic).then(generate_access_token),
            rootfs: Some(origin.rootfs.display().to_string()),
        };
        // The sandbox's lifecycle lock, from before its row exists until it is up: a kill
        // meanwhile tears down after the boot, what the boot made included (kill.rs).
        let lock = self.lifecycle_lock(&rec.id);
        let held = lock.lock().await;
        self.catalog.insert_sandbox(&rec)?;
        // Its row holds the build from here on.
        origin.pin = None;
        // Instrumented, not entered: a guard held across awaits tags other tasks' logs.
        let span = tracing::info_span!("create", sandbox_id = %rec.id, from = %origin.name);

        let booted = async {
            let address = self.boot(&rec, origin, req.egress, target, stop).await?;
            self.catalog.set_address(&rec.id, Some(&address))?;
            self.catalog
                .transition(&rec.id, SandboxState::Creating, target, "agent ready")
                .map_err(|err| match err {
                    CatalogError::StateChanged { .. } => {
                        SandboxError::KilledWhileCreating(rec.id.clone())
                    }
                    err => err.into(),
                })?;
            Ok::<_, SandboxError>(address)
        }
        .instrument(span.clone())
        .await;
        // Before a cleanup, whose teardown takes the lock.
        drop(held);
        match booted {
            Ok(address) => {
                rec.address = Some(address);
                rec.state = target;
                tracing::info!(sandbox_id = %rec.id, state = %target, "sandbox up");
                Ok(rec)
            }
            // The kill's teardown releases it.
            Err(err @ SandboxError::KilledWhileCreating(_)) => Err(err),
            Err(err) => {
                tracing::warn!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "create failed; cleaning up");
                match self
                    .finish_kill(&rec.id, SandboxState::Creating, "create failed")
                    .instrument(span)
                    .await
                {
                    // Killed meanwhile: that kill releases it.
                    Ok(()) | Err(SandboxError::NotFound(_)) => {}
                    Err(cleanup) => {
                        tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&cleanup), "cleanup after failed create");
                    }
                }
                Err(err)
            }
        }
    }

    /// Start the runtime sandbox and hand its agent the per-sandbox settings.
    async fn boot(
        &self,
        rec: &SandboxRecord,
        origin: Origin,
        egress: crate::network::EgressPolicy,
        target: SandboxState,
        stop: Option<&CancellationToken>,
    ) -> Result<String, SandboxError> {
        let config = origin.config;
        let mut spec = SandboxSpec::new(rec.id.clone(), origin.rootfs);
        spec.egress = egress;
        spec.from_image = origin.snapshot.as_ref().map(|s| s.image.clone());
        spec.cpu_count = rec.cpu_count;
        spec.memory_mb = rec.memory_mb;
        spec.disk_size_mb = rec.disk_size_mb;
        spec.pids_limit = self.defaults.pids_limit;
        spec.background = target == SandboxState::Pooled;
        let started = self
            .runtime
            .start(&spec)
            .await
            .map_err(|source| SandboxError::Start {
                id: rec.id.clone(),
                source: Box::new(source),
            })?;
        // The template's ENV, USER and WORKDIR, under what the create asked for.
        let mut env_vars = config.env;
        env_vars.extend(rec.env_vars.clone());
        let default_user = config.user.unwrap_or_else(|| DEFAULT_USER.to_owned());
        let default_workdir = config
            .workdir
            .or_else(|| (default_user == DEFAULT_USER).then(|| DEFAULT_WORKDIR.to_owned()));
        // A restored sandbox's start command is running already, in its saved state.
        let start = config.start.filter(|_| origin.snapshot.is_none());
        let init = InitRequest {
            access_token: rec.envd_access_token.clone(),
            env_vars: Some(env_vars),
            default_user: Some(default_user),
            default_workdir,
            start_cmd: start.as_ref().and_then(|s| s.start_cmd.clone()),
            ready_cmd: start.and_then(|s| s.ready_cmd),
            // A pooled sandbox waits for its kernels, so its hand-out finds them up.
            wait_for_kernels: (target == SandboxState::Pooled).then_some(true),
        };
        let saved_token = origin.snapshot.and_then(|s| s.access_token);
        let initialized = self
            .agent
            .init(started.agent, &init, saved_token.as_deref());
        let initialized = match stop {
            Some(stop) => tokio::select! {
                initialized = initialized => initialized,
                () = stop.cancelled() => return Err(SandboxError::Interrupted),
            },
            None => initialized.await,
        };
        initialized.map_err(|source| SandboxError::Init {
            id: rec.id.clone(),
            source,
        })?;
        Ok(started.ip.to_string())
    }
}

/// `asked`, or `default` when not asked, if it is 1 to `max`.
fn within(field: &str, asked: Option<u32>, default: u32, max: u32) -> Result<u32, SandboxError> {
    let value = asked.unwrap_or(default);
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SandboxError::InvalidRequest(format!(
            "{field} {value} is outside this server's range: ask for 1 to {max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, FakeRuntime, Verb};
    use super::*;

    #[tokio::test]
    async fn a_kill_during_the_boot_releases_what_the_boot_made_after_it() {
        let runtime = Arc::new(FakeRuntime::default());
        runtime.answer_agent().await;
        let (manager, dir) = fake::manager(Arc::clone(&runtime));
        let origin = Origin {
            name: "base".into(),
            rootfs: dir.path().join("rootfs"),
            resources: Resources::default(),
            config: TemplateConfig::default(),
            snapshot: None,
            pin: None,
        };
        runtime.hold(Verb::Start);
        let create = tokio::spawn({
            let manager = Arc::clone(&manager);
            async move {
                let req = CreateRequest::default();
                manager
                    .create_from(req, origin, SandboxState::Running)
                    .await
            }
        });
        runtime.began().await;
        let booting = manager
            .catalog
            .sandboxes_in(&[SandboxState::Creating])
            .unwrap();
        let id = booting[0].id.clone();
        manager.kill(&id, "test").unwrap();
        // Its teardown's turn, were it not waiting for the boot.
        tokio::task::yield_now().await;
        runtime.release();
        let err = create.await.unwrap().unwrap_err();
        assert!(matches!(err, SandboxError::KilledWhileCreating(_)), "{err}");
        manager.shutdown().await;

        assert_eq!(
            runtime.done(),
            [Verb::Start, Verb::Destroy],
            "destroyed after the boot, not under it"
        );
        assert_eq!(runtime.held(&id), None, "nothing the boot made is left");
        let rec = manager.catalog.get_sandbox(&id).unwrap().unwrap();
        assert_eq!(rec.state, SandboxState::Killed);
        assert_eq!(rec.address, None, "the address the boot wrote is gone");
    }

    #[test]
    fn resources_stay_within_the_maximums() {
        assert_eq!(within("cpuCount", None, 2, 4).unwrap(), 2);
        assert_eq!(within("cpuCount", Some(4), 2, 4).unwrap(), 4);
        let err = within("cpuCount", Some(64), 2, 4).unwrap_err().to_string();
        assert!(
            err.contains("cpuCount 64") && err.contains("1 to 4"),
            "{err}"
        );
        assert!(within("memoryMB", Some(0), 512, 4096).is_err());
    }
}
