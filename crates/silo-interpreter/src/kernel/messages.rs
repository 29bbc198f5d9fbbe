//! Jupyter messages (protocol 5.x) and their wire form.
//!
//! On the wire a message is a ZeroMQ multipart message:
//!
//! ```text
//! [routing ids or pub topic…] "<IDS|MSG>" signature header parent_header metadata content [buffers…]
//! ```
//!
//! `signature` is the hex HMAC-SHA256, under the connection file's key, of the four JSON
//! frames that follow it. Incoming messages with a bad signature are rejected: anything on
//! 127.0.0.1 could otherwise inject output into an execution.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

const DELIMITER: &[u8] = b"<IDS|MSG>";
const PROTOCOL_VERSION: &str = "5.3";

/// Why an incoming multipart message was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("{0} frames after the delimiter, need at least 5")]
    TooFewFrames(usize),
    #[error("bad signature")]
    BadSignature,
    #[error("bad JSON in {frame}: {message}")]
    Json {
        frame: &'static str,
        message: String,
    },
}

/// A message header. Unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub msg_id: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub username: String,
    /// ISO 8601; kernels always set it, but a missing one is tolerated.
    #[serde(default)]
    pub date: String,
    pub msg_type: String,
    #[serde(default)]
    pub version: String,
}

/// A decoded message. `parent_msg_id` is all we need of the parent header: it routes the
/// message to the request that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    pub parent_msg_id: Option<String>,
    pub content: Value,
}

impl Message {
    /// A message of `msg_type` for request `parent` that came without a Jupyter header:
    /// from silo's Node.js driver, or made up by the interpreter. An empty `date` is
    /// stamped when the message is turned into output.
    pub fn for_parent(parent: String, msg_type: String, date: String, content: Value) -> Self {
        Message {
            header: Header {
                msg_id: String::new(),
                session: String::new(),
                username: String::new(),
                date,
                msg_type,
                version: String::new(),
            },
            parent_msg_id: Some(parent),
            content,
        }
    }
}

/// Signs outgoing and verifies incoming messages with one connection's key.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
    session: String,
}

impl Signer {
    pub fn new(key: &str, session: String) -> Self {
        Signer {
            mac: Hmac::<Sha256>::new_from_slice(key.as_bytes())
                .expect("HMAC accepts keys of any length"),
            session,
        }
    }

    fn sign(&self, frames: &[&[u8]]) -> String {
        let mut mac = self.mac.clone();
        for frame in frames {
            mac.update(frame);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Builds a request of `msg_type` with `content`; returns its msg_id and the frames to
    /// send (for a DEALER socket: no routing id).
    pub fn request(&self, msg_type: &str, content: Value) -> (String, Vec<Bytes>) {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let header = Header {
            msg_id: msg_id.clone(),
            session: self.session.clone(),
            username: "silo".into(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            msg_type: msg_type.into(),
            version: PROTOCOL_VERSION.into(),
        };
        let header = serde_json::to_vec(&header).expect("header serializes");
        let parent = b"{}".to_vec();
        let metadata = b"{}".to_vec();
        let content = serde_json::to_vec(&content).expect("JSON value serializes");
        let signature = self.sign(&[&header, &parent, &metadata, &content]);
        let frames = vec![
            Bytes::from_static(DELIMITER),
            Bytes::from(signature),
            Bytes::from(header),
            Bytes::from(parent),
            Bytes::from(metadata),
            Bytes::from(content),
        ];
        (msg_id, frames)
    }

    /// Decodes and verifies a multipart message as received from any channel.
    pub fn decode(&self, frames: &[Bytes]) -> Result<Message, DecodeError> {
        let start = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(DecodeError::NoDelimiter)?;
        let rest = &frames[start + 1..];
        if rest.len() < 5 {
            return Err(DecodeError::TooFewFrames(rest.len()));
        }
        let signature = hex::decode(&rest[0]).map_err(|_| DecodeError::BadSignature)?;
        let mut mac = self.mac.clone();
        for frame in &rest[1..5] {
            mac.update(frame);
        }
        mac.verify_slice(&signature)
            .map_err(|_| DecodeError::BadSignature)?;

        let header: Header = parse(&rest[1], "header")?;
        let parent: Value = parse(&rest[2], "parent_header")?;
        let content: Value = parse(&rest[4], "content")?;
        let parent_msg_id = parent
            .get("msg_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Message {
            header,
            parent_msg_id,
            content,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    frame: &[u8],
    name: &'static str,
) -> Result<T, DecodeError> {
    serde_json::from_slice(frame).map_err(|e| DecodeError::Json {
        frame: name,
        message: e.to_string(),
    })
}

/// Content of an `execute_request`.
///
/// `silent` requests are our own helper snippets (env vars, set-up): they do not count as
/// executions and publish no `execute_input`.
pub fn execute_request(code: &str, silent: bool) -> Value {
    json!({
        "code": code,
        "silent": silent,
        "store_history": !silent,
        "user_expressions": {},
        "allow_stdin": false,
        "stop_on_error": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new("secret-key", "session-1".into())
    }

    #[test]
    fn request_frames_are_signed_over_the_four_json_frames() {
        let s = signer();
        let (id, frames) = s.request("kernel_info_request", json!({}));
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[0].as_ref(), DELIMITER);
        let header: Header = serde_json::from_slice(&frames[2]).expect("header");
        assert_eq!(header.msg_id, id);
        assert_eq!(header.msg_type, "kernel_info_request");
        assert_eq!(header.session, "session-1");
        assert_eq!(header.version, "5.3");

        // The signature matches an HMAC computed independently.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret-key").expect("key");
        for f in &frames[2..6] {
            mac.update(f);
        }
        assert_eq!(
            frames[1].as_ref(),
            hex::encode(mac.finalize().into_bytes()).as_bytes()
        );
    }

    /// Builds what a kernel would send: routing prefix, delimiter, signed frames.
    fn kernel_message(key: &str, prefix: &[&str], msg_type: &str, parent: &str) -> Vec<Bytes> {
        let header = json!({"msg_id":"k1","session":"ks","username":"kernel",
            "date":"2024-01-01T00:00:00.000001Z","msg_type":msg_type,"version":"5.3"})
        .to_string();
        let parent = json!({"msg_id": parent, "msg_type": "execute_request"}).to_string();
        let content = json!({"name":"stdout","text":"hi\n"}).to_string();
        let frames: [&[u8]; 4] = [
            header.as_bytes(),
            parent.as_bytes(),
            b"{}",
            content.as_bytes(),
        ];
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        for f in frames {
            mac.update(f);
        }
        let mut out: Vec<Bytes> = prefix.iter().map(|p| Bytes::from(p.to_string())).collect();
        out.push(Bytes::from_static(DELIMITER));
        out.push(Bytes::from(hex::encode(mac.finalize().into_bytes())));
        out.extend(frames.iter().map(|f| Bytes::copy_from_slice(f)));
        out
    }

    #[test]
    fn decodes_iopub_message_with_topic_prefix() {
        let frames = kernel_message("secret-key", &["kernel.abc.stream"], "stream", "p1");
        let msg = signer().decode(&frames).expect("decode");
        assert_eq!(msg.header.msg_type, "stream");
        assert_eq!(msg.header.date, "2024-01-01T00:00:00.000001Z");
        assert_eq!(msg.parent_msg_id.as_deref(), Some("p1"));
        assert_eq!(msg.content["text"], "hi\n");
    }

    #[test]
    fn decodes_message_with_buffers_and_no_prefix() {
        let mut frames = kernel_message("secret-key", &[], "display_data", "p2");
        frames.push(Bytes::from_static(b"\x00binary"));
        let msg = signer().decode(&frames).expect("decode");
        assert_eq!(msg.parent_msg_id.as_deref(), Some("p2"));
    }

    #[test]
    fn rejects_wrong_key_and_tampering() {
        let frames = kernel_message("other-key", &[], "stream", "p1");
        assert_eq!(signer().decode(&frames), Err(DecodeError::BadSignature));

        let mut frames = kernel_message("secret-key", &[], "stream", "p1");
        frames[5] = Bytes::from_static(br#"{"name":"stdout","text":"evil"}"#);
        assert_eq!(signer().decode(&frames), Err(DecodeError::BadSignature));

        let mut frames = kernel_message("secret-key", &[], "stream", "p1");
        frames[1] = Bytes::from_static(b"zz-not-hex");
        assert_eq!(signer().decode(&frames), Err(DecodeError::BadSignature));
    }

    #[test]
    fn rejects_malformed_framing() {
        assert_eq!(
            signer().decode(&[Bytes::from_static(b"hello")]),
            Err(DecodeError::NoDelimiter)
        );
        assert_eq!(
            signer().decode(&[Bytes::from_static(DELIMITER), Bytes::from_static(b"sig")]),
            Err(DecodeError::TooFewFrames(1))
        );
    }

    #[test]
    fn own_requests_decode() {
        let s = signer();
        let (id, frames) = s.request("execute_request", execute_request("1+1", false));
        let msg = s.decode(&frames).expect("decode");
        assert_eq!(msg.header.msg_id, id);
        assert_eq!(msg.parent_msg_id, None);
        assert_eq!(msg.content["code"], "1+1");
        assert_eq!(msg.content["store_history"], true);
    }
}
