//! `GET /metrics`: CPU, memory and disk use as seen inside the sandbox, best effort
//! (a value that cannot be read is 0).

use std::time::Duration;

use axum::Json;
use silo_protocol::envd::Metrics;

/// CPU use is measured over this window.
const CPU_SAMPLE: Duration = Duration::from_millis(100);

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// A `/proc/meminfo` value in bytes.
fn meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn disk(path: &str) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills a zeroed struct through a valid pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let frsize = st.f_frsize as u64;
    let total = st.f_blocks as u64 * frsize;
    let free = st.f_bfree as u64 * frsize;
    (total.saturating_sub(free), total)
}

pub async fn metrics() -> Json<Metrics> {
    let before = cpu_times();
    tokio::time::sleep(CPU_SAMPLE).await;
    let after = cpu_times();
    let cpu_used_pct = match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            ((b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64 * 100.0 * 100.0).round() / 100.0
        }
        _ => 0.0,
    };
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = meminfo(&mem, "MemTotal");
    let mem_available = meminfo(&mem, "MemAvailable");
    let mem_used = mem_total.saturating_sub(mem_available);
    let (disk_used, disk_total) = disk("/");
    Json(Metrics {
        ts: chrono::Utc::now().timestamp(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        cpu_used_pct,
        mem_total_mib: mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        mem_total,
        mem_used,
        mem_cache: meminfo(&mem, "Cached"),
        disk_used,
        disk_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       16384 kB\nMemFree:  1 kB\nCached: 2 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), 16384 * 1024);
        assert_eq!(meminfo(text, "Cached"), 2048);
        assert_eq!(meminfo(text, "Missing"), 0);
    }
}
