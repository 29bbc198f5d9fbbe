//! Template builds (status and log, kept after they finish), their tags and template
//! aliases.
//!
//! A build's files live in the template directory; its row says how it went, so the API
//! can answer "where is build X" and show its log long after the build ran. A ready
//! build's row has its recipe hash, the name of its directory
//! (`<templates>/<template>/<hash>/rootfs`). A tag (E2B's `name:tag`) names one build of
//! its template; [`DEFAULT_TAG`] moves to each build that becomes ready, the others move
//! only when a build or an assignment names them.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, Catalog, CatalogError, Result};

/// Where a build stands (E2B's `TemplateBuildStatus` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// Requested; its files are being uploaded and it has not been started.
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Waiting => "waiting",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Error => "error",
        }
    }

    fn parse(text: &str) -> Option<BuildStatus> {
        [
            BuildStatus::Waiting,
            BuildStatus::Building,
            BuildStatus::Ready,
            BuildStatus::Error,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, BuildStatus::Ready | BuildStatus::Error)
    }
}

/// One build as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    pub id: String,
    pub template: String,
    pub status: BuildStatus,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Why it failed, and at which step ("1", "2", ... or "finalize").
    pub reason: Option<String>,
    pub step: Option<String>,
    /// A ready build's recipe hash: its directory under its template's.
    pub hash: Option<String>,
}

/// The tag of a template's newest ready build, and what its bare name means.
pub const DEFAULT_TAG: &str = "default";

/// One tag of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub tag: String,
    pub build_id: String,
    /// When the tag was set to its build.
    pub created_at_ms: i64,
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLogEntry {
    pub at_ms: i64,
    /// "debug", "info", "warn" or "error".
    pub level: String,
    pub message: String,
}

impl BuildLogEntry {
    /// A line logged now.
    pub fn now(level: &str, message: String) -> BuildLogEntry {
        BuildLogEntry {
            at_ms: now_ms(),
            level: level.to_owned(),
            message,
        }
    }
}

/// Builds of a template whose logs are kept, the newest; older ones keep their status.
pub const BUILD_LOGS_KEPT: i64 = 10;

const SELECT_BUILD: &str =
    "SELECT id, template, status, created_at, finished_at, reason, step, hash FROM template_builds";

impl Catalog {
    pub fn insert_build(&self, id: &str, template: &str) -> Result<BuildRecord> {
        let rec = BuildRecord {
            id: id.to_owned(),
            template: template.to_owned(),
            status: BuildStatus::Waiting,
            created_at_ms: now_ms(),
            finished_at_ms: None,
            reason: None,
            step: None,
            hash: None,
        };
        self.conn().execute(
            "INSERT INTO template_builds (id, template, status, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![rec.id, rec.template, rec.status.as_str(), rec.created_at_ms],
        )?;
        Ok(rec)
    }

    pub fn build(&self, id: &str) -> Result<Option<BuildRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT_BUILD} WHERE id = ?1"))?;
        stmt.query_row([id], build_row).optional()?.transpose()
    }

    /// A template's builds, newest first.
    pub fn builds_of(&self, template: &str) -> Result<Vec<BuildRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_BUILD} WHERE template = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        let rows = stmt
            .query_map([template], build_row)?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter().collect()
    }

    /// Names of the templates that have builds recorded.
    pub fn built_templates(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT DISTINCT template FROM template_builds ORDER BY template")?;
        let rows = stmt
            .query_map([], |row| row.get(0))?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// How many builds there are of each status.
    pub fn count_builds(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT status, COUNT(*) FROM template_builds GROUP BY status")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Move a build on; a finished one keeps its end time, reason and failed step.
    pub fn set_build_status(
        &self,
        id: &str,
        status: BuildStatus,
        reason: Option<&str>,
        step: Option<&str>,
    ) -> Result<()> {
        let finished = status.is_finished().then(now_ms);
        self.conn().execute(
            "UPDATE template_builds SET status = ?2, finished_at = ?3, reason = ?4, step = ?5 \
             WHERE id = ?1",
            params![id, status.as_str(), finished, reason, step],
        )?;
        Ok(())
    }

    /// Record a build as ready, its files under `hash`, and point [`DEFAULT_TAG`] and
    /// `tags` of its template at it, in one transaction: a tag never names a build that
    /// is not ready.
    pub fn set_build_ready(&self, id: &str, hash: &str, tags: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "UPDATE template_builds SET status = 'ready', finished_at = ?2, reason = NULL, \
             step = NULL, hash = ?3 WHERE id = ?1",
            params![id, now, hash],
        )?;
        let default = [DEFAULT_TAG.to_owned()];
        upsert_tags(&tx, id, default.iter().chain(tags), now)?;
        tx.commit()?;
        Ok(())
    }

    /// The build `tag` of `template` names.
    pub fn tagged_build(&self, template: &str, tag: &str) -> Result<Option<BuildRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{SELECT_BUILD} WHERE id = \
             (SELECT build_id FROM template_tags WHERE template = ?1 AND tag = ?2)"
        ))?;
        stmt.query_row([template, tag], build_row)
            .optional()?
            .transpose()
    }

    /// The recipe hashes (directories) of the builds `template`'s tags name.
    pub fn tagged_hashes(&self, template: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT b.hash FROM template_tags t JOIN template_builds b \
             ON b.id = t.build_id WHERE t.template = ?1 AND b.hash IS NOT NULL",
        )?;
        let hashes = stmt
            .query_map([template], |row| row.get(0))?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        Ok(hashes)
    }

    /// A template's tags, by name.
    pub fn tags_of(&self, template: &str) -> Result<Vec<TagRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tag, build_id, created_at FROM template_tags WHERE template = ?1 \
             ORDER BY tag",
        )?;
        let rows = stmt
            .query_map([template], |row| {
                Ok(TagRecord {
                    tag: row.get(0)?,
                    build_id: row.get(1)?,
                    created_at_ms: row.get(2)?,
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Point `tags` of the template of build `id` at it; tags taken move to it.
    pub fn assign_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        upsert_tags(&tx, id, tags.iter(), now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Remove `tags` of `template`, all or none: the tags it does not have are returned
    /// and nothing is removed.
    pub fn remove_tags(&self, template: &str, tags: &[String]) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut missing = Vec::new();
        for tag in tags {
            let removed = tx.execute(
                "DELETE FROM template_tags WHERE template = ?1 AND tag = ?2",
                params![template, tag],
            )?;
            if removed == 0 {
                missing.push(tag.clone());
            }
        }
        if missing.is_empty() {
            tx.commit()?;
        }
        Ok(missing)
    }

    /// Builds that were under way when the server stopped can never finish: fail them
    /// with `reason`, which also ends their logs (a client following a log reads it to
    /// its end once the build ended). Their ids, in one transaction.
    pub fn fail_unfinished_builds(&self, reason: &str) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids = tx
            .prepare("SELECT id FROM template_builds WHERE status IN ('waiting', 'building')")?
            .query_map([], |row| row.get(0))?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        let now = now_ms();
        let last_line = [BuildLogEntry {
            at_ms: now,
            level: "error".into(),
            message: reason.to_owned(),
        }];
        for id in &ids {
            insert_build_logs(&tx, id, &last_line)?;
            tx.execute(
                "UPDATE template_builds SET status = 'error', finished_at = ?2, reason = ?3 \
                 WHERE id = ?1",
                params![id, now, reason],
            )?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Add lines to a build's log, in one transaction.
    pub fn append_build_logs(&self, id: &str, entries: &[BuildLogEntry]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_build_logs(&tx, id, entries)?;
        tx.commit()?;
        Ok(())
    }

    /// Forget the logs of finished builds that are older than their template's current
    /// build (its newest ready one) or than its newest [`BUILD_LOGS_KEPT`]; their rows
    /// stay, so their status still answers. Returns how many lines went.
    pub fn prune_build_logs(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM template_build_logs WHERE build_id IN ( \
                 SELECT id FROM ( \
                     SELECT id, status, ROW_NUMBER() OVER newer AS rank, \
                         SUM(status = 'ready') OVER ( \
                             newer ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING \
                         ) AS ready_since \
                     FROM template_builds \
                     WINDOW newer AS ( \
                         PARTITION BY template ORDER BY created_at DESC, rowid DESC \
                     ) \
                 ) WHERE status IN ('ready', 'error') AND (rank > ?1 OR ready_since > 0) \
             )",
            [BUILD_LOGS_KEPT],
        )?)
    }

    /// Up to `limit` log entries of a build, from the `offset`-th on.
    pub fn build_logs(&self, id: &str, offset: u64, limit: u64) -> Result<Vec<BuildLogEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, level, message FROM template_build_logs WHERE build_id = ?1 \
             AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(
                params![
                    id,
                    offset.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as u64) as i64
                ],
                |row| {
                    Ok(BuildLogEntry {
                        at_ms: row.get(0)?,
                        level: row.get(1)?,
                        message: row.get(2)?,
                    })
                },
            )?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Point `alias` at `template`; an alias already taken moves to it.
    pub fn set_alias(&self, alias: &str, template: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO template_aliases (alias, template) VALUES (?1, ?2) \
             ON CONFLICT(alias) DO UPDATE SET template = excluded.template",
            params![alias, template],
        )?;
        Ok(())
    }

    /// The template an alias names.
    pub fn alias(&self, alias: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT template FROM template_aliases WHERE alias = ?1",
                [alias],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub fn aliases_of(&self, template: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT alias FROM template_aliases WHERE template = ?1 ORDER BY alias")?;
        let rows = stmt
            .query_map([template], |row| row.get(0))?
            .collect::<std::result::Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    pub fn delete_alias(&self, alias: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM template_aliases WHERE alias = ?1", [alias])?
            > 0)
    }

    /// Forget a template: its builds, their logs, its tags and aliases.
    pub fn delete_template(&self, template: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM template_build_logs WHERE build_id IN \
             (SELECT id FROM template_builds WHERE template = ?1)",
            [template],
        )?;
        tx.execute(
            "DELETE FROM template_builds WHERE template = ?1",
            [template],
        )?;
        tx.execute(
            "DELETE FROM template_aliases WHERE template = ?1",
            [template],
        )?;
        tx.execute("DELETE FROM template_tags WHERE template = ?1", [template])?;
        tx.commit()?;
        Ok(())
    }
}

fn build_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<BuildRecord>> {
    let id: String = row.get(0)?;
    let status: String = row.get(2)?;
    Ok(match BuildStatus::parse(&status) {
        Some(status) => Ok(BuildRecord {
            template: row.get(1)?,
            status,
            created_at_ms: row.get(3)?,
            finished_at_ms: row.get(4)?,
            reason: row.get(5)?,
            step: row.get(6)?,
            hash: row.get(7)?,
            id,
        }),
        None => Err(CatalogError::Corrupt {
            id,
            reason: format!("build status {status:?}"),
        }),
    })
}

/// Point `tags` at build `id`, of the template its row names, in `tx`.
fn upsert_tags<'a>(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    tags: impl Iterator<Item = &'a String>,
    now: i64,
) -> Result<()> {
    let mut upsert = tx.prepare(
        "INSERT INTO template_tags (template, tag, build_id, created_at) \
         SELECT template, ?2, id, ?3 FROM template_builds WHERE id = ?1 \
         ON CONFLICT(template, tag) DO UPDATE \
         SET build_id = excluded.build_id, created_at = excluded.created_at",
    )?;
    for tag in tags {
        upsert.execute(params![id, tag, now])?;
    }
    Ok(())
}

/// Add lines to the end of build `id`'s log, numbered after its last, in `tx`.
fn insert_build_logs(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    entries: &[BuildLogEntry],
) -> Result<()> {
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq) + 1, 0) FROM template_build_logs WHERE build_id = ?1",
        [id],
        |row| row.get(0),
    )?;
    let mut insert = tx.prepare(
        "INSERT INTO template_build_logs (build_id, seq, at, level, message) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (seq, entry) in (next..).zip(entries) {
        insert.execute(params![id, seq, entry.at_ms, entry.level, entry.message])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_keeps_its_status_and_log() {
        let catalog = Catalog::open_in_memory().unwrap();
        catalog.insert_build("b1", "web").unwrap();
        catalog
            .set_build_status("b1", BuildStatus::Building, None, None)
            .unwrap();
        catalog
            .append_build_logs("b1", &[BuildLogEntry::now("info", "one".into())])
            .unwrap();
        let more = ["two", "three"].map(|line| BuildLogEntry::now("info", line.into()));
        catalog.append_build_logs("b1", &more).unwrap();
        let logs = catalog.build_logs("b1", 1, 100).unwrap();
        let lines: Vec<&str> = logs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(lines, ["two", "three"]);
        assert_eq!(catalog.build_logs("b1", 0, 1).unwrap().len(), 1);
        catalog
            .set_build_status("b1", BuildStatus::Error, Some("exit 1"), Some("2"))
            .unwrap();
        let rec = catalog.build("b1").unwrap().unwrap();
        assert_eq!(rec.status, BuildStatus::Error);
        assert_eq!(
            (rec.reason.as_deref(), rec.step.as_deref()),
            (Some("exit 1"), Some("2"))
        );
        assert!(rec.finished_at_ms.is_some());
    }

    #[test]
    fn unfinished_builds_fail_after_a_restart() {
        let catalog = Catalog::open_in_memory().unwrap();
        for id in ["waiting", "building", "ready"] {
            catalog.insert_build(id, "web").unwrap();
        }
        catalog
            .set_build_status("building", BuildStatus::Building, None, None)
            .unwrap();
        catalog
            .append_build_logs("building", &[BuildLogEntry::now("info", "step 1/2".into())])
            .unwrap();
        catalog
            .set_build_status("ready", BuildStatus::Ready, None, None)
            .unwrap();

        let mut failed = catalog.fail_unfinished_builds("interrupted").unwrap();
        failed.sort();
        assert_eq!(failed, ["building", "waiting"]);
        for id in ["waiting", "building"] {
            let rec = catalog.build(id).unwrap().unwrap();
            assert_eq!(rec.status, BuildStatus::Error);
            assert_eq!(rec.reason.as_deref(), Some("interrupted"));
            assert!(rec.finished_at_ms.is_some());
        }
        // The reason ends the log, after what the build wrote.
        let log = |id| -> Vec<(String, String)> {
            let entries = catalog.build_logs(id, 0, 100).unwrap();
            entries.into_iter().map(|e| (e.level, e.message)).collect()
        };
        let line = |level: &str, message: &str| (level.to_owned(), message.to_owned());
        assert_eq!(
            log("building"),
            [line("info", "step 1/2"), line("error", "interrupted")]
        );
        assert_eq!(log("waiting"), [line("error", "interrupted")]);
        assert_eq!(
            catalog.build("ready").unwrap().unwrap().status,
            BuildStatus::Ready
        );
        assert!(log("ready").is_empty());
        // Once failed, they are not failed again.
        assert!(catalog
            .fail_unfinished_builds("interrupted")
            .unwrap()
            .is_empty());
        assert_eq!(log("waiting").len(), 1);
    }

    #[test]
    fn aliases_move_and_go_with_their_template() {
        let catalog = Catalog::open_in_memory().unwrap();
        catalog.set_alias("app", "web-v1").unwrap();
        catalog.set_alias("app", "web-v2").unwrap();
        assert_eq!(catalog.alias("app").unwrap().as_deref(), Some("web-v2"));
        catalog.insert_build("b1", "web-v2").unwrap();
        catalog
            .append_build_logs("b1", &[BuildLogEntry::now("info", "x".into())])
            .unwrap();
        catalog.delete_template("web-v2").unwrap();
        assert_eq!(catalog.alias("app").unwrap(), None);
        assert!(catalog.build("b1").unwrap().is_none());
        assert!(catalog.build_logs("b1", 0, 10).unwrap().is_empty());
    }

    /// `tag` of `template` → the id of the build it names.
    fn tagged(catalog: &Catalog, template: &str, tag: &str) -> Option<String> {
        catalog
            .tagged_build(template, tag)
            .unwrap()
            .map(|build| build.id)
    }

    #[test]
    fn a_ready_build_takes_the_default_tag_and_its_own() {
        let catalog = Catalog::open_in_memory().unwrap();
        for id in ["b1", "b2"] {
            catalog.insert_build(id, "app").unwrap();
        }
        catalog
            .set_build_ready("b1", "h1", &["v1".into(), "stable".into()])
            .unwrap();
        assert_eq!(tagged(&catalog, "app", "default").as_deref(), Some("b1"));
        let b1 = catalog.tagged_build("app", "v1").unwrap().unwrap();
        assert_eq!(
            (b1.status, b1.hash.as_deref()),
            (BuildStatus::Ready, Some("h1"))
        );
        catalog.set_build_ready("b2", "h2", &["v2".into()]).unwrap();
        // The newest ready build is the default; the other tags stay where they were.
        assert_eq!(tagged(&catalog, "app", "default").as_deref(), Some("b2"));
        assert_eq!(tagged(&catalog, "app", "v1").as_deref(), Some("b1"));
        let tags: Vec<(String, String)> = catalog
            .tags_of("app")
            .unwrap()
            .into_iter()
            .map(|t| (t.tag, t.build_id))
            .collect();
        let pair = |tag: &str, build: &str| (tag.to_owned(), build.to_owned());
        assert_eq!(
            tags,
            [
                pair("default", "b2"),
                pair("stable", "b1"),
                pair("v1", "b1"),
                pair("v2", "b2")
            ]
        );
        // Tags are the template's own.
        assert_eq!(tagged(&catalog, "web", "v1"), None);
    }

    #[test]
    fn tags_are_assigned_and_removed_all_or_none() {
        let catalog = Catalog::open_in_memory().unwrap();
        for (id, hash) in [("b1", "h1"), ("b2", "h2")] {
            catalog.insert_build(id, "app").unwrap();
            catalog.set_build_ready(id, hash, &[]).unwrap();
        }
        catalog
            .assign_tags("b1", &["stable".into(), "prod".into()])
            .unwrap();
        catalog.assign_tags("b2", &["prod".into()]).unwrap();
        assert_eq!(tagged(&catalog, "app", "stable").as_deref(), Some("b1"));
        assert_eq!(tagged(&catalog, "app", "prod").as_deref(), Some("b2"));

        let missing = catalog
            .remove_tags("app", &["stable".into(), "nope".into()])
            .unwrap();
        assert_eq!(missing, ["nope"]);
        assert_eq!(tagged(&catalog, "app", "stable").as_deref(), Some("b1"));
        assert!(catalog
            .remove_tags("app", &["stable".into(), "prod".into()])
            .unwrap()
            .is_empty());
        let left: Vec<String> = catalog
            .tags_of("app")
            .unwrap()
            .into_iter()
            .map(|t| t.tag)
            .collect();
        assert_eq!(left, ["default"]);

        catalog.delete_template("app").unwrap();
        assert!(catalog.tags_of("app").unwrap().is_empty());
    }

    #[test]
    fn a_catalog_of_the_previous_version_gains_build_hashes_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let previous = crate::MIGRATIONS.len() - 1;
        crate::tests::catalog_at_version(&path, previous);
        let old = crate::tests::second_connection(&path);
        old.execute(
            "INSERT INTO template_builds (id, template, status, created_at) \
             VALUES ('old', 'app', 'ready', 1)",
            [],
        )
        .unwrap();
        drop(old);
        let catalog = Catalog::open(&path).unwrap();
        // Built before hashes were kept: its files are found as before, by the newest.
        assert_eq!(catalog.build("old").unwrap().unwrap().hash, None);
        catalog.insert_build("new", "app").unwrap();
        catalog.set_build_ready("new", "h", &[]).unwrap();
        assert_eq!(tagged(&catalog, "app", "default").as_deref(), Some("new"));
    }

    #[test]
    fn logs_of_builds_behind_the_current_one_or_the_newest_ten_are_pruned() {
        let catalog = Catalog::open_in_memory().unwrap();
        let build = |id: &str, template: &str, status: BuildStatus| {
            catalog.insert_build(id, template).unwrap();
            catalog.set_build_status(id, status, None, None).unwrap();
            catalog
                .append_build_logs(id, &[BuildLogEntry::now("info", id.into())])
                .unwrap();
        };
        // web: failed, ready (current), failed, still building.
        build("w1", "web", BuildStatus::Error);
        build("w2", "web", BuildStatus::Ready);
        build("w3", "web", BuildStatus::Error);
        build("w4", "web", BuildStatus::Building);
        // api: twelve failed builds, the newest ten kept.
        for n in 1..=12 {
            build(&format!("a{n:02}"), "api", BuildStatus::Error);
        }
        // An older build still running is never pruned (its log is being written).
        build("a00", "api", BuildStatus::Building);
        catalog
            .conn()
            .execute(
                "UPDATE template_builds SET created_at = 0 WHERE id = 'a00'",
                [],
            )
            .unwrap();
        assert_eq!(catalog.prune_build_logs().unwrap(), 3);
        let kept = |id: &str| !catalog.build_logs(id, 0, 10).unwrap().is_empty();
        assert!(!kept("w1"));
        for id in ["w2", "w3", "w4", "a03", "a12", "a00"] {
            assert!(kept(id), "{id}");
        }
        assert!(!kept("a01") && !kept("a02"));
        assert_eq!(
            catalog.build("w1").unwrap().unwrap().status,
            BuildStatus::Error
        );
    }
}
