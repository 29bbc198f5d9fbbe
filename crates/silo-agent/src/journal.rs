//! The journal: what happened to the processes started through the agent (start, each
//! line of output, exit), kept in memory for the control plane to collect
//! (`GET /silo/journal?after=SEQ`) into the sandbox's log and timeline.
//!
//! Bounded: at most [`CAPACITY`] entries, lines cut at [`MAX_LINE`] bytes; when full the
//! oldest go (and are counted as dropped), so endless output costs a fixed amount of
//! memory. Output is split into lines per process and stream; a line not ended when the
//! process exits is kept as it is.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::{Query, State};
use axum::Json;
use silo_protocol::envd::{JournalEntry, JournalKind, JournalPage};

use crate::state::AppState;

pub const CAPACITY: usize = 4096;
pub const MAX_LINE: usize = 2048;

#[derive(Default)]
pub struct Journal {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_seq: u64,
    entries: VecDeque<JournalEntry>,
    /// Output not yet ended by a newline, per process and stream.
    partial: HashMap<(u32, JournalKind), Vec<u8>>,
}

impl Inner {
    fn push(&mut self, pid: u32, kind: JournalKind, text: String, exit_code: Option<i32>) {
        self.last_seq += 1;
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(JournalEntry {
            seq: self.last_seq,
            at_ms: chrono::Utc::now().timestamp_millis(),
            pid,
            kind,
            text,
            exit_code,
        });
    }

    fn push_line(&mut self, pid: u32, kind: JournalKind, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let cut = &line[..line.len().min(MAX_LINE)];
        self.push(pid, kind, String::from_utf8_lossy(cut).into_owned(), None);
    }
}

impl Journal {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn started(&self, pid: u32, command_line: String) {
        self.inner()
            .push(pid, JournalKind::Start, command_line, None);
    }

    /// A chunk of a process's output, as read.
    pub fn output(&self, pid: u32, kind: JournalKind, data: &[u8]) {
        let mut inner = self.inner();
        let mut pending = inner.partial.remove(&(pid, kind)).unwrap_or_default();
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&rest[..newline]);
            inner.push_line(pid, kind, &pending);
            pending.clear();
            rest = &rest[newline + 1..];
        }
        // A line longer than the cut is ended early rather than held without bound.
        pending.extend_from_slice(rest);
        if pending.len() >= MAX_LINE {
            inner.push_line(pid, kind, &pending);
            pending.clear();
        }
        if !pending.is_empty() {
            inner.partial.insert((pid, kind), pending);
        }
    }

    pub fn exited(&self, pid: u32, status: String, exit_code: i32) {
        let mut inner = self.inner();
        let unfinished: Vec<(JournalKind, Vec<u8>)> = inner
            .partial
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|((_, kind), line)| (*kind, line.clone()))
            .collect();
        for (kind, line) in unfinished {
            inner.partial.remove(&(pid, kind));
            inner.push_line(pid, kind, &line);
        }
        inner.push(pid, JournalKind::Exit, status, Some(exit_code));
    }

    /// The entries after `after`, and how many of those are gone already.
    pub fn after(&self, after: u64) -> JournalPage {
        let inner = self.inner();
        let entries: Vec<JournalEntry> = inner
            .entries
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let first_kept = entries.first().map_or(inner.last_seq + 1, |e| e.seq);
        JournalPage {
            dropped: first_kept.saturating_sub(after + 1),
            entries,
        }
    }
}

#[derive(serde::Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    after: u64,
}

/// `GET /silo/journal?after=SEQ`.
pub async fn journal(
    State(state): State<AppState>,
    Query(query): Query<AfterQuery>,
) -> Json<JournalPage> {
    Json(state.processes.journal.after(query.after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(page: &JournalPage) -> Vec<(JournalKind, &str)> {
        page.entries
            .iter()
            .map(|e| (e.kind, e.text.as_str()))
            .collect()
    }

    #[test]
    fn output_is_split_into_lines_per_stream_and_ended_at_exit() {
        let j = Journal::default();
        j.started(7, "bash -c x".into());
        j.output(7, JournalKind::Stdout, b"hel");
        j.output(7, JournalKind::Stderr, b"oops\r\n");
        j.output(7, JournalKind::Stdout, b"lo\nwor");
        j.exited(7, "exit status 3".into(), 3);
        let page = j.after(0);
        assert_eq!(
            texts(&page),
            [
                (JournalKind::Start, "bash -c x"),
                (JournalKind::Stderr, "oops"),
                (JournalKind::Stdout, "hello"),
                (JournalKind::Stdout, "wor"),
                (JournalKind::Exit, "exit status 3"),
            ]
        );
        assert_eq!(page.entries.last().unwrap().exit_code, Some(3));
        assert_eq!(page.dropped, 0);
        assert_eq!(j.after(4).entries.len(), 1);
        assert!(j.after(5).entries.is_empty());
    }

    #[test]
    fn endless_output_keeps_the_newest_and_counts_the_rest() {
        let j = Journal::default();
        for _ in 0..CAPACITY + 10 {
            j.output(1, JournalKind::Stdout, b"y\n");
        }
        let page = j.after(0);
        assert_eq!(page.entries.len(), CAPACITY);
        assert_eq!(page.dropped, 10);
        // A line with no end is cut, not held.
        j.output(1, JournalKind::Stdout, &vec![b'x'; MAX_LINE * 2]);
        let last = j.after(0).entries.pop().unwrap();
        assert_eq!(last.text.len(), MAX_LINE);
    }
}
