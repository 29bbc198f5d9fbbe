//! The privileged side: a Unix socket the agent (root) serves, one task per `sudo`.
//!
//! For each connection: read the [`Request`] with the caller's stdio descriptors and its
//! identity (`SCM_CREDENTIALS`, checked by the kernel, see [`scm`]), decide
//! ([`policy`]), start the command through the [`Reaper`], relay the caller's signals to
//! the command's process group, and report how it ended. If the caller goes away before
//! that (killed, say, with its process group by envd), the command is killed too: like
//! sudo's command, it lives no longer than the `sudo` that started it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::policy::{self, Plan, Refusal};
use super::protocol::{self, ClientMessage, Mode, Reply, Request};
use super::scm;
use crate::process::{Child, Credentials, ExecPlan, Reaper, Terminal};
use crate::users::UserDb;

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("prepare the sudo socket at {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind `socket` (world-connectable: the check is per caller) and serve it in the
/// background.
pub fn start(socket: &Path, user_db: UserDb, reaper: Arc<Reaper>) -> Result<(), BrokerError> {
    let err = |source| BrokerError::Socket {
        path: socket.to_owned(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket left by an earlier agent (a restarted sandbox) is stale.
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    tracing::info!(socket = %socket.display(), "sudo broker serving");
    let user_db = Arc::new(user_db);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let user_db = user_db.clone();
                    let reaper = reaper.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, &user_db, &reaper).await {
                            tracing::debug!(error = %e, "sudo connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sudo broker accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn serve(mut stream: UnixStream, user_db: &UserDb, reaper: &Reaper) -> io::Result<()> {
    scm::pass_credentials(stream.as_fd())?;
    let (request, fds, sender) = read_request(&stream).await?;
    let Some(cred) = sender else {
        let text = "the request carried no credentials".to_owned();
        return reply(&mut stream, &Reply::Denied(text)).await;
    };
    let users = user_db.load();
    let caller = match policy::authorize(&users, cred.uid) {
        Ok(caller) => caller,
        Err(refusal) => {
            tracing::info!(uid = cred.uid, pid = cred.pid, "sudo refused");
            return reply(&mut stream, &refusal_reply(refusal)).await;
        }
    };
    if request.mode == Mode::Check {
        return reply(
            &mut stream,
            &Reply::Allowed {
                caller: caller.name,
            },
        )
        .await;
    }
    let Ok::<[OwnedFd; 3], _>([stdin, stdout, stderr]) = fds.try_into() else {
        return reply(
            &mut stream,
            &Reply::Failed("the request must carry stdin, stdout and stderr".into()),
        )
        .await;
    };
    let plan = match policy::plan(&users, &caller, cred.gid, &request, is_executable) {
        Ok(plan) => plan,
        Err(refusal) => return reply(&mut stream, &refusal_reply(refusal)).await,
    };
    tracing::info!(
        caller = %caller.name,
        uid = plan.uid,
        command = %plan.program.display(),
        "sudo"
    );
    let (pid, exit) = match spawn(&plan, [stdin, stdout, stderr], reaper) {
        Ok(started) => started,
        Err(e) => {
            let text = format!("unable to execute {}: {e}", plan.program.display());
            return reply(&mut stream, &Reply::Failed(text)).await;
        }
    };
    reply(&mut stream, &Reply::Started { pid }).await?;
    relay(stream, pid, exit).await
}

/// Forward the caller's signals until the command ends, then report how.
async fn relay(
    mut stream: UnixStream,
    pid: u32,
    mut exit: tokio::sync::oneshot::Receiver<libc::c_int>,
) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let mut caller_gone = false;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status,
            read = stream.read(&mut chunk), if !caller_gone => match read {
                Ok(0) | Err(_) => {
                    caller_gone = true;
                    kill(pid, libc::SIGKILL);
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(ClientMessage::Signal(sig)) =
                        protocol::decode::<ClientMessage>(&mut buf).map_err(invalid)?
                    {
                        if super::RELAYED_SIGNALS.contains(&sig) {
                            kill(pid, sig);
                        }
                    }
                }
            },
        }
    };
    let Ok(status) = status else {
        return Ok(()); // the reaper is gone: the agent is shutting down
    };
    let (code, signal) = if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (Some(libc::WEXITSTATUS(status)), None)
    };
    if caller_gone {
        return Ok(());
    }
    reply(&mut stream, &Reply::Exited { code, signal }).await
}

/// The command's process group (it leads its own session), or the process alone if the
/// group is gone.
fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// The request frame, with the descriptors that came with it and its sender. The sender
/// is that of the first bytes; a later part sent by anyone else is refused.
async fn read_request(
    stream: &UnixStream,
) -> io::Result<(Request, Vec<OwnedFd>, Option<scm::Sender>)> {
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    let mut sender = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let got = stream
            .async_io(Interest::READABLE, || {
                scm::recv_with_fds(stream.as_fd(), &mut chunk)
            })
            .await?;
        let n = got.len;
        fds.extend(got.fds);
        if n > 0 {
            match (sender, got.sender) {
                (None, first) if buf.is_empty() => sender = first,
                (known, this) if known != this => {
                    return Err(invalid("a request from two senders"));
                }
                _ => {}
            }
        }
        if fds.len() > scm::MAX_FDS {
            return Err(invalid("too many file descriptors"));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a whole request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = protocol::decode::<Request>(&mut buf).map_err(invalid)? {
            return Ok((request, fds, sender));
        }
    }
}

async fn reply(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    stream.write_all(&protocol::encode(reply)).await
}

fn refusal_reply(refusal: Refusal) -> Reply {
    match refusal {
        Refusal::Denied(text) => Reply::Denied(text),
        Refusal::Failed(text) => Reply::Failed(text),
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A regular file with an execute bit, as root sees it.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Start the plan with the caller's stdio, in a new session, as the target user.
fn spawn(
    plan: &Plan,
    stdio: [OwnedFd; 3],
    reaper: &Reaper,
) -> io::Result<(u32, tokio::sync::oneshot::Receiver<libc::c_int>)> {
    let argv = std::iter::once(plan.arg0.as_str())
        .chain(plan.args.iter().map(String::as_str))
        .collect();
    let exec = ExecPlan::new(Child {
        program: &plan.program,
        argv,
        env: &plan.env,
        cwd: &plan.cwd,
        stdio: stdio.each_ref().map(|fd| fd.as_raw_fd()),
        terminal: Terminal::TakeIfFree,
        credentials: Credentials::if_root(plan.uid, plan.gid, &plan.groups),
        inherit_fds: &[],
    })?;
    // The caller's descriptors are closed here once the child has its copies.
    reaper.spawn(|| exec.spawn().map(|pid| (pid, pid)))
}
