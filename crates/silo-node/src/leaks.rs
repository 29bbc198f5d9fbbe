//! Leak accounting: what silo holds on this host, counted from the host's own view.
//!
//! Every count is of things that exist only while a sandbox does, so after a set of
//! start/destroy cycles each must return to its value before. Used by the leak test
//! and useful in reconcile and `/metrics`.

use std::path::Path;

use crate::gvisor::RunscRuntime;
use crate::network::{NAME_PREFIX, NETNS_DIR};
use crate::runsc::RunscError;

/// Counts of host resources held by one silo node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUsage {
    /// Containers runsc knows under silo's root.
    pub containers: usize,
    /// Processes started with silo's runsc root (sandbox, gofer, stuck CLI calls).
    pub runsc_processes: usize,
    /// Named netns `silo-*`.
    pub netns: usize,
    /// Host links `silo*`.
    pub veths: usize,
    /// Mount points under the state dir or on a silo netns.
    pub mounts: usize,
    /// Sandbox (bundle) directories.
    pub sandbox_dirs: usize,
    /// Address leases.
    pub address_leases: usize,
    /// Sandbox cgroups under the silo parent, over all hierarchies.
    pub cgroup_dirs: usize,
}

impl RunscRuntime {
    /// Count what this node holds on the host now.
    pub async fn host_usage(&self) -> Result<HostUsage, RunscError> {
        let inner = &self.inner;
        let containers = inner.runsc.list().await?.len();
        let mut root_flag = std::ffi::OsString::from("--root=");
        root_flag.push(&inner.runsc.root);
        let state_dir = inner.config.state_dir.to_string_lossy().into_owned();
        let netns_prefix = format!("{NETNS_DIR}/{NAME_PREFIX}-");
        Ok(HostUsage {
            containers,
            runsc_processes: count_processes_with_arg(root_flag.as_encoded_bytes()),
            netns: count_entries(Path::new(NETNS_DIR), |n| {
                n.starts_with(&format!("{NAME_PREFIX}-"))
            }),
            veths: count_entries(Path::new("/sys/class/net"), |n| n.starts_with(NAME_PREFIX)),
            mounts: count_mounts(|mount_point| {
                mount_point.starts_with(&state_dir) || mount_point.starts_with(&netns_prefix)
            }),
            sandbox_dirs: count_entries(&inner.sandboxes_dir(), |_| true),
            address_leases: inner.pool.held().unwrap_or(0),
            cgroup_dirs: inner
                .cgroup_parents()
                .iter()
                .map(|parent| count_entries(parent, |_| true))
                .sum(),
        })
    }
}

/// Entries of `dir` whose name passes `keep`; a missing dir has none.
fn count_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            // cgroup dirs also hold control files; count only directories there and
            // everywhere (netns entries are files, links are symlinks: keep those).
            let is_cgroup_file = e.path().starts_with("/sys/fs/cgroup")
                && e.file_type().map(|t| !t.is_dir()).unwrap_or(true);
            !is_cgroup_file && keep(&e.file_name().to_string_lossy())
        })
        .count()
}

/// Lines of /proc/self/mountinfo whose mount point passes `keep`.
pub(crate) fn count_mounts(keep: impl Fn(&str) -> bool) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mount_point| keep(mount_point))
        .count()
}

/// Processes with `arg` as one of their arguments.
fn count_processes_with_arg(arg: &[u8]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_by_its_argument() {
        let cmdline = std::fs::read("/proc/self/cmdline").expect("own cmdline");
        let argv0 = cmdline.split(|b| *b == 0).next().expect("argv0").to_vec();
        assert!(count_processes_with_arg(&argv0) >= 1);
        assert_eq!(count_processes_with_arg(b"--no-process-has-this-arg"), 0);
    }

    #[test]
    fn counts_mounts_by_mount_point() {
        assert!(count_mounts(|p| p == "/") >= 1);
        assert_eq!(count_mounts(|p| p == "/no/such/mount"), 0);
    }
}
