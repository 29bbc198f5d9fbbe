//! A template's start command, run when the control plane configures a fresh sandbox,
//! and its ready command, run until it exits 0: `/init` answers only then, so a sandbox
//! is handed out with its server already up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silo_protocol::envd::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use tokio::sync::mpsc::Receiver;

use super::start::launch;
use crate::error::Error;
use crate::rpc::StreamOptions;
use crate::state::AppState;

/// How long the ready command may take to pass.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
const READY_POLL: Duration = Duration::from_millis(100);
/// The output kept to explain a failure.
const TAIL_BYTES: usize = 2048;

/// Start `start_cmd` (left running, tagged `start_cmd`) and wait until `ready_cmd`
/// passes; either may be absent.
pub async fn start_and_wait(
    state: &AppState,
    start_cmd: Option<&str>,
    ready_cmd: Option<&str>,
) -> Result<(), Error> {
    let start_output = Arc::new(Mutex::new(Tail::default()));
    let mut start_ended = None;
    let _drain = match start_cmd {
        Some(cmd) => {
            let events = launch(
                state,
                None,
                StreamOptions::default(),
                shell(cmd, "start_cmd"),
            )
            .await?;
            let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
            start_ended = Some(ended_rx);
            Some(AbortOnDrop(tokio::spawn(drain(
                events,
                start_output.clone(),
                ended_tx,
            ))))
        }
        None => None,
    };
    let Some(ready_cmd) = ready_cmd else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let last_check = loop {
        if let Some(code) = start_ended.as_mut().and_then(|rx| rx.try_recv().ok()) {
            return Err(Error::FailedPrecondition(format!(
                "the template's start command exited with code {code} before its ready command passed; its last output: {}",
                start_output.lock().unwrap_or_else(|p| p.into_inner()).text()
            )));
        }
        let check = launch(
            state,
            None,
            StreamOptions::default(),
            shell(ready_cmd, "ready_cmd"),
        )
        .await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let output = Arc::new(Mutex::new(Tail::default()));
        let waited = tokio::time::timeout_at(deadline, async {
            drain(check, output.clone(), tx).await;
            rx.await.unwrap_or(-1)
        })
        .await;
        match waited {
            Ok(0) => return Ok(()),
            Ok(_) if tokio::time::Instant::now() + READY_POLL < deadline => {
                tokio::time::sleep(READY_POLL).await
            }
            _ => break std::mem::take(&mut *output.lock().unwrap_or_else(|p| p.into_inner())),
        }
    };
    Err(Error::FailedPrecondition(format!(
        "the template's ready command `{ready_cmd}` did not pass within {}s; its last output: {}",
        READY_TIMEOUT.as_secs(),
        last_check.text()
    )))
}

fn shell(cmd: &str, tag: &str) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), cmd.into()],
            envs: Default::default(),
            cwd: None,
        },
        pty: None,
        tag: Some(tag.into()),
        stdin: None,
    }
}

/// Read a process's events into `output` until it ends; send its exit code.
async fn drain(
    mut events: Receiver<Result<ProcessEvent, Error>>,
    output: Arc<Mutex<Tail>>,
    ended: tokio::sync::oneshot::Sender<i32>,
) {
    while let Some(Ok(event)) = events.recv().await {
        match event {
            ProcessEvent::Data(DataEvent::Stdout(bytes) | DataEvent::Stderr(bytes)) => output
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&bytes.0),
            ProcessEvent::End(end) => {
                let _ = ended.send(end.exit_code);
                return;
            }
            _ => {}
        }
    }
}

/// The last bytes a process wrote.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend(bytes);
        let excess = self.0.len().saturating_sub(TAIL_BYTES);
        self.0.drain(..excess);
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.0.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if text.is_empty() {
            "(none)".into()
        } else {
            text
        }
    }
}

/// Stops the start command's output reader when the wait is over; dropping its
/// receiver unsubscribes it, and the process runs on.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(&vec![b'a'; TAIL_BYTES]);
        tail.push(b"end");
        assert_eq!(tail.0.len(), TAIL_BYTES);
        assert!(tail.text().ends_with("aend"));
        assert_eq!(Tail::default().text(), "(none)");
    }
}
