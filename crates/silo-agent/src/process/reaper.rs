//! The one place that waits for children.
//!
//! The agent is PID 1, so every orphan in the sandbox becomes its child and must be reaped.
//! A single task waits with `waitpid(-1)` on each SIGCHLD and hands each status to whoever
//! registered that pid; statuses of unregistered pids (orphans) are dropped.
//!
//! Spawning happens inside [`Reaper::spawn`], under the same lock the reaper holds around
//! each `waitpid`. So a child that exits at once is not reaped before its owner is
//! registered, and std's own `waitpid` after a failed `exec` is not robbed of its status.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// A raw `waitpid` status.
pub type WaitStatus = libc::c_int;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<libc::pid_t, oneshot::Sender<WaitStatus>>>,
}

impl Reaper {
    /// Install the SIGCHLD handler and start reaping. Call before spawning anything.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            // Children that exited before the handler was installed.
            r.reap_all();
            while sigchld.recv().await.is_some() {
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let mut status: WaitStatus = 0;
            // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return; // 0: children left but none exited; -1/ECHILD: no children
            }
            if let Some(tx) = waiters.remove(&pid) {
                let _ = tx.send(status);
            }
        }
    }

    /// Run `spawn` (which returns its result and the child's pid) and register the pid;
    /// the receiver gets the child's wait status.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(T, u32)>,
    ) -> io::Result<(T, oneshot::Receiver<WaitStatus>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let (value, pid) = spawn()?;
        let (tx, rx) = oneshot::channel();
        let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
        waiters.insert(pid, tx);
        Ok((value, rx))
    }
}

/// How a process ended, in the words of envd's end event (Go's `ProcessState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or -1 when a signal ended the process.
    pub code: i32,
    /// True when the process exited by itself (not by a signal).
    pub exited: bool,
    /// `exit status N` or `signal: killed`.
    pub status: String,
}

impl Exit {
    pub fn from_wait_status(status: WaitStatus) -> Exit {
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            Exit {
                code,
                exited: true,
                status: format!("exit status {code}"),
            }
        } else if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let mut text = format!("signal: {}", signal_name(sig));
            if libc::WCOREDUMP(status) {
                text.push_str(" (core dumped)");
            }
            Exit {
                code: -1,
                exited: false,
                status: text,
            }
        } else {
            Exit {
                code: -1,
                exited: false,
                status: format!("wait status {status:#x}"),
            }
        }
    }
}

/// Go's names for signals, as envd's status strings use them.
fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGILL => "illegal instruction".into(),
        libc::SIGTRAP => "trace/breakpoint trap".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGUSR1 => "user defined signal 1".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGUSR2 => "user defined signal 2".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGALRM => "alarm clock".into(),
        libc::SIGTERM => "terminated".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_like_go() {
        // Exit code 3: status word 0x0300. Killed by SIGKILL: 0x0009.
        assert_eq!(
            Exit::from_wait_status(3 << 8),
            Exit {
                code: 3,
                exited: true,
                status: "exit status 3".into()
            }
        );
        let killed = Exit::from_wait_status(libc::SIGKILL);
        assert_eq!((killed.code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
        assert_eq!(
            Exit::from_wait_status(libc::SIGTERM).status,
            "signal: terminated"
        );
    }
}
