//! `GET /silo/activity`: what runs in the sandbox besides the agent, so the node can tell
//! whether freezing it (dozing, ADR 0017) could hold anything up.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::Activity;

use crate::blocking;
use crate::error::Error;
use crate::state::AppState;

pub async fn activity(State(state): State<AppState>) -> Result<Json<Activity>, Error> {
    let started: HashSet<u32> = state.processes.list().iter().map(|p| p.pid).collect();
    let own: HashSet<u32> = [Some(std::process::id()), state.processes.waiting_shell()]
        .into_iter()
        .flatten()
        .collect();
    let pids =
        blocking::run(|| pids_in(Path::new("/proc")).map_err(|e| Error::io("listing /proc", e)))
            .await?;
    let others = pids
        .iter()
        .filter(|pid| !own.contains(pid) && !started.contains(pid))
        .count();
    Ok(Json(Activity {
        started: count(started.len()),
        others: count(others),
    }))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The processes (thread-group leaders) a procfs lists.
fn pids_in(proc: &Path) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_entries_are_processes() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "42", "self", "sys", "7x"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let mut pids = pids_in(dir.path()).unwrap();
        pids.sort();
        assert_eq!(pids, vec![1, 42]);
    }

    #[test]
    fn this_process_is_listed_by_the_real_procfs() {
        assert!(pids_in(Path::new("/proc"))
            .unwrap()
            .contains(&std::process::id()));
    }
}
