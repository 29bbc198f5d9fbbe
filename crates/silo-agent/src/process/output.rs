//! Running a spawned process: output readers, the optional lifetime limit, and the end.
//!
//! Readers stream output as it comes. When the process exits they switch to draining:
//! they read whatever is already buffered and stop, without waiting for EOF, because a
//! background grandchild may hold the pipe open long after the process itself is gone.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use silo_protocol::envd::{Base64Bytes, DataEvent, EndEvent, JournalKind, ProcessEvent};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use super::pty::{read_now, PtyMaster};
use super::reaper::{Exit, WaitStatus};
use super::warm::Rewarm;
use super::{Process, ProcessTable};

const READ_CHUNK: usize = 32 * 1024;

/// Where a reader reads from: stdout or stderr (by its journal kind), or the pty.
enum Source {
    Pipe(pipe::Receiver, JournalKind),
    Pty(Arc<Process>),
}

impl Source {
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pipe(rx, _) => loop {
                rx.readable().await?;
                match rx.try_read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Source::Pty(p) => pty_of(p).read(buf).await,
        }
    }

    /// `Ok(None)`: nothing buffered right now. Straight to the pipe: tokio's `try_read`
    /// answers WouldBlock without reading until its reactor has seen the pipe readable,
    /// which it may not have yet when the process's exit is heard first (a command that
    /// writes and exits at once would lose its output).
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self {
            Source::Pipe(rx, _) => match read_now(rx.as_raw_fd(), buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Source::Pty(p) => pty_of(p).try_read(buf),
        }
    }

    fn kind(&self) -> JournalKind {
        match self {
            Source::Pipe(_, kind) => *kind,
            Source::Pty(_) => JournalKind::Pty,
        }
    }

    fn event(&self, data: &[u8]) -> ProcessEvent {
        let bytes = Base64Bytes(data.to_vec());
        ProcessEvent::Data(match self.kind() {
            JournalKind::Stderr => DataEvent::Stderr(bytes),
            JournalKind::Pty => DataEvent::Pty(bytes),
            _ => DataEvent::Stdout(bytes),
        })
    }
}

fn pty_of(p: &Process) -> &PtyMaster {
    p.pty
        .as_ref()
        .expect("pty sources are only made for pty processes")
}

/// Journal a chunk of output, then send it to the subscribers.
async fn relay(table: &ProcessTable, process: &Process, source: &Source, data: &[u8]) {
    table.journal.output(process.pid, source.kind(), data);
    process.broadcast(source.event(data)).await;
}

async fn pump(
    table: Arc<ProcessTable>,
    process: Arc<Process>,
    source: Source,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if *exited.borrow() {
            // Drain: only what is already there.
            while let Ok(Some(n)) = source.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                relay(&table, &process, &source, &buf[..n]).await;
            }
            return;
        }
        tokio::select! {
            read = source.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => relay(&table, &process, &source, &buf[..n]).await,
            },
            changed = exited.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Start the readers and the supervisor of a freshly spawned, already registered process.
pub fn run(
    table: Arc<ProcessTable>,
    process: Arc<Process>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    exit: oneshot::Receiver<WaitStatus>,
    lifetime: Option<Duration>,
    then: Option<Rewarm>,
) {
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut sources = Vec::new();
    if let Some(rx) = stdout {
        sources.push(Source::Pipe(rx, JournalKind::Stdout));
    }
    if let Some(rx) = stderr {
        sources.push(Source::Pipe(rx, JournalKind::Stderr));
    }
    if process.pty.is_some() {
        sources.push(Source::Pty(process.clone()));
    }
    let readers: Vec<_> = sources
        .into_iter()
        .map(|s| tokio::spawn(pump(table.clone(), process.clone(), s, exited_rx.clone())))
        .collect();

    tokio::spawn(async move {
        let mut exit = exit;
        let status = match lifetime {
            Some(limit) => tokio::select! {
                status = &mut exit => status,
                _ = tokio::time::sleep(limit) => {
                    // envd semantics: the request timeout is the process's lifetime.
                    tracing::info!(pid = process.pid, ?limit, "process outlived its timeout, killing it");
                    let _ = process.signal(libc::SIGKILL);
                    exit.await
                }
            },
            None => exit.await,
        };
        let end = match status {
            Ok(raw) => {
                let exit = Exit::from_wait_status(raw);
                EndEvent {
                    exit_code: exit.code,
                    exited: exit.exited,
                    status: exit.status,
                    error: None,
                }
            }
            Err(_) => EndEvent {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some("the process's exit status was lost".into()),
            },
        };
        let _ = exited_tx.send(true);
        for r in readers {
            let _ = r.await;
        }
        // Writes to a closed stdin fail from here on rather than block.
        process.stdin.lock().await.take();
        tracing::debug!(pid = process.pid, status = %end.status, "process ended");
        table
            .journal
            .exited(process.pid, end.status.clone(), end.exit_code);
        table.remove(process.pid);
        process.finish(ProcessEvent::End(end)).await;
        if let Some(rewarm) = then {
            rewarm.now();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    #[tokio::test(flavor = "current_thread")]
    async fn a_drain_reads_what_the_reactor_has_not_seen_yet() {
        let (read_end, write_end) = std::io::pipe().unwrap();
        std::fs::File::from(OwnedFd::from(write_end))
            .write_all(b"hi")
            .unwrap();
        let rx = pipe::Receiver::from_owned_fd(OwnedFd::from(read_end)).unwrap();
        // No await since the registration: the reactor has not looked at the pipe.
        let source = Source::Pipe(rx, JournalKind::Stdout);
        let mut buf = [0u8; 8];
        assert_eq!(source.try_read(&mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], b"hi");
    }
}
