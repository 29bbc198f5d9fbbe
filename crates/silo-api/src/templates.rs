//! Templates: E2B's build API (`POST /v3/templates`, `GET /templates/{id}/files/{hash}`,
//! `POST /v2/templates/{id}/builds/{build}`, `GET .../builds/{build}/status`), listing
//! (`GET /templates`, `GET /templates/{id}`), delete (`DELETE /templates/{id}`, which also
//! deletes snapshots, templates to the SDK), aliases (`/templates/aliases/{alias}`) and
//! tags (`POST`/`DELETE /templates/tags`, `GET /templates/{id}/tags`).
//! A template's id is its name.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::TryStreamExt;
use silo_catalog::BuildRecord;
use silo_node::builds::{TemplateError, TemplateSummary};
use silo_protocol::templates::{
    AliasInfo, AssignTags, AssignedTags, BuildFailure, BuildInfo, BuildLogLine, BuildRequest,
    BuildRequested, BuildStart, FileUpload, RemoveTags, TemplateBuildInfo, TemplateInfo,
    TemplateTag,
};
use tokio_util::io::StreamReader;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::sandboxes::{optional_body, rfc3339};
use crate::AppState;

/// `POST /v3/templates`: 202 with the new build's ids.
#[utoipa::path(post, path = "/v3/templates", tag = "templates", request_body(content = Option<BuildRequest>), responses((status = 202, description = "Build requested", body = BuildRequested), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 409, description = "a build of it is running", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn request_build(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req = optional_body::<BuildRequest>(&body, "template build request")?;
    let new = app.builder.request(&req)?;
    let aliases = app.builder.aliases(&new.build.template)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BuildRequested {
            names: vec![new.build.template.clone()],
            template_id: new.build.template,
            build_id: new.build.id,
            public: false,
            tags: new.tags,
            aliases,
        }),
    ))
}

/// `GET /templates/{id}/files/{hash}`: 201, whether the files are here and, if not, a
/// one-time URL on this server to `PUT` them to.
#[utoipa::path(get, path = "/templates/{id}/files/{hash}", tag = "templates", params(("id" = String, Path, description = "Template"), ("hash" = String, Path, description = "sha256 of the files")), responses((status = 201, description = "Whether the files are here, and where to PUT them if not", body = FileUpload), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn file_upload(
    State(app): State<AppState>,
    Path((template, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let present = app.builder.has_upload(&template, &hash)?;
    let url = if present {
        None
    } else {
        let token = app.builder.upload_token(&hash)?;
        Some(format!("{}/uploads/{token}", reached_at(&headers)?))
    };
    Ok((StatusCode::CREATED, Json(FileUpload { present, url })))
}

/// The URL the client reached this server by, so that it can reach the URLs handed back
/// too: its Host over http, unless a reverse proxy in front (ending TLS) says otherwise
/// in X-Forwarded-Proto and X-Forwarded-Host. Of a list, the first value counts: the one
/// the proxy nearest the client set.
fn reached_at(headers: &HeaderMap) -> Result<String, ApiError> {
    let first = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let scheme = match first("x-forwarded-proto") {
        None => "http",
        Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        Some(proto) => {
            return Err(ApiError::BadRequest(format!(
                "X-Forwarded-Proto {proto:?} is neither http nor https"
            )))
        }
    };
    let host = first("x-forwarded-host")
        .or_else(|| first(axum::http::header::HOST.as_str()))
        .ok_or_else(|| ApiError::BadRequest("the request has no Host header".into()))?;
    Ok(format!("{scheme}://{host}"))
}

/// `PUT /uploads/{token}`: the files (a tar, gzipped or not) for the URL handed out.
#[utoipa::path(put, path = "/uploads/{token}", tag = "templates", params(("token" = String, Path, description = "The one-time token of a file upload URL")), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A tar, gzipped or not"), responses((status = 200, description = "Stored"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown or used token", body = silo_protocol::rest::ApiError), (status = 413, description = "too large", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)))]
pub async fn upload(
    State(app): State<AppState>,
    Path(token): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    app.builder
        .upload(&token, StreamReader::new(Box::pin(stream)))
        .await?;
    Ok(StatusCode::OK)
}

/// `POST /v2/templates/{id}/builds/{build}`: 202 once the steps are accepted.
#[utoipa::path(post, path = "/v2/templates/{id}/builds/{build}", tag = "templates", params(("id" = String, Path, description = "Template"), ("build" = String, Path, description = "Build id")), request_body(content = Option<BuildStart>), responses((status = 202, description = "Started"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown build", body = silo_protocol::rest::ApiError), (status = 409, description = "already started", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn start_build(
    State(app): State<AppState>,
    Path((template, build_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let start = optional_body::<BuildStart>(&body, "template build")?;
    app.builder.start(&template, &build_id, start)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    #[serde(rename = "logsOffset")]
    logs_offset: Option<u64>,
    limit: Option<u64>,
}

/// `GET /templates/{id}/builds/{build}/status`.
#[utoipa::path(get, path = "/templates/{id}/builds/{build}/status", tag = "templates", params(("id" = String, Path, description = "Template"), ("build" = String, Path, description = "Build id"), StatusQuery), responses((status = 200, body = BuildInfo), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown build", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn build_status(
    State(app): State<AppState>,
    Path((template, build_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Result<Json<BuildInfo>, ApiError> {
    let report = app.builder.status(
        &template,
        &build_id,
        query.logs_offset.unwrap_or(0),
        query.limit,
    )?;
    let build = report.build;
    Ok(Json(BuildInfo {
        template_id: build.template,
        build_id: build.id,
        status: build.status.as_str().to_owned(),
        logs: Vec::new(),
        log_entries: report
            .log
            .into_iter()
            .map(|entry| BuildLogLine {
                timestamp: rfc3339(entry.at_ms),
                level: entry.level,
                message: entry.message,
            })
            .collect(),
        reason: build.reason.map(|message| BuildFailure {
            message,
            step: build.step,
        }),
    }))
}

/// `GET /templates`: every built template.
#[utoipa::path(get, path = "/templates", tag = "templates", responses((status = 200, body = Vec<TemplateInfo>), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<TemplateInfo>>, ApiError> {
    let mut out = Vec::new();
    for name in app.builder.templates() {
        match app.builder.summary(&name) {
            Ok(summary) => out.push(info(&app, summary, false)),
            // Deleted between the listing and the summary.
            Err(TemplateError::Sandbox(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Json(out))
}

/// `GET /templates/{id}`: one template, with its builds.
#[utoipa::path(get, path = "/templates/{id}", tag = "templates", params(("id" = String, Path, description = "Template name, alias or id")), responses((status = 200, body = TemplateInfo), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TemplateInfo>, ApiError> {
    let name = app.builder.resolve(&id)?;
    Ok(Json(info(&app, app.builder.summary(&name)?, true)))
}

fn info(app: &AppState, t: TemplateSummary, with_builds: bool) -> TemplateInfo {
    let build_info = |b: &BuildRecord| TemplateBuildInfo {
        build_id: b.id.clone(),
        status: b.status.as_str().to_owned(),
        created_at: rfc3339(b.created_at_ms),
        updated_at: rfc3339(b.finished_at_ms.unwrap_or(b.created_at_ms)),
        finished_at: b.finished_at_ms.map(rfc3339),
        cpu_count: t.cpu_count,
        memory_mb: t.memory_mb,
    };
    let current = t.default_build.clone().or_else(|| {
        t.builds
            .iter()
            .find(|b| b.status == silo_catalog::BuildStatus::Ready)
            .map(|b| b.id.clone())
    });
    TemplateInfo {
        template_id: t.name.clone(),
        build_id: current.unwrap_or_default(),
        cpu_count: t.cpu_count,
        memory_mb: t.memory_mb,
        disk_size_mb: t.disk_size_mb,
        public: false,
        names: std::iter::once(t.name.clone())
            .chain(t.aliases.iter().cloned())
            .collect(),
        aliases: t.aliases.clone(),
        created_at: rfc3339(t.created_at_ms),
        updated_at: rfc3339(t.updated_at_ms),
        created_by: None,
        last_spawned_at: None,
        spawn_count: 0,
        build_count: t.builds.len() as u64,
        envd_version: app.manager.envd_version().to_owned(),
        build_status: "ready".to_owned(),
        builds: with_builds.then(|| t.builds.iter().map(build_info).collect()),
    }
}

/// `DELETE /templates/{id}`: 204 when the snapshot or template was deleted; 409 while
/// sandboxes or snapshots use the template.
#[utoipa::path(delete, path = "/templates/{id}", tag = "templates", params(("id" = String, Path, description = "Template or snapshot")), responses((status = 204, description = "Deleted"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 409, description = "sandboxes or snapshots use it", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.manager.delete_snapshot(&id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    app.builder.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/aliases/{alias}`.
#[utoipa::path(get, path = "/templates/aliases/{alias}", tag = "templates", params(("alias" = String, Path)), responses((status = 200, body = AliasInfo), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown alias", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn get_alias(
    State(app): State<AppState>,
    Path(alias): Path<String>,
) -> Result<Json<AliasInfo>, ApiError> {
    Ok(Json(AliasInfo {
        template_id: app.builder.resolve(&alias)?,
        public: false,
    }))
}

/// `PUT /templates/aliases/{alias}` with `{"templateID": ...}` (silo's): point an alias
/// at a template.
#[utoipa::path(put, path = "/templates/aliases/{alias}", tag = "templates", params(("alias" = String, Path)), request_body(content = Option<AliasInfoRequest>), responses((status = 200, body = AliasInfo), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 409, description = "the name is taken by a template", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn set_alias(
    State(app): State<AppState>,
    Path(alias): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AliasInfo>, ApiError> {
    let target = optional_body::<AliasInfoRequest>(&body, "alias")?;
    app.builder.set_alias(&alias, &target.template_id)?;
    Ok(Json(AliasInfo {
        template_id: app.builder.resolve(&alias)?,
        public: false,
    }))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct AliasInfoRequest {
    #[serde(rename = "templateID", default)]
    template_id: String,
}

/// `DELETE /templates/aliases/{alias}` (silo's).
#[utoipa::path(delete, path = "/templates/aliases/{alias}", tag = "templates", params(("alias" = String, Path)), responses((status = 204, description = "Removed"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown alias", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn delete_alias(
    State(app): State<AppState>,
    Path(alias): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.builder.delete_alias(&alias)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /templates/tags`: 201, the build `target` (`name:tag`) names takes `tags` too.
#[utoipa::path(post, path = "/templates/tags", tag = "templates", request_body = AssignTags, responses((status = 201, description = "Assigned", body = AssignedTags), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template or tag", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn assign_tags(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<AssignTags>,
) -> Result<(StatusCode, Json<AssignedTags>), ApiError> {
    let (build, tags) = app.builder.assign_tags(&req.target, &req.tags)?;
    Ok((
        StatusCode::CREATED,
        Json(AssignedTags {
            tags,
            build_id: build.id,
        }),
    ))
}

/// `DELETE /templates/tags`: 204, the tags of template `name` removed (all or none).
#[utoipa::path(delete, path = "/templates/tags", tag = "templates", request_body = RemoveTags, responses((status = 204, description = "Removed"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template or tag", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn remove_tags(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RemoveTags>,
) -> Result<StatusCode, ApiError> {
    app.builder.remove_tags(&req.name, &req.tags)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/tags`: a template's tags, by name.
#[utoipa::path(get, path = "/templates/{id}/tags", tag = "templates", params(("id" = String, Path, description = "Template name or alias")), responses((status = 200, body = Vec<TemplateTag>), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template or tag", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn tags(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<TemplateTag>>, ApiError> {
    let tags = app.builder.tags(&id)?;
    Ok(Json(
        tags.into_iter()
            .map(|t| TemplateTag {
                tag: t.tag,
                build_id: t.build_id,
                created_at: rfc3339(t.created_at_ms),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestApp;
    use tower::ServiceExt;

    fn reached(pairs: &[(&'static str, &str)]) -> Result<String, ApiError> {
        let headers: HeaderMap = pairs
            .iter()
            .map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect();
        reached_at(&headers)
    }

    #[test]
    fn urls_handed_back_follow_the_reverse_proxy() {
        let host = ("host", "10.0.0.5:3000");
        assert_eq!(reached(&[host]).unwrap(), "http://10.0.0.5:3000");
        let tls = ("x-forwarded-proto", "https");
        assert_eq!(reached(&[host, tls]).unwrap(), "https://10.0.0.5:3000");
        let public = ("x-forwarded-host", "silo.example.com, 10.0.0.5:3000");
        assert_eq!(
            reached(&[host, tls, public]).unwrap(),
            "https://silo.example.com"
        );
        let chain = ("x-forwarded-proto", "HTTPS, http");
        assert_eq!(reached(&[host, chain]).unwrap(), "https://10.0.0.5:3000");
        let odd = ("x-forwarded-proto", "gopher");
        assert!(matches!(
            reached(&[host, odd]),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(reached(&[]), Err(ApiError::BadRequest(_))));
    }

    #[tokio::test]
    async fn the_upload_url_is_https_behind_a_tls_proxy() {
        let test = TestApp::new();
        let key = test.state.manager.catalog().create_api_key().unwrap();
        let req = axum::http::Request::get(format!("/templates/base/files/{}", "a".repeat(64)))
            .header("host", "127.0.0.1:3000")
            .header("x-api-key", key.expose())
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "silo.example.com")
            .body(Body::empty())
            .unwrap();
        let resp = test.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        let upload: FileUpload = serde_json::from_slice(&body.to_bytes()).unwrap();
        let url = upload.url.expect("an upload URL");
        assert!(
            url.starts_with("https://silo.example.com/uploads/"),
            "{url}"
        );
    }

    #[tokio::test]
    async fn tags_are_listed_assigned_and_removed_with_e2b_errors() {
        let test = TestApp::new();
        let catalog = test.state.manager.catalog();
        let key = catalog.create_api_key().unwrap();
        let dir = test.state.manager.templates().dir().to_owned();
        for (build, tag) in [("b1", "v1"), ("b2", "v2")] {
            std::fs::create_dir_all(dir.join("app").join(build).join("rootfs")).unwrap();
            catalog.insert_build(build, "app").unwrap();
            catalog
                .set_build_ready(build, build, &[tag.into()])
                .unwrap();
        }
        let call = |method: &str, uri: &str, body: serde_json::Value| {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("x-api-key", key.expose())
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let router = test.router();
            async move {
                let resp = router.oneshot(req).await.unwrap();
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                (status, json)
            }
        };
        let tags = || async {
            let (status, body) = call("GET", "/templates/app/tags", serde_json::json!(null)).await;
            assert_eq!(status, StatusCode::OK);
            let list: Vec<TemplateTag> = serde_json::from_value(body).unwrap();
            list.into_iter()
                .map(|t| format!("{}={}", t.tag, t.build_id))
                .collect::<Vec<_>>()
        };
        assert_eq!(tags().await, ["default=b2", "v1=b1", "v2=b2"]);

        let assign = serde_json::json!({"target": "app:v1", "tags": ["stable", "prod"]});
        let (status, body) = call("POST", "/templates/tags", assign).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            body,
            serde_json::json!({"tags": ["stable", "prod"], "buildID": "b1"})
        );
        assert_eq!(
            tags().await,
            ["default=b2", "prod=b1", "stable=b1", "v1=b1", "v2=b2"]
        );

        let unknown = serde_json::json!({"target": "app:v9", "tags": ["x"]});
        let (status, body) = call("POST", "/templates/tags", unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body["message"],
            r#"template "app" has no tag "v9"; its tags: default, prod, stable, v1, v2"#
        );
        let no_tags = serde_json::json!({"target": "app:v1"});
        let (status, body) = call("POST", "/templates/tags", no_tags).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &400.into())
        );

        let default = serde_json::json!({"name": "app", "tags": ["default"]});
        let (status, body) = call("DELETE", "/templates/tags", default).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("cannot be removed"),
            "{body}"
        );
        let some_unknown = serde_json::json!({"name": "app", "tags": ["prod", "nope"]});
        let (status, _) = call("DELETE", "/templates/tags", some_unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let remove = serde_json::json!({"name": "app", "tags": ["prod", "stable"]});
        let (status, _) = call("DELETE", "/templates/tags", remove).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(tags().await, ["default=b2", "v1=b1", "v2=b2"]);

        let (status, _) = call("GET", "/templates/web/tags", serde_json::json!(null)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The template's current build is the one `default` names, wherever it moves.
        let current = || async {
            let (status, body) = call("GET", "/templates/app", serde_json::json!(null)).await;
            assert_eq!(status, StatusCode::OK);
            body["buildID"].clone()
        };
        assert_eq!(current().await, "b2");
        let back = serde_json::json!({"target": "app:v1", "tags": ["default"]});
        let (status, _) = call("POST", "/templates/tags", back).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(current().await, "b1");
    }
}
