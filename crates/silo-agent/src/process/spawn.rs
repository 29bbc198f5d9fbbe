//! Turning a validated start request into a running child: user, environment, working
//! directory, and stdio as pipes or a pseudo-terminal.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use silo_protocol::envd::PtySize;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

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
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd);

    let uid = spec.user.uid;
    let gid = spec.user.gid;
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    // Only root can switch users; an agent run unprivileged (development) runs everything
    // as itself.
    // SAFETY: geteuid has no preconditions.
    let switch_user = unsafe { libc::geteuid() } == 0;
    let with_pty = spec.pty.is_some();
    let inherit_fds = spec.inherit_fds.clone();

    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls on data prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Own session and process group: signals reach the whole job, and a pty
            // becomes the controlling terminal.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_pty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if switch_user {
                become_user(&groups, gid, uid)?;
            }
            for &fd in &inherit_fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    reaper
        .spawn(|| {
            let mut master = None;
            if let Some(size) = &spec.pty {
                let (m, slave) = pty::open(size)?;
                cmd.stdin(Stdio::from(slave.try_clone()?))
                    .stdout(Stdio::from(slave.try_clone()?))
                    .stderr(Stdio::from(slave));
                master = Some(m);
            } else {
                cmd.stdin(if spec.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
            // The slave copies held by `cmd` are closed when `cmd` is dropped below, so
            // the master sees EOF once the child's side is gone.
            let child = cmd.spawn()?;
            let pid = child.id();
            Ok(((child, master), pid))
        })
        .and_then(|((mut child, master), exit)| {
            // We never call `child.wait()`: the reaper owns waiting.
            let stdin = child
                .stdin
                .take()
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()?;
            let stdout = child
                .stdout
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose()?;
            let stderr = child
                .stderr
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose()?;
            Ok(Spawned {
                pid: child.id(),
                exit,
                stdin,
                stdout,
                stderr,
                pty: master.map(PtyMaster::new).transpose()?,
            })
        })
}

/// In a forked child before exec: drop to `uid`/`gid` with supplementary `groups`, groups
/// first (they cannot be changed once root is gone). Only async-signal-safe calls.
pub(crate) fn become_user(groups: &[libc::gid_t], gid: u32, uid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on values owned by the caller; `groups` outlives the call.
    let failed = unsafe {
        libc::setgroups(groups.len(), groups.as_ptr()) < 0
            || libc::setgid(gid) < 0
            || libc::setuid(uid) < 0
    };
    if failed {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
