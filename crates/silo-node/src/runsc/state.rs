//! The JSON runsc prints for `state <id>` and `list --format=json`.

use serde::Deserialize;

/// A container's lifecycle status, as runsc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    /// A status this code does not know yet.
    #[serde(other)]
    Unknown,
}

/// One container from `runsc state` or `runsc list`; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// The sandbox's host pid; 0 or -1 once stopped (runsc prints -1 after a
    /// checkpoint).
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub bundle: String,
}

pub(crate) fn parse_state(json: &[u8]) -> Result<ContainerState, serde_json::Error> {
    serde_json::from_slice(json)
}

/// runsc prints `null`, not `[]`, when it has no containers.
pub(crate) fn parse_list(json: &[u8]) -> Result<Vec<ContainerState>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<Vec<ContainerState>>>(json)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state() {
        let json = br#"{
          "ociVersion": "1.0.2-dev",
          "id": "exp1",
          "status": "running",
          "pid": 15238,
          "bundle": "/tmp/exp/bundle"
        }"#;
        let state = parse_state(json).expect("valid");
        assert_eq!(state.id, "exp1");
        assert_eq!(state.status, ContainerStatus::Running);
        assert_eq!(state.pid, 15238);
    }

    #[test]
    fn parses_list_including_null_and_unknown_status() {
        assert!(parse_list(b"null\n").expect("null is empty").is_empty());
        let json = br#"[{"ociVersion":"1.0.2-dev","id":"a","pid":-1,"status":"stopped","bundle":"/b","rootfs":"/r","created":"2026-11-22T02:57:14Z","owner":""},
                        {"id":"b","status":"hibernating"}]"#;
        let list = parse_list(json).expect("valid");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].status, ContainerStatus::Stopped);
        assert_eq!(list[1].status, ContainerStatus::Unknown);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_list(b"ID PID STATUS").is_err());
    }
}
