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
    fn parses_an_unknown_status() {
        let state = parse_state(br#"{"id":"b","status":"hibernating"}"#).expect("valid");
        assert_eq!(state.status, ContainerStatus::Unknown);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_state(b"ID PID STATUS").is_err());
    }
}
