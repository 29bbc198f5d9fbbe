//! Who is calling, and whether they may.
//!
//! - The access token: once set (by `/init` or `--access-token`), every request except
//!   `GET /health`, `POST /init` and `/files` must carry it as `X-Access-Token`
//!   ([`require_token`]). `/files` accepts the header or a v1 signature ([`check_files`]).
//! - The user: RPCs name it in `Authorization: Basic base64("user:")` ([`RpcUser`]);
//!   `/files` in the `username` query parameter. No user means the default user.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use silo_protocol::files::{FileOp, FilesQuery};
use silo_protocol::ids::same_secret;

use crate::error::{Error, HttpFailure};
use crate::state::AppState;

const TOKEN_HEADER: &str = "x-access-token";

fn header_token_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(TOKEN_HEADER)
        .is_some_and(|v| same_secret(v.as_bytes(), token.as_bytes()))
}

/// Middleware: the access token on everything but the public routes.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let public = (req.method() == Method::GET && path == silo_protocol::envd::HEALTH_PATH)
        || (req.method() == Method::POST && path == "/init")
        || path == "/files";
    if !public {
        if let Some(token) = state.settings().access_token {
            if !header_token_ok(req.headers(), &token) {
                let err = Error::Unauthenticated("missing or invalid access token".into());
                // RPC paths answer in Connect's shape, the rest in envd's HTTP shape.
                return if path.starts_with("/process.") || path.starts_with("/filesystem.") {
                    err.into_response()
                } else {
                    HttpFailure(err).into_response()
                };
            }
        }
    }
    next.run(req).await
}

/// May a `POST /init` change the settings? Without a token, yes; with one, only if the
/// caller proves it knows the current token (header, or the same token in the body).
pub fn check_init(state: &AppState, headers: &HeaderMap, new_token: Option<&str>) -> bool {
    match state.settings().access_token {
        None => true,
        Some(current) => {
            header_token_ok(headers, &current)
                || new_token.is_some_and(|t| same_secret(t.as_bytes(), current.as_bytes()))
        }
    }
}

/// The user an RPC runs as: `Authorization: Basic base64("user:")`, or `None`.
pub struct RpcUser(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RpcUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        basic_user(&parts.headers)
            .map(RpcUser)
            .map_err(IntoResponse::into_response)
    }
}

fn basic_user(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || Error::Unauthenticated("malformed Authorization header".into());
    let value = value.to_str().map_err(|_| bad())?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(bad)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = decoded.split(':').next().unwrap_or_default();
    Ok(Some(user.to_string()).filter(|u| !u.is_empty()))
}

/// `/files` access: free without a token; otherwise the header or a valid signature.
pub fn check_files(
    state: &AppState,
    headers: &HeaderMap,
    op: FileOp,
    q: &FilesQuery,
) -> Result<(), Error> {
    let Some(token) = state.settings().access_token else {
        return Ok(());
    };
    if header_token_ok(headers, &token) {
        return Ok(());
    }
    q.check_signature(op, &token, chrono::Utc::now().timestamp())
        .map_err(|err| Error::Unauthenticated(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn basic_user_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        h.insert("authorization", HeaderValue::from_static("Basic cm9vdDo="));
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("root"));
        h.insert("authorization", HeaderValue::from_static("Basic !!!"));
        assert!(matches!(basic_user(&h), Err(Error::Unauthenticated(_))));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert!(basic_user(&h).is_err());
    }
}
