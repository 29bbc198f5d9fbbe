//! E2B's sandbox REST endpoints (v1 and v2). Handlers only extract, call the manager and
//! shape the answer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use silo_catalog::{ListFilter, SandboxRecord, SandboxState};
use silo_protocol::rest::{self, ConnectSandbox, NewSandbox, SetTimeout};

use crate::error::ApiError;
use crate::extract::{ApiJson, Caller, SandboxPath};
use crate::AppState;
use silo_node::network::{Cidr, DomainPattern, EgressPolicy};
use silo_node::sandbox::CreateRequest;

pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// E2B's page size for `GET /v2/sandboxes`: the default and the most a page holds
/// (a larger `limit` gets this many, and the token of the next page).
const LIST_PAGE: usize = 100;

/// What a list's `state=running` and `state=paused` select.
const RUNNING: [SandboxState; 2] = [SandboxState::Running, SandboxState::Resuming];
const PAUSED: [SandboxState; 2] = [SandboxState::Paused, SandboxState::Pausing];

fn wire_state(state: SandboxState) -> rest::SandboxState {
    match state {
        SandboxState::Paused | SandboxState::Pausing => rest::SandboxState::Paused,
        SandboxState::Killing | SandboxState::Killed => rest::SandboxState::Killed,
        _ => rest::SandboxState::Running,
    }
}

impl AppState {
    pub(crate) fn sandbox_body(&self, rec: &SandboxRecord) -> rest::Sandbox {
        rest::Sandbox {
            template_id: rec.template_id.clone(),
            sandbox_id: rec.id.clone(),
            client_id: crate::CLIENT_ID.into(),
            envd_version: rec.envd_version.clone(),
            alias: None,
            envd_access_token: rec.envd_access_token.clone(),
            traffic_access_token: rec.traffic_access_token.clone(),
            domain: self.domain.clone(),
        }
    }

    fn detail_body(&self, rec: &SandboxRecord) -> rest::SandboxDetail {
        rest::SandboxDetail {
            template_id: rec.template_id.clone(),
            sandbox_id: rec.id.clone(),
            client_id: crate::CLIENT_ID.into(),
            started_at: rfc3339(rec.started_at_ms),
            end_at: rfc3339(rec.end_at_ms),
            envd_version: rec.envd_version.clone(),
            cpu_count: rec.cpu_count,
            memory_mb: rec.memory_mb,
            disk_size_mb: rec.disk_size_mb,
            state: wire_state(rec.state),
            alias: None,
            metadata: rec.metadata.clone(),
            envd_access_token: rec.envd_access_token.clone(),
            domain: self.domain.clone(),
            lifecycle: Some(rest::Lifecycle {
                auto_resume: rec.auto_resume,
                on_timeout: if rec.auto_pause {
                    rest::OnTimeout::Pause
                } else {
                    rest::OnTimeout::Kill
                },
            }),
        }
    }
}

/// `POST /sandboxes` (v1): as v2.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", request_body = NewSandbox, responses((status = 201, description = "Created and running", body = rest::Sandbox), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 409, description = "killed before it was up", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn create_v1(
    state: State<AppState>,
    body: ApiJson<NewSandbox>,
) -> Result<impl IntoResponse, ApiError> {
    create(state, body).await
}

/// `POST /v2/sandboxes`.
#[utoipa::path(post, path = "/v2/sandboxes", tag = "sandboxes", request_body = NewSandbox, responses((status = 201, description = "Created and running", body = rest::Sandbox), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "unknown template", body = silo_protocol::rest::ApiError), (status = 409, description = "killed before it was up", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewSandbox>,
) -> Result<impl IntoResponse, ApiError> {
    let started = std::time::Instant::now();
    let rec = app
        .manager
        .create(CreateRequest {
            template: body.template_id,
            timeout_seconds: body.timeout,
            metadata: body.metadata.unwrap_or_default(),
            env_vars: body.env_vars.unwrap_or_default(),
            secure: body.secure.unwrap_or(true),
            auto_pause: body.auto_pause.unwrap_or(false),
            auto_resume: body.auto_resume.is_some_and(|a| a.enabled),
            public_traffic: body
                .network
                .as_ref()
                .and_then(|n| n.allow_public_traffic)
                .unwrap_or(true),
            egress: create_egress(
                body.allow_internet_access,
                body.network.unwrap_or_default(),
                app.manager.blocked(),
            )?,
            resources: body.resources,
        })
        .await?;
    app.telemetry
        .observe_create(&rec.template_id, started.elapsed());
    crate::proxy::preconnect(&app, rec.id.clone());
    Ok((StatusCode::CREATED, Json(app.sandbox_body(&rec))))
}

/// `POST /sandboxes/{id}/connect` (v1): as v2.
#[utoipa::path(post, path = "/sandboxes/{id}/connect", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Option<ConnectSandbox>, description = "Optional; `timeout` in seconds"), responses((status = 200, description = "Already running", body = rest::Sandbox), (status = 201, description = "Was paused, resumed", body = rest::Sandbox), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn connect_v1(
    state: State<AppState>,
    id: SandboxPath,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    connect(state, id, caller, body).await
}

/// `POST /v2/sandboxes/{id}/connect`: 200 when already running, 201 when it was paused
/// and has been resumed.
#[utoipa::path(post, path = "/v2/sandboxes/{id}/connect", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Option<ConnectSandbox>, description = "Optional; `timeout` in seconds"), responses((status = 200, description = "Already running", body = rest::Sandbox), (status = 201, description = "Was paused, resumed", body = rest::Sandbox), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn connect(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    Caller(caller): Caller,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // The body is optional: v1 clients send `{"timeout":N}`, others may send nothing.
    let timeout = optional_body::<ConnectSandbox>(&body, "connect")?.timeout;
    let reason = format!("resumed by connect ({caller})");
    let (rec, resumed) = app.manager.connect(&id, timeout, &reason).await?;
    Ok((resumed_status(resumed), Json(app.sandbox_body(&rec))))
}

/// A JSON body that may also be empty (then the defaults).
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("invalid {what} body: {err}")))
}

fn resumed_status(resumed: bool) -> StatusCode {
    if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// `POST /sandboxes/{id}/resume` (legacy): like connect, but a running sandbox is 409.
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Option<rest::ResumeSandbox>), responses((status = 201, description = "Resumed", body = rest::Sandbox), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 409, description = "already running", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn resume(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    Caller(caller): Caller,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let timeout = optional_body::<rest::ResumeSandbox>(&body, "resume")?.timeout;
    let reason = format!("resumed by request ({caller})");
    let (rec, resumed) = app.manager.resume(&id, timeout, &reason).await?;
    if !resumed {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    Ok((StatusCode::CREATED, Json(app.sandbox_body(&rec))))
}

/// `PUT /sandboxes/{id}/network`: 204.
#[utoipa::path(put, path = "/sandboxes/{id}/network", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body = rest::NetworkUpdate, responses((status = 204, description = "Applied"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 409, description = "not running", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn update_network(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiJson(body): ApiJson<rest::NetworkUpdate>,
) -> Result<StatusCode, ApiError> {
    let policy = egress_policy(
        body.allow_internet_access,
        body.egress,
        app.manager.blocked(),
    )?;
    app.manager.update_network(&id, policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What silo cannot enforce yet is refused rather than ignored: a sandbox must never be
/// more open than asked.
fn unsupported(what: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "network.{what} is not supported by silo yet; use allowOut/denyOut (addresses, CIDR blocks, and host names in allowOut)"
    ))
}

/// E2B's cap on `dnsServers`.
const MAX_DNS_SERVERS: usize = 10;

fn create_egress(
    allow_internet_access: Option<bool>,
    network: rest::NetworkConfig,
    blocked: &[Cidr],
) -> Result<EgressPolicy, ApiError> {
    if network.mask_request_host.is_some() {
        return Err(unsupported("maskRequestHost"));
    }
    egress_policy(allow_internet_access, network.egress, blocked)
}

/// The policy a request asks for. `blocked` holds what no sandbox reaches: silo asks
/// the resolvers in `dnsServers` for the sandbox, so one there would be a way in.
fn egress_policy(
    allow_internet_access: Option<bool>,
    egress: rest::Egress,
    blocked: &[Cidr],
) -> Result<EgressPolicy, ApiError> {
    if egress.egress_proxy.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(unsupported("egressProxy"));
    }
    if egress
        .rules
        .as_ref()
        .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
    {
        return Err(unsupported("rules"));
    }
    let bad = |field: &str, err: String| ApiError::BadRequest(format!("network.{field}: {err}"));
    let mut allow = Vec::new();
    let mut allow_domains = Vec::new();
    for entry in egress.allow_out.unwrap_or_default() {
        match entry.parse::<Cidr>() {
            Ok(cidr) => allow.push(cidr),
            Err(not_cidr) => allow_domains.push(
                entry
                    .parse::<DomainPattern>()
                    .map_err(|not_name| bad("allowOut", format!("{not_cidr}, and {not_name}")))?,
            ),
        }
    }
    let deny = egress
        .deny_out
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            entry.parse::<Cidr>().map_err(|err| {
                bad("denyOut", format!("{err}; host names are allowed in allowOut only (deny the rest with 0.0.0.0/0)"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dns_servers = egress
        .dns_servers
        .map(|servers| {
            if servers.len() > MAX_DNS_SERVERS {
                return Err(bad(
                    "dnsServers",
                    format!("at most {MAX_DNS_SERVERS} servers"),
                ));
            }
            servers
                .iter()
                .map(|s| {
                    let ip = s
                        .trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| bad("dnsServers", format!("{s:?} is not an IPv4 address")))?;
                    match blocked.iter().find(|cidr| cidr.contains(ip)) {
                        Some(cidr) => Err(bad(
                            "dnsServers",
                            format!(
                                "{ip} is in {cidr}, which sandboxes never reach (this server's \
                                 sandbox addresses, loopback, link-local and metadata, \
                                 multicast); name a resolver outside them"
                            ),
                        )),
                        None => Ok(ip),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(EgressPolicy {
        internet: allow_internet_access.unwrap_or(true),
        allow,
        deny,
        allow_domains,
        dns_servers,
    })
}

/// `POST /sandboxes/{id}/pause`: 204, or 409 when it is already paused.
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), responses((status = 204, description = "Paused"), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 409, description = "already paused", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn pause(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    Caller(caller): Caller,
) -> Result<StatusCode, ApiError> {
    // The body (`memory`, `requireHealthyGuest`) changes nothing here: a pause always
    // keeps memory, and the agent's health is checked at resume.
    let reason = format!("paused by request ({caller})");
    app.manager.pause(&id, &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /sandboxes/{id}`.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), responses((status = 200, body = rest::SandboxDetail), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn get_info(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
) -> Result<impl IntoResponse, ApiError> {
    let rec = app.manager.get(&id)?;
    Ok(Json(app.detail_body(&rec)))
}

/// `DELETE /sandboxes/{id}`.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), responses((status = 204, description = "Killed"), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn kill(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    Caller(caller): Caller,
) -> Result<StatusCode, ApiError> {
    app.manager
        .kill(&id, &format!("killed by request ({caller})"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout`.
#[utoipa::path(post, path = "/sandboxes/{id}/timeout", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body = SetTimeout, responses((status = 204, description = "Its end is now plus `timeout` seconds"), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox, or it is paused (it gets a timeout when it resumes)", body = silo_protocol::rest::ApiError), (status = 409, description = "it is being paused or resumed", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn set_timeout(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiJson(body): ApiJson<SetTimeout>,
) -> Result<StatusCode, ApiError> {
    app.manager.set_timeout(&id, body.timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /sandboxes` (v1): every running sandbox, optionally filtered by metadata, in
/// one answer (E2B's does not page it).
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes", params(("metadata" = Option<String>, Query, description = "`k=v&k2=v2`, keys and values percent-encoded first")), responses((status = 200, description = "Running sandboxes", body = Vec<rest::SandboxDetail>), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn list_v1(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut filter = parse_list_query(query.as_deref().unwrap_or(""))?;
    filter.states = RUNNING.to_vec();
    filter.after = None;
    filter.limit = None;
    let (body, _) = list_page(&app, &filter)?;
    Ok(Json(body))
}

/// `GET /v2/sandboxes`: filtered by state and metadata, paged with `X-Next-Token`.
#[utoipa::path(get, path = "/v2/sandboxes", tag = "sandboxes", params(("metadata" = Option<String>, Query, description = "`k=v&k2=v2`, keys and values percent-encoded first"), ("state" = Option<String>, Query, description = "Comma-separated: running, paused (E2B's), killed (silo's: the history)"), ("template" = Option<String>, Query, description = "A template's name or alias (its sandboxes of every tag), or name:tag"), ("order" = Option<String>, Query, description = "By start time: desc (newest first, the default) or asc"), ("startedAfter" = Option<String>, Query, description = "RFC 3339: only sandboxes started at or after it"), ("limit" = Option<u32>, Query, description = "Page size: 100 by default, and at most"), ("nextToken" = Option<String>, Query, description = "X-Next-Token of the previous page")), responses((status = 200, description = "A page of sandboxes", body = Vec<rest::SandboxDetail>, headers(("X-Next-Token" = String, description = "Present when more follow"))), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn list_v2(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let filter = parse_list_query(query.as_deref().unwrap_or(""))?;
    let (body, next_token) = list_page(&app, &filter)?;
    let mut headers = HeaderMap::new();
    if let Some(token) = next_token {
        headers.insert(
            "x-next-token",
            HeaderValue::from_str(&token.to_string()).expect("cursors are header-safe"),
        );
    }
    Ok((headers, Json(body)))
}

/// One page of the list as wire bodies, and the token of the next page.
fn list_page(
    app: &AppState,
    filter: &ListFilter,
) -> Result<(Vec<rest::SandboxDetail>, Option<silo_catalog::Cursor>), ApiError> {
    // Rows hold a template's name: an alias asks for the template it names. A name no
    // longer resolving (its template deleted) still finds the sandboxes kept of it.
    let resolved = filter
        .template_id
        .as_deref()
        .and_then(|template| app.builder.resolve(template).ok());
    let page = match resolved {
        Some(template) => app.manager.catalog().list(&ListFilter {
            template_id: Some(template),
            ..filter.clone()
        })?,
        None => app.manager.catalog().list(filter)?,
    };
    let body = page
        .sandboxes
        .iter()
        .map(|rec| app.detail_body(rec))
        .collect();
    Ok((body, page.next_token))
}

/// The list query, a page of [`LIST_PAGE`] unless `limit` asks for fewer. `metadata` is
/// `k=v&k2=v2` whose parts were encoded before the whole was encoded again, so it is
/// decoded twice.
fn parse_list_query(query: &str) -> Result<ListFilter, ApiError> {
    let mut filter = ListFilter {
        limit: Some(LIST_PAGE),
        ..ListFilter::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "metadata" => {
                let pairs: BTreeMap<String, String> = form_urlencoded::parse(value.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                filter.metadata.extend(pairs);
            }
            "state" => {
                for state in value.split(',').filter(|s| !s.is_empty()) {
                    // Each with the states on the way to it, which read as it on the
                    // wire (`wire_state`).
                    let states: &[SandboxState] = match state {
                        "running" => &RUNNING,
                        "paused" => &PAUSED,
                        // silo's: the history, until the retention window forgets them.
                        "killed" => &[SandboxState::Killing, SandboxState::Killed],
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "unknown state {other:?}: use running, paused or killed"
                            )))
                        }
                    };
                    filter.states.extend_from_slice(states);
                }
            }
            "nextToken" => {
                filter.after = Some(
                    value
                        .parse()
                        .map_err(|e: silo_catalog::BadToken| ApiError::BadRequest(e.to_string()))?,
                )
            }
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    ApiError::BadRequest(format!("limit {value:?} is not a positive number"))
                })?;
                if limit == 0 {
                    return Err(ApiError::BadRequest("limit must be at least 1".into()));
                }
                filter.limit = Some(limit.min(LIST_PAGE));
            }
            "template" => filter.template_id = Some(value.into_owned()),
            "order" => {
                filter.order = match value.as_ref() {
                    "asc" => silo_catalog::Order::Ascending,
                    "desc" => silo_catalog::Order::Descending,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "unknown order {other:?}: use asc (oldest first) or desc (newest first)"
                        )))
                    }
                }
            }
            "startedAfter" => {
                let at = chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "startedAfter {value:?} is not an RFC 3339 time, like 2026-01-02T03:04:05Z: {e}"
                    ))
                })?;
                filter.started_after_ms = Some(at.timestamp_millis());
            }
            _ => {}
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_filter_by_alias_lists_the_template_it_names() {
        use crate::testing::{record, TestApp};
        let test = TestApp::new();
        let base = record(SandboxState::Running, None);
        let mut other = record(SandboxState::Running, None);
        other.template_id = "other".into();
        test.insert(&base);
        test.insert(&other);
        test.state
            .manager
            .catalog()
            .set_alias("mine", "base")
            .unwrap();
        let listed = |template: &str| {
            let filter = ListFilter {
                template_id: Some(template.into()),
                ..ListFilter::default()
            };
            let (page, _) = list_page(&test.state, &filter).unwrap();
            page.into_iter().map(|s| s.sandbox_id).collect::<Vec<_>>()
        };
        assert_eq!(listed("mine"), vec![base.id.clone()]);
        assert_eq!(listed("base"), vec![base.id.clone()]);
        // A name resolving to no template still finds the rows kept of it.
        assert_eq!(listed("other"), vec![other.id.clone()]);
    }

    #[test]
    fn metadata_is_decoded_twice() {
        // What the SDK sends for metadata={"a b": "c&d", "x": "1"}.
        let query = "metadata=a%2520b%3Dc%2526d%26x%3D1&state=running%2Cpaused&limit=5";
        let filter = parse_list_query(query).unwrap();
        assert_eq!(filter.metadata["a b"], "c&d");
        assert_eq!(filter.metadata["x"], "1");
        assert_eq!(filter.states, [RUNNING, PAUSED].concat());
        assert_eq!(filter.limit, Some(5));
    }

    #[test]
    fn pages_hold_e2bs_default_and_at_most_that() {
        let limit = |query| parse_list_query(query).unwrap().limit;
        assert_eq!(limit(""), Some(LIST_PAGE));
        assert_eq!(limit("limit=7"), Some(7));
        assert_eq!(limit("limit=1000"), Some(LIST_PAGE));
    }

    #[test]
    fn a_token_this_server_did_not_give_is_a_bad_request() {
        assert!(parse_list_query("nextToken=1765000000000_iabc").is_ok());
        for bad in ["nextToken=iabc", "nextToken=", "nextToken=x_y"] {
            assert!(
                matches!(parse_list_query(bad), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn resolvers_sandboxes_never_reach_are_refused() {
        let blocked: Vec<Cidr> = std::iter::once("10.213.0.0/16".parse().unwrap())
            .chain(silo_node::network::ALWAYS_BLOCKED)
            .collect();
        let naming = |server: &str| rest::Egress {
            allow_out: Some(vec!["example.com".into()]),
            dns_servers: Some(vec!["1.1.1.1".into(), server.into()]),
            ..rest::Egress::default()
        };
        for server in ["10.213.0.6", "127.0.0.53", "169.254.169.254", "0.0.0.0"] {
            match egress_policy(None, naming(server), &blocked) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.starts_with("network.dnsServers: "), "{message}");
                    assert!(message.contains(server), "{message}");
                }
                other => panic!("{server}: {other:?}"),
            }
        }
        let policy = egress_policy(None, naming("9.9.9.9"), &blocked).unwrap();
        assert_eq!(policy.dns_servers.unwrap().len(), 2);
    }

    #[test]
    fn bad_list_queries_are_400() {
        assert!(parse_list_query("state=zombie").is_err());
        assert!(parse_list_query("limit=-1").is_err());
        assert!(parse_list_query("limit=0").is_err());
        assert!(parse_list_query("order=newest").is_err());
        assert!(parse_list_query("startedAfter=yesterday").is_err());
    }

    #[test]
    fn order_and_start_time_are_the_sdks() {
        // The Python SDK sends `started_after.astimezone().isoformat()`, encoded.
        let filter =
            parse_list_query("order=asc&startedAfter=2026-12-07T13%3A00%3A00.250000%2B01%3A00")
                .unwrap();
        assert_eq!(filter.order, silo_catalog::Order::Ascending);
        assert_eq!(filter.started_after_ms, Some(1_796_644_800_250));
        assert_eq!(
            parse_list_query("").unwrap().order,
            silo_catalog::Order::Descending
        );
    }
}
