//! The sampler: every few seconds [`Manager::run_sampler`] reads what each running
//! sandbox uses of the host (crate::usage) and records it in the catalog, where
//! `get_metrics` finds it, and collects the sandbox's new log lines (super::logs). CPU is
//! the share of the sandbox's CPUs used since the previous sample. Killed sandboxes, with
//! their samples, logs and history, go after the retention window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use silo_catalog::{now_ms, MetricSample, SandboxRecord, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{DozePolicy, Manager};
use crate::usage::Usage;

/// Sandboxes whose logs are collected at once.
const LOG_COLLECTIONS: usize = 16;

/// How often samples are taken, and how long the samples and logs of a killed sandbox
/// are kept.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    pub every: Duration,
    pub retention: Duration,
    /// Which running sandboxes doze, and after how long idle (see `doze`); `None`: none.
    pub doze: Option<DozePolicy>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            every: Duration::from_secs(5),
            retention: Duration::from_secs(24 * 3600),
            doze: None,
        }
    }
}

/// The previous reading of a sandbox, for its CPU share and new OOM kills.
#[derive(Clone, Copy)]
struct Previous {
    at_ms: i64,
    cpu_ns: u64,
    oom_kills: u64,
}

impl Manager {
    /// Sample every running sandbox each `config.every`, forever.
    pub async fn run_sampler(self: Arc<Self>, config: SamplerConfig) {
        let mut tick = tokio::time::interval(config.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: HashMap<SandboxId, Previous> = HashMap::new();
        let sampler_started_ms = now_ms();
        loop {
            tick.tick().await;
            let running = match self.catalog.sandboxes_in(&[SandboxState::Running]) {
                Ok(running) => running,
                Err(err) => {
                    tracing::error!(error = %crate::error_chain(&err), "metrics cannot read the catalog");
                    continue;
                }
            };
            let mut samples = Vec::with_capacity(running.len());
            for rec in &running {
                // A sandbox between the catalog read and now may have gone: skip it.
                let Ok(usage) = self.runtime.usage(&rec.id).await else {
                    continue;
                };
                let at_ms = now_ms();
                let before = previous.insert(
                    rec.id.clone(),
                    Previous {
                        at_ms,
                        cpu_ns: usage.cpu_ns,
                        oom_kills: usage.oom_kills,
                    },
                );
                // Counted from 0 for a sandbox this sampler saw start; one older (silo
                // restarted) has its earlier kills recorded already.
                let known_kills = before
                    .map(|b| b.oom_kills)
                    .or((rec.started_at_ms >= sampler_started_ms).then_some(0));
                if let Some(known) = known_kills.filter(|&k| usage.oom_kills > k) {
                    self.record_oom(rec, usage.oom_kills - known);
                }
                samples.push(sample(rec, at_ms, &usage, before));
            }
            // Several at a time: one slow agent does not hold up the round.
            // A dozing sandbox has nothing new (collected before it dozed) and would not
            // answer.
            futures_util::stream::iter(running.iter().filter(|rec| !self.is_dozing(&rec.id)))
                .for_each_concurrent(LOG_COLLECTIONS, |rec| self.collect_logs(rec))
                .await;
            if let Some(policy) = config.doze {
                self.doze_idle(&running, policy).await;
            }
            let live: std::collections::HashSet<&str> =
                running.iter().map(|rec| rec.id.as_str()).collect();
            previous.retain(|id, _| live.contains(id.as_str()));
            let pruned_before = now_ms() - config.retention.as_millis() as i64;
            let stored = self
                .catalog
                .insert_metrics(&samples)
                .and_then(|()| self.catalog.prune_killed(pruned_before));
            if let Err(err) = stored {
                tracing::error!(error = %crate::error_chain(&err), "cannot store sandbox metrics");
            }
        }
    }

    fn record_oom(&self, rec: &SandboxRecord, kills: u64) {
        let note = format!(
            "out of memory: the kernel killed {kills} process(es) at the sandbox's {} MiB limit",
            rec.memory_mb
        );
        tracing::warn!(sandbox_id = %rec.id, kills, "sandbox ran out of memory");
        if let Err(err) = self.catalog.note(&rec.id, &note) {
            tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "cannot record an OOM kill");
        }
    }
}

fn sample(
    rec: &SandboxRecord,
    at_ms: i64,
    usage: &Usage,
    before: Option<Previous>,
) -> MetricSample {
    MetricSample {
        sandbox_id: rec.id.clone(),
        at_ms,
        cpu_count: rec.cpu_count,
        cpu_used_pct: before.map_or(0.0, |before| {
            cpu_pct(before, at_ms, usage.cpu_ns, rec.cpu_count)
        }),
        mem_used: usage.mem_used,
        mem_total: u64::from(rec.memory_mb) << 20,
        mem_cache: usage.mem_cache,
        disk_used: usage.disk_used,
        disk_total: usage.disk_total,
    }
}

/// The share of `cpus` CPUs used between two readings, 0-100, rounded to 0.01.
fn cpu_pct(before: Previous, at_ms: i64, cpu_ns: u64, cpus: u32) -> f64 {
    let wall_ns = (at_ms - before.at_ms).max(1) as f64 * 1e6 * f64::from(cpus.max(1));
    let used_ns = cpu_ns.saturating_sub(before.cpu_ns) as f64;
    ((used_ns / wall_ns * 100.0).clamp(0.0, 100.0) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_share_is_of_all_the_sandboxs_cpus() {
        let before = Previous {
            at_ms: 0,
            cpu_ns: 0,
            oom_kills: 0,
        };
        // One CPU busy for a second, of two: half.
        assert_eq!(cpu_pct(before, 1_000, 1_000_000_000, 2), 50.0);
        assert_eq!(cpu_pct(before, 1_000, 0, 2), 0.0);
        // A counter that went back (a restored sandbox) is no use, not negative.
        let later = Previous {
            at_ms: 0,
            cpu_ns: 5,
            oom_kills: 0,
        };
        assert_eq!(cpu_pct(later, 1_000, 1, 1), 0.0);
        // More than the wall clock allows (rounding of two clocks) is capped.
        assert_eq!(cpu_pct(before, 1, 10_000_000_000, 1), 100.0);
    }
}
