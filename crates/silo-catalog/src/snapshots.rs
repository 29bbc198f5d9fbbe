//! Snapshots: a sandbox saved whole (memory, processes, files), usable as a template.
//! The image is on disk, written before its row; a row is deleted before its image, so a
//! crash leaves at worst an image without a row, which the node removes at start.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use silo_protocol::ids::SandboxId;

use super::{Catalog, CatalogError, Result};

/// One snapshot as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    /// A name to create sandboxes by, instead of the id; unique.
    pub name: Option<String>,
    /// The sandbox it was taken of.
    pub sandbox_id: SandboxId,
    /// That sandbox's template, and the exact build directory of its root filesystem
    /// (restoring on another build would corrupt the files).
    pub template_id: String,
    pub rootfs: String,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    /// The source's env vars and envd token when it was saved: a copy is reconfigured
    /// with the token its agent still holds.
    pub env_vars: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub created_at_ms: i64,
}

const SELECT_SNAPSHOT: &str = "SELECT id, name, sandbox_id, template_id, rootfs, cpu_count, \
    memory_mb, disk_size_mb, env_vars, access_token, created_at FROM snapshots";

impl Catalog {
    /// Record a snapshot. A name already taken moves to this one (as E2B assigns a new
    /// build to a named snapshot template).
    pub fn insert_snapshot(&self, snap: &SnapshotRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(name) = &snap.name {
            tx.execute("UPDATE snapshots SET name = NULL WHERE name = ?1", [name])?;
        }
        tx.execute(
            "INSERT INTO snapshots (id, name, sandbox_id, template_id, rootfs, cpu_count, \
             memory_mb, disk_size_mb, env_vars, access_token, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                snap.id,
                snap.name,
                snap.sandbox_id.as_str(),
                snap.template_id,
                snap.rootfs,
                snap.cpu_count,
                snap.memory_mb,
                snap.disk_size_mb,
                serde_json::to_string(&snap.env_vars).expect("env vars serialize"),
                snap.access_token,
                snap.created_at_ms,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The snapshot with this id or name.
    pub fn snapshot(&self, id_or_name: &str) -> Result<Option<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT_SNAPSHOT} WHERE id = ?1 OR name = ?1"))?;
        stmt.query_row([id_or_name], snapshot_row)
            .optional()?
            .transpose()
    }

    /// Snapshots, newest first, optionally only those of one sandbox.
    pub fn snapshots(&self, of_sandbox: Option<&SandboxId>) -> Result<Vec<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_SNAPSHOT} WHERE ?1 IS NULL OR sandbox_id = ?1 ORDER BY created_at DESC, id DESC"
        ))?;
        let rows = stmt
            .query_map([of_sandbox.map(SandboxId::as_str)], snapshot_row)?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter().collect()
    }

    /// Forget a snapshot; whether there was one.
    pub fn delete_snapshot(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?
            > 0)
    }
}

fn snapshot_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SnapshotRecord>> {
    let id: String = row.get(0)?;
    let sandbox_id: String = row.get(2)?;
    let env_vars: String = row.get(8)?;
    let corrupt = |reason: String| CatalogError::Corrupt {
        id: id.clone(),
        reason,
    };
    let parsed = (|| {
        Ok(SnapshotRecord {
            sandbox_id: sandbox_id
                .parse()
                .map_err(|e| corrupt(format!("sandbox id: {e}")))?,
            env_vars: serde_json::from_str(&env_vars)
                .map_err(|e| corrupt(format!("env vars: {e}")))?,
            id: id.clone(),
            name: row.get(1)?,
            template_id: row.get(3)?,
            rootfs: row.get(4)?,
            cpu_count: row.get(5)?,
            memory_mb: row.get(6)?,
            disk_size_mb: row.get(7)?,
            access_token: row.get(9)?,
            created_at_ms: row.get(10)?,
        })
    })();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: Option<&str>, of: &SandboxId, at: i64) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: name.map(Into::into),
            sandbox_id: of.clone(),
            template_id: "base".into(),
            rootfs: "/t/base/abc/rootfs".into(),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
            env_vars: [("A".to_owned(), "1".to_owned())].into(),
            access_token: Some("tok".into()),
            created_at_ms: at,
        }
    }

    #[test]
    fn snapshots_by_id_name_and_sandbox() {
        let catalog = Catalog::open_in_memory().unwrap();
        let (a, b) = (SandboxId::generate(), SandboxId::generate());
        catalog
            .insert_snapshot(&snap("s1", Some("mine"), &a, 1))
            .unwrap();
        catalog.insert_snapshot(&snap("s2", None, &b, 2)).unwrap();
        assert_eq!(catalog.snapshot("s1").unwrap().unwrap().env_vars["A"], "1");
        assert_eq!(catalog.snapshot("mine").unwrap().unwrap().id, "s1");
        // The name moves to a newer snapshot.
        catalog
            .insert_snapshot(&snap("s3", Some("mine"), &a, 3))
            .unwrap();
        assert_eq!(catalog.snapshot("mine").unwrap().unwrap().id, "s3");
        assert_eq!(catalog.snapshot("s1").unwrap().unwrap().name, None);
        let ids = |of| {
            catalog
                .snapshots(of)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(None), ["s3", "s2", "s1"]);
        assert_eq!(ids(Some(&a)), ["s3", "s1"]);
        assert!(catalog.delete_snapshot("s1").unwrap());
        assert!(!catalog.delete_snapshot("s1").unwrap());
        assert!(catalog.snapshot("s1").unwrap().is_none());
    }
}
