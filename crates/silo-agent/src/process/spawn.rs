//! Turning a validated start request into a running child: user, environment, working
//! directory, and stdio as pipes or a pseudo-terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use silo_protocol::envd::PtySize;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::exec::{Child, Credentials, ExecPlan, Terminal};
use super::pty::{self, PtyMaster};
use super::reaper::{Reaper, WaitStatus};
use crate::users::User;

/// Everything needed to start one process.
pub struct SpawnSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub user: User,
    pub groups: Vec<u32>,
    pub pty: Option<PtySize>,
    /// Keep a pipe to stdin (otherwise stdin is /dev/null, so reads see EOF).
    pub stdin: bool,
    /// Descriptors the child inherits under the same numbers (the agent opens everything
    /// close-on-exec).
    pub inherit_fds: Vec<RawFd>,
}

/// The parent's ends of a started child.
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<WaitStatus>,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    pub pty: Option<PtyMaster>,
}

pub fn spawn(spec: SpawnSpec, reaper: &Reaper) -> io::Result<Spawned> {
    // The parent's and the child's ends of stdin, stdout and stderr (all close-on-exec;
    // the child's become its 0, 1 and 2, which clears the flag there).
    let mut master = None;
    let (child_stdio, stdin, stdout, stderr): ([OwnedFd; 3], _, _, _) = match &spec.pty {
        Some(size) => {
            let (m, slave) = pty::open(size)?;
            master = Some(m);
            (
                [slave.try_clone()?, slave.try_clone()?, slave],
                None,
                None,
                None,
            )
        }
        None => {
            let (stdin_read, stdin_write) = if spec.stdin {
                let (r, w) = pipe()?;
                (r, Some(w))
            } else {
                (OwnedFd::from(std::fs::File::open("/dev/null")?), None)
            };
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            (
                [stdin_read, stdout_write, stderr_write],
                stdin_write,
                Some(stdout_read),
                Some(stderr_read),
            )
        }
    };

    let credentials = Credentials::if_root(spec.user.uid, spec.user.gid, &spec.groups);
    let plan = ExecPlan::new(Child {
        program: Path::new(&spec.cmd),
        argv: std::iter::once(spec.cmd.as_str())
            .chain(spec.args.iter().map(String::as_str))
            .collect(),
        env: &spec.env,
        cwd: &spec.cwd,
        stdio: child_stdio.each_ref().map(|fd| fd.as_raw_fd()),
        terminal: if spec.pty.is_some() {
            Terminal::Take
        } else {
            Terminal::None
        },
        credentials,
        inherit_fds: &spec.inherit_fds,
    })?;
    let (pid, exit) = reaper.spawn(|| plan.spawn().map(|pid| (pid, pid)))?;
    // The child has its copies now; the parent keeps only its own ends, so readers see
    // EOF once the child's side is gone.
    drop(child_stdio);
    Ok(Spawned {
        pid,
        exit,
        stdin: stdin.map(pipe::Sender::from_owned_fd).transpose()?,
        stdout: stdout.map(pipe::Receiver::from_owned_fd).transpose()?,
        stderr: stderr.map(pipe::Receiver::from_owned_fd).transpose()?,
        pty: master.map(PtyMaster::new).transpose()?,
    })
}

/// A pipe, both ends close-on-exec: (read, write).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
