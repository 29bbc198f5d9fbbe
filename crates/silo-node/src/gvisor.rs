//! [`RunscRuntime`]: the [`Runtime`] on gVisor.
//!
//! Layout under [`RunscConfig::state_dir`]:
//!
//! ```text
//! runsc/            runsc --root: its container state, silo's alone
//! sandboxes/<id>/   the OCI bundle (config.json), console.log (runsc's and the
//!                   agent's stdio), disk.img mounted at disk/ (see crate::disk), an
//!                   empty tmp/ (bound at /tmp); checkpoint/ while paused
//! addresses/<slot>  address leases (see network::AddressPool)
//! ```
//!
//! `start` acquires in [`Undo::PLAN`] order: sandbox dir, its disk, address, netns, veth,
//! container (and the cgroups runsc makes for it), then waits for the agent's
//! `/health`. Any failure, or a dropped future, releases everything acquired so far.
//!
//! `pause` freezes the sandbox (default), or, in checkpoint mode, checkpoints it with
//! `--leave-running` into `checkpoint.partial/`, renames that to `checkpoint/` (so a
//! complete image exists exactly when `checkpoint/` does, whatever crashes when) and only
//! then releases its container, cgroups, firewall rules, veth, netns and address; a failed
//! checkpoint thaws it and it runs on. A saved sandbox is then only its dir (image and
//! disk). `resume` gives it a network anew (a new address), restores, waits for
//! `/health`, then drops the image; a failed restore releases what it took and the
//! sandbox stays saved.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use silo_protocol::ids::SandboxId;
use silo_protocol::ports;

use crate::bundle::BundleSpec;
use crate::cleanup::{self, Undo, UndoStack};
use crate::network::{
    self, AddressPool, Cidr, EgressFilter, EgressPolicy, FilterConfig, Firewall, FirewallError,
    NetNames, NetworkError,
};
use crate::runsc::{ContainerStatus, Runsc, Subcommand};
use crate::{health, CheckpointFailure, Paused, Runtime, RuntimeError, SandboxSpec, Started};

/// A paused sandbox's complete checkpoint image, inside its sandbox dir.
const CHECKPOINT: &str = "checkpoint";

/// Configuration of the gVisor runtime. [`RunscConfig::new`] fills the defaults.
#[derive(Debug, Clone)]
pub struct RunscConfig {
    /// The runsc binary. Default `/usr/bin/runsc`.
    pub runsc: PathBuf,
    /// runsc platform: `systrap` (default), `ptrace`, or `kvm` where KVM works.
    pub platform: String,
    /// silo's node state: runsc root, bundles, address leases. No default.
    pub state_dir: PathBuf,
    /// Host directory holding the static `silo-agent`, mounted read-only at /opt/silo
    /// in every sandbox. No default.
    pub agent_dir: PathBuf,
    /// Pool of sandbox addresses, one /30 each. Default `10.213.0.0/16`. It must not
    /// overlap any network the host uses, and two silo nodes on one host need two pools.
    pub address_pool: (Ipv4Addr, u8),
    /// Where the cgroup v1 hierarchies are mounted. Default `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// Parent cgroup of every sandbox. Default `silo`.
    pub cgroup_parent: String,
    /// Limit for one runsc call. Default 30 s.
    pub command_timeout: Duration,
    /// How long `start` waits for the agent's `/health`. Default 15 s.
    pub ready_timeout: Duration,
    /// What `pause` does. Default [`PauseMode::Freeze`].
    pub pause_mode: PauseMode,
    /// Resolver for the DNS of sandboxes with host-name rules that name none of their
    /// own. Default: the host's (first `nameserver` of /etc/resolv.conf).
    pub dns_upstream: SocketAddr,
}

/// How a sandbox is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseMode {
    /// Freeze every task (`runsc pause`): no CPU, memory kept, resumed in milliseconds.
    /// The container outlives restarts of silo, so nothing is lost but a host reboot.
    #[default]
    Freeze,
    /// Checkpoint to disk and stop: no CPU and no memory. runsc 0.0~20240729 sometimes
    /// saves an image whose processes no longer see network events after the restore
    /// (docs/adr/0006-pause.md), so this is opt-in until runsc is fixed.
    Checkpoint,
}

impl RunscConfig {
    pub fn new(state_dir: impl Into<PathBuf>, agent_dir: impl Into<PathBuf>) -> Self {
        RunscConfig {
            runsc: "/usr/bin/runsc".into(),
            platform: "systrap".into(),
            state_dir: state_dir.into(),
            agent_dir: agent_dir.into(),
            address_pool: (Ipv4Addr::new(10, 213, 0, 0), 16),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: "silo".into(),
            command_timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(15),
            pause_mode: PauseMode::default(),
            dns_upstream: network::host_resolver(),
        }
    }
}

/// Shared by the runtime and its undo steps (which may outlive a cancelled `start`).
pub(crate) struct Inner {
    pub(crate) config: RunscConfig,
    pub(crate) runsc: Runsc,
    pub(crate) pool: AddressPool,
    pub(crate) firewall: Firewall,
    /// The pool and [`network::ALWAYS_BLOCKED`].
    blocked: Vec<Cidr>,
    /// Started, and the firewall's shared table installed with its ports, at the first
    /// sandbox's rules.
    pub(crate) egress: tokio::sync::OnceCell<EgressFilter>,
}

impl Inner {
    pub(crate) fn sandboxes_dir(&self) -> PathBuf {
        self.config.state_dir.join("sandboxes")
    }

    pub(crate) fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes_dir().join(id.as_str())
    }

    /// The sandbox's cgroup, relative to each hierarchy.
    fn cgroups_path(&self, id: &SandboxId) -> String {
        format!("{}/{}", self.config.cgroup_parent, id)
    }

    /// One of the sandbox's cgroup files, e.g. `<root>/freezer/silo/<id>/freezer.state`.
    fn cgroup_file(&self, id: &SandboxId, hierarchy: &str, file: &str) -> PathBuf {
        self.config
            .cgroup_root
            .join(hierarchy)
            .join(self.cgroups_path(id))
            .join(file)
    }

    /// The sandbox's cgroup in every mounted hierarchy (existing or not).
    pub(crate) fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        self.cgroup_parents()
            .into_iter()
            .map(|parent| parent.join(id.as_str()))
            .collect()
    }

    /// `<hierarchy>/<cgroup_parent>` for every hierarchy under the cgroup root.
    pub(crate) fn cgroup_parents(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.config.cgroup_root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path().join(&self.config.cgroup_parent))
            .collect()
    }
}

/// Sandboxes as gVisor containers, one netns each.
#[derive(Clone)]
pub struct RunscRuntime {
    pub(crate) inner: Arc<Inner>,
}

impl RunscRuntime {
    /// Validate `config` and create the state directories.
    pub fn new(config: RunscConfig) -> Result<Self, RuntimeError> {
        let (base, prefix_len) = config.address_pool;
        let pool = AddressPool::new(config.state_dir.join("addresses"), base, prefix_len)
            .map_err(RuntimeError::InvalidConfig)?;
        let runsc = Runsc {
            binary: config.runsc.clone(),
            root: config.state_dir.join("runsc"),
            platform: config.platform.clone(),
            timeout: config.command_timeout,
        };
        let inner = Inner {
            firewall: Firewall::new(base, prefix_len),
            blocked: std::iter::once(pool.range())
                .chain(network::ALWAYS_BLOCKED)
                .collect(),
            config,
            runsc,
            pool,
            egress: tokio::sync::OnceCell::new(),
        };
        for dir in [inner.runsc.root.clone(), inner.sandboxes_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| RuntimeError::CreateStateDir { path: dir, source })?;
        }
        Ok(RunscRuntime {
            inner: Arc::new(inner),
        })
    }

    /// Refuses an address pool that the host routes elsewhere in part: a sandbox given such
    /// an address would be unreachable, or reach another server's sandbox instead. Run after
    /// [`crate::sandbox::Manager::reconcile`], so that this server's own leftovers are gone.
    pub fn check_address_pool(&self) -> Result<(), RuntimeError> {
        let routes = network::host_routes()
            .map_err(|e| RuntimeError::InvalidConfig(NetworkError::ReadRoutes(e)))?;
        let foreign = self
            .inner
            .pool
            .foreign_routes(&routes)
            .map_err(RuntimeError::InvalidConfig)?;
        if foreign.is_empty() {
            return Ok(());
        }
        Err(RuntimeError::InvalidConfig(NetworkError::PoolInUse {
            pool: self.inner.pool.range().to_string(),
            routes: network::route_summary(&foreign),
        }))
    }

    /// The runsc driver, for verbs beyond the [`Runtime`] trait (exec, checkpoint).
    pub fn runsc(&self) -> &Runsc {
        &self.inner.runsc
    }

    /// The directory holding a sandbox's bundle and `console.log`.
    pub fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.inner.sandbox_dir(id)
    }

    /// The sandbox's cgroup directories, e.g. `<root>/freezer/silo/<id>` for freezing.
    pub fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        self.inner.cgroup_dirs(id)
    }

    async fn try_start(
        &self,
        spec: &SandboxSpec,
        undo: &mut UndoStack,
    ) -> Result<Started, RuntimeError> {
        let inner = &self.inner;
        let id = &spec.id;
        let began = Instant::now();

        let dir = inner.sandbox_dir(id);
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => undo.push(Undo::RemoveSandboxDir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::SandboxExists { id: id.clone() })
            }
            Err(source) => {
                return Err(RuntimeError::CreateSandboxDir {
                    id: id.clone(),
                    path: dir,
                    source,
                })
            }
        }

        undo.push(Undo::RemoveDisk);
        crate::disk::create(&dir, spec.disk_size_mb)
            .await
            .map_err(|source| RuntimeError::CreateDisk {
                id: id.clone(),
                source,
            })?;

        let lease = self.acquire_network(id, &spec.egress, undo).await?;
        let names = NetNames::of(id);

        let cgroups_path = inner.cgroups_path(id);
        let netns_path = names.netns_path();
        // /tmp is a bind of this empty directory, so that runsc overlays it into the
        // disk too; the directory itself is never written.
        let tmp = dir.join("tmp");
        let made = tokio::fs::create_dir_all(&tmp).await.and(
            tokio::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
                .await,
        );
        made.map_err(|source| RuntimeError::CreateSandboxDir {
            id: id.clone(),
            path: tmp.clone(),
            source,
        })?;
        BundleSpec {
            rootfs: &spec.rootfs,
            agent_dir: &inner.config.agent_dir,
            netns_path: &netns_path,
            cgroups_path: &format!("/{cgroups_path}"),
            hostname: &spec.hostname,
            cpu_count: spec.cpu_count,
            cpu_shares: crate::bundle::cpu_shares(spec.background),
            memory_mb: spec.memory_mb,
            pids_limit: spec.pids_limit,
            tmp_dir: &tmp,
        }
        .write(&dir)
        .map_err(|source| RuntimeError::WriteBundle {
            id: id.clone(),
            source,
        })?;

        undo.push(Undo::RemoveCgroups);
        undo.push(Undo::DeleteContainer);
        let log = dir.join("console.log");
        // A restored image's netstack takes this netns's address.
        self.start_container(id, spec.from_image.as_deref(), &log)
            .await?;
        let running_after = began.elapsed();

        let agent = SocketAddr::from((lease.ip, ports::ENVD));
        self.wait_ready(id, agent, &log).await?;
        let ready_after = began.elapsed();
        tracing::info!(sandbox_id = %id, ip = %lease.ip, ?running_after, ?ready_after, "sandbox started");
        Ok(Started {
            ip: lease.ip,
            gateway: lease.gateway,
            agent,
            ready_after,
        })
    }

    /// An address, a netns with a veth to it, and the egress rules, each pushed on
    /// `undo` before it is taken.
    pub(crate) async fn acquire_network(
        &self,
        id: &SandboxId,
        egress: &EgressPolicy,
        undo: &mut UndoStack,
    ) -> Result<network::Lease, RuntimeError> {
        let net_err = |source| RuntimeError::SetupNetwork {
            id: id.clone(),
            source,
        };
        undo.push(Undo::ReleaseAddress);
        let lease = self.inner.pool.allocate(id).map_err(net_err)?;
        let names = NetNames::of(id);
        undo.push(Undo::DeleteNetns);
        network::create_netns(&names).await.map_err(net_err)?;
        undo.push(Undo::DeleteVeth);
        network::create_veth(&names, &lease)
            .await
            .map_err(net_err)?;
        undo.push(Undo::RemoveFirewall);
        self.apply_egress(id, &lease, egress)
            .await
            .map_err(net_err)?;
        Ok(lease)
    }

    async fn apply_egress(
        &self,
        id: &SandboxId,
        lease: &network::Lease,
        policy: &EgressPolicy,
    ) -> Result<(), NetworkError> {
        let names = NetNames::of(id);
        let firewall = &self.inner.firewall;
        let err = |source| NetworkError::Firewall {
            name: names.veth.clone(),
            source,
        };
        let filter = self
            .inner
            .egress
            .get_or_try_init(|| async {
                let filter = EgressFilter::start(FilterConfig {
                    blocked: self.inner.blocked.clone(),
                    dns_upstream: self.inner.config.dns_upstream,
                })
                .await
                .map_err(NetworkError::StartFilter)?;
                firewall.install(filter.ports()).await.map_err(err)?;
                Ok::<_, NetworkError>(filter)
            })
            .await?;
        match firewall.apply(&names, lease.ip, policy).await {
            // The shared table went away under silo (the host's rules were flushed):
            // install it again and retry once.
            Err(FirewallError::Failed { .. }) => {
                tracing::warn!(veth = %names.veth, "firewall table missing or damaged; installing it again");
                firewall.install(filter.ports()).await.map_err(err)?;
                firewall
                    .apply(&names, lease.ip, policy)
                    .await
                    .map_err(err)?;
            }
            other => other.map_err(err)?,
        }
        filter.set(id, lease.ip, policy);
        Ok(())
    }

    /// Poll the agent's `/health` until it answers 2xx, the container stops, or the
    /// deadline passes.
    async fn wait_ready(
        &self,
        id: &SandboxId,
        agent: SocketAddr,
        log: &Path,
    ) -> Result<(), RuntimeError> {
        const INTERVAL: Duration = Duration::from_millis(10);
        const STATE_EVERY: u32 = 50;
        let began = Instant::now();
        let mut since_state_check = 0u32;
        loop {
            let last_error = match health::probe(agent).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            since_state_check += 1;
            if since_state_check == STATE_EVERY {
                since_state_check = 0;
                if let Ok(state) = self.inner.runsc.state(id).await {
                    if state.status == ContainerStatus::Stopped {
                        return Err(RuntimeError::AgentExited {
                            id: id.clone(),
                            log: log_tail(log),
                        });
                    }
                }
            }
            if began.elapsed() >= self.inner.config.ready_timeout {
                return Err(RuntimeError::WaitReady {
                    id: id.clone(),
                    agent,
                    waited: began.elapsed(),
                    last_error,
                    log: log_tail(log),
                });
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

impl RunscRuntime {
    /// Freeze, checkpoint into `image` (which must not exist), thaw. The sandbox runs on
    /// whatever happens; `image` exists afterwards only if it is complete.
    async fn checkpoint_into(&self, id: &SandboxId, image: &Path) -> Result<(), RuntimeError> {
        self.freeze(id).await?;
        let saved = self.save(id, image).await;
        let thawed = self.unfreeze(id).await;
        saved?;
        thawed
    }

    /// Checkpoint a frozen sandbox into `image` (which must not exist) by way of
    /// `<image>.partial`, so that `image` exists only when complete.
    async fn save(&self, id: &SandboxId, image: &Path) -> Result<(), RuntimeError> {
        let partial = image.with_extension("partial");
        let err = |source| RuntimeError::Checkpoint {
            id: id.clone(),
            path: image.to_owned(),
            source,
        };
        remove_dir_if_present(&partial)
            .await
            .map_err(|e| err(e.into()))?;
        tokio::fs::create_dir_all(&partial)
            .await
            .map_err(|e| err(e.into()))?;
        let saved = match self
            .inner
            .runsc
            .call(&Subcommand::Checkpoint {
                image: &partial,
                id,
                disk: &crate::disk::mount_point(&self.inner.sandbox_dir(id)),
            })
            .await
        {
            Ok(()) => tokio::fs::rename(&partial, image)
                .await
                .map_err(|e| err(e.into())),
            Err(source) => Err(err(CheckpointFailure::Runsc(source))),
        };
        if saved.is_err() {
            if let Err(e) = remove_dir_if_present(&partial).await {
                tracing::warn!(sandbox_id = %id, error = %e, "removing a partial checkpoint");
            }
        }
        saved
    }

    /// Run the sandbox's container from its bundle and disk, booted fresh or restored
    /// from `image`.
    async fn start_container(
        &self,
        id: &SandboxId,
        image: Option<&Path>,
        log: &Path,
    ) -> Result<(), RuntimeError> {
        let runsc = &self.inner.runsc;
        let dir = self.inner.sandbox_dir(id);
        let disk = crate::disk::mount_point(&dir);
        match image {
            None => runsc.run_detached(&dir, id, &disk, log).await,
            Some(image) => runsc.restore_detached(image, &dir, id, &disk, log).await,
        }
        .map_err(|source| RuntimeError::StartContainer {
            id: id.clone(),
            source,
        })
    }

    async fn freeze(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.inner
            .runsc
            .call(&Subcommand::Pause { id })
            .await
            .map_err(|source| RuntimeError::Freeze {
                id: id.clone(),
                source,
            })
    }

    async fn unfreeze(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.inner
            .runsc
            .call(&Subcommand::Resume { id })
            .await
            .map_err(|source| RuntimeError::Thaw {
                id: id.clone(),
                source,
            })
    }

    /// Whether a complete checkpoint of the sandbox is on disk.
    fn is_saved(&self, id: &SandboxId) -> bool {
        self.inner.sandbox_dir(id).join(CHECKPOINT).is_dir()
    }

    /// Whether its container is up: its cgroup holds tasks (frozen ones included). A
    /// reboot empties the cgroups, while runsc's state files still name the container.
    fn has_tasks(&self, id: &SandboxId) -> bool {
        std::fs::read(self.inner.cgroup_file(id, "freezer", "cgroup.procs"))
            .is_ok_and(|procs| procs.iter().any(u8::is_ascii_digit))
    }

    /// Whether runsc holds the sandbox paused; an error when its container is up but
    /// `runsc state` fails, which tells nothing about the sandbox.
    async fn is_frozen(&self, id: &SandboxId) -> Result<bool, RuntimeError> {
        if !self.has_tasks(id) {
            return Ok(false);
        }
        let state = self
            .inner
            .runsc
            .state(id)
            .await
            .map_err(|source| RuntimeError::State {
                id: id.clone(),
                source,
            })?;
        Ok(state.status == ContainerStatus::Paused)
    }

    /// Run undo `steps` (newest first), all of them; any failures as one error.
    pub(crate) async fn release(
        &self,
        id: &SandboxId,
        steps: Vec<Undo>,
    ) -> Result<(), RuntimeError> {
        let errors = cleanup::run_steps(&self.inner, id, steps).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Teardown {
                id: id.clone(),
                errors,
            })
        }
    }

    /// Restore a saved sandbox into a network made anew, with a new address: restoring
    /// it onto the link it was saved on, where its half-closed connections' peers still
    /// are, is what left runsc 20240729's restored agent deaf (docs/adr/0006-pause.md).
    async fn try_resume(
        &self,
        id: &SandboxId,
        image: &Path,
        egress: &EgressPolicy,
        undo: &mut UndoStack,
    ) -> Result<Started, RuntimeError> {
        // What a pause or an earlier resume cut short left behind would block this one.
        self.release(id, Undo::SAVED_SANDBOX_LETS_GO.to_vec())
            .await?;
        let lease = self.acquire_network(id, egress, undo).await?;
        undo.push(Undo::RemoveCgroups);
        undo.push(Undo::DeleteContainer);
        let log = self.inner.sandbox_dir(id).join("console.log");
        self.start_container(id, Some(image), &log).await?;
        self.ready(id, &lease).await
    }

    /// Resume a frozen sandbox. If its agent does not answer, it is frozen again, so
    /// that it stays paused as a failed resume promises (or, if that fails too,
    /// `is_paused` says it is not).
    async fn thaw(&self, id: &SandboxId) -> Result<Started, RuntimeError> {
        if !self.is_frozen(id).await? {
            return Err(RuntimeError::NotPaused { id: id.clone() });
        }
        let lease = self.lease_of(id)?;
        self.unfreeze(id).await?;
        let ready = self.ready(id, &lease).await;
        if ready.is_err() {
            if let Err(err) = self.freeze(id).await {
                tracing::error!(sandbox_id = %id, error = %crate::error_chain(&err), "cannot freeze again a sandbox whose resume failed; it runs");
            }
        }
        ready
    }

    /// The address of a sandbox that exists; none means it was never paused here.
    fn lease_of(&self, id: &SandboxId) -> Result<network::Lease, RuntimeError> {
        self.inner
            .pool
            .find(id)
            .map_err(|source| RuntimeError::SetupNetwork {
                id: id.clone(),
                source,
            })?
            .ok_or_else(|| RuntimeError::NotPaused { id: id.clone() })
    }

    /// Wait for a resumed sandbox's agent.
    async fn ready(&self, id: &SandboxId, lease: &network::Lease) -> Result<Started, RuntimeError> {
        let agent = SocketAddr::from((lease.ip, ports::ENVD));
        let began = Instant::now();
        let log = self.inner.sandbox_dir(id).join("console.log");
        self.wait_ready(id, agent, &log).await?;
        Ok(Started {
            ip: lease.ip,
            gateway: lease.gateway,
            agent,
            ready_after: began.elapsed(),
        })
    }
}

async fn remove_dir_if_present(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn log_tail(path: &Path) -> String {
    const MAX: usize = 2000;
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(MAX)..])
        .trim()
        .to_owned();
    if text.is_empty() {
        "(empty)".into()
    } else {
        text
    }
}

#[async_trait]
impl Runtime for RunscRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        let mut undo = UndoStack::new(Arc::clone(&self.inner), spec.id.clone());
        match self.try_start(spec, &mut undo).await {
            Ok(started) => {
                undo.disarm();
                Ok(started)
            }
            Err(err) => {
                for e in undo.run().await {
                    tracing::warn!(sandbox_id = %spec.id, error = %crate::error_chain(&e), "undo after failed start");
                }
                Err(err)
            }
        }
    }

    async fn pause(&self, id: &SandboxId) -> Result<Paused, RuntimeError> {
        // runsc asks the sentry itself, which must not be dozing (the cgroup freezer).
        let _ = self.set_frozen(id, false);
        if self.inner.config.pause_mode == PauseMode::Freeze {
            self.freeze(id).await?;
            tracing::info!(sandbox_id = %id, "sandbox frozen");
            return Ok(Paused::Frozen);
        }
        let image = self.inner.sandbox_dir(id).join(CHECKPOINT);
        remove_dir_if_present(&image)
            .await
            .map_err(|e| RuntimeError::Checkpoint {
                id: id.clone(),
                path: image.clone(),
                source: e.into(),
            })?;
        let began = Instant::now();
        // Frozen from the save until the container is gone, so nothing it does after
        // the save is lost.
        self.freeze(id).await?;
        if let Err(err) = self.save(id, &image).await {
            self.unfreeze(id).await?;
            return Err(err);
        }
        let saved_after = began.elapsed();
        // The image is complete: from here on the sandbox is paused whatever fails.
        if let Err(err) = self.release(id, Undo::SAVED_SANDBOX_LETS_GO.to_vec()).await {
            tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "releasing a saved sandbox's container and network; resume retries");
        }
        tracing::info!(sandbox_id = %id, ?saved_after, stopped_after = ?began.elapsed(), "sandbox paused");
        Ok(Paused::Saved)
    }

    async fn snapshot(&self, id: &SandboxId, image: &Path) -> Result<(), RuntimeError> {
        if self.is_frozen(id).await? {
            self.save(id, image).await
        } else {
            self.checkpoint_into(id, image).await
        }
    }

    fn pause_saves_connections(&self) -> bool {
        self.inner.config.pause_mode == PauseMode::Checkpoint
    }

    async fn resume(&self, id: &SandboxId, egress: &EgressPolicy) -> Result<Started, RuntimeError> {
        let image = self.inner.sandbox_dir(id).join(CHECKPOINT);
        if !image.is_dir() {
            let _ = self.set_frozen(id, false);
            return self.thaw(id).await;
        }
        let mut undo = UndoStack::new(Arc::clone(&self.inner), id.clone());
        match self.try_resume(id, &image, egress, &mut undo).await {
            Ok(started) => {
                undo.disarm();
                if let Err(e) = remove_dir_if_present(&image).await {
                    tracing::warn!(sandbox_id = %id, error = %e, "removing the image of a resumed sandbox");
                }
                tracing::info!(sandbox_id = %id, ip = %started.ip, ready_after = ?started.ready_after, "sandbox resumed");
                Ok(started)
            }
            Err(err) => {
                for e in undo.run().await {
                    tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&e), "undo after a failed restore");
                }
                Err(err)
            }
        }
    }

    fn blocked(&self) -> &[Cidr] {
        &self.inner.blocked
    }

    async fn set_egress(&self, id: &SandboxId, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        let err = |source| RuntimeError::SetupNetwork {
            id: id.clone(),
            source,
        };
        let lease = self
            .inner
            .pool
            .find(id)
            .map_err(err)?
            .ok_or_else(|| err(NetworkError::NoAddress { id: id.clone() }))?;
        self.apply_egress(id, &lease, policy).await.map_err(err)
    }

    async fn is_paused(&self, id: &SandboxId) -> Result<bool, RuntimeError> {
        Ok(self.is_saved(id) || self.is_frozen(id).await?)
    }

    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        // A frozen task cannot die: thaw whatever a doze (or a crash during one) left.
        let _ = self.set_frozen(id, false);
        self.release(id, Undo::PLAN.to_vec()).await?;
        tracing::info!(sandbox_id = %id, "sandbox destroyed");
        Ok(())
    }

    fn set_frozen(&self, id: &SandboxId, frozen: bool) -> Result<(), RuntimeError> {
        let path = self.inner.cgroup_file(id, "freezer", "freezer.state");
        let state = if frozen { "FROZEN" } else { "THAWED" };
        std::fs::write(&path, state).map_err(|source| RuntimeError::Freezer {
            id: id.clone(),
            frozen,
            path,
            source,
        })
    }

    fn set_background(&self, id: &SandboxId, background: bool) -> Result<(), RuntimeError> {
        let path = self.inner.cgroup_file(id, "cpu", "cpu.shares");
        std::fs::write(&path, crate::bundle::cpu_shares(background).to_string()).map_err(|source| {
            RuntimeError::CpuShare {
                id: id.clone(),
                path,
                source,
            }
        })
    }

    async fn usage(&self, id: &SandboxId) -> Result<crate::usage::Usage, RuntimeError> {
        // A few small cgroup files and one statvfs: microseconds, not worth a thread.
        let cgroup = self.inner.cgroups_path(id);
        let disk = crate::disk::mount_point(&self.inner.sandbox_dir(id));
        crate::usage::read(&self.inner.config.cgroup_root, &cgroup, &disk).map_err(|source| {
            RuntimeError::Usage {
                id: id.clone(),
                source,
            }
        })
    }

    async fn running(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        // Up while its cgroup holds tasks (frozen ones included), not by runsc's status:
        // for that runsc asks the sentry, which a dozing or pooled sandbox never answers.
        Ok(self
            .inner
            .runsc
            .list()
            .await
            .map_err(RuntimeError::ListContainers)?
            .into_iter()
            .filter_map(|id| id.parse().ok())
            .filter(|id| self.has_tasks(id))
            .collect())
    }

    async fn list(&self) -> Result<Vec<SandboxId>, RuntimeError> {
        let mut ids: Vec<SandboxId> = self
            .inner
            .runsc
            .list()
            .await
            .map_err(RuntimeError::ListContainers)?
            .into_iter()
            .filter_map(|id| id.parse().ok())
            .collect();
        let dir = self.inner.sandboxes_dir();
        let entries = std::fs::read_dir(&dir).map_err(|source| RuntimeError::ListSandboxDirs {
            path: dir.clone(),
            source,
        })?;
        ids.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok()),
        );
        // A lease alone is a template build's RUN step network a stopped server left.
        ids.extend(
            self.inner
                .pool
                .holders()
                .map_err(RuntimeError::ListLeases)?,
        );
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn shutdown(&self) {
        match self.list().await {
            Ok(ids) if ids.is_empty() => {
                if let Err(e) = self.inner.firewall.uninstall().await {
                    tracing::warn!(error = %crate::error_chain(&e), "removing the firewall table");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "listing sandboxes at shutdown")
            }
        }
    }
}
