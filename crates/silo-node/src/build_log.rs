//! A template build's log as it is written: what of the build's output is kept
//! ([`OutputCap`]), and a task that writes the lines to the catalog in batches
//! ([`BuildLog`]).
//!
//! The policy: a build's first [`HEAD_LINES`] output lines (at most [`HEAD_BYTES`]) are
//! logged as they come, which is all of most builds. Past that, each step's output is
//! logged when the step ends, as the count of lines dropped and its last
//! [`TAIL_LINES`]: the end of a step is where its error is. So `RUN yes | head -n
//! 50000000` costs a bounded log and bounded memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use silo_catalog::BuildLogEntry;
use tokio::sync::mpsc;

/// Output lines logged as they come.
const HEAD_LINES: usize = 10_000;
/// Output bytes logged as they come (lines are up to 16 KiB each).
const HEAD_BYTES: usize = 4 << 20;
/// Once past the head, the lines kept of each step's output: its last.
const TAIL_LINES: usize = 100;
/// Lines written in one transaction at most.
const BATCH: usize = 1_000;

/// What of a build's output is logged (see the module's doc).
#[derive(Debug, Default)]
struct OutputCap {
    logged_lines: usize,
    logged_bytes: usize,
    /// Past the head: output waits in `tail` for its step's end.
    past_head: bool,
    tail: VecDeque<String>,
    /// Lines of the current step dropped from `tail`.
    dropped: u64,
}

impl OutputCap {
    /// An output line: `log` gets what is to be logged of it now.
    fn line(&mut self, line: String, log: &mut impl FnMut(String)) {
        if !self.past_head {
            let bytes = self.logged_bytes + line.len();
            if self.logged_lines < HEAD_LINES && bytes <= HEAD_BYTES {
                self.logged_lines += 1;
                self.logged_bytes = bytes;
                log(format!("  | {line}"));
                return;
            }
            self.past_head = true;
            log(format!(
                "the build's output passed {HEAD_LINES} lines or {} MiB: from here on, each step's last {TAIL_LINES} lines are logged when it ends",
                HEAD_BYTES >> 20
            ));
        }
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
            self.dropped += 1;
        }
    }

    /// The step ended: `log` gets what was kept of its output.
    fn step_end(&mut self, log: &mut impl FnMut(String)) {
        if self.dropped > 0 {
            log(format!(
                "  … {} lines of output not logged; the last {} follow",
                self.dropped,
                self.tail.len()
            ));
            self.dropped = 0;
        }
        for line in self.tail.drain(..) {
            log(format!("  | {line}"));
        }
    }
}

/// A build's log: lines stamped as they come and written by a task, in batches of
/// what is waiting (one transaction per line made a flood of output a flood of
/// transactions), so the build never waits on the catalog.
pub(crate) struct BuildLog {
    lines: mpsc::UnboundedSender<BuildLogEntry>,
    cap: Mutex<OutputCap>,
    writer: tokio::task::JoinHandle<()>,
}

impl BuildLog {
    /// A log whose batches go to `write` (in order, each at most [`BATCH`] lines).
    pub(crate) fn start(mut write: impl FnMut(&[BuildLogEntry]) + Send + 'static) -> BuildLog {
        let (lines, mut waiting) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while waiting.recv_many(&mut batch, BATCH).await > 0 {
                write(&batch);
                batch.clear();
            }
        });
        BuildLog {
            lines,
            cap: Mutex::default(),
            writer,
        }
    }

    /// A line of the build's own (a stage, its result); it ends the step before it,
    /// so what was kept of that step's output comes first.
    pub(crate) fn line(&self, level: &str, message: String) {
        self.cap().step_end(&mut |kept| self.send("info", kept));
        self.send(level, message);
    }

    /// A line of a step's output.
    pub(crate) fn output(&self, line: String) {
        self.cap()
            .line(line, &mut |logged| self.send("info", logged));
    }

    /// Every line written: the build's status may say it ended.
    pub(crate) async fn finish(self) {
        self.cap().step_end(&mut |kept| self.send("info", kept));
        drop(self.lines);
        // The writer only ends when the channel does; a panic in it is already logged.
        let _ = self.writer.await;
    }

    fn send(&self, level: &str, message: String) {
        // The writer outlives every sender (it ends when they are dropped).
        let _ = self.lines.send(BuildLogEntry::now(level, message));
    }

    fn cap(&self) -> std::sync::MutexGuard<'_, OutputCap> {
        self.cap.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn past_the_head_each_step_keeps_its_last_lines() {
        let mut cap = OutputCap::default();
        let mut logged = Vec::new();
        let mut log = |line: String| logged.push(line);
        for n in 0..HEAD_LINES + 250 {
            cap.line(n.to_string(), &mut log);
        }
        cap.step_end(&mut log);
        // A short step past the head: all of it, at its end.
        for n in 0..3 {
            cap.line(format!("short {n}"), &mut log);
        }
        cap.step_end(&mut log);
        cap.step_end(&mut log);
        assert_eq!(logged.len(), HEAD_LINES + 1 + 1 + TAIL_LINES + 3);
        assert_eq!(logged[HEAD_LINES - 1], format!("  | {}", HEAD_LINES - 1));
        assert!(logged[HEAD_LINES].starts_with("the build's output passed"));
        assert_eq!(
            logged[HEAD_LINES + 1],
            "  … 150 lines of output not logged; the last 100 follow"
        );
        assert_eq!(logged[HEAD_LINES + 2], format!("  | {}", HEAD_LINES + 150));
        assert_eq!(logged.last().unwrap(), "  | short 2");
    }

    #[test]
    fn long_lines_reach_the_head_by_bytes() {
        let mut cap = OutputCap::default();
        let mut logged = 0;
        let line = "x".repeat(16 * 1024);
        for _ in 0..1_000 {
            cap.line(line.clone(), &mut |_| logged += 1);
        }
        // The head's lines, then the notice.
        assert_eq!(logged, HEAD_BYTES / line.len() + 1);
    }

    #[tokio::test]
    async fn lines_are_written_in_order_in_batches_and_all_before_finish() {
        let written: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let sink = Arc::clone(&written);
        let log = BuildLog::start(move |batch| {
            let messages = batch.iter().map(|e| e.message.clone()).collect();
            sink.lock().unwrap().push(messages);
        });
        log.line("info", "step 1/1: RUN yes".into());
        for n in 0..HEAD_LINES + 2 * BATCH {
            log.output(n.to_string());
        }
        log.line("error", "exit 1".into());
        log.finish().await;
        let batches = written.lock().unwrap();
        assert!(batches.iter().all(|b| b.len() <= BATCH));
        let all = batches.concat();
        assert_eq!(all.len(), 1 + HEAD_LINES + 1 + 1 + TAIL_LINES + 1);
        assert_eq!(all[0], "step 1/1: RUN yes");
        assert_eq!(
            all[all.len() - 2],
            format!("  | {}", HEAD_LINES + 2 * BATCH - 1)
        );
        assert_eq!(all.last().unwrap(), "exit 1");
    }
}
