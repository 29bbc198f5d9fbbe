//! `Start`: spawn a process and stream its events (start, data..., end).

use std::sync::Arc;

use axum::response::Response;
use silo_protocol::envd::{
    ProcessConfig, ProcessEvent, ProcessEventResponse, PtySize, StartRequest,
};

use super::spawn::{spawn, SpawnSpec};
use super::{output, Process};
use crate::auth::RpcUser;
use crate::error::Error;
use crate::filesystem::path::resolve as resolve_path;
use crate::rpc::{self, StreamOptions, StreamRequest};
use crate::state::AppState;

/// The PATH a process gets unless the request or `/init` sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub async fn start(
    state: axum::extract::State<AppState>,
    RpcUser(username): RpcUser,
    opts: StreamOptions,
    StreamRequest(req): StreamRequest<StartRequest>,
) -> Response {
    match launch(&state, username.as_deref(), opts, req).await {
        Ok(rx) => rpc::server_stream(responses(rx), keepalive(opts), opts.timeout),
        Err(e) => rpc::stream_error(e),
    }
}

pub(super) fn keepalive(
    opts: StreamOptions,
) -> Option<(std::time::Duration, ProcessEventResponse)> {
    opts.keepalive.map(|every| {
        (
            every,
            ProcessEventResponse {
                event: ProcessEvent::Keepalive {},
            },
        )
    })
}

/// Each event of `rx` in its response message, mapped as the response body reads it.
pub(super) fn responses(
    rx: tokio::sync::mpsc::Receiver<Result<ProcessEvent, Error>>,
) -> impl futures_util::Stream<Item = Result<ProcessEventResponse, Error>> + Send + Unpin + 'static
{
    use futures_util::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|event| event.map(|event| ProcessEventResponse { event }))
}

/// A failed start as the client sees it. EAGAIN is the sandbox's task limit (RLIMIT_NPROC,
/// per user, root and the agent included): say so, and what helps.
fn spawn_error(cmd: &str, e: std::io::Error) -> Error {
    if e.raw_os_error() != Some(libc::EAGAIN) {
        return Error::io(format!("start {cmd:?}"), e);
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) } == 0;
    let tasks = if known && limit.rlim_cur != libc::RLIM_INFINITY {
        format!("its limit of {} tasks per user", limit.rlim_cur)
    } else {
        "its task limit".to_owned()
    };
    Error::FailedPrecondition(format!(
        "start {cmd:?}: the sandbox is at {tasks} (root's count includes the sandbox's \
         agent); end some processes, or kill the sandbox"
    ))
}

/// `cmd args...`, an argument quoted when it has spaces or quotes, for the journal.
fn command_line(cmd: &str, args: &[String]) -> String {
    std::iter::once(cmd)
        .chain(args.iter().map(String::as_str))
        .map(|word| {
            if word.is_empty() || word.contains([' ', '\t', '\n', '"', '\'']) {
                format!("{word:?}")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A NUL byte cannot reach a program (exec takes C strings): the caller's argument is
/// wrong. Checked here, before a warm shell could take the command as text.
fn refuse_nul(cmd: &str, args: &[String], env: &[(String, String)]) -> Result<(), Error> {
    let what = if cmd.contains('\0') {
        "process.cmd".to_owned()
    } else if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        format!("process.args[{i}]")
    } else if let Some((k, _)) = env
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        format!("environment variable {k:?}")
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "{what} contains a NUL byte"
    )))
}

/// Who runs what, where, with which environment: a start request checked against the
/// account files and the `/init` settings.
pub(super) fn resolve(
    state: &AppState,
    username: Option<&str>,
    process: &ProcessConfig,
    pty: Option<PtySize>,
    stdin: bool,
) -> Result<SpawnSpec, Error> {
    let (user, users) = state.user(username)?;
    let settings = state.settings();
    if process.cmd.is_empty() {
        return Err(Error::InvalidArgument("process.cmd is empty".into()));
    }

    let cwd = resolve_path(
        process.cwd.as_deref().unwrap_or_default(),
        &user.home,
        settings.default_workdir.as_deref(),
    )?;
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "cwd {} is not a directory",
                cwd.display()
            )))
        }
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "cwd {} is not usable: {e}",
                cwd.display()
            )))
        }
    }

    // PATH, HOME, USER, LOGNAME, then /init's variables, then the request's.
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), user.home.to_string_lossy().into_owned()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
    ];
    for (k, v) in settings.env_vars.iter().chain(process.envs.iter()) {
        env.retain(|(existing, _)| existing != k);
        env.push((k.clone(), v.clone()));
    }
    refuse_nul(&process.cmd, &process.args, &env)?;

    Ok(SpawnSpec {
        cmd: process.cmd.clone(),
        args: process.args.clone(),
        env,
        cwd,
        groups: users.group_ids(&user),
        user,
        pty,
        stdin,
        inherit_fds: Vec::new(),
    })
}

pub(super) async fn launch(
    state: &AppState,
    username: Option<&str>,
    opts: StreamOptions,
    req: StartRequest,
) -> Result<tokio::sync::mpsc::Receiver<Result<ProcessEvent, Error>>, Error> {
    let pty_size = req.pty.as_ref().map(|p| p.size.clone().unwrap_or_default());
    // Without the field (clients from before envd 0.3.0) stdin is a pipe, as with envd;
    // the SDKs always send it, `false` unless asked, so their commands can start warm.
    let stdin = req.stdin.unwrap_or(true);
    let spec = resolve(state, username, &req.process, pty_size, stdin)?;
    let (warm, rewarm) = state.processes.warm.take(&spec).await;
    let spawned = match warm {
        Some(spawned) => spawned,
        None => {
            spawn(spec, &state.processes.reaper).map_err(|e| spawn_error(&req.process.cmd, e))?
        }
    };
    tracing::info!(pid = spawned.pid, cmd = %req.process.cmd, tag = ?req.tag, "process started");
    state.processes.journal.started(
        spawned.pid,
        command_line(&req.process.cmd, &req.process.args),
    );

    let process = Arc::new(Process {
        pid: spawned.pid,
        tag: req.tag.clone(),
        config: req.process,
        stdin: tokio::sync::Mutex::new(spawned.stdin),
        pty: spawned.pty,
        subscribers: Default::default(),
    });
    // Subscribe before any reader runs, so the Start stream misses nothing.
    let rx = process.subscribe()?;
    state.processes.insert(process.clone());
    output::run(
        state.processes.clone(),
        process,
        spawned.stdout,
        spawned.stderr,
        spawned.exit,
        opts.timeout,
        rewarm,
    );
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_the_callers_argument() {
        let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(refuse_nul("/bin/echo", &["a".into()], &env("A", "1")).is_ok());
        for (cmd, args, env) in [
            ("/bin/e\0cho", vec![], env("A", "1")),
            ("/bin/echo", vec!["a".into(), "b\0".into()], env("A", "1")),
            ("/bin/echo", vec![], env("A", "1\0two")),
            ("/bin/echo", vec![], env("A\0", "1")),
        ] {
            let err = refuse_nul(cmd, &args, &env).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        }
    }
}
