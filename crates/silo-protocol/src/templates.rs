//! The template build API (E2B's v2/v3 `Template` build endpoints, which the e2b 2.x SDK
//! and `silo template build` both drive), and template listing.
//!
//! A build is requested (`POST /v3/templates`), its files are uploaded by content hash
//! (`GET /templates/{id}/files/{hash}` says whether to, and where), it is started (`POST
//! /v2/templates/{id}/builds/{build}`), and its status and log are polled (`GET
//! /templates/{id}/builds/{build}/status?logsOffset=N`). Times are RFC 3339 strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v3/templates`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildRequest {
    /// The template's name (E2B also accepts `alias`, its older name for it).
    #[serde(default, alias = "alias")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// silo's: the disk for a sandbox's writes.
    #[serde(
        default,
        rename = "diskSizeMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_mb: Option<u32>,
}

/// The answer to [`BuildRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildRequested {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub public: bool,
    pub names: Vec<String>,
    pub tags: Vec<String>,
    pub aliases: Vec<String>,
}

/// `GET /templates/{id}/files/{hash}`: whether the server has those files, and where to
/// `PUT` them (a tar, gzipped or not) if not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileUpload {
    pub present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `POST /v2/templates/{id}/builds/{build}`: what to build. E2B's SDK sends `steps`;
/// `silo template build` sends a Dockerfile and the hash of its uploaded context
/// (silo's extension: ARG, LABEL and ADD have no E2B step).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct BuildStart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    /// Credentials for `from_image`'s registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<RegistryCredentials>,
    /// Rebuild every step, whatever is cached.
    pub force: bool,
    pub steps: Vec<BuildStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The build context's upload (see [`FileUpload`]), for a Dockerfile build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_hash: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
}

/// E2B's `fromImageRegistry`: `{"type": "registry", "username", "password"}` (silo
/// supports that type; `aws` and `gcp` are E2B's own integrations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RegistryCredentials {
    #[serde(rename = "type")]
    pub kind: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One E2B build step: `COPY [src, dest, user, mode]`, `RUN [cmd, user?]`, `ENV [k, v,
/// ...]`, `WORKDIR [dir]`, `USER [name]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct BuildStep {
    #[serde(rename = "type")]
    pub kind: String,
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    pub force: bool,
}

/// `GET /templates/{id}/builds/{build}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// `waiting`, `building`, `ready` or `error`.
    pub status: String,
    /// Always empty (E2B's deprecated plain-text log).
    pub logs: Vec<String>,
    pub log_entries: Vec<BuildLogLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildLogLine {
    pub timestamp: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildFailure {
    pub message: String,
    /// The step that failed: its number from 1, `base` or `finalize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// One template in `GET /templates` (and, with `builds`, `GET /templates/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The newest successful build ("" for one built outside the API).
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    pub public: bool,
    pub aliases: Vec<String>,
    pub names: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<()>,
    pub last_spawned_at: Option<String>,
    pub spawn_count: u64,
    pub build_count: u64,
    pub envd_version: String,
    pub build_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builds: Option<Vec<TemplateBuildInfo>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildInfo {
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
}

/// `GET /templates/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AliasInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub public: bool,
}

/// `POST /templates/tags`: give the build `target` (`name:tag`) names more tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignTags {
    pub target: String,
    pub tags: Vec<String>,
}

/// The answer to [`AssignTags`]: the build the tags name now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignedTags {
    pub tags: Vec<String>,
    #[serde(rename = "buildID")]
    pub build_id: String,
}

/// `DELETE /templates/tags`: remove tags of the template `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemoveTags {
    pub name: String,
    pub tags: Vec<String>,
}

/// One entry of `GET /templates/{id}/tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateTag {
    pub tag: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// When the tag was set to its build.
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sdks_build_start() {
        let body = r#"{"fromImage":"e2bdev/base","force":false,"steps":[
            {"type":"COPY","args":["app.py","/app/","",""],"force":false,"filesHash":"ab12"},
            {"type":"RUN","args":["pip install flask","root"],"force":true}],
            "startCmd":"python app.py","readyCmd":"curl -s localhost:8000"}"#;
        let start: BuildStart = serde_json::from_str(body).unwrap();
        assert_eq!(start.from_image.as_deref(), Some("e2bdev/base"));
        assert_eq!(start.steps[0].files_hash.as_deref(), Some("ab12"));
        assert!(start.steps[1].force);
        assert_eq!(start.start_cmd.as_deref(), Some("python app.py"));
    }

    #[test]
    fn build_request_takes_the_old_alias_field() {
        let req: BuildRequest = serde_json::from_str(r#"{"alias":"web","cpuCount":2}"#).unwrap();
        assert_eq!((req.name.as_deref(), req.cpu_count), (Some("web"), Some(2)));
    }
}
