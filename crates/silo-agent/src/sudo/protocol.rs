//! What the `sudo` client and the broker say to each other over the Unix socket.
//!
//! Every message is a frame: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! 1. Client → broker: one [`Request`] frame. Its first bytes carry the client's
//!    `SCM_CREDENTIALS` and, for [`Mode::Run`], its stdin, stdout and stderr as
//!    `SCM_RIGHTS`, in that order.
//! 2. Broker → client: one [`Reply`]: `Denied` or `Failed` (and the broker closes), `Allowed`
//!    (for [`Mode::Check`], then closes) or `Started`.
//! 3. After `Started`, the client sends a [`ClientMessage::Signal`] for each signal it
//!    receives, and the broker ends with one `Exited` frame when the command ends.

use serde::{Deserialize, Serialize};

/// A request is the caller's whole environment plus a command line: 4 MiB is twice
/// Linux's default limit on both together.
pub const MAX_FRAME: usize = 4 << 20;

/// What the client asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Run a command with the client's stdio.
    #[default]
    Run,
    /// Only answer whether the caller may use sudo (`-v`, `-l`).
    Check,
}

/// Which of the caller's environment variables reach the command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreserveEnv {
    /// sudo's `env_reset`: a short list of harmless variables (the default).
    #[default]
    Reset,
    /// `-E` / `--preserve-env`: all of them.
    All,
    /// `--preserve-env=A,B`: the reset list plus these.
    Names(Vec<String>),
}

/// One sudo invocation, as parsed by the client. The broker trusts none of it: it only
/// describes what the caller asks for. Missing fields take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    pub mode: Mode,
    /// The command and its arguments; empty with `-s` or `-i` for an interactive shell.
    pub command: Vec<String>,
    /// `-u`: a user name or `#uid` (default root).
    pub user: Option<String>,
    /// `-g`: a group name or `#gid`.
    pub group: Option<String>,
    pub preserve_env: PreserveEnv,
    /// `-H`: HOME is the target's even when the environment is preserved.
    pub set_home: bool,
    /// `-i`: the target's login shell, in the target's home.
    pub login: bool,
    /// `-s`: a shell (`$SHELL` or the target's).
    pub shell: bool,
    /// `-D`: the working directory (default: the caller's).
    pub chdir: Option<String>,
    /// `VAR=value` arguments before the command.
    pub assignments: Vec<(String, String)>,
    /// The caller's environment.
    pub env: Vec<(String, String)>,
    /// The caller's working directory.
    pub cwd: String,
}

/// The broker's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The caller may not do this; the text is for stderr.
    Denied(String),
    /// The request was allowed but the command could not be started.
    Failed(String),
    /// For [`Mode::Check`]: the caller may run anything, as this user name.
    Allowed {
        caller: String,
    },
    Started {
        pid: u32,
    },
    /// The command's exit code, or the signal that ended it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// What the client sends after `Started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    Signal(i32),
}

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message")]
    Json(#[from] serde_json::Error),
}

/// The frame of `message`.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("protocol messages always serialize");
    let len = u32::try_from(body.len()).expect("frames are far below 4 GiB");
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Take one complete frame off the front of `buf`, if there is one.
pub fn decode<T: for<'de> Deserialize<'de>>(buf: &mut Vec<u8>) -> Result<Option<T>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header.try_into().expect("four bytes")) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[4..4 + len]);
    buf.drain(..4 + len);
    Ok(Some(message?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_all_bytes() {
        let mut stream = encode(&Reply::Started { pid: 7 });
        stream.extend(encode(&Reply::Exited {
            code: Some(3),
            signal: None,
        }));
        let mut partial = stream[..6].to_vec();
        assert_eq!(decode::<Reply>(&mut partial).unwrap(), None);
        assert_eq!(
            decode::<Reply>(&mut stream).unwrap(),
            Some(Reply::Started { pid: 7 })
        );
        assert_eq!(
            decode::<Reply>(&mut stream).unwrap(),
            Some(Reply::Exited {
                code: Some(3),
                signal: None
            })
        );
        assert!(stream.is_empty());
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        assert!(matches!(
            decode::<Reply>(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
        let mut junk = 2u32.to_be_bytes().to_vec();
        junk.extend(b"{]");
        assert!(matches!(
            decode::<Reply>(&mut junk),
            Err(FrameError::Json(_))
        ));
    }
}
