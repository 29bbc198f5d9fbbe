//! The control plane's calls to a sandbox's agent: envd's `/init`, made once a sandbox
//! is up and before it is handed to the user; silo's `/silo/journal`, which the node
//! collects into the sandbox's log; and envd's process list, asked before a doze.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use silo_protocol::envd::{Activity, InitRequest, JournalPage};

const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// For the node's own questions (journal, processes): a sandbox too slow to answer is
/// asked again next round.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// With a start command, `/init` also waits for the template's ready command (which
/// the agent gives up on after two minutes).
const INIT_WITH_START_TIMEOUT: Duration = Duration::from_secs(130);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("request to the agent failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("agent answered {status}: {body}")]
    Status {
        status: hyper::StatusCode,
        body: String,
    },
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the saved access token is not a valid header value")]
    InvalidToken,
    #[error("agent's answer is not what silo expects")]
    Body(#[source] serde_json::Error),
}

/// envd's per-sandbox token header.
const ACCESS_TOKEN_HEADER: &str = "x-access-token";

#[derive(Clone)]
pub struct AgentClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for AgentClient {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentClient {
    pub fn new() -> AgentClient {
        AgentClient {
            // No idle connections: one left open to a sandbox would be reset inside its
            // checkpoint at the next pause (see sandbox::pause).
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// Configure the agent; `current_token` is the token it already holds (an agent
    /// restored from a snapshot), which it wants before it takes a new one.
    pub async fn init(
        &self,
        agent: SocketAddr,
        init: &InitRequest,
        current_token: Option<&str>,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_vec(init).expect("init body serializes");
        let mut req = hyper::Request::post(format!("http://{agent}/init"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = current_token {
            req = req.header(ACCESS_TOKEN_HEADER, token);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| AgentError::InvalidToken)?;
        let timeout = if init.start_cmd.is_some()
            || init.ready_cmd.is_some()
            || init.wait_for_kernels == Some(true)
        {
            INIT_WITH_START_TIMEOUT
        } else {
            INIT_TIMEOUT
        };
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| AgentError::Timeout(timeout))?
            .map_err(AgentError::Request)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(AgentError::Status { status, body })
    }

    /// What runs in the sandbox besides the agent (see silo-agent's `activity`).
    pub async fn activity(
        &self,
        agent: SocketAddr,
        token: Option<&str>,
    ) -> Result<Activity, AgentError> {
        self.get_json(agent, token, "/silo/activity").await
    }

    /// The journal entries after `after` (see silo-agent's `journal`).
    pub async fn journal(
        &self,
        agent: SocketAddr,
        token: Option<&str>,
        after: u64,
    ) -> Result<JournalPage, AgentError> {
        self.get_json(agent, token, &format!("/silo/journal?after={after}"))
            .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        agent: SocketAddr,
        token: Option<&str>,
        path: &str,
    ) -> Result<T, AgentError> {
        let mut req = hyper::Request::get(format!("http://{agent}{path}"));
        if let Some(token) = token {
            req = req.header(ACCESS_TOKEN_HEADER, token);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|_| AgentError::InvalidToken)?;
        self.json(req).await
    }

    /// Send `req`, and read a JSON answer within [`QUERY_TIMEOUT`].
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<T, AgentError> {
        let answer = async {
            let resp = self.http.request(req).await.map_err(AgentError::Request)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if !status.is_success() {
                let body = String::from_utf8_lossy(&body).into_owned();
                return Err(AgentError::Status { status, body });
            }
            serde_json::from_slice(&body).map_err(AgentError::Body)
        };
        tokio::time::timeout(QUERY_TIMEOUT, answer)
            .await
            .map_err(|_| AgentError::Timeout(QUERY_TIMEOUT))?
    }
}
