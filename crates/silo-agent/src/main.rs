//! silo-agent: the first process of every silo sandbox. It serves E2B's envd protocol on
//! port 49983, so the official SDKs can run commands and move files in the sandbox:
//!
//! - [`process`]: `process.Process` RPCs (start, connect, input, signals, pty).
//! - [`filesystem`]: `filesystem.Filesystem` RPCs (stat, list, move, remove, watch).
//! - [`files`]: `GET/POST /files`; [`init`]: `/init`, `/envs`, `/health`; [`metrics`].
//! - [`rpc`]: Connect framing for handlers; [`error`]: the one error type and its wire
//!   forms; [`auth`]: access token, signatures and the calling user.
//!
//! As PID 1 it also reaps every orphan in the sandbox ([`process::Reaper`]).

mod app;
mod auth;
mod config;
mod error;
mod files;
mod filesystem;
mod init;
mod metrics;
mod process;
mod rpc;
mod state;
mod users;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::process::Reaper;
use crate::state::AppState;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log)?)
        .with_writer(std::io::stderr)
        .init();

    // Before anything can start a child: the reaper must see every SIGCHLD.
    let reaper = Reaper::start()?;
    let state = AppState::new(&config, reaper);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %config.listen,
        envd_version = silo_protocol::envd::ENVD_VERSION,
        "silo-agent serving"
    );

    // As PID 1 the kernel delivers no default-action signals, so stop explicitly. Open
    // streams would hold a graceful shutdown forever; the sandbox is going away anyway.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        served = axum::serve(listener, app::router(state)) => served?,
        _ = term.recv() => tracing::info!("SIGTERM, exiting"),
        _ = int.recv() => tracing::info!("SIGINT, exiting"),
    }
    Ok(())
}
