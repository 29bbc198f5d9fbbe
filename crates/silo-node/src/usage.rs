//! What a sandbox uses of the host, read from outside it: CPU time and memory from its
//! cgroups (v1: `cpuacct/<parent>/<id>`, `memory/<parent>/<id>`), disk from the
//! filesystem its writes go to (crate::disk). Read from the host, the figures hold
//! whatever the code inside does, and cost the sandbox nothing.

use std::io;
use std::path::{Path, PathBuf};

/// A sandbox's use of the host at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time of all its tasks since it started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in bytes, as `docker stats` counts it: all the cgroup holds but the file
    /// cache the kernel may drop (gVisor's guest memory is shared memory, so it counts).
    pub mem_used: u64,
    /// The page cache it holds, in bytes (reclaimable file pages and shared memory).
    pub mem_cache: u64,
    /// Bytes used and in all on its disk.
    pub disk_used: u64,
    pub disk_total: u64,
    /// Processes the kernel killed at its memory limit so far.
    pub oom_kills: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("read {path}")]
pub struct UsageError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Read the usage of a sandbox whose cgroup is `<cgroup_root>/<hierarchy>/<cgroup>` and
/// whose writes go to the filesystem mounted at `disk`.
pub fn read(cgroup_root: &Path, cgroup: &str, disk: &Path) -> Result<Usage, UsageError> {
    let cpuacct = cgroup_root.join("cpuacct").join(cgroup);
    let memory = cgroup_root.join("memory").join(cgroup);
    let cpu_ns = read_number(&cpuacct.join("cpuacct.usage"))?;
    let usage = read_number(&memory.join("memory.usage_in_bytes"))?;
    let stat_path = memory.join("memory.stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(|source| UsageError {
        path: stat_path,
        source,
    })?;
    let (cache, inactive_file) = (
        stat_field(&stat, "total_cache"),
        stat_field(&stat, "total_inactive_file"),
    );
    let oom_path = memory.join("memory.oom_control");
    let oom_control = std::fs::read_to_string(&oom_path).map_err(|source| UsageError {
        path: oom_path,
        source,
    })?;
    let fs = nix::sys::statvfs::statvfs(disk).map_err(|errno| UsageError {
        path: disk.to_owned(),
        source: errno.into(),
    })?;
    let block = fs.fragment_size();
    let disk_total = fs.blocks().saturating_mul(block);
    let disk_used = fs
        .blocks()
        .saturating_sub(fs.blocks_free())
        .saturating_mul(block);
    Ok(Usage {
        cpu_ns,
        mem_used: usage.saturating_sub(inactive_file),
        mem_cache: cache,
        disk_used,
        disk_total,
        oom_kills: stat_field(&oom_control, "oom_kill"),
    })
}

fn read_number(path: &Path) -> Result<u64, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsageError {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| UsageError {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// `name value` lines of a cgroup v1 `memory.stat` or `memory.oom_control`; 0 when
/// absent.
fn stat_field(stat: &str, name: &str) -> u64 {
    stat.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_v1_files_and_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("cpuacct/silo/sbx");
        let mem = root.path().join("memory/silo/sbx");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "1500000000\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "104857600\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 1\nrss 2\ntotal_cache 73400320\ntotal_inactive_file 4194304\n",
        )
        .unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let usage = read(root.path(), "silo/sbx", root.path()).unwrap();
        assert_eq!(usage.cpu_ns, 1_500_000_000);
        assert_eq!(usage.mem_used, (100 << 20) - (4 << 20));
        assert_eq!(usage.mem_cache, 70 << 20);
        assert_eq!(usage.oom_kills, 2);
        assert!(usage.disk_total > 0 && usage.disk_used <= usage.disk_total);
    }

    #[test]
    fn a_missing_cgroup_names_its_file() {
        let root = tempfile::tempdir().unwrap();
        let err = read(root.path(), "silo/gone", root.path()).unwrap_err();
        assert!(err.to_string().contains("cpuacct.usage"), "{err}");
    }
}
