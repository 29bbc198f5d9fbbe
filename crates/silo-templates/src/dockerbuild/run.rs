//! RUN: a command in a gVisor sandbox whose root is the layer being built.
//!
//! The sandbox is a plain `runsc run` of a bundle written here: the merged overlay as
//! a writable root (`--overlay2=none`, so writes land in the layer), a network
//! namespace of its own from the caller's [`StepNetwork`] (`--network=sandbox`: gVisor's
//! netstack on it), a resolv.conf naming resolvers reachable from there and the host's
//! CA bundle bound read-only over the rootfs's own, and the step's user, env and
//! workdir. It is not a silo sandbox: no agent or disk, and it is deleted after the
//! step, then its network released.
//!
//! A Dockerfile is its author's code, so a step never gets the host's network: that
//! would reach the host's loopback (silo's API among it), the metadata address and
//! other sandboxes. silo serve gives each step the network of a sandbox with default
//! rules (see silo-node's `step_network`): the internet through NAT, none of those.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::base::{BuildError, Progress};

/// Why a step's network could not be made or released.
pub type NetworkError = Box<dyn std::error::Error + Send + Sync>;

/// A network namespace made for one RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepNet {
    /// Named in the step's OCI spec; runsc's netstack takes over its interfaces.
    pub netns: PathBuf,
    /// Its maker's name for it, for [`StepNetwork::release`].
    pub id: String,
}

/// Where RUN steps get their network: one namespace per step, since runsc takes the
/// addresses off the interfaces it is given.
#[async_trait]
pub trait StepNetwork: Send + Sync {
    /// A network namespace for one step. On failure nothing is left of it.
    async fn acquire(&self) -> Result<StepNet, NetworkError>;
    /// Give back all of `net`. Idempotent.
    async fn release(&self, net: &StepNet) -> Result<(), NetworkError>;
    /// Set up the `runsc run` that uses the namespace (runsc may need a hand to accept
    /// `--network=sandbox`; silo-node's `runsc::procsys`).
    fn prepare(&self, runsc: &mut Command);
}

/// How to run runsc for builds.
#[derive(Debug, Clone)]
pub struct BuildRunsc {
    pub binary: PathBuf,
    pub platform: String,
    /// runsc's state root for build sandboxes.
    pub root: PathBuf,
}

/// The user a step runs as, resolved in the layer's /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

impl User {
    pub const ROOT: User = User {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: String::new(),
    };

    /// `name`, `uid`, `name:group` or `uid:gid`, looked up in `rootfs`.
    pub fn resolve(rootfs: &Path, spec: &str) -> Result<User, String> {
        // Read as the image sees them: `etc -> /etc` must not read the host's.
        let read = |rel: &str| {
            crate::inroot::resolve(rootfs, Path::new(rel))
                .and_then(std::fs::read_to_string)
                .unwrap_or_default()
        };
        let passwd = read("etc/passwd");
        let group = read("etc/group");
        let (user, group_spec) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && (f[0] == user || f[2] == user));
        let (uid, mut gid, name, home) = match (&entry, user.parse::<u32>()) {
            (Some(f), _) => (
                f[2].parse()
                    .map_err(|_| format!("bad uid for {user} in /etc/passwd"))?,
                f[3].parse()
                    .map_err(|_| format!("bad gid for {user} in /etc/passwd"))?,
                f[0].to_owned(),
                f[5].to_owned(),
            ),
            (None, Ok(uid)) => (uid, uid, String::new(), "/".to_owned()),
            (None, Err(_)) => {
                return Err(format!(
                "user {user:?} does not exist in the template (create it with RUN useradd first)"
            ))
            }
        };
        let groups_of = |predicate: &dyn Fn(&[&str]) -> bool| -> Vec<u32> {
            group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .filter(|f| f.len() >= 4 && predicate(f))
                .filter_map(|f| f[2].parse().ok())
                .collect()
        };
        if let Some(g) = group_spec {
            gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => *groups_of(&|f| f[0] == g)
                    .first()
                    .ok_or_else(|| format!("group {g:?} does not exist in the template"))?,
            };
        }
        let groups = if name.is_empty() {
            Vec::new()
        } else {
            groups_of(&|f| f[3].split(',').any(|member| member == name))
        };
        Ok(User {
            uid,
            gid,
            groups,
            home,
        })
    }
}

/// What one RUN needs.
pub struct RunSpec<'a> {
    pub rootfs: &'a Path,
    pub bundle_dir: &'a Path,
    pub container_id: &'a str,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: &'a str,
    pub user: &'a User,
}

/// Docker's default capability set: what a build step's package managers need as root,
/// and what a sandbox's agent needs to switch users and serve `sudo`. They act on
/// gVisor's kernel, not the host's.
pub const DOCKER_DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Beside config.json: the step's resolv.conf (see [`crate::base::sandbox_resolv_conf`]).
const RESOLV_CONF: &str = "resolv.conf";

/// Run the step in a network of its own; its output goes to `progress` line by line.
/// The sandbox is deleted, then the network released, whatever happens: the step
/// failing, or `cancel` ending its `runsc run`.
pub async fn run_step(
    runsc: &BuildRunsc,
    network: &dyn StepNetwork,
    cancel: &CancellationToken,
    spec: &RunSpec<'_>,
    progress: &mut (impl FnMut(Progress) + Send),
) -> Result<(), BuildError> {
    let net = network.acquire().await.map_err(BuildError::StepNetwork)?;
    let result = run_in(runsc, network, cancel, &net, spec, progress).await;
    if let Err(e) = network.release(&net).await {
        // The layer is sound; what is left is silo's to release (at its next start).
        tracing::warn!(netns = %net.netns.display(), error = %e, "releasing a RUN step's network");
    }
    result
}

async fn run_in(
    runsc: &BuildRunsc,
    network: &dyn StepNetwork,
    cancel: &CancellationToken,
    net: &StepNet,
    spec: &RunSpec<'_>,
    progress: &mut (impl FnMut(Progress) + Send),
) -> Result<(), BuildError> {
    write_bundle(spec, &net.netns).map_err(|source| BuildError::PrepareDir {
        path: spec.bundle_dir.to_owned(),
        source,
    })?;
    let mut cmd = Command::new(&runsc.binary);
    cmd.args(run_args(runsc, spec));
    network.prepare(&mut cmd);
    let result = crate::layer::run(&mut cmd, "runsc", progress, cancel).await;
    // The delete also ends the sandbox, which outlives a `runsc run` killed by
    // `cancel`. A container a failed delete leaves goes with the next build's
    // `remove_dead_builds`: its bundle goes with the step's temp dir, marking it dead.
    let _ = delete_container(runsc, spec.container_id).await;
    result
}

/// Delete a step's container, ending its sandbox if it still runs.
pub(super) async fn delete_container(runsc: &BuildRunsc, id: &str) -> std::io::Result<()> {
    let out = Command::new(&runsc.binary)
        .arg(format!("--root={}", runsc.root.display()))
        .args(["delete", "--force", id])
        .output()
        .await?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "runsc delete {id}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// runsc's arguments for the step.
fn run_args(runsc: &BuildRunsc, spec: &RunSpec<'_>) -> Vec<std::ffi::OsString> {
    vec![
        format!("--root={}", runsc.root.display()).into(),
        format!("--platform={}", runsc.platform).into(),
        "--network=sandbox".into(),
        "--overlay2=none".into(),
        "run".into(),
        "--bundle".into(),
        spec.bundle_dir.into(),
        spec.container_id.into(),
    ]
}

fn write_bundle(spec: &RunSpec<'_>, netns: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(spec.bundle_dir)?;
    let resolv_conf = spec.bundle_dir.join(RESOLV_CONF);
    std::fs::write(&resolv_conf, crate::base::sandbox_resolv_conf())?;
    std::fs::write(
        spec.bundle_dir.join("config.json"),
        serde_json::to_vec_pretty(&config(spec, netns, &resolv_conf))?,
    )
}

/// The step's OCI spec.
fn config(spec: &RunSpec<'_>, netns: &Path, resolv_conf: &Path) -> serde_json::Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    // Bound over the rootfs's own files only where those exist, so the layer gets no
    // mount points of its own.
    for (host, inside) in [
        (resolv_conf, "etc/resolv.conf"),
        (
            Path::new(HOST_CA_BUNDLE),
            "etc/ssl/certs/ca-certificates.crt",
        ),
    ] {
        if host.is_file() && spec.rootfs.join(inside).is_file() {
            mounts.push(json!({"destination": format!("/{inside}"), "type": "bind", "source": host, "options": ["rbind", "ro"]}));
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.uid, "gid": spec.user.gid, "additionalGids": spec.user.groups},
            "args": spec.argv,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": DOCKER_DEFAULT_CAPABILITIES,
                "effective": DOCKER_DEFAULT_CAPABILITIES,
                "permitted": DOCKER_DEFAULT_CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576u64, "soft": 1048576u64}],
        },
        "root": {"path": spec.rootfs, "readonly": false},
        "hostname": "build",
        "mounts": mounts,
        "linux": {"namespaces": [
            {"type": "pid"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
            {"type": "network", "path": netns},
        ]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_runs_on_netstack_in_its_own_netns() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        let bundle = dir.path().join("bundle");
        let spec = RunSpec {
            rootfs: &rootfs,
            bundle_dir: &bundle,
            container_id: "silo-build-0123456789abcdef",
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: Vec::new(),
            cwd: "/",
            user: &User::ROOT,
        };
        let netns = Path::new("/run/netns/silo-abc");
        write_bundle(&spec, netns).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let namespaces = config["linux"]["namespaces"].as_array().unwrap();
        let network: Vec<_> = namespaces
            .iter()
            .filter(|n| n["type"] == "network")
            .collect();
        assert_eq!(network, [&json!({"type": "network", "path": netns})]);
        // The step's resolv.conf is silo's, bound read-only over the image's.
        let resolv = config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .expect("resolv.conf bound");
        assert_eq!(resolv["source"], json!(bundle.join(RESOLV_CONF)));
        assert!(resolv["options"].as_array().unwrap().contains(&json!("ro")));
        assert_eq!(
            std::fs::read_to_string(bundle.join(RESOLV_CONF)).unwrap(),
            crate::base::sandbox_resolv_conf()
        );

        let runsc = BuildRunsc {
            binary: "runsc".into(),
            platform: "systrap".into(),
            root: "/t/.runsc".into(),
        };
        let args = run_args(&runsc, &spec);
        assert!(args.iter().any(|a| a == "--network=sandbox"), "{args:?}");
        assert!(!args.iter().any(|a| a == "--network=host"), "{args:?}");
        assert_eq!(args.last().unwrap(), "silo-build-0123456789abcdef");
    }

    #[test]
    fn resolves_users_and_groups_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nsudo:x:27:user\nuser:x:1000:\nstaff:x:50:\n",
        )
        .unwrap();
        let user = User::resolve(dir.path(), "user").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.groups.clone()),
            (1000, 1000, vec![27])
        );
        assert_eq!(user.home, "/home/user");
        assert_eq!(User::resolve(dir.path(), "1000:staff").unwrap().gid, 50);
        assert_eq!(User::resolve(dir.path(), "4242").unwrap().uid, 4242);
        assert!(User::resolve(dir.path(), "nobody-here").is_err());
        assert!(User::resolve(dir.path(), "user:nogroup").is_err());
    }
}
