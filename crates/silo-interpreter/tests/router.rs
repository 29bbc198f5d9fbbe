//! Router tests that need no kernel: health, listing and every error path.
//! Executions against real kernels are in tests/interpreter (pytest with the official SDK).

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use silo_interpreter::kernelspec::{InterruptMode, KernelSpec};
use silo_interpreter::{router, Config, Interpreter, Language};
use tower::ServiceExt;

/// An interpreter whose only kernel is a program that does not exist.
fn interpreter() -> Interpreter {
    let spec = KernelSpec {
        name: "python3".into(),
        language: Language::Python,
        argv: vec!["/nonexistent/python".into(), "{connection_file}".into()],
        env: BTreeMap::new(),
        interrupt_mode: InterruptMode::Signal,
        dir: PathBuf::from("/nonexistent"),
    };
    let mut config = Config::new(BTreeMap::from([(Language::Python, spec)]));
    config.default_cwd = std::env::temp_dir();
    Interpreter::new(config)
}

async fn call(method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
        .expect("request");
    let resp = router(interpreter()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn health_and_empty_list() {
    assert_eq!(
        call("GET", "/health", None).await,
        (StatusCode::OK, "\"OK\"".into())
    );
    assert_eq!(
        call("GET", "/contexts", None).await,
        (StatusCode::OK, "[]".into())
    );
}

#[tokio::test]
async fn execute_rejects_bad_requests() {
    let (status, text) = call(
        "POST",
        "/execute",
        Some(r#"{"code":"1","context_id":null,"language":"cobol","env_vars":null}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(text, r#"unknown language "cobol"; available: python"#);

    let (status, text) = call(
        "POST",
        "/execute",
        Some(r#"{"code":"1","context_id":"abc","language":"python","env_vars":null}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("cannot both be set"), "{text}");

    let (status, text) = call(
        "POST",
        "/execute",
        Some(r#"{"code":"1","context_id":"abc","language":null,"env_vars":null}"#),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::NOT_FOUND, "context abc not found")
    );

    let (status, _) = call("POST", "/execute", Some(r#"{"context_id":null}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, text) = call(
        "POST",
        "/execute",
        Some(r#"{"code":"1","context_id":null,"language":"bash","env_vars":null}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text,
        "no kernel is installed for language bash; available: python"
    );
}

#[tokio::test]
async fn kernel_that_cannot_start_is_a_500_with_the_cause() {
    let (status, text) = call("POST", "/contexts", Some("{}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        text.starts_with("starting kernel python3 (/nonexistent/python)"),
        "{text}"
    );
    assert!(text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn contexts_errors() {
    let (status, text) = call("POST", "/contexts", Some(r#"{"cwd":"/no/such/dir"}"#)).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "working directory /no/such/dir does not exist"
        )
    );
    let (status, _) = call("POST", "/contexts", Some(r#"{"language":"java"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call("DELETE", "/contexts/nope", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call("POST", "/contexts/nope/restart", None).await.0,
        StatusCode::NOT_FOUND
    );
}
