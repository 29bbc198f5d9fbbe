//! envd's `process.Process` and `filesystem.Filesystem` messages, and its plain-HTTP bodies,
//! in proto3 canonical JSON.
//!
//! Serialization emits what envd emits (camelCase names, enum names, `int64` as a string).
//! Deserialization is lenient the way proto3 JSON parsers are: proto field names as well as
//! camelCase, enums as names or numbers, integers as numbers or strings, unknown fields
//! ignored. A oneof is an externally tagged enum: an object with exactly one key.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// The envd version silo-agent implements, as the control plane reports it
/// (`envdVersion`). The SDKs gate features on it (`e2b/envd/versions.py`); every gate up
/// to 0.6.4 (`allowNetworkMounts`) is implemented, and 0.6.13 is the envd the protocol
/// spec was taken from.
pub const ENVD_VERSION: &str = "0.6.13";

/// envd's health route: answered (204) without the access token.
pub const HEALTH_PATH: &str = "/health";

// ---------------------------------------------------------------------------------------------
// Scalar helpers

/// Integers in proto3 JSON may arrive as numbers or as decimal strings.
fn int_from_value<T: TryFrom<i64> + TryFrom<u64>>(v: serde_json::Value) -> Result<T, String> {
    let out_of_range = || "integer out of range".to_string();
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                T::try_from(u).map_err(|_| out_of_range())
            } else if let Some(i) = n.as_i64() {
                T::try_from(i).map_err(|_| out_of_range())
            } else {
                Err(format!("{n} is not an integer"))
            }
        }
        serde_json::Value::String(s) => {
            if let Ok(u) = s.parse::<u64>() {
                T::try_from(u).map_err(|_| out_of_range())
            } else if let Ok(i) = s.parse::<i64>() {
                T::try_from(i).map_err(|_| out_of_range())
            } else {
                Err(format!("{s:?} is not an integer"))
            }
        }
        serde_json::Value::Null => T::try_from(0u64).map_err(|_| out_of_range()),
        other => Err(format!("expected an integer, got {other}")),
    }
}

/// `deserialize_with` for any integer field.
fn de_int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    int_from_value(serde_json::Value::deserialize(d)?).map_err(de::Error::custom)
}

/// `int64` goes on the wire as a decimal string, as protojson writes it.
mod int64_string {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        de_int(d)
    }
}

/// Proto `bytes`: standard base64 with padding.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        // protojson accepts both alphabets, padded or not.
        let cleaned = s.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(cleaned)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned))
            .map(Base64Bytes)
            .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// Proto enums: serialized by name, accepted by name or number.
macro_rules! proto_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $num:literal => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num),+ }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = serde_json::Value::deserialize(d)?;
                if let serde_json::Value::String(s) = &v {
                    $(if s == $wire { return Ok($name::$variant); })+
                }
                if v.is_null() {
                    return Ok($name::default());
                }
                let n: i32 = int_from_value(v).map_err(de::Error::custom)?;
                $(if n == $num { return Ok($name::$variant); })+
                Err(de::Error::custom(format!(concat!("unknown ", stringify!($name), " {}"), n)))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// process.Process

proto_enum!(
    /// `process.Signal`.
    Signal {
        Unspecified = 0 => "SIGNAL_UNSPECIFIED",
        Sigterm = 15 => "SIGNAL_SIGTERM",
        Sigkill = 9 => "SIGNAL_SIGKILL",
    }
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(default, deserialize_with = "de_int")]
    pub cols: u32,
    #[serde(default, deserialize_with = "de_int")]
    pub rows: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `process.ProcessSelector`: a oneof of `pid` and `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SelectorWire", into = "SelectorWire")]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

#[derive(Serialize, Deserialize)]
struct SelectorWire {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u32"
    )]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

fn de_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_int(d).map(Some)
}

impl TryFrom<SelectorWire> for ProcessSelector {
    type Error = String;

    fn try_from(w: SelectorWire) -> Result<Self, String> {
        match (w.pid, w.tag) {
            (Some(pid), None) => Ok(ProcessSelector::Pid(pid)),
            (None, Some(tag)) => Ok(ProcessSelector::Tag(tag)),
            (None, None) => Err("process selector needs a pid or a tag".into()),
            (Some(_), Some(_)) => Err("process selector takes a pid or a tag, not both".into()),
        }
    }
}

impl From<ProcessSelector> for SelectorWire {
    fn from(s: ProcessSelector) -> Self {
        match s {
            ProcessSelector::Pid(pid) => SelectorWire {
                pid: Some(pid),
                tag: None,
            },
            ProcessSelector::Tag(tag) => SelectorWire {
                pid: None,
                tag: Some(tag),
            },
        }
    }
}

impl fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessSelector::Pid(pid) => write!(f, "pid {pid}"),
            ProcessSelector::Tag(tag) => write!(f, "tag {tag:?}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub process: ProcessConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// `process.ProcessInput`: a oneof of `stdin` and `pty` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(Base64Bytes),
    Pty(Base64Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

/// One message of the `StreamInput` client stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start { process: ProcessSelector },
    Data { input: ProcessInput },
    Keepalive {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub signal: Signal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// `process.ProcessEvent.DataEvent`: one chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(Base64Bytes),
    Stderr(Base64Bytes),
    Pty(Base64Bytes),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(default, alias = "exit_code", deserialize_with = "de_int")]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `process.ProcessEvent`: the oneof carried by `StartResponse` and `ConnectResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start {
        #[serde(deserialize_with = "de_int")]
        pid: u32,
    },
    Data(DataEvent),
    End(EndEvent),
    Keepalive {},
}

/// `StartResponse` and `ConnectResponse` (identical on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEventResponse {
    pub event: ProcessEvent,
}

// ---------------------------------------------------------------------------------------------
// filesystem.Filesystem

proto_enum!(
    /// `filesystem.FileType`.
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
);

proto_enum!(
    /// `filesystem.EventType`.
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type", default)]
    pub file_type: FileType,
    pub path: String,
    #[serde(default, with = "int64_string")]
    pub size: i64,
    /// Go `os.FileMode` bits: permissions plus type bits (directory = 1<<31, ...).
    #[serde(default, deserialize_with = "de_int")]
    pub mode: u32,
    /// `ls`-style, as Go's `FileMode.String()` renders it: `-rw-r--r--`, `drwxr-xr-x`.
    #[serde(default)]
    pub permissions: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
    /// RFC 3339 with nanoseconds.
    #[serde(
        default,
        alias = "modified_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_time: Option<String>,
    #[serde(
        default,
        alias = "symlink_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub symlink_target: Option<String>,
    /// `user.e2b.<key>` extended attributes, prefix stripped.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, alias = "is_symlink")]
    pub is_symlink: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    #[serde(default)]
    pub path: String,
}

/// `StatRequest`, `MakeDirRequest` and `RemoveRequest` are all `{path}`.
pub type StatRequest = PathRequest;
pub type MakeDirRequest = PathRequest;
pub type RemoveRequest = PathRequest;

/// `StatResponse`, `MakeDirResponse` and `MoveResponse` are all `{entry}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "de_int")]
    pub depth: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    #[serde(default)]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (same fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchDirRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default, alias = "include_entry")]
    pub include_entry: bool,
    #[serde(default, alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    /// Path relative to the watched directory.
    pub name: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse`: a oneof of start, filesystem event and keepalive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    Start {},
    Filesystem(Box<FilesystemEvent>),
    Keepalive {},
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatcherIdMessage {
    #[serde(default, alias = "watcher_id")]
    pub watcher_id: String,
}

/// `CreateWatcherResponse`, `GetWatcherEventsRequest` and `RemoveWatcherRequest`.
pub type CreateWatcherResponse = WatcherIdMessage;
pub type GetWatcherEventsRequest = WatcherIdMessage;
pub type RemoveWatcherRequest = WatcherIdMessage;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetWatcherEventsResponse {
    #[serde(default)]
    pub events: Vec<FilesystemEvent>,
}

/// Every response without fields (`{}`), and every request without fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Plain HTTP

/// `POST /init`: what the control plane tells the agent right after the sandbox starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// silo's: the template's start command, run (as the default user) before `/init`
    /// answers; for a sandbox booted fresh, not one restored with its processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// silo's: run until it exits 0 before `/init` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// silo's: answer once the code interpreter's default kernels have started (or
    /// failed to); a pooled sandbox is then handed out with its kernels up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_kernels: Option<bool>,
}

/// One element of the `POST /files` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInfo {
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub entry_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `GET /metrics`, in envd's snake_case shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// `GET /silo/journal?after=SEQ` (silo's own, not envd's): the lives of the processes
/// started through the agent and their output, line by line, oldest first, for the
/// sandbox's log and timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalPage {
    pub entries: Vec<JournalEntry>,
    /// Entries after `after` that were dropped because the journal was full.
    #[serde(default)]
    pub dropped: u64,
}

/// What runs in a sandbox besides its agent (`GET /silo/activity`): whether freezing it
/// could hold anything up (the node's doze, ADR 0017).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Processes started through the agent that have not ended (envd's process list).
    pub started: u32,
    /// Every other process in the sandbox but the agent and its waiting shell: what the
    /// started ones started, daemons left behind by ended ones, interpreter kernels.
    pub others: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Counts from 1, one per entry, for the whole life of the agent.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub pid: u32,
    pub kind: JournalKind,
    /// The command line (start), one line of output (without its newline), or the end's
    /// status (exit).
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    Start,
    Stdout,
    Stderr,
    Pty,
    Exit,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Start => "start",
            JournalKind::Stdout => "stdout",
            JournalKind::Stderr => "stderr",
            JournalKind::Pty => "pty",
            JournalKind::Exit => "exit",
        }
    }
}

/// Error body of envd's plain-HTTP endpoints: `{"code":404,"message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    pub code: u16,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_request_from_captured_sdk_body() {
        let req: StartRequest = serde_json::from_value(
            json!({"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"]},"stdin":false}),
        )
        .unwrap();
        assert_eq!(req.process.cmd, "/bin/bash");
        assert_eq!(req.stdin, Some(false));
        assert!(req.pty.is_none());
    }

    #[test]
    fn events_serialize_like_envd() {
        let start = ProcessEventResponse {
            event: ProcessEvent::Start { pid: 4242 },
        };
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"event":{"start":{"pid":4242}}}"#
        );
        let data = ProcessEvent::Data(DataEvent::Stdout(Base64Bytes(b"hi\n".to_vec())));
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"data":{"stdout":"aGkK"}}"#
        );
        let end = ProcessEvent::End(EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".into(),
            error: None,
        });
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"end":{"exitCode":0,"exited":true,"status":"exit status 0"}}"#
        );
        assert_eq!(
            serde_json::to_string(&ProcessEvent::Keepalive {}).unwrap(),
            r#"{"keepalive":{}}"#
        );
    }

    #[test]
    fn lenient_integers_enums_and_names() {
        let sig: SendSignalRequest =
            serde_json::from_value(json!({"process":{"pid":"12"},"signal":9})).unwrap();
        assert_eq!(sig.process, ProcessSelector::Pid(12));
        assert_eq!(sig.signal, Signal::Sigkill);
        let sig: SendSignalRequest =
            serde_json::from_value(json!({"process":{"tag":"t"},"signal":"SIGNAL_SIGTERM"}))
                .unwrap();
        assert_eq!(sig.process, ProcessSelector::Tag("t".into()));
        assert_eq!(sig.signal, Signal::Sigterm);
        let end: EndEvent = serde_json::from_value(json!({"exit_code":"-1"})).unwrap();
        assert_eq!(end.exit_code, -1);
        let w: WatchDirRequest =
            serde_json::from_value(json!({"path":"/x","include_entry":true})).unwrap();
        assert!(w.include_entry);
        let w: WatchDirRequest =
            serde_json::from_value(json!({"path":"/x","includeEntry":true})).unwrap();
        assert!(w.include_entry);
        assert!(serde_json::from_value::<ConnectRequest>(json!({"process":{}})).is_err());
        assert!(serde_json::from_value::<SendSignalRequest>(
            json!({"process":{"pid":1},"signal":"SIGNAL_NOPE"})
        )
        .is_err());
    }

    #[test]
    fn entry_info_wire_shape() {
        let e = EntryInfo {
            name: "a".into(),
            file_type: FileType::File,
            path: "/a".into(),
            size: 5,
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "5");
        assert_eq!(v["isSymlink"], false);
        let back: EntryInfo =
            serde_json::from_value(json!({"name":"a","type":1,"path":"/a","size":5})).unwrap();
        assert_eq!(back.file_type, FileType::File);
        assert_eq!(back.size, 5);
    }

    #[test]
    fn stream_input_messages() {
        let m: StreamInputRequest =
            serde_json::from_value(json!({"data":{"input":{"stdin":"aGk="}}})).unwrap();
        assert_eq!(
            m,
            StreamInputRequest::Data {
                input: ProcessInput::Stdin(Base64Bytes(b"hi".to_vec()))
            }
        );
        let m: StreamInputRequest = serde_json::from_value(json!({"keepalive":{}})).unwrap();
        assert_eq!(m, StreamInputRequest::Keepalive {});
    }
}
