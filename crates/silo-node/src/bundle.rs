//! The OCI bundle of one sandbox: `<sandbox dir>/config.json`.
//!
//! The root is the template's rootfs, shared read-only by every sandbox of the
//! template (runsc's `--overlay2` puts each sandbox's writes in its own upper layer, a
//! file on the sandbox's disk, so nothing is copied). /tmp is a bind of an empty host
//! directory so that its writes land on that disk too. The first process is the agent,
//! bind-mounted read-only from the host at [`AGENT_MOUNT`], listening on every address
//! at envd's port. RLIMIT_NPROC caps each user's tasks (gVisor enforces it; root inside
//! lacks CAP_SYS_RESOURCE to raise it), so a fork bomb stops there.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use silo_protocol::ports;

/// Where the host's agent directory appears inside every sandbox.
pub const AGENT_MOUNT: &str = "/opt/silo";
/// The agent binary's name inside [`AGENT_MOUNT`].
pub const AGENT_BINARY: &str = "silo-agent";

/// Errors writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What goes into one sandbox's `config.json`.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    pub rootfs: &'a Path,
    pub agent_dir: &'a Path,
    pub netns_path: &'a Path,
    /// Relative to the cgroup root of each hierarchy, e.g. `/silo/<id>`.
    pub cgroups_path: &'a str,
    pub hostname: &'a str,
    pub cpu_count: u32,
    /// Its weight against other sandboxes when the host's cores are all busy.
    pub cpu_shares: u64,
    pub memory_mb: u32,
    /// Tasks (processes and threads) per user inside.
    pub pids_limit: u32,
    /// An empty host directory, bound at /tmp (see the module doc).
    pub tmp_dir: &'a Path,
}

/// Capabilities of root inside the sandbox: Docker's default set, enough for the agent
/// to switch users and for `sudo`. They act on gVisor's kernel, not the host's.
const CAPABILITIES: [&str; 14] = silo_templates::dockerbuild::DOCKER_DEFAULT_CAPABILITIES;

const CPU_PERIOD_US: u64 = 100_000;

/// cgroup v1 `cpu.shares`: the kernel's default weight, and its smallest.
const CPU_SHARES_NORMAL: u64 = 1024;
const CPU_SHARES_BACKGROUND: u64 = 2;

/// The `cpu.shares` of a sandbox booted ahead of demand (`background`) or in use.
pub fn cpu_shares(background: bool) -> u64 {
    if background {
        CPU_SHARES_BACKGROUND
    } else {
        CPU_SHARES_NORMAL
    }
}

impl BundleSpec<'_> {
    /// The OCI runtime spec as JSON.
    pub fn config(&self) -> Value {
        let agent = Path::new(AGENT_MOUNT).join(AGENT_BINARY);
        let listen = format!("0.0.0.0:{}", ports::ENVD);
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": [agent, "--listen", listen],
                "env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root",
                ],
                "cwd": "/",
                "capabilities": {
                    "bounding": CAPABILITIES,
                    "effective": CAPABILITIES,
                    "permitted": CAPABILITIES,
                },
                "rlimits": [
                    { "type": "RLIMIT_NOFILE", "hard": 1_048_576u64, "soft": 1_048_576u64 },
                    { "type": "RLIMIT_NPROC", "hard": self.pids_limit, "soft": self.pids_limit },
                ],
            },
            // Not read-only: the overlay above it takes the writes.
            "root": { "path": self.rootfs, "readonly": false },
            "hostname": self.hostname,
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                  "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                // Memory, so capped as Docker caps it.
                { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                  "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                { "destination": "/tmp", "type": "bind", "source": self.tmp_dir,
                  "options": ["rbind", "nosuid", "nodev"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs",
                  "options": ["nosuid", "noexec", "nodev", "ro"] },
                { "destination": AGENT_MOUNT, "type": "bind", "source": self.agent_dir,
                  "options": ["rbind", "ro"] },
            ],
            "linux": {
                "cgroupsPath": self.cgroups_path,
                "resources": {
                    "memory": { "limit": u64::from(self.memory_mb) * 1024 * 1024 },
                    "cpu": {
                        "quota": u64::from(self.cpu_count.max(1)) * CPU_PERIOD_US,
                        "period": CPU_PERIOD_US,
                        "shares": self.cpu_shares,
                    },
                },
                "namespaces": [
                    { "type": "pid" },
                    { "type": "ipc" },
                    { "type": "uts" },
                    { "type": "mount" },
                    { "type": "network", "path": self.netns_path },
                ],
            },
        })
    }

    /// Write `config.json` into `dir` (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, BundleError> {
        let path = dir.join("config.json");
        let tmp = dir.join(".config.json.tmp");
        let err = |source| BundleError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&self.config())
            .map_err(io::Error::from)
            .map_err(err)?;
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BundleSpec<'static> {
        BundleSpec {
            rootfs: Path::new("/t/base/abc/rootfs"),
            agent_dir: Path::new("/opt/silo-agent"),
            netns_path: Path::new("/run/netns/silo-abc"),
            cgroups_path: "/silo/iabc",
            hostname: "sbx",
            cpu_count: 2,
            cpu_shares: CPU_SHARES_NORMAL,
            memory_mb: 512,
            pids_limit: 512,
            tmp_dir: Path::new("/s/abc/tmp"),
        }
    }

    #[test]
    fn config_has_agent_root_mounts_and_limits() {
        let c = spec().config();
        assert_eq!(
            c["process"]["args"],
            json!(["/opt/silo/silo-agent", "--listen", "0.0.0.0:49983"])
        );
        assert_eq!(c["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(c["process"]["cwd"], "/");
        assert_eq!(c["root"]["path"], "/t/base/abc/rootfs");
        assert_eq!(c["hostname"], "sbx");
        let mounts = c["mounts"].as_array().expect("mounts");
        let dests: Vec<&str> = mounts
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/tmp",
                "/sys",
                "/opt/silo"
            ]
        );
        let agent = &mounts[6];
        assert_eq!(agent["source"], "/opt/silo-agent");
        assert!(agent["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro")));
        assert_eq!(
            c["linux"]["resources"]["memory"]["limit"],
            512u64 * 1024 * 1024
        );
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(c["linux"]["resources"]["cpu"]["shares"], 1024);
        assert_eq!(c["linux"]["cgroupsPath"], "/silo/iabc");
        let netns = c["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|n| n["type"] == "network")
            .expect("network namespace");
        assert_eq!(netns["path"], "/run/netns/silo-abc");
    }

    #[test]
    fn write_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = spec().write(dir.path()).expect("write");
        let back: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(back, spec().config());
        assert!(!dir.path().join(".config.json.tmp").exists());
    }
}
