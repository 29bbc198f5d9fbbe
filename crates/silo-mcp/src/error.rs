//! Why a tool could not do what it was asked. Every variant reaches the client as a tool
//! error (`isError: true` with the message), never as a protocol error or a crash: the
//! model reading it should learn what to do next.

use silo_client::ClientError;
use silo_protocol::ids::{InvalidId, SandboxId};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("bad sandbox_id")]
    InvalidSandboxId(#[source] InvalidId),
    #[error("sandbox {0} not found: it was killed, timed out, or never existed")]
    SandboxNotFound(SandboxId),
    #[error(
        "this session's sandbox {0} is gone (killed or timed out); the next call without \
         sandbox_id starts a new one"
    )]
    SessionSandboxGone(SandboxId),
    #[error("this session has no sandbox yet: name one with sandbox_id")]
    NoSessionSandbox,
    #[error("cannot create a sandbox from template {template:?}")]
    Create {
        template: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "sandbox {id} (template {template:?}) has no code interpreter: run_code needs a \
         sandbox from the code-interpreter template; run_command works in any"
    )]
    NoInterpreter { id: SandboxId, template: String },
    #[error("{what} failed in sandbox {id}")]
    Sandbox {
        what: String,
        id: SandboxId,
        #[source]
        source: ClientError,
    },
    #[error("no API key: send it as the X-API-Key header")]
    NoApiKey,
    #[error("cannot reach silo")]
    Silo(#[source] ClientError),
}

impl ToolError {
    /// The message with its causes, once each: what the client shows.
    pub fn chain(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            message.push_str(": ");
            message.push_str(&err.to_string());
            source = err.source();
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_each_cause_once() {
        let err = ToolError::Sandbox {
            what: "read_file /nope".into(),
            id: "i0123456789abcdefghi".parse().unwrap(),
            source: ClientError::Api {
                status: 404,
                message: "path /nope does not exist".into(),
            },
        };
        assert_eq!(
            err.chain(),
            "read_file /nope failed in sandbox i0123456789abcdefghi: silo answered 404: \
             path /nope does not exist"
        );
    }
}
