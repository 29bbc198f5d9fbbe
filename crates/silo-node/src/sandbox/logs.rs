//! Sandbox logs: the node collects what each sandbox's agent journaled (processes
//! started, their output line by line, their exits) into the catalog, every sampling
//! round and before a pause or a kill, so the log outlives the sandbox.

use silo_catalog::{LogLine, SandboxRecord};
use silo_protocol::envd::JournalEntry;

use super::Manager;

impl Manager {
    /// Collect the sandbox's new journal entries. Best effort: entries an agent could
    /// not hand over stay in its journal for the next round.
    pub(super) async fn collect_logs(&self, rec: &SandboxRecord) {
        let Some(agent) = super::agent_of(rec) else {
            return;
        };
        let collected = async {
            let after = self.catalog.last_log_seq(&rec.id)?;
            let page = match self
                .agent
                .journal(agent, rec.envd_access_token.as_deref(), after)
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    tracing::debug!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "journal not collected");
                    return Ok(());
                }
            };
            let mut lines: Vec<LogLine> = Vec::with_capacity(page.entries.len() + 1);
            if let Some(first) = page.entries.first().filter(|_| page.dropped > 0) {
                // The seq just below the first kept entry was one of those dropped.
                lines.push(LogLine {
                    seq: first.seq - 1,
                    at_ms: first.at_ms,
                    pid: 0,
                    kind: "dropped".into(),
                    text: format!(
                        "{} lines of output were dropped: more came than the sandbox's journal holds between two collections",
                        page.dropped
                    ),
                    exit_code: None,
                });
            }
            lines.extend(page.entries.into_iter().map(log_line));
            self.catalog.insert_logs(&rec.id, &lines)
        };
        if let Err(err) = collected.await {
            tracing::error!(sandbox_id = %rec.id, error = %crate::error_chain(&err), "cannot store sandbox logs");
        }
    }
}

fn log_line(entry: JournalEntry) -> LogLine {
    LogLine {
        seq: entry.seq,
        at_ms: entry.at_ms,
        pid: entry.pid,
        kind: entry.kind.as_str().to_owned(),
        text: entry.text,
        exit_code: entry.exit_code,
    }
}
