//! Connect-RPC plumbing for the handlers: the request extractors and the server-stream
//! response. Handlers see typed messages and return typed results; envelopes, content
//! types, keepalives and the end-of-stream envelope are all handled here.
//!
//! - Unary: [`Unary<T>`] parses `application/json`; the handler returns
//!   `Result<Json<R>, Error>` and [`Error`]'s `IntoResponse` writes the Connect error.
//! - Server stream: [`StreamRequest<T>`] takes the single request envelope;
//!   [`server_stream`] turns a channel of messages into envelopes, inserting keepalives
//!   after each interval of silence and always ending with the end-of-stream envelope.
//!   Errors in a stream travel in that envelope with HTTP 200, as Connect requires.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use silo_protocol::connect::{self, Decoder, FLAG_MESSAGE};

use crate::error::Error;

/// Largest unary or stream request body (a request message is small; input data is
/// chunked by the SDK).
pub const MAX_REQUEST: usize = connect::MAX_ENVELOPE;

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Does the content type's essence (before any `;charset=...`) equal `want`?
fn is_content_type(headers: &HeaderMap, want: &str) -> bool {
    content_type(headers)
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(want))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("invalid request message: {e}")))
}

/// A unary request message (`application/json`).
pub struct Unary<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Unary<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        if !is_content_type(req.headers(), connect::CONTENT_TYPE_UNARY) {
            let msg = format!(
                "unary calls take {}, not {:?}",
                connect::CONTENT_TYPE_UNARY,
                content_type(req.headers())
            );
            return Err(unsupported_media_type(msg));
        }
        let body = read_body(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // An empty body is the empty message.
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        parse_json(body)
            .map(Unary)
            .map_err(IntoResponse::into_response)
    }
}

/// Connect answers a wrong content type with a bare HTTP 415.
fn unsupported_media_type(msg: String) -> Response {
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, msg).into_response()
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge(format!("request is over {MAX_REQUEST} bytes"))
        } else {
            Error::InvalidArgument(format!("could not read request body: {rejection}"))
        }
    })
}

/// The one request message of a server-streaming call (`application/connect+json`).
pub struct StreamRequest<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StreamRequest<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        if !is_content_type(req.headers(), connect::CONTENT_TYPE_STREAM) {
            let msg = format!(
                "streaming calls take {}, not {:?}",
                connect::CONTENT_TYPE_STREAM,
                content_type(req.headers())
            );
            return Err(unsupported_media_type(msg));
        }
        let parsed = async {
            let body = read_body(req, state).await?;
            let mut dec = Decoder::default();
            dec.push(&body);
            let env = dec
                .next_envelope()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
                .ok_or_else(|| Error::InvalidArgument("missing request envelope".into()))?;
            if env.flag != FLAG_MESSAGE {
                return Err(Error::InvalidArgument(format!(
                    "unexpected envelope flag {:#x}",
                    env.flag
                )));
            }
            if dec.next_envelope().ok().flatten().is_some() || dec.finish().is_err() {
                return Err(Error::InvalidArgument(
                    "a server-streaming call takes exactly one request message".into(),
                ));
            }
            parse_json(&env.payload)
        };
        parsed.await.map(StreamRequest).map_err(stream_error)
    }
}

/// The streaming-call headers: `connect-timeout-ms` and `Keepalive-Ping-Interval`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    pub timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
}

impl<S: Send + Sync> FromRequestParts<S> for StreamOptions {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let num = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        Ok(StreamOptions {
            timeout: num("connect-timeout-ms").map(Duration::from_millis),
            keepalive: num("keepalive-ping-interval").map(Duration::from_secs),
        })
    }
}

fn stream_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, connect::CONTENT_TYPE_STREAM)]
}

/// A stream that failed before its first message: 200 with only the end envelope.
pub fn stream_error(err: Error) -> Response {
    let body = connect::encode_end(Some(err.to_connect()));
    (StatusCode::OK, stream_headers(), body).into_response()
}

/// Serve `events` as a server stream. `keepalive` is the message sent after each interval
/// of silence. The stream ends when `events` does (end envelope `{}`), at the first `Err`
/// (end envelope with that error), or, as Connect servers end a call that outlives its
/// `connect-timeout-ms`, at `timeout` with `deadline_exceeded` (the SDKs raise their
/// timeout error for it); nothing that comes after the deadline is sent. Dropped with
/// the response when the client goes.
pub fn server_stream<S, M>(
    events: S,
    keepalive: Option<(Duration, M)>,
    timeout: Option<Duration>,
) -> Response
where
    S: Stream<Item = Result<M, Error>> + Send + Unpin + 'static,
    M: Serialize + Send + Sync + 'static,
{
    struct State<S, M> {
        events: S,
        keepalive: Option<(Duration, M)>,
        deadline: Option<tokio::time::Instant>,
    }
    enum Step<M> {
        Event(Option<Result<M, Error>>),
        Silence,
        Deadline,
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let state = State {
        events,
        keepalive,
        deadline,
    };
    let stream = futures_util::stream::unfold(Some(state), move |st| async move {
        let mut st = st?;
        let deadline = st.deadline;
        let next = async {
            match &st.keepalive {
                Some((every, _)) => match tokio::time::timeout(*every, st.events.next()).await {
                    Ok(event) => Step::Event(event),
                    Err(_) => Step::Silence,
                },
                None => Step::Event(st.events.next().await),
            }
        };
        let step = match deadline {
            Some(at) => tokio::select! {
                biased;
                step = next => step,
                () = tokio::time::sleep_until(at) => Step::Deadline,
            },
            None => next.await,
        };
        let step = match step {
            _ if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) => Step::Deadline,
            step => step,
        };
        let (bytes, more) = match step {
            // Silence for a whole interval: ping so proxies keep the connection open.
            Step::Silence => {
                let (_, ping) = st.keepalive.as_ref().expect("silence only with keepalive");
                (connect::encode_message(ping), true)
            }
            Step::Event(Some(Ok(msg))) => (connect::encode_message(&msg), true),
            Step::Event(Some(Err(e))) => (connect::encode_end(Some(e.to_connect())), false),
            Step::Event(None) => (connect::encode_end(None), false),
            Step::Deadline => {
                let ms = timeout.map_or(0, |t| t.as_millis());
                let err = Error::DeadlineExceeded(format!(
                    "deadline exceeded: the call's timeout of {ms} ms passed"
                ));
                (connect::encode_end(Some(err.to_connect())), false)
            }
        };
        Some((Ok::<_, Infallible>(bytes), more.then_some(st)))
    });
    (StatusCode::OK, stream_headers(), Body::from_stream(stream)).into_response()
}

/// Reads the envelopes of a client stream (`StreamInput`) one message at a time.
pub struct ClientStream {
    body: axum::body::BodyDataStream,
    decoder: Decoder,
    done: bool,
}

impl ClientStream {
    /// `None` when the request is not a Connect stream (answer with
    /// [`not_a_stream`]).
    pub fn new(req: Request) -> Option<Self> {
        if !is_content_type(req.headers(), connect::CONTENT_TYPE_STREAM) {
            return None;
        }
        Some(ClientStream {
            body: req.into_body().into_data_stream(),
            decoder: Decoder::default(),
            done: false,
        })
    }

    /// The next message, or `None` once the client closed its side.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        use futures_util::StreamExt;
        loop {
            let frame_err = |e: connect::FrameError| Error::InvalidArgument(e.to_string());
            if let Some(env) = self.decoder.next_envelope().map_err(frame_err)? {
                if env.flag != FLAG_MESSAGE {
                    // A client stream has no end envelope of its own; treat one as the end.
                    return Ok(None);
                }
                return parse_json(&env.payload).map(Some);
            }
            if self.done {
                self.decoder.finish().map_err(frame_err)?;
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.decoder.push(&chunk),
                Some(Err(e)) => {
                    return Err(Error::InvalidArgument(format!("reading request: {e}")))
                }
                None => self.done = true,
            }
        }
    }
}

/// The answer to a streaming call made with another content type.
pub fn not_a_stream() -> Response {
    unsupported_media_type(format!(
        "streaming calls take {}",
        connect::CONTENT_TYPE_STREAM
    ))
}

/// The response of a client stream: one message envelope, then the end envelope.
pub fn client_stream_response<M: Serialize>(result: Result<M, Error>) -> Response {
    match result {
        Ok(msg) => {
            let mut body = connect::encode_message(&msg).to_vec();
            body.extend_from_slice(&connect::encode_end(None));
            (StatusCode::OK, stream_headers(), body).into_response()
        }
        Err(e) => stream_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use tower::ServiceExt;

    async fn echo_unary(Unary(v): Unary<Value>) -> Json<Value> {
        Json(v)
    }

    async fn count_stream(StreamRequest(v): StreamRequest<Value>) -> Response {
        let n = v["n"].as_u64().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            for i in 0..n {
                let _ = tx.send(Ok(json!({ "i": i }))).await;
            }
            if v["fail"] == true {
                let _ = tx.send(Err(Error::NotFound("gone".into()))).await;
            }
        });
        server_stream(tokio_stream::wrappers::ReceiverStream::new(rx), None, None)
    }

    fn app() -> Router {
        Router::new()
            .route("/u", post(echo_unary))
            .route("/s", post(count_stream))
    }

    fn decode_all(bytes: &[u8]) -> Vec<(u8, Value)> {
        let mut dec = Decoder::default();
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(env) = dec.next_envelope().unwrap() {
            out.push((env.flag, serde_json::from_slice(&env.payload).unwrap()));
        }
        dec.finish().unwrap();
        out
    }

    async fn call(ct: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_outliving_its_timeout_ends_with_deadline_exceeded() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(Ok(json!({ "i": 0 }))).await.unwrap();
        let resp = server_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some((Duration::from_secs(1), json!({ "ping": true }))),
            Some(Duration::from_millis(2500)),
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        // The message, two pings of silence, then the deadline; the sender still open.
        let got = decode_all(&body);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].1, json!({ "i": 0 }));
        assert_eq!(got[1].1, json!({ "ping": true }));
        assert_eq!(got[3].0, connect::FLAG_END_STREAM);
        assert_eq!(got[3].1["error"]["code"], "deadline_exceeded");
        drop(tx);
    }

    #[tokio::test]
    async fn unary_malformed_json_is_invalid_argument() {
        let (status, body) = call("application/json", "/u", b"{nope".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "invalid_argument");
        let (status, _) = call("text/plain", "/u", b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, body) = call("application/json; charset=utf-8", "/u", vec![]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"{}"[..]));
    }

    #[tokio::test]
    async fn stream_ends_with_end_envelope() {
        let req = connect::encode_message(&json!({"n": 2})).to_vec();
        let (status, body) = call(connect::CONTENT_TYPE_STREAM, "/s", req).await;
        assert_eq!(status, StatusCode::OK);
        let envs = decode_all(&body);
        assert_eq!(envs.len(), 3);
        assert_eq!(envs[1], (0, json!({"i": 1})));
        assert_eq!(envs[2], (2, json!({})));
    }

    #[tokio::test]
    async fn stream_errors_travel_in_end_envelope() {
        let req = connect::encode_message(&json!({"n": 1, "fail": true})).to_vec();
        let (status, body) = call(connect::CONTENT_TYPE_STREAM, "/s", req).await;
        assert_eq!(status, StatusCode::OK);
        let envs = decode_all(&body);
        assert_eq!(envs.last().unwrap().1["error"]["code"], "not_found");

        // Malformed request message and oversized length prefix: end envelope errors too.
        let bad = connect::encode_envelope(0, b"{nope").to_vec();
        let (status, body) = call(connect::CONTENT_TYPE_STREAM, "/s", bad).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(decode_all(&body)[0].1["error"]["code"], "invalid_argument");
        let (_, body) = call(
            connect::CONTENT_TYPE_STREAM,
            "/s",
            vec![0, 0xff, 0xff, 0xff, 0xff],
        )
        .await;
        assert_eq!(decode_all(&body)[0].1["error"]["code"], "invalid_argument");
    }
}
