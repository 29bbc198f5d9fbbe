//! `silo mcp`: one MCP session over stdin/stdout, for clients that start the server as
//! a subprocess (Claude Desktop, the `mcp` Python client's `stdio_client`). The session
//! ends when the client closes stdin or the process gets SIGTERM/SIGINT; either way its
//! sandboxes are killed before the process exits.

use rmcp::ServiceExt;
use silo_client::Client;

use crate::session::Config;
use crate::tools::SiloMcp;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("the MCP session over stdio could not start")]
    Start(#[source] std::io::Error),
    #[error("cannot watch for SIGTERM")]
    Signal(#[source] std::io::Error),
}

/// Serve one session on stdin/stdout until the client goes, then kill its sandboxes.
pub async fn serve(client: Client, config: Config) -> Result<(), StdioError> {
    use tokio::signal::unix::{signal, SignalKind};

    let server = SiloMcp::new(client, config);
    let mut term = signal(SignalKind::terminate()).map_err(StdioError::Signal)?;
    let running = server
        .clone()
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(|err| StdioError::Start(std::io::Error::other(err)));
    match running {
        Ok(running) => {
            let cancel = running.cancellation_token();
            tokio::select! {
                quit = running.waiting() => {
                    tracing::info!(reason = ?quit, "MCP client went");
                }
                _ = term.recv() => cancel.cancel(),
                _ = tokio::signal::ctrl_c() => cancel.cancel(),
            }
            server.close().await;
            Ok(())
        }
        Err(err) => {
            server.close().await;
            Err(err)
        }
    }
}
