//! silo-agent: the first process of every silo sandbox. It serves E2B's envd protocol on
//! port 49983, so the official SDKs can run commands and move files in the sandbox:
//!
//! - [`process`]: `process.Process` RPCs (start, connect, input, signals, pty).
//! - [`filesystem`]: `filesystem.Filesystem` RPCs (stat, list, move, remove, watch).
//! - [`files`]: `GET/POST /files`; [`init`]: `/init`, `/envs`, `/health`; [`metrics`].
//! - [`interpreter`]: the code interpreter on port 49999, when the template has kernels.
//! - [`sudo`]: a sudo broker on a Unix socket, and its client (this binary run as `sudo`).
//! - [`rpc`]: Connect framing for handlers; [`error`]: the one error type and its wire
//!   forms; [`auth`]: access token, signatures and the calling user.
//!
//! As PID 1 it also reaps every orphan in the sandbox ([`process::Reaper`]).

mod activity;
mod app;
mod auth;
mod blocking;
mod config;
mod error;
mod files;
mod filesystem;
mod init;
mod interpreter;
mod journal;
mod metrics;
mod process;
mod rpc;
mod state;
mod sudo;
mod users;

use axum::serve::ListenerExt;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::process::Reaper;
use crate::state::AppState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Started as `sudo` (the template links /usr/bin/sudo here): only the small synchronous
    // client runs, before any runtime or server exists.
    if sudo::invoked_as_sudo(std::env::args_os().next().as_deref()) {
        std::process::exit(sudo::client::main());
    }
    serve()
}

#[tokio::main]
async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log)?)
        .with_writer(std::io::stderr)
        .init();

    // Its threads are made now, while no user process can have filled the task limit.
    blocking::start()?;
    // Before anything can start a child: the reaper must see every SIGCHLD, and children
    // learn which handlers they drop (all of the agent's are installed by then).
    let reaper = Reaper::start()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    process::note_signal_handlers();
    let state = AppState::new(&config, reaper.clone());
    if !config.sudo_socket.as_os_str().is_empty() {
        // Without the broker only sudo fails; the sandbox is still usable.
        let started = sudo::broker::start(&config.sudo_socket, state.user_db.clone(), reaper);
        if let Err(e) = started {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(error = %e, cause = ?cause, "sudo broker not started");
        }
    }
    // Output streams are many small writes: TCP_NODELAY keeps Nagle from delaying them.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await?
        .tap_io(|tcp| drop(tcp.set_nodelay(true)));
    tracing::info!(
        listen = %config.listen,
        envd_version = silo_protocol::envd::ENVD_VERSION,
        "silo-agent serving"
    );

    let interpreter = interpreter::bind(
        state.clone(),
        config.interpreter_listen,
        config.interpreter_user.clone(),
    )
    .await
    .map_err(|err| format!("code interpreter failed: {err}"))?;
    let interpreter = tokio::spawn(async move {
        match interpreter {
            Some(bound) => interpreter::serve(bound).await,
            None => Ok(()),
        }
    });

    // As PID 1 the kernel delivers no default-action signals, so stop explicitly. Open
    // streams would hold a graceful shutdown forever; the sandbox is going away anyway.
    tokio::select! {
        served = axum::serve(listener, app::router(state)) => served?,
        Ok(Err(err)) = interpreter => return Err(format!("code interpreter failed: {err}").into()),
        _ = term.recv() => tracing::info!("SIGTERM, exiting"),
        _ = int.recv() => tracing::info!("SIGINT, exiting"),
    }
    Ok(())
}
