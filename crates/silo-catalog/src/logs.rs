//! Sandbox logs: what the processes started in a sandbox did (start, each line of output,
//! exit), as the node collects it from the sandbox's agent. At most [`MAX_LINES`] per
//! sandbox (the newest); like metrics, kept for the sandbox's life and a retention window
//! after its kill.

use rusqlite::params;
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::LogLevel;

use super::{Catalog, Result};

/// Lines kept per sandbox.
pub const MAX_LINES: u64 = 20_000;

/// One entry of a sandbox's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The agent's sequence number: increasing, unique per sandbox.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub pid: u32,
    /// `start`, `stdout`, `stderr`, `pty`, `exit`, or `dropped` (lines lost before
    /// they were collected; `text` says how many).
    pub kind: String,
    pub text: String,
    pub exit_code: Option<i32>,
}

impl LogLine {
    /// How it reads in the log: a failed exit is an error, stderr and lost lines warn,
    /// the rest informs. [`LEVEL_RANK`] says the same in SQL.
    pub fn level(&self) -> LogLevel {
        match self.kind.as_str() {
            "exit" if self.exit_code != Some(0) => LogLevel::Error,
            "stderr" | "dropped" => LogLevel::Warn,
            _ => LogLevel::Info,
        }
    }
}

/// [`LogLine::level`] of a row, as the rank of its [`LogLevel`], so that a minimum level
/// is applied before the LIMIT (after it, a page could come back empty while matching
/// lines follow).
const LEVEL_RANK: &str = "CASE WHEN kind = 'exit' AND exit_code IS NOT 0 THEN 3 \
     WHEN kind IN ('stderr', 'dropped') THEN 2 ELSE 1 END";

/// Which lines to read.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// From this time on (forward) or up to it (backward), Unix milliseconds.
    pub cursor_ms: Option<i64>,
    pub backward: bool,
    /// Only lines containing this text.
    pub search: Option<String>,
    /// Only lines of this level and above.
    pub level: LogLevel,
    pub limit: usize,
}

impl Catalog {
    /// Add collected lines (those already there are skipped), then keep the newest
    /// [`MAX_LINES`].
    pub fn insert_logs(&self, id: &SandboxId, lines: &[LogLine]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO sandbox_logs (sandbox_id, seq, at, pid, kind, text, \
                 exit_code) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for line in lines {
                stmt.execute(params![
                    id.as_str(),
                    line.seq as i64,
                    line.at_ms,
                    line.pid,
                    line.kind,
                    line.text,
                    line.exit_code,
                ])?;
            }
        }
        tx.execute(
            "DELETE FROM sandbox_logs WHERE sandbox_id = ?1 AND seq <= \
             (SELECT seq FROM sandbox_logs WHERE sandbox_id = ?1 ORDER BY seq DESC \
              LIMIT 1 OFFSET ?2)",
            params![id.as_str(), MAX_LINES as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The sequence number of the newest line collected, 0 if none.
    pub fn last_log_seq(&self, id: &SandboxId) -> Result<u64> {
        let conn = self.conn();
        let seq: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM sandbox_logs WHERE sandbox_id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )?;
        Ok(seq.max(0) as u64)
    }

    /// Lines of a sandbox, in time order (newest first when reading backward).
    pub fn logs(&self, id: &SandboxId, query: &LogQuery) -> Result<Vec<LogLine>> {
        let conn = self.conn();
        let (bound, order) = if query.backward {
            ("at <= ?2", "DESC")
        } else {
            ("at >= ?2", "ASC")
        };
        let cursor = query
            .cursor_ms
            .unwrap_or(if query.backward { i64::MAX } else { 0 });
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, at, pid, kind, text, exit_code FROM sandbox_logs \
             WHERE sandbox_id = ?1 AND {bound} AND instr(text, ?3) > 0 \
             AND {LEVEL_RANK} >= ?5 ORDER BY at {order}, seq {order} LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![
                id.as_str(),
                cursor,
                query.search.as_deref().unwrap_or(""),
                query.limit as i64,
                query.level as i64,
            ],
            |row| {
                Ok(LogLine {
                    seq: row.get::<_, i64>(0)?.max(0) as u64,
                    at_ms: row.get(1)?,
                    pid: row.get(2)?,
                    kind: row.get(3)?,
                    text: row.get(4)?,
                    exit_code: row.get(5)?,
                })
            },
        )?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{record, running};

    fn line(seq: u64, at_ms: i64, text: &str) -> LogLine {
        LogLine {
            seq,
            at_ms,
            pid: 7,
            kind: "stdout".into(),
            text: text.into(),
            exit_code: None,
        }
    }

    #[test]
    fn lines_are_kept_once_in_order_and_searched() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        assert_eq!(catalog.last_log_seq(&rec.id).unwrap(), 0);
        catalog
            .insert_logs(&rec.id, &[line(1, 10, "hello"), line(2, 20, "world")])
            .unwrap();
        // Collected twice: kept once.
        catalog
            .insert_logs(&rec.id, &[line(2, 20, "world"), line(3, 30, "bye")])
            .unwrap();
        assert_eq!(catalog.last_log_seq(&rec.id).unwrap(), 3);
        let query = |cursor_ms, backward, search: Option<&str>| LogQuery {
            cursor_ms,
            backward,
            search: search.map(Into::into),
            level: LogLevel::Debug,
            limit: 10,
        };
        let texts = |q| -> Vec<String> {
            catalog
                .logs(&rec.id, &q)
                .unwrap()
                .into_iter()
                .map(|l| l.text)
                .collect()
        };
        assert_eq!(texts(query(None, false, None)), ["hello", "world", "bye"]);
        assert_eq!(texts(query(Some(20), false, None)), ["world", "bye"]);
        assert_eq!(texts(query(Some(20), true, None)), ["world", "hello"]);
        assert_eq!(texts(query(None, false, Some("or"))), ["world"]);
    }

    #[test]
    fn a_minimum_level_is_applied_before_the_limit() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        let mut lines: Vec<LogLine> = (1..=50).map(|seq| line(seq, seq as i64, "ok")).collect();
        lines.push(LogLine {
            kind: "exit".into(),
            exit_code: Some(2),
            ..line(51, 51, "python3 x.py")
        });
        catalog.insert_logs(&rec.id, &lines).unwrap();
        let errors = catalog
            .logs(
                &rec.id,
                &LogQuery {
                    cursor_ms: None,
                    backward: false,
                    search: None,
                    level: LogLevel::Error,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(errors.iter().map(|l| l.seq).collect::<Vec<_>>(), [51]);
    }

    #[test]
    fn sql_ranks_every_line_as_its_level() {
        let catalog = Catalog::open_in_memory().unwrap();
        let conn = catalog.conn();
        for kind in [
            "start", "stdout", "stderr", "pty", "exit", "dropped", "other",
        ] {
            for exit_code in [None, Some(0), Some(1), Some(-1)] {
                let line = LogLine {
                    kind: kind.into(),
                    exit_code,
                    ..line(1, 1, "x")
                };
                let rank: i64 = conn
                    .query_row(
                        &format!("SELECT {LEVEL_RANK} FROM (SELECT ?1 AS kind, ?2 AS exit_code)"),
                        params![kind, exit_code],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert_eq!(rank, line.level() as i64, "{kind} {exit_code:?}");
            }
        }
    }
}
