//! The HTTP surface: every route, the auth middleware and body limits, in one router.

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;
use crate::{activity, auth, files, filesystem, init, journal, metrics, process, rpc};

pub fn router(state: AppState) -> Router {
    let rpc_routes = process::router()
        .merge(filesystem::router())
        .layer(DefaultBodyLimit::max(rpc::MAX_REQUEST));
    Router::new()
        .route(silo_protocol::envd::HEALTH_PATH, get(init::health))
        .route("/init", post(init::init))
        .route("/envs", get(init::envs))
        .route("/metrics", get(metrics::metrics))
        .route("/silo/journal", get(journal::journal))
        .route("/silo/activity", get(activity::activity))
        // Uploads enforce their own per-file cap while streaming.
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(rpc_routes)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(trace))
        .with_state(state)
}

/// One span per request (method and path), and the outcome at debug level; errors are
/// logged where they are mapped (`crate::error`).
async fn trace(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let resp = next.run(req).await;
        tracing::debug!(status = resp.status().as_u16(), "answered");
        resp
    }
    .instrument(span)
    .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use clap::Parser;
    use tower::ServiceExt;

    use crate::config::Config;
    use crate::process::Reaper;

    async fn app_with_token() -> Router {
        let config = Config::parse_from(["silo-agent", "--access-token", "tok"]);
        router(AppState::new(&config, Reaper::start().unwrap()))
    }

    /// The status and body `app` answers `req` with.
    pub(crate) async fn status(app: &Router, req: HttpRequest<Body>) -> (StatusCode, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn access_token_guards_all_but_public_routes() {
        let app = app_with_token().await;
        let get = |uri: &str| HttpRequest::get(uri).body(Body::empty()).unwrap();
        assert_eq!(status(&app, get("/health")).await.0, StatusCode::NO_CONTENT);

        let (s, body) = status(&app, get("/envs")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body.contains(r#""code":401"#));

        let with_token = HttpRequest::get("/envs")
            .header("x-access-token", "tok")
            .body(Body::empty())
            .unwrap();
        assert_eq!(status(&app, with_token).await.0, StatusCode::OK);

        let rpc = HttpRequest::post("/process.Process/List")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (s, body) = status(&app, rpc).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body.contains(r#""code":"unauthenticated""#));

        // /files is reachable, but needs the token or a signature itself.
        let (s, _) = status(&app, get("/files?path=/etc/hostname")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn init_sets_env_vars_and_rotating_token_needs_the_old_one() {
        let app = app_with_token().await;
        let init = |token: Option<&str>, body: &str| {
            let mut b = HttpRequest::post("/init").header("content-type", "application/json");
            if let Some(t) = token {
                b = b.header("x-access-token", t);
            }
            b.body(Body::from(body.to_string())).unwrap()
        };
        let (s, _) = status(&app, init(None, r#"{"accessToken":"new"}"#)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = status(
            &app,
            init(Some("tok"), r#"{"accessToken":"new","envVars":{"A":"1"}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let envs = HttpRequest::get("/envs")
            .header("x-access-token", "new")
            .body(Body::empty())
            .unwrap();
        let (s, body) = status(&app, envs).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"A":"1"}"#));
    }
}
