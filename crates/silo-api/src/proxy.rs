//! The sandbox proxy: traffic for a sandbox port arrives on the API's own listener and is
//! forwarded to the sandbox's agent, bodies streamed both ways.
//!
//! A request is sandbox traffic when it names the sandbox either way the SDKs do:
//! - headers `E2b-Sandbox-Id` and `E2b-Sandbox-Port` (mode A, `E2B_SANDBOX_URL`);
//! - Host `{port}-{sandbox id}.{domain}` (mode B, wildcard DNS).

//!
//! An upgrade (WebSocket) is passed through: the sandbox's 101 goes back to the client
//! and the two upgraded connections are spliced.
//!
//! Connections to a sandbox are pooled per sandbox and tied to its traffic token (see
//! `silo_node::sandbox::Route`): when the sandbox pauses, its streams in flight end and
//! its pooled connections close, so none is open when it is checkpointed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use silo_catalog::{SandboxRecord, SandboxState};
use silo_node::sandbox::{InUse, SandboxError};
use silo_protocol::files::{FileOp, FilesQuery};
use silo_protocol::ids::{same_secret, SandboxId};
use silo_protocol::rest::ApiError as WireError;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::AppState;

type ProxyClient = Client<HttpConnector, Body>;

/// The proxy's connection pools, one per sandbox.
#[derive(Clone, Default)]
pub struct Upstreams {
    pools: Arc<Mutex<HashMap<SandboxId, Pool>>>,
}

struct Pool {
    traffic: CancellationToken,
    client: ProxyClient,
}

impl Upstreams {
    /// The pool for the sandbox's current traffic; a new one when its token changed.
    fn client(&self, id: &SandboxId, traffic: &CancellationToken) -> ProxyClient {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(id).filter(|p| !p.traffic.is_cancelled()) {
            return pool.client.clone();
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        pools.insert(
            id.clone(),
            Pool {
                traffic: traffic.clone(),
                client: client.clone(),
            },
        );
        // Dropping the pool when its traffic ends closes its idle connections.
        let (pools, id, traffic) = (Arc::clone(&self.pools), id.clone(), traffic.clone());
        tokio::spawn(async move {
            traffic.cancelled().await;
            let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
            if pools.get(&id).is_some_and(|p| p.traffic.is_cancelled()) {
                pools.remove(&id);
            }
        });
        client
    }
}

/// A response body from a sandbox that fails once the sandbox's traffic is ended; it
/// keeps the sandbox awake while it streams.
struct UntilCancelled {
    inner: Incoming,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    _in_use: Arc<InUse>,
}

impl HttpBody for UntilCancelled {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the sandbox was paused".into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }
}

const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";
/// envd's own token, checked by the agent (and by the proxy before a resume).
const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Request headers for silo, not for the sandbox: its routing, the traffic token, and
/// the API key, which code in the sandbox listening on a port could otherwise collect
/// from every client that sends it along (`X-Access-Token` is envd's own, and stays).
const SILO_ONLY: [&str; 4] = [
    SANDBOX_ID_HEADER,
    SANDBOX_PORT_HEADER,
    TRAFFIC_TOKEN_HEADER,
    crate::API_KEY_HEADER,
];

/// Which sandbox and port a request is for, if it is sandbox traffic.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Sandbox {
        id: String,
        port: u16,
    },
    /// It names a sandbox but not well enough to route.
    Invalid(String),
}

pub fn target(headers: &HeaderMap, domain: Option<&str>) -> Option<Target> {
    if let Some(id) = headers.get(SANDBOX_ID_HEADER) {
        let id = id.to_str().unwrap_or_default().to_owned();
        let port = match headers.get(SANDBOX_PORT_HEADER) {
            None => silo_protocol::ports::ENVD,
            Some(value) => match value.to_str().ok().and_then(|v| v.parse().ok()) {
                Some(port) => port,
                None => return Some(Target::Invalid("E2b-Sandbox-Port is not a port".into())),
            },
        };
        return Some(Target::Sandbox { id, port });
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.split(':').next().unwrap_or(host);
    let (label, rest) = host.split_once('.')?;
    if domain.is_some_and(|domain| rest != domain) {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse().ok()?;
    id.parse::<SandboxId>().ok()?;
    Some(Target::Sandbox {
        id: id.to_owned(),
        port,
    })
}

/// Middleware in front of the whole router: sandbox traffic goes to the sandbox, the
/// rest to the control plane.
pub async fn route_sandbox_traffic(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match target(req.headers(), app.domain.as_deref()) {
        None => next.run(req).await,
        Some(Target::Invalid(message)) => {
            refuse(req, proxy_error(StatusCode::BAD_REQUEST, message)).await
        }
        Some(Target::Sandbox { id, port }) => {
            let started = std::time::Instant::now();
            let path = req.uri().path().to_owned();
            let resp = forward(&app, &id, port, req).await;
            app.telemetry.observe_call(&path, started.elapsed());
            resp
        }
    }
}

/// Most of a refused request's body that is read before the answer, and how long that
/// may take (see [`refuse`]).
const REFUSED_BODY_LIMIT: usize = 64 * 1024;
const REFUSED_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// `answer` a request refused before it was forwarded. hyper closes a connection whose
/// request body was left unread, without saying so in the answer: a client still sending
/// the body, or sending its next request on that connection, met a broken pipe instead
/// of the answer (the SDK then reads a 'killed' sandbox's "was not found" as a dropped
/// request). So a small body is read and dropped first; for a larger or slower one the
/// answer says `connection: close`.
async fn refuse(req: Request, mut answer: Response) -> Response {
    let body = http_body_util::Limited::new(req.into_body(), REFUSED_BODY_LIMIT);
    let read = tokio::time::timeout(REFUSED_BODY_TIME, http_body_util::BodyExt::collect(body));
    if !matches!(read.await, Ok(Ok(_))) {
        answer.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    answer
}

async fn forward(app: &AppState, id: &str, port: u16, req: Request) -> Response {
    // The body stays out of `admit`: it is not Sync, so a borrow of it would make the
    // future not Send.
    let (head, body) = req.into_parts();
    let admitted = admit(app, id, port, &head).await;
    let mut req = Request::from_parts(head, body);
    let (sandbox, route) = match admitted {
        Ok(admitted) => admitted,
        Err(answer) => return refuse(req, answer).await,
    };
    for name in SILO_ONLY {
        req.headers_mut().remove(name);
    }
    let addr = route.addr;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("http://{addr}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            let answer = proxy_error(StatusCode::BAD_REQUEST, "invalid request path".into());
            return refuse(req, answer).await;
        }
    };
    *req.uri_mut() = uri;
    let upgrade = upgrade_of(req.headers());
    strip_hop_by_hop(req.headers_mut());
    let client_side = upgrade.clone().map(|protocol| {
        req.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        req.headers_mut().insert(header::UPGRADE, protocol);
        hyper::upgrade::on(&mut req)
    });
    let client = app.upstreams.client(&sandbox, &route.traffic);
    let answer = tokio::select! {
        answer = client.request(req) => answer,
        () = route.traffic.cancelled() => return sandbox_not_found(id),
    };
    match answer {
        Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let Some(client_side) = client_side else {
                return proxy_error(
                    StatusCode::BAD_GATEWAY,
                    format!("sandbox {id}: port {port} switched protocols unasked"),
                );
            };
            let sandbox_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice_upgraded(
                client_side,
                sandbox_side,
                route.traffic.clone(),
                Arc::clone(&route.in_use),
            ));
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, Body::empty())
        }
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = UntilCancelled {
                inner: body,
                cancelled: Box::pin(route.traffic.cancelled_owned()),
                _in_use: Arc::clone(&route.in_use),
            };
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => {
            tracing::warn!(sandbox_id = %id, port, error = %crate::error::chain(&err), "proxy upstream failed");
            proxy_error(
                StatusCode::BAD_GATEWAY,
                // "port is not open" is what the SDK reads as "running but unreachable".
                format!("sandbox {id}: port {port} is not open; is a server listening on it inside the sandbox?"),
            )
        }
    }
}

/// The SDK reads "was not found" on a 502 as "the sandbox is not running".
fn sandbox_not_found(id: &str) -> Response {
    proxy_error(
        StatusCode::BAD_GATEWAY,
        format!("the sandbox {id} was not found"),
    )
}

/// The route to sandbox `id`'s `port` for a request with `headers`, or the answer refusing
/// it: the sandbox is not running, or the request lacks a token it needs.
async fn admit(
    app: &AppState,
    id: &str,
    port: u16,
    req: &Parts,
) -> Result<(SandboxId, silo_node::sandbox::Route), Response> {
    let sandbox = id.parse::<SandboxId>().map_err(|_| sandbox_not_found(id))?;
    let routed = match app.manager.get(&sandbox) {
        Ok(rec) => {
            let dozing = app.manager.is_dozing(&sandbox);
            authorize(&rec, port, req, dozing).map_err(|missing| missing.answer(id))?;
            app.manager.route(rec, port).await
        }
        Err(err) => Err(err),
    };
    let route = match routed {
        Ok(route) => route,
        Err(SandboxError::WrongState {
            state: SandboxState::Paused | SandboxState::Pausing,
            ..
        }) => {
            // Still "was not found" for the SDK, but saying what to do about it.
            return Err(proxy_error(
                StatusCode::BAD_GATEWAY,
                format!("the sandbox {id} was not found running: it is paused; connect to it to resume it, or create it with autoResume"),
            ));
        }
        Err(err) => {
            tracing::debug!(sandbox_id = %id, error = %crate::error::chain(&err), "no route");
            return Err(sandbox_not_found(id));
        }
    };
    Ok((sandbox, route))
}

/// Turn away a request that lacks what `port` of `rec` asks for, on the catalog's row,
/// before the route resumes the sandbox (autoResume) or wakes it from its doze: knowing
/// its id must not be enough to keep it alive or awake.
/// - A port other than envd's, when the sandbox's ports are not public: its traffic
///   token.
/// - envd's port of a secure sandbox that is not running, or dozes: its envd access
///   token, or a `/files` URL signed with it. A dozing sandbox's `/health` is answered
///   here, as its agent would. An awake sandbox's agent checks that token itself, with
///   the routes it leaves open (`/health`, signed `/files` URLs).
fn authorize(rec: &SandboxRecord, port: u16, req: &Parts, dozing: bool) -> Result<(), Missing> {
    let headers = &req.headers;
    if port != silo_protocol::ports::ENVD {
        if let Some(token) = &rec.traffic_access_token {
            if !carries(headers, TRAFFIC_TOKEN_HEADER, token) {
                return Err(Missing::TrafficToken);
            }
        }
    } else if rec.state != SandboxState::Running || dozing {
        if let Some(token) = &rec.envd_access_token {
            if !carries(headers, ACCESS_TOKEN_HEADER, token) && !signed_files_url(req, token) {
                let running = rec.state == SandboxState::Running;
                let health = req.method == axum::http::Method::GET
                    && req.uri.path() == silo_protocol::envd::HEALTH_PATH;
                return Err(match (running, health) {
                    (true, true) => Missing::NothingForHealth,
                    (true, false) => Missing::AccessTokenToWake,
                    (false, _) => Missing::AccessToken,
                });
            }
        }
    }
    Ok(())
}

/// The token a request turned away by [`authorize`] lacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    TrafficToken,
    /// To resume a paused sandbox.
    AccessToken,
    /// To wake a dozing one.
    AccessTokenToWake,
    /// None: a dozing sandbox is healthy, and says so without waking.
    NothingForHealth,
}

impl Missing {
    fn answer(self, id: &str) -> Response {
        match self {
            Missing::TrafficToken => proxy_error(
                StatusCode::FORBIDDEN,
                format!("sandbox {id} does not allow public traffic: send its trafficAccessToken as the E2B-Traffic-Access-Token header"),
            ),
            Missing::AccessToken => proxy_error(
                StatusCode::UNAUTHORIZED,
                format!("sandbox {id} is not running: only a request with its envdAccessToken as the X-Access-Token header, or a file URL signed with it, resumes it"),
            ),
            Missing::AccessTokenToWake => proxy_error(
                StatusCode::UNAUTHORIZED,
                format!("sandbox {id} is secure: send its envdAccessToken as the X-Access-Token header, or use a file URL signed with it"),
            ),
            Missing::NothingForHealth => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// A `/files` URL signed with `token` for what the request does: the SDKs' upload and
/// download URLs, which carry no header.
fn signed_files_url(req: &Parts, token: &str) -> bool {
    if req.uri.path() != silo_protocol::files::PATH {
        return false;
    }
    let Some(op) = FileOp::of_method(req.method.as_str()) else {
        return false;
    };
    let Ok(Query(query)) = Query::<FilesQuery>::try_from_uri(&req.uri) else {
        return false;
    };
    query
        .check_signature(op, token, chrono::Utc::now().timestamp())
        .is_ok()
}

fn carries(headers: &HeaderMap, name: &str, secret: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|given| same_secret(given.as_bytes(), secret.as_bytes()))
}

/// How long [`preconnect`] waits for the agent's answer.
const PRECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Open the proxy's connection to a new sandbox's agent while its creator is still
/// reading the create's answer, so that its first call finds the connection made (a
/// TCP handshake into gVisor's network stack, and a just-thawed pooled sandbox's
/// first steps) instead of waiting for it. Best effort: a failure only means the first
/// call connects by itself.
pub fn preconnect(app: &AppState, id: SandboxId) {
    let app = app.clone();
    tokio::spawn(async move {
        let Ok(rec) = app.manager.get(&id) else {
            return;
        };
        let Ok(route) = app.manager.route(rec, silo_protocol::ports::ENVD).await else {
            return;
        };
        let Ok(health) =
            format!("http://{}{}", route.addr, silo_protocol::envd::HEALTH_PATH).parse::<Uri>()
        else {
            return;
        };
        let Ok(req) = Request::get(health).body(Body::empty()) else {
            return;
        };
        let client = app.upstreams.client(&id, &route.traffic);
        let answered = tokio::time::timeout(PRECONNECT_TIMEOUT, async {
            // Read to the end, so the connection goes back to the pool for reuse.
            let resp = client.request(req).await?;
            http_body_util::BodyExt::collect(resp.into_body()).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await;
        if !matches!(answered, Ok(Ok(()))) {
            tracing::debug!(sandbox_id = %id, "could not preconnect to the agent");
        }
    });
}

/// The protocol a request asks to switch to (WebSocket, usually): `Connection: upgrade`
/// with an `Upgrade` header.
fn upgrade_of(headers: &HeaderMap) -> Option<header::HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Relay an upgraded connection (a WebSocket) both ways until either side closes or
/// the sandbox's traffic ends; the sandbox stays awake (`_in_use`) meanwhile.
async fn splice_upgraded(
    client_side: hyper::upgrade::OnUpgrade,
    sandbox_side: hyper::upgrade::OnUpgrade,
    traffic: CancellationToken,
    _in_use: Arc<InUse>,
) {
    let (Ok(client), Ok(sandbox)) = tokio::join!(client_side, sandbox_side) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut sandbox = TokioIo::new(sandbox);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut sandbox) => {}
        () = traffic.cancelled() => {}
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    for name in HOP_BY_HOP {
        headers.remove(HeaderName::from_static(name));
    }
    headers.remove(header::HOST);
}

fn proxy_error(status: StatusCode, message: String) -> Response {
    let mut resp = (
        status,
        Json(WireError {
            code: status.as_u16(),
            message,
        }),
    )
        .into_response();
    resp.extensions_mut()
        .insert(crate::telemetry::ErrorKind("sandbox_unreachable"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{record, TestApp};
    use tower::ServiceExt;

    /// A server standing in for a sandbox's port: it answers with the request's header
    /// names.
    async fn header_echo() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let echo = axum::Router::new().fallback(|headers: HeaderMap| async move {
            Json(headers.keys().map(|k| k.to_string()).collect::<Vec<_>>())
        });
        tokio::spawn(async move { axum::serve(listener, echo).await });
        port
    }

    #[tokio::test]
    async fn the_sandbox_sees_neither_the_api_key_nor_silo_s_headers() {
        let test = TestApp::new();
        let mut rec = record(SandboxState::Running, Some("127.0.0.1"));
        rec.traffic_access_token = Some("traffic".into());
        test.insert(&rec);
        let port = header_echo().await;
        let req = Request::get("/anything")
            .header("e2b-sandbox-id", rec.id.as_str())
            .header("e2b-sandbox-port", port.to_string())
            .header("e2b-traffic-access-token", "traffic")
            .header("x-api-key", "e2b_secret")
            .header("x-access-token", "envd")
            .header("authorization", "Basic dXNlcjo=")
            .body(Body::empty())
            .unwrap();
        let resp = test.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        let seen: Vec<String> = serde_json::from_slice(&body.to_bytes()).unwrap();
        for hidden in SILO_ONLY {
            assert!(
                !seen.iter().any(|h| h == hidden),
                "{hidden} reached the sandbox: {seen:?}"
            );
        }
        // What the sandbox's servers need is still there.
        assert!(seen.iter().any(|h| h == "x-access-token"), "{seen:?}");
        assert!(seen.iter().any(|h| h == "authorization"), "{seen:?}");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn tokens_are_asked_for_before_the_route() {
        let mut rec = record(SandboxState::Running, Some("10.0.0.2"));
        rec.traffic_access_token = Some("traffic".into());
        rec.envd_access_token = Some("envd".into());
        let missing = |rec: &SandboxRecord, port, h: &HeaderMap| {
            let mut req = Request::get("/").body(()).unwrap();
            *req.headers_mut() = h.clone();
            authorize(rec, port, &req.into_parts().0, false).err()
        };
        let none = HeaderMap::new();
        // Its ports but envd's want the traffic token, whatever the state.
        assert_eq!(missing(&rec, 8000, &none), Some(Missing::TrafficToken));
        let wrong = headers(&[("e2b-traffic-access-token", "traffik")]);
        assert_eq!(missing(&rec, 8000, &wrong), Some(Missing::TrafficToken));
        let right = headers(&[("e2b-traffic-access-token", "traffic")]);
        assert_eq!(missing(&rec, 8000, &right), None);
        // Running, envd checks its token itself.
        assert_eq!(missing(&rec, silo_protocol::ports::ENVD, &none), None);
        // Paused, the token is asked for here, as a route would resume it.
        rec.state = SandboxState::Paused;
        assert_eq!(
            missing(&rec, silo_protocol::ports::ENVD, &right),
            Some(Missing::AccessToken)
        );
        let envd = headers(&[("x-access-token", "envd")]);
        assert_eq!(missing(&rec, silo_protocol::ports::ENVD, &envd), None);
        // So is a `/files` URL signed with it, for what the request does.
        let files = |method: &str, signed_for: FileOp, token: &str| {
            let signature = silo_protocol::files::sign_v1("/a b", signed_for, "", token, None);
            let signature = signature.replace('+', "%2B").replace('/', "%2F");
            let uri = format!("/files?path=%2Fa%20b&signature={signature}");
            let req = Request::builder().method(method).uri(uri).body(()).unwrap();
            authorize(&rec, silo_protocol::ports::ENVD, &req.into_parts().0, false).err()
        };
        assert_eq!(files("GET", FileOp::Read, "envd"), None);
        assert_eq!(files("POST", FileOp::Write, "envd"), None);
        assert_eq!(
            files("POST", FileOp::Read, "envd"),
            Some(Missing::AccessToken)
        );
        assert_eq!(
            files("GET", FileOp::Read, "guess"),
            Some(Missing::AccessToken)
        );
        // A sandbox without tokens is anyone's.
        let open = record(SandboxState::Paused, None);
        assert_eq!(missing(&open, 8000, &none), None);
        assert_eq!(missing(&open, silo_protocol::ports::ENVD, &none), None);

        // Running but dozing: the token is asked for here, as a route would wake it; its
        // health is answered without it.
        rec.state = SandboxState::Running;
        let dozing = |method: &str, path: &str, h: &HeaderMap| {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            *req.headers_mut() = h.clone();
            authorize(&rec, silo_protocol::ports::ENVD, &req.into_parts().0, true).err()
        };
        let rpc = "/process.Process/List";
        assert_eq!(dozing("POST", rpc, &none), Some(Missing::AccessTokenToWake));
        assert_eq!(dozing("POST", rpc, &envd), None);
        assert_eq!(
            dozing("GET", "/health", &none),
            Some(Missing::NothingForHealth)
        );
        assert_eq!(dozing("GET", "/health", &envd), None);
        assert_eq!(missing(&rec, silo_protocol::ports::ENVD, &none), None);
    }

    #[tokio::test]
    async fn a_tokenless_request_does_not_resume_a_sandbox() {
        let test = TestApp::new();
        let mut rec = record(SandboxState::Paused, None);
        rec.auto_resume = true;
        rec.envd_access_token = Some("envd".into());
        rec.traffic_access_token = Some("traffic".into());
        test.insert(&rec);
        let call = |port: u16, token: Option<(&'static str, &'static str)>| {
            let mut req = Request::post("/process.Process/Start")
                .header("e2b-sandbox-id", rec.id.as_str())
                .header("e2b-sandbox-port", port.to_string());
            if let Some((name, value)) = token {
                req = req.header(name, value);
            }
            test.router().oneshot(req.body(Body::empty()).unwrap())
        };
        let envd = silo_protocol::ports::ENVD;
        let resp = call(envd, None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = call(envd, Some(("x-access-token", "guess"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = call(8000, Some(("x-access-token", "envd"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            test.runtime
                .resumes
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert_eq!(test.state_of(&rec.id), SandboxState::Paused);
        // Its token resumes it (which this runtime then fails), and so does a download URL
        // signed with it.
        let resp = call(envd, Some(("x-access-token", "envd"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            test.runtime
                .resumes
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        let signature = silo_protocol::files::sign_v1("/f", FileOp::Read, "", "envd", None);
        let signature = signature.replace('+', "%2B").replace('/', "%2F");
        let download = Request::get(format!("/files?path=/f&signature={signature}"))
            .header("e2b-sandbox-id", rec.id.as_str())
            .header("e2b-sandbox-port", envd.to_string())
            .body(Body::empty())
            .unwrap();
        let resp = test.router().oneshot(download).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            test.runtime
                .resumes
                .load(std::sync::atomic::Ordering::SeqCst),
            2
        );
    }

    #[test]
    fn routes_by_headers() {
        let h = headers(&[("e2b-sandbox-id", "abc"), ("e2b-sandbox-port", "49999")]);
        assert_eq!(
            target(&h, None),
            Some(Target::Sandbox {
                id: "abc".into(),
                port: 49999
            })
        );
        let h = headers(&[("e2b-sandbox-id", "abc"), ("e2b-sandbox-port", "http")]);
        assert!(matches!(target(&h, None), Some(Target::Invalid(_))));
    }

    #[test]
    fn routes_by_host() {
        let id = SandboxId::generate();
        let h = headers(&[("host", &format!("49983-{id}.silo.test:3000"))]);
        assert_eq!(
            target(&h, Some("silo.test")),
            Some(Target::Sandbox {
                id: id.to_string(),
                port: 49983
            })
        );
        assert_eq!(target(&h, Some("other.test")), None);
        let h = headers(&[("host", "127.0.0.1:3000")]);
        assert_eq!(target(&h, None), None);
        let h = headers(&[("host", "api.silo.test")]);
        assert_eq!(target(&h, None), None);
    }

    #[test]
    fn sees_upgrade_requests() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
        assert!(upgrade_of(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_of(&headers(&[("connection", "upgrade")])).is_none());
    }
}
