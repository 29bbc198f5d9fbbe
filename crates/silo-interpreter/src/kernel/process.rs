//! The kernel's OS process: started as the sandbox user in its own process group, watched
//! until it exits, killed as a group.
//!
//! A kernel spawns children of its own (bash_kernel's bash, `!pip` in Python, a user's
//! subprocesses); putting it in a fresh process group lets interrupt and kill reach all of
//! them at once, as a terminal's Ctrl-C would.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::ChildStdin;
use tokio::sync::watch;

use crate::config::KernelUser;

/// How many of the kernel's last stderr lines are kept for error messages.
const STDERR_TAIL: usize = 20;

/// The descriptor a piped kernel (silo's Node.js driver) writes its protocol on. Not its
/// stdout: that one is the user's, inherited by every child the user's code starts.
pub const PROTOCOL_FD: RawFd = 3;

/// A running (or exited) kernel process. Dropping it kills the process group, so no path
/// (a failed start, a deleted context) can leak a kernel.
#[derive(Debug)]
pub struct KernelProcess {
    pid: i32,
    /// `None` while running, then a description of how it ended ("exit status 1", "signal 9").
    exited: watch::Receiver<Option<String>>,
    stderr: StderrTail,
}

/// The last lines a kernel wrote to stderr, for error messages.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    /// Keeps the lines of `text`, some of the kernel's stderr.
    pub fn record(&self, text: &str) {
        let mut tail = self.0.lock().expect("stderr tail lock poisoned");
        for line in text.lines() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }

    pub(super) fn lines(&self) -> Vec<String> {
        let tail = self.0.lock().expect("stderr tail lock poisoned");
        tail.iter().cloned().collect()
    }
}

/// The pipes of a kernel that is talked to over them (silo's Node.js driver): requests go
/// to its stdin, its messages come from [`PROTOCOL_FD`], and whatever lands on its stdout
/// and stderr (its own writes and those of children that inherited them) comes from
/// `stdout` and `stderr`. That stderr is not read into the [`StderrTail`]: the reader of
/// these pipes records it.
pub struct Pipes {
    pub stdin: ChildStdin,
    pub protocol: pipe::Receiver,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

impl KernelProcess {
    /// Starts `argv` in `cwd` with exactly `env`, as `user` when given.
    pub fn spawn(
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
        user: Option<&KernelUser>,
    ) -> std::io::Result<Self> {
        Self::start(argv, env, cwd, user, false).map(|(process, _)| process)
    }

    /// Like [`KernelProcess::spawn`], with the [`Pipes`] to talk over.
    pub fn spawn_piped(
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
        user: Option<&KernelUser>,
    ) -> std::io::Result<(Self, Pipes)> {
        let (process, pipes) = Self::start(argv, env, cwd, user, true)?;
        let pipes = pipes.ok_or_else(|| std::io::Error::other("kernel pipes missing"))?;
        Ok((process, pipes))
    }

    fn start(
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
        user: Option<&KernelUser>,
        piped: bool,
    ) -> std::io::Result<(Self, Option<Pipes>)> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty kernel argv"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .process_group(0)
            // The watcher task below reaps the child; kill_on_drop would only SIGKILL the
            // leader, while `kill` takes the whole group.
            .kill_on_drop(false);
        let mut readers = None;
        if piped {
            let (protocol_tx, protocol) = pipe::pipe()?;
            let (stdout_tx, stdout) = pipe::pipe()?;
            let (stderr_tx, stderr) = pipe::pipe()?;
            // Blocking in the kernel, as an inherited stdout usually is.
            let protocol_tx = protocol_tx.into_blocking_fd()?;
            cmd.stdin(Stdio::piped())
                .stdout(stdout_tx.into_blocking_fd()?)
                .stderr(stderr_tx.into_blocking_fd()?);
            // SAFETY: the closure runs between fork and exec and only calls dup2 or fcntl on
            // a descriptor opened before the fork.
            unsafe { cmd.pre_exec(move || as_protocol_fd(&protocol_tx)) };
            readers = Some((protocol, stdout, stderr));
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
        }
        if let Some(user) = user.cloned() {
            // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
            // system calls (setgroups, setgid, setuid) on data prepared before the fork.
            // std's `uid()`/`gid()` are not used because they drop supplementary groups after
            // any closure could set them.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(user.groups.len() as _, user.groups.as_ptr()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("spawned kernel has no pid"))?;

        let pipes = match (child.stdin.take(), readers) {
            (Some(stdin), Some((protocol, stdout, stderr))) => Some(Pipes {
                stdin,
                protocol,
                stdout,
                stderr,
            }),
            _ => None,
        };
        let stderr = StderrTail::default();
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(pid, kernel_stderr = %line);
                    tail.record(&line);
                }
            });
        }

        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("wait failed: {e}"),
            };
            tracing::info!(pid, status = %how, "kernel process exited");
            let _ = tx.send(Some(how));
        });

        Ok((
            KernelProcess {
                pid,
                exited,
                stderr,
            },
            pipes,
        ))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Resolves once the process has exited, with how it ended.
    pub async fn wait(&self) -> String {
        let mut rx = self.exited.clone();
        loop {
            if let Some(how) = rx.borrow_and_update().clone() {
                return how;
            }
            if rx.changed().await.is_err() {
                return "exit status unknown".into();
            }
        }
    }

    /// The last lines the kernel wrote to stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.lines()
    }

    /// Where a piped kernel's stderr is to be recorded by the reader of its [`Pipes`].
    pub fn stderr_recorder(&self) -> StderrTail {
        self.stderr.clone()
    }

    /// SIGKILLs the process group and every descendant of the kernel, wherever its group.
    pub fn kill_tree(&self) -> std::io::Result<()> {
        let below = descendants(self.pid);
        let result = self.signal_group(libc::SIGKILL);
        for pid in below {
            // SAFETY: plain kill(2) of a pid read from /proc just now; ESRCH is harmless.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        result
    }

    /// Sends `signal` to the whole process group. A group that is already gone is not an
    /// error: kill is idempotent.
    pub fn signal_group(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: kill(2) with a negative pid addresses the group we created at spawn.
        if unsafe { libc::kill(-self.pid, signal) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        }
    }
}

impl Drop for KernelProcess {
    fn drop(&mut self) {
        // Unconditionally: the leader may be gone while its children (a user's background
        // job) still hold the group.
        if let Err(e) = self.kill_tree() {
            tracing::warn!(pid = self.pid, error = %e, "killing dropped kernel");
        }
    }
}

/// Makes `fd` the child's [`PROTOCOL_FD`], open across exec. Runs between fork and exec.
fn as_protocol_fd(fd: &OwnedFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: dup2 and fcntl on a descriptor we own; both are async-signal-safe. dup2 onto
    // itself would keep FD_CLOEXEC, hence the fcntl when the pipe already is fd 3.
    let done = unsafe {
        if fd == PROTOCOL_FD {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, PROTOCOL_FD)
        }
    };
    if done < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every process below `root`, from /proc. Some kernels start children in their own session
/// (bash_kernel runs bash on a pty, under setsid), which the process group does not reach.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces; the ppid is the second
            // field after it.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                todo.push(pid);
            }
        }
    }
    found
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_exit_and_stderr_and_kills_group() {
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        let argv: Vec<String> = ["/bin/sh", "-c", "echo oops >&2; exit 3"]
            .map(String::from)
            .to_vec();
        let p = KernelProcess::spawn(&argv, &env, Path::new("/"), None).expect("spawn");
        assert_eq!(p.wait().await, "exit status 3");
        // The stderr reader may finish just after the exit is seen.
        for _ in 0..50 {
            if !p.stderr_tail().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(p.stderr_tail(), ["oops"]);

        let argv: Vec<String> = ["/bin/sh", "-c", "sleep 100 & sleep 100"]
            .map(String::from)
            .to_vec();
        let p = KernelProcess::spawn(&argv, &env, Path::new("/"), None).expect("spawn");
        assert_eq!(p.exit_status(), None);
        p.kill_tree().expect("kill");
        assert_eq!(p.wait().await, "killed by signal 9");
        // Killing again is fine.
        p.kill_tree().expect("kill again");
    }

    #[tokio::test]
    async fn runs_as_the_given_user() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let nobody = KernelUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65533],
            home: "/".into(),
        };
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        let argv: Vec<String> = [
            "/bin/sh",
            "-c",
            r#"[ "$(id -u):$(id -g):$(id -G)" = "65534:65534:65534 65533" ] || { id >&2; exit 1; }"#,
        ]
        .map(String::from)
        .to_vec();
        let p = KernelProcess::spawn(&argv, &env, Path::new("/"), Some(&nobody)).expect("spawn");
        let status = p.wait().await;
        assert_eq!(status, "exit status 0", "{:?}", p.stderr_tail());
    }

    #[tokio::test]
    async fn kill_tree_reaches_children_in_other_sessions() {
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        let argv: Vec<String> = ["/bin/sh", "-c", "setsid sleep 100 & echo $!; wait"]
            .map(String::from)
            .to_vec();
        let p = KernelProcess::spawn(&argv, &env, Path::new("/"), None).expect("spawn");
        let mut child = Vec::new();
        for _ in 0..100 {
            child = descendants(p.pid());
            if !child.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(child.len(), 1, "{child:?}");
        p.kill_tree().expect("kill");
        p.wait().await;
        for _ in 0..100 {
            // Gone, or a zombie waiting for init.
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child[0]));
            if stat.map_or(true, |s| s.contains(") Z ")) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("child {} survived", child[0]);
    }
}
