//! `silo`: one binary for the server (`serve`) and its clients (`keys`, `sandbox`,
//! `template`, `mcp`). `main` only parses flags and dispatches; each command lives in its own
//! module.

mod cli;
mod keys;
mod mcp;
mod reaper;
mod sandbox;
mod serve;
mod shell;
mod template;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Serve(_)) {
        match reaper::serve_below_reaper() {
            Ok(None) => {}
            Ok(Some(server_exit)) => return server_exit,
            Err(err) => {
                eprintln!("error: cannot start the server below its reaper: {err}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        cli::Command::Serve(args) => serve::run(args).await,
        cli::Command::Keys(args) => keys::run(args),
        cli::Command::Sandbox(args) => sandbox::run(args).await,
        cli::Command::Template(args) => template::run(args).await,
        cli::Command::Mcp(args) => mcp::run(args).await,
    }
}
