//! `GET /sandboxes/{id}/terminal` (WebSocket): a live terminal in a sandbox, for the
//! dashboard (or any WebSocket client, e.g. `websocat`).
//!
//! The server starts a login shell on a PTY through the sandbox's agent (envd's
//! `process.Process/Start` with `pty`, a Connect stream) and relays:
//! - binary or text frames from the client → the shell's input (`SendInput`), except a
//!   text frame `{"resize":{"cols":C,"rows":R}}`, which resizes the PTY (`Update`);
//! - the PTY's output → binary frames; the socket closes when the shell exits, with
//!   its exit code in the close reason.
//!
//! Closing the socket kills the shell. Browsers cannot set headers on a WebSocket, so the
//! API key may come as `?api_key=` here (checked like `X-API-Key`).

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use silo_protocol::connect::{self, Decoder, FLAG_END_STREAM};
use silo_protocol::envd::{
    Base64Bytes, DataEvent, ProcessConfig, ProcessEvent, ProcessEventResponse, ProcessInput,
    ProcessSelector, Pty, PtySize, SendInputRequest, SendSignalRequest, Signal, StartRequest,
    UpdateRequest,
};

use crate::error::ApiError;
use crate::extract::{ApiQuery, SandboxPath};
use crate::AppState;

#[derive(Debug, serde::Deserialize)]
pub struct TerminalQuery {
    api_key: Option<String>,
    #[serde(default = "default_cols")]
    cols: u32,
    #[serde(default = "default_rows")]
    rows: u32,
}

fn default_cols() -> u32 {
    80
}

fn default_rows() -> u32 {
    24
}

#[derive(serde::Deserialize)]
struct Resize {
    resize: PtySize,
}

/// The sandbox's agent, called directly (not through the proxy): the server knows where
/// it is and holds its token.
#[derive(Clone)]
struct Agent {
    http: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    token: Option<String>,
}

impl Agent {
    fn request(&self, rpc: &str, content_type: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::post(format!("http://{}/{rpc}", self.addr))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header("connect-protocol-version", "1");
        if let Some(token) = &self.token {
            req = req.header("x-access-token", token);
        }
        req.body(Full::new(body))
            .expect("a request of a method, a URI and fixed headers is valid")
    }

    /// A unary Connect call; its answer is not needed.
    async fn call<T: serde::Serialize>(&self, rpc: &str, msg: &T) -> Result<(), String> {
        let body = Bytes::from(serde_json::to_vec(msg).expect("requests serialize"));
        let resp = self
            .http
            .request(self.request(rpc, connect::CONTENT_TYPE_UNARY, body))
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            return Ok(());
        }
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        Err(String::from_utf8_lossy(&body.unwrap_or_default()).into_owned())
    }
}

/// `GET /sandboxes/{id}/terminal?cols&rows[&api_key]`.
pub async fn terminal(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiQuery(query): ApiQuery<TerminalQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let key = headers
        .get(crate::API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(query.api_key.as_deref())
        .unwrap_or_default();
    if !app.manager.catalog().is_valid_api_key(key)? {
        return Err(ApiError::Unauthorized);
    }
    let rec = app.manager.get(&id)?;
    let token = rec.envd_access_token.clone();
    let route = app.manager.route(rec, silo_protocol::ports::ENVD).await?;
    let agent = Agent {
        http: Client::builder(TokioExecutor::new()).build_http(),
        addr: route.addr,
        token,
    };
    let size = PtySize {
        cols: query.cols.clamp(2, 1000),
        rows: query.rows.clamp(2, 1000),
    };
    Ok(ws.on_upgrade(move |socket| async move {
        tokio::select! {
            () = relay(socket, agent, size) => {}
            // A pause or kill ends the session.
            () = route.traffic.cancelled() => {}
        }
    }))
}

async fn relay(socket: WebSocket, agent: Agent, size: PtySize) {
    let (mut to_client, mut from_client) = socket.split();
    let start = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into()],
            envs: [("TERM".to_owned(), "xterm-256color".to_owned())].into(),
            cwd: None,
        },
        pty: Some(Pty { size: Some(size) }),
        tag: None,
        stdin: None,
    };
    let req = agent.request(
        "process.Process/Start",
        connect::CONTENT_TYPE_STREAM,
        connect::encode_message(&start),
    );
    let resp = match agent.http.request(req).await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            return close(
                &mut to_client,
                &format!("the agent answered {}", resp.status()),
            )
            .await
        }
        Err(err) => {
            return close(&mut to_client, &format!("the agent is unreachable: {err}")).await
        }
    };
    let mut output = resp.into_body();
    let mut decoder = Decoder::default();
    let mut pid: Option<u32> = None;
    loop {
        tokio::select! {
            frame = output.frame() => {
                let Some(Ok(frame)) = frame else {
                    return close(&mut to_client, "the shell's stream ended").await;
                };
                let Ok(data) = frame.into_data() else { continue };
                decoder.push(&data);
                while let Ok(Some(envelope)) = decoder.next_envelope() {
                    if envelope.flag & FLAG_END_STREAM != 0 {
                        return close(&mut to_client, "the shell's stream ended").await;
                    }
                    let Ok(msg) = serde_json::from_slice::<ProcessEventResponse>(&envelope.payload) else {
                        continue;
                    };
                    match msg.event {
                        ProcessEvent::Start { pid: started } => pid = Some(started),
                        ProcessEvent::Data(DataEvent::Pty(Base64Bytes(bytes))) => {
                            let sent = to_client.send(Message::Binary(bytes.into())).await;
                            if sent.is_err() {
                                return kill(&agent, pid).await;
                            }
                        }
                        ProcessEvent::End(end) => {
                            let reason = format!("the shell exited with code {}", end.exit_code);
                            return close(&mut to_client, &reason).await;
                        }
                        _ => {}
                    }
                }
            }
            message = from_client.next() => {
                let Some(pid) = pid else { continue };
                let selector = ProcessSelector::Pid(pid);
                let sent = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return kill(&agent, Some(pid)).await,
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Resize>(&text) {
                        Ok(Resize { resize }) => agent.call("process.Process/Update", &UpdateRequest {
                            process: selector,
                            pty: Some(Pty { size: Some(resize) }),
                        }).await,
                        Err(_) => input(&agent, selector, text.as_bytes()).await,
                    },
                    Some(Ok(Message::Binary(bytes))) => input(&agent, selector, &bytes).await,
                    Some(Ok(_)) => Ok(()),
                };
                if let Err(err) = sent {
                    tracing::debug!(error = %err, "terminal input not delivered");
                }
            }
        }
    }
}

async fn input(agent: &Agent, process: ProcessSelector, bytes: &[u8]) -> Result<(), String> {
    let req = SendInputRequest {
        process,
        input: ProcessInput::Pty(Base64Bytes(bytes.to_vec())),
    };
    agent.call("process.Process/SendInput", &req).await
}

/// The client went away: end its shell (and what runs in it).
async fn kill(agent: &Agent, pid: Option<u32>) {
    if let Some(pid) = pid {
        let req = SendSignalRequest {
            process: ProcessSelector::Pid(pid),
            signal: Signal::Sigkill,
        };
        if let Err(err) = agent.call("process.Process/SendSignal", &req).await {
            tracing::debug!(error = %err, "terminal shell not killed; it may have exited");
        }
    }
}

async fn close(to_client: &mut futures_util::stream::SplitSink<WebSocket, Message>, reason: &str) {
    let frame = CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        // A close reason is at most 123 bytes.
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    let _ = to_client.send(Message::Close(Some(frame))).await;
}
