//! The streamable-HTTP endpoint `silo serve` mounts at `/mcp`, behind its API-key check.
//!
//! Each MCP session (the `Mcp-Session-Id` the `initialize` handshake hands out) gets its
//! own [`SiloMcp`]; when the session ends (the client's `DELETE`, its idle timeout, or
//! the server's shutdown) the handler is dropped, and with it go the sandboxes the
//! session created. Tools call the server they run in over loopback, with the API key of
//! the request that called them (ADR 0014).

use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use silo_client::Client;
use tokio_util::sync::CancellationToken;

use crate::session::Config;
use crate::tools::{Backend, SiloMcp};

/// The tower service to mount.
pub type Service = StreamableHttpService<SiloMcp, LocalSessionManager>;

/// How the endpoint reaches its own server, and how its sessions behave.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The server's own API, as the tools call it (`http://127.0.0.1:PORT`).
    pub loopback_url: String,
    /// The sessions' sandboxes.
    pub session: Config,
    /// A session with no request for this long is closed (and its sandboxes killed).
    pub idle_timeout: Duration,
    /// Cancelled when the server stops: open sessions and their streams end, so the
    /// server's graceful shutdown does not wait on them.
    pub shutdown: CancellationToken,
}

pub fn service(config: HttpConfig) -> Service {
    let client = Client::new(&config.loopback_url, "");
    let session = config.session;
    let mut sessions = LocalSessionManager::default();
    sessions.session_config = {
        let mut c = SessionConfig::default();
        c.keep_alive = Some(config.idle_timeout);
        c
    };
    // The Host check guards servers that trust whoever reaches them (DNS rebinding into
    // a local server); this endpoint trusts only an API key, like the rest of the API,
    // and is reached under whatever name the server is given.
    let http = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(config.shutdown);
    StreamableHttpService::new(
        move || {
            Ok(SiloMcp::with_backend(
                Backend::PerRequest(client.clone()),
                session.clone(),
            ))
        },
        sessions.into(),
        http,
    )
}
