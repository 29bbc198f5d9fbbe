//! `silo mcp`: the MCP server over stdio, a client of a running `silo serve` (like
//! `silo sandbox`). stdout carries the protocol, so logs go to stderr only.

use std::process::ExitCode;
use std::time::Duration;

use silo_client::Client;

use crate::cli::McpArgs;

pub async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let client = Client::new(&args.client.api_url, args.client.api_key()?);
    let config = silo_mcp::Config {
        template: args.template,
        sandbox_timeout: Duration::from_secs(args.sandbox_timeout),
    };
    silo_mcp::stdio::serve(client, config).await?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SILO_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,silo_mcp=info,rmcp=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
