//! Extractors whose rejections come out in E2B's error shape instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use silo_protocol::ids::SandboxId;

use crate::error::ApiError;

/// `axum::Json`, answering bad bodies with a 400 `{"code":400,"message":...}`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// `axum::extract::Query`, answering bad query strings with a 400 in E2B's shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Who made the request, for the reasons recorded in a sandbox's timeline: the API key,
/// shortened so the record does not hold a usable key.
pub struct Caller(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(crate::API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Ok(Caller(format!(
            "API key {}…",
            key.chars().take(8).collect::<String>()
        )))
    }
}

/// The `{id}` path segment as a [`SandboxId`]. A malformed id names no sandbox, so it is
/// a 404 like any other unknown id.
pub struct SandboxPath(pub SandboxId);

impl<S: Send + Sync> FromRequestParts<S> for SandboxPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        raw.parse().map(SandboxPath).map_err(|_| {
            ApiError::NotFound(format!(
                "sandbox {:?} was not found",
                raw.chars().take(64).collect::<String>()
            ))
        })
    }
}
