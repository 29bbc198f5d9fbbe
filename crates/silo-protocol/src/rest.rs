//! E2B control-plane REST bodies (`/sandboxes`, `/v2/sandboxes`), as the SDK 2.63 sends
//! and parses them. Required fields here are the ones the SDK pops without a default:
//! leaving one out crashes the client, so they are plain (non-Option) fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::SandboxId;

/// Error body of every REST error: `{"code":404,"message":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

/// `POST /v2/sandboxes` (and legacy `POST /sandboxes`, which adds `secure`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until the sandbox is killed; default 300.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Legacy v1: whether envd requires an access token.
    #[serde(default)]
    pub secure: Option<bool>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// Pause instead of kill when the timeout is reached.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    /// Resume a paused sandbox when traffic for it arrives.
    #[serde(default)]
    pub auto_resume: Option<AutoResume>,
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// silo's own: CPUs, memory and disk of this sandbox instead of the template's or
    /// the server's defaults, within its maximums (E2B sets them per template only).
    #[serde(flatten)]
    pub resources: Resources,
}

/// CPUs, memory (MiB) and disk (MiB), each given or not: asked for by a create, or a
/// template's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    #[serde(default, rename = "cpuCount", skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    #[serde(
        default,
        rename = "diskSizeMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_mb: Option<u32>,
}

impl Resources {
    /// Each field from `self` if given, else from `fallback`.
    pub fn or(self, fallback: Resources) -> Resources {
        Resources {
            cpu_count: self.cpu_count.or(fallback.cpu_count),
            memory_mb: self.memory_mb.or(fallback.memory_mb),
            disk_size_mb: self.disk_size_mb.or(fallback.disk_size_mb),
        }
    }
}

/// The egress part of `network`, shared by the create body and the update.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Egress {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
    #[serde(default)]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default)]
    pub egress_proxy: Option<serde_json::Value>,
    #[serde(default)]
    pub rules: Option<serde_json::Value>,
}

/// `network` of the create body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(flatten)]
    pub egress: Egress,
    #[serde(default)]
    pub allow_public_traffic: Option<bool>,
    #[serde(default)]
    pub mask_request_host: Option<String>,
}

/// `PUT /sandboxes/{id}/network`: replaces the egress rules; omitted fields are cleared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkUpdate {
    #[serde(flatten)]
    pub egress: Egress,
    #[serde(default)]
    pub allow_internet_access: Option<bool>,
}

/// `autoResume` of the create body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

/// What happens at the timeout, and whether traffic wakes a paused sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Kill,
    Pause,
}

/// `POST /sandboxes/{id}/resume` (legacy; connect does the same).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResumeSandbox {
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub auto_pause: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewSnapshot {
    #[serde(default)]
    pub name: Option<String>,
    /// `false` asks for a filesystem-only snapshot.
    #[serde(default)]
    pub memory: Option<bool>,
}

/// A snapshot: `POST /sandboxes/{id}/snapshots` answers one, `GET /snapshots` a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForkSandbox {
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub count: Option<u32>,
}

/// One entry of a fork's answer: the new sandbox, or why that copy failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum ForkResult {
    Sandbox(Sandbox),
    Error(ApiError),
}

/// `POST /sandboxes/{id}/connect` and `/v2/.../connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectSandbox {
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetTimeout {
    pub timeout: u64,
}

/// Result of create and connect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: SandboxId,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
    /// silo's: only in lists that ask for `state=killed`.
    Killed,
}

impl SandboxState {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Killed => "killed",
        }
    }
}

/// `GET /sandboxes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: SandboxId,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub end_at: String,
    pub envd_version: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    pub state: SandboxState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// An entry of `GET /v2/sandboxes`: the detail's required fields plus metadata.
pub type ListedSandbox = SandboxDetail;

/// One sample of `GET /sandboxes/{id}/metrics` (and of `GET /sandboxes/metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// RFC 3339.
    pub timestamp: String,
    /// Unix seconds.
    pub timestamp_unix: i64,
    pub cpu_count: u32,
    /// Of all its CPUs together, 0-100.
    pub cpu_used_pct: f64,
    /// Bytes, as the rest.
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// `GET /sandboxes/{id}/metrics?start&end` (Unix seconds, both optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct MetricsQuery {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// One entry of a sandbox's log: a lifecycle event, a process's start or exit, or a line
/// of its output. `fields` says which (`type`) and carries the details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogEntry {
    /// RFC 3339.
    pub timestamp: String,
    pub level: LogLevel,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// `GET /v2/sandboxes/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogsV2 {
    pub logs: Vec<SandboxLogEntry>,
}

/// `GET /sandboxes/{id}/logs` (v1): plain lines and the same entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxLogs {
    pub logs: Vec<SandboxLogLine>,
    pub log_entries: Vec<SandboxLogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogLine {
    /// RFC 3339.
    pub timestamp: String,
    pub line: String,
}

/// `GET /v2/sandboxes/{id}/logs?cursor&limit&direction&level&search`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct LogsQueryV2 {
    /// Unix milliseconds: from here on (forward, the default) or up to here (backward).
    pub cursor: Option<i64>,
    pub limit: Option<usize>,
    pub direction: Option<LogsDirection>,
    /// The least level shown.
    pub level: Option<LogLevel>,
    pub search: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogsDirection {
    Forward,
    Backward,
}

/// `GET /sandboxes/{id}/logs?start&limit` (v1; `start` in Unix milliseconds).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct LogsQueryV1 {
    pub start: Option<i64>,
    pub limit: Option<usize>,
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: the newest sample of each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxesWithMetrics {
    pub sandboxes: BTreeMap<String, SandboxMetric>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_sdk_sends() {
        let body = r#"{"templateID":"base","timeout":15,"metadata":{"a":"b"},"envVars":{},"secure":true,"allow_internet_access":true}"#;
        let req: NewSandbox = serde_json::from_str(body).unwrap();
        assert_eq!(req.template_id, "base");
        assert_eq!(req.timeout, Some(15));
        assert_eq!(req.metadata.unwrap()["a"], "b");
        assert_eq!(req.secure, Some(true));
    }

    #[test]
    fn sandbox_has_the_sdk_required_names() {
        let sbx = Sandbox {
            template_id: "base".into(),
            sandbox_id: SandboxId::generate(),
            client_id: "silo".into(),
            envd_version: "0.6.13".into(),
            alias: None,
            envd_access_token: None,
            traffic_access_token: None,
            domain: None,
        };
        let v = serde_json::to_value(&sbx).unwrap();
        for key in [
            "templateID",
            "sandboxID",
            "clientID",
            "envdVersion",
            "domain",
            "trafficAccessToken",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
