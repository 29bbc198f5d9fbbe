//! A sandbox row for the tests of the crates above the catalog (feature `testing`).

use crate::{now_ms, NetworkRules, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

/// A row of a new `base` sandbox in `state`, ending a minute from now, with no address
/// (so nothing tries its agent) and no tokens; a test sets what it needs.
pub fn record(state: SandboxState) -> SandboxRecord {
    let now = now_ms();
    SandboxRecord {
        id: SandboxId::generate(),
        template_id: "base".into(),
        state,
        started_at_ms: now,
        end_at_ms: now + 60_000,
        metadata: Default::default(),
        env_vars: Default::default(),
        envd_access_token: None,
        envd_version: "0.0.0-test".into(),
        cpu_count: 1,
        memory_mb: 256,
        disk_size_mb: 512,
        address: None,
        auto_pause: true,
        auto_resume: false,
        network: NetworkRules::default(),
        traffic_access_token: None,
        rootfs: None,
    }
}
