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
use sha2::{Digest, Sha256};
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
    let public = (req.method() == Method::GET && path == "/health")
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

/// The `/files` operations a signature can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
}

impl FileOp {
    fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
        }
    }
}

/// `"v1_" + base64_raw_std(sha256("path:op:user:token[:expiration]"))`, where `user` is
/// empty for the default user.
fn signature_v1(path: &str, op: FileOp, user: &str, token: &str, exp: Option<i64>) -> String {
    let mut text = format!("{path}:{}:{user}:{token}", op.as_str());
    if let Some(exp) = exp {
        text.push_str(&format!(":{exp}"));
    }
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The signing-related query parameters of a `/files` request.
pub struct FilesAuth<'a> {
    pub path: &'a str,
    pub username: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub expiration: Option<i64>,
}

/// `/files` access: free without a token; otherwise the header or a valid signature.
pub fn check_files(
    state: &AppState,
    headers: &HeaderMap,
    op: FileOp,
    q: &FilesAuth<'_>,
) -> Result<(), Error> {
    let Some(token) = state.settings().access_token else {
        return Ok(());
    };
    if header_token_ok(headers, &token) {
        return Ok(());
    }
    let Some(signature) = q.signature else {
        return Err(Error::Unauthenticated(
            "missing access token or signature".into(),
        ));
    };
    if let Some(exp) = q.expiration {
        if exp < chrono::Utc::now().timestamp() {
            return Err(Error::Unauthenticated("signature has expired".into()));
        }
    }
    let want = signature_v1(q.path, op, q.username.unwrap_or(""), &token, q.expiration);
    if same_secret(want.as_bytes(), signature.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Unauthenticated("invalid signature".into()))
    }
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

    #[test]
    fn signature_matches_sdk_algorithm() {
        // The SDK: sha256("path:read:user:token") → raw std base64, "v1_" prefix.
        let digest = Sha256::digest(b"/home/user/a.txt:read::tok");
        let want = format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        );
        assert_eq!(
            signature_v1("/home/user/a.txt", FileOp::Read, "", "tok", None),
            want
        );
        assert_ne!(
            signature_v1("/a", FileOp::Write, "", "tok", Some(5)),
            signature_v1("/a", FileOp::Write, "", "tok", None)
        );
    }
}
