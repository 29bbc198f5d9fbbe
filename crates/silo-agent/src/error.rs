//! The agent's one error type and its two wire mappings, both decided here:
//! Connect (`{"code":"not_found","message"}` with the Connect HTTP status) for RPCs, and
//! envd's plain-HTTP shape (`{"code":404,"message"}`) for `/files`, `/init` and friends.
//!
//! Filesystem errors are classified where the OS error is seen, by [`Error::io`]: a missing
//! path is `NotFound`, a full disk `NoSpace`, anything unexpected `Io` (internal).

use std::io;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use silo_protocol::connect::{Code, ConnectError};
use silo_protocol::envd::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NoSpace(String),
    /// A streaming call outlived its `connect-timeout-ms`.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Classify an OS error met while doing `context` (e.g. "stat /home/user/x").
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        let msg = || format!("{context}: {source}");
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound(msg()),
            io::ErrorKind::AlreadyExists => Error::AlreadyExists(msg()),
            io::ErrorKind::PermissionDenied => Error::PermissionDenied(msg()),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::NoSpace(msg()),
            io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::InvalidFilename
            | io::ErrorKind::DirectoryNotEmpty => Error::InvalidArgument(msg()),
            _ => Error::Io { context, source },
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::UnsupportedMediaType(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            // The SDKs read resource_exhausted as a rate limit ("please try again
            // later"), and envd never sends it: an oversized request is the caller's
            // argument (as an oversized stream envelope already is), a full disk
            // internal with the OS's words, as envd sends it.
            Error::TooLarge(_) => Code::InvalidArgument,
            Error::NoSpace(_) | Error::Io { .. } => Code::Internal,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }

    /// The message with its source chain, logged once here when it is internal.
    fn message(&self) -> String {
        match self {
            Error::Io { context, source } => {
                tracing::error!(error = %source, "{context}");
                format!("{context}: {source}")
            }
            other => other.to_string(),
        }
    }

    /// The Connect form, for streams' end envelopes.
    pub fn to_connect(&self) -> ConnectError {
        ConnectError::new(self.code(), self.message())
    }

    /// The plain-HTTP status envd uses for this error.
    fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) => StatusCode::CONFLICT,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// RPC handlers return `Result<_, Error>`: a unary Connect error response.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let err = self.to_connect();
        let status = StatusCode::from_u16(err.code.http_status())
            .expect("connect statuses are valid HTTP statuses");
        let body = serde_json::to_vec(&err).expect("wire types always serialize");
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// The plain-HTTP error form: `{"code":int,"message"}`.
#[derive(Debug)]
pub struct HttpFailure(pub Error);

impl From<Error> for HttpFailure {
    fn from(e: Error) -> Self {
        HttpFailure(e)
    }
}

impl IntoResponse for HttpFailure {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        let body = HttpError {
            code: status.as_u16(),
            message: self.0.message(),
        };
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_where_seen() {
        let nf = Error::io("stat /x", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(nf.to_connect().code, Code::NotFound);
        assert!(nf.to_connect().message.starts_with("stat /x: "));
        let full = Error::io("write /x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.to_connect().code, Code::Internal, "not a rate limit");
        assert!(full
            .to_connect()
            .message
            .contains("No space left on device"));
        let other = Error::io("read /x", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(other.to_connect().code, Code::Internal);
        assert_eq!(other.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
        let dir = Error::io("read /x", io::Error::from_raw_os_error(libc::EISDIR));
        assert_eq!(dir.http_status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn unary_and_http_shapes() {
        let resp = Error::NotFound("nope".into()).into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"code":"not_found","message":"nope"}"#);

        let resp = HttpFailure(Error::Unauthenticated("who".into())).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"code":401,"message":"who"}"#);
    }
}
