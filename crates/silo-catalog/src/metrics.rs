//! Resource samples of sandboxes (CPU, memory, disk), taken by the node every few seconds
//! while a sandbox runs. They are kept for the sandbox's life and, once it is killed, for
//! a retention window ([`Catalog::prune_killed`]), so a dead sandbox can still be looked
//! at.

use rusqlite::params;
use silo_protocol::ids::SandboxId;

use super::{Catalog, CatalogError, Result};

/// One sample of one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub sandbox_id: SandboxId,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub cpu_count: u32,
    /// Of all its CPUs together, 0-100.
    pub cpu_used_pct: f64,
    /// Bytes.
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

const SELECT_SAMPLE: &str = "SELECT sandbox_id, at, cpu_count, cpu_used_pct, mem_used, \
    mem_total, mem_cache, disk_used, disk_total FROM sandbox_metrics";

impl Catalog {
    /// Record one round of samples, in one transaction.
    pub fn insert_metrics(&self, samples: &[MetricSample]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO sandbox_metrics (sandbox_id, at, cpu_count, \
                 cpu_used_pct, mem_used, mem_total, mem_cache, disk_used, disk_total) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for s in samples {
                stmt.execute(params![
                    s.sandbox_id.as_str(),
                    s.at_ms,
                    s.cpu_count,
                    s.cpu_used_pct,
                    to_sql(s.mem_used),
                    to_sql(s.mem_total),
                    to_sql(s.mem_cache),
                    to_sql(s.disk_used),
                    to_sql(s.disk_total),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A sandbox's samples between two times (Unix milliseconds, both included), oldest
    /// first.
    pub fn metrics(&self, id: &SandboxId, from_ms: i64, to_ms: i64) -> Result<Vec<MetricSample>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_SAMPLE} WHERE sandbox_id = ?1 AND at BETWEEN ?2 AND ?3 ORDER BY at"
        ))?;
        let rows = stmt.query_map(params![id.as_str(), from_ms, to_ms], sample_row)?;
        rows.map(|row| row?).collect()
    }

    /// The newest sample of each of these sandboxes that has one.
    pub fn latest_metrics(&self, ids: &[SandboxId]) -> Result<Vec<MetricSample>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_SAMPLE} WHERE sandbox_id = ?1 ORDER BY at DESC LIMIT 1"
        ))?;
        let mut latest = Vec::new();
        for id in ids {
            let mut rows = stmt.query_map([id.as_str()], sample_row)?;
            if let Some(row) = rows.next() {
                latest.push(row??);
            }
        }
        Ok(latest)
    }
}

/// SQLite integers are signed; no byte count here comes near 2^63.
fn to_sql(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn sample_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<MetricSample>> {
    let id: String = row.get(0)?;
    let sandbox_id = match id.parse() {
        Ok(sandbox_id) => sandbox_id,
        Err(e) => {
            return Ok(Err(CatalogError::Corrupt {
                id,
                reason: format!("{e}"),
            }))
        }
    };
    let bytes = |i| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(Ok(MetricSample {
        sandbox_id,
        at_ms: row.get(1)?,
        cpu_count: row.get(2)?,
        cpu_used_pct: row.get(3)?,
        mem_used: bytes(4)?,
        mem_total: bytes(5)?,
        mem_cache: bytes(6)?,
        disk_used: bytes(7)?,
        disk_total: bytes(8)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{record, running};
    use crate::SandboxState;

    fn sample(id: &SandboxId, at_ms: i64, mem_used: u64) -> MetricSample {
        MetricSample {
            sandbox_id: id.clone(),
            at_ms,
            cpu_count: 2,
            cpu_used_pct: 12.5,
            mem_used,
            mem_total: 512 << 20,
            mem_cache: 0,
            disk_used: 1 << 20,
            disk_total: 1 << 30,
        }
    }

    #[test]
    fn samples_are_kept_while_the_sandbox_lives_and_pruned_after() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        catalog
            .insert_metrics(&[sample(&rec.id, 1_000, 10), sample(&rec.id, 6_000, 20)])
            .unwrap();
        let all = catalog.metrics(&rec.id, 0, i64::MAX).unwrap();
        assert_eq!(all.iter().map(|s| s.mem_used).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(catalog.metrics(&rec.id, 2_000, 7_000).unwrap().len(), 1);
        assert_eq!(
            catalog
                .latest_metrics(std::slice::from_ref(&rec.id))
                .unwrap()[0]
                .at_ms,
            6_000
        );

        // Running: nothing is pruned, however old.
        assert_eq!(catalog.prune_killed(i64::MAX).unwrap(), 0);
        catalog
            .transition(
                &rec.id,
                SandboxState::Running,
                SandboxState::Killing,
                "kill",
            )
            .unwrap();
        catalog
            .transition(&rec.id, SandboxState::Killing, SandboxState::Killed, "gone")
            .unwrap();
        // Killed, within the window: kept.
        assert_eq!(catalog.prune_killed(0).unwrap(), 0);
        assert_eq!(catalog.metrics(&rec.id, 0, i64::MAX).unwrap().len(), 2);
        // Past it: the sandbox goes with its samples and history.
        assert_eq!(catalog.prune_killed(i64::MAX).unwrap(), 1);
        assert!(catalog.metrics(&rec.id, 0, i64::MAX).unwrap().is_empty());
        assert!(catalog.get_sandbox(&rec.id).unwrap().is_none());
        assert!(catalog.events(&rec.id).unwrap().is_empty());
    }
}
