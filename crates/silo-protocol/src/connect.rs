//! Connect-RPC framing as the E2B SDKs use it: JSON codec, no compression.
//!
//! A streaming body is a series of envelopes, each `flag:u8 | len:u32be | json`.
//! Flag [`FLAG_MESSAGE`] carries a message; [`FLAG_END_STREAM`] ends a server stream
//! and carries `{}` or `{"error":{...}}`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const FLAG_MESSAGE: u8 = 0x00;
pub const FLAG_COMPRESSED: u8 = 0x01;
pub const FLAG_END_STREAM: u8 = 0x02;

pub const CONTENT_TYPE_UNARY: &str = "application/json";
pub const CONTENT_TYPE_STREAM: &str = "application/connect+json";

/// Largest envelope we accept from a peer; a bigger length prefix is an attack or a bug.
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;

/// Connect error codes (the string form is what goes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The HTTP status a unary error carries, per the Connect protocol.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

/// A Connect error body: `{"code":"not_found","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }
}

/// The payload of an end-of-stream envelope.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Frame one envelope.
pub fn encode_envelope(flag: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(flag);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Frame a message as JSON.
pub fn encode_message<T: Serialize>(msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).expect("wire types always serialize");
    encode_envelope(FLAG_MESSAGE, &json)
}

/// Frame the end of a stream, with the error if the call failed.
pub fn encode_end(error: Option<ConnectError>) -> Bytes {
    let end = EndStream {
        error,
        metadata: None,
    };
    let json = serde_json::to_vec(&end).expect("wire types always serialize");
    encode_envelope(FLAG_END_STREAM, &json)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("envelope of {0} bytes is over the {MAX_ENVELOPE} byte limit")]
    TooLarge(usize),
    #[error("compressed envelopes are not supported")]
    Compressed,
    #[error("stream ended inside an envelope")]
    Truncated,
}

/// One decoded envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope {
    pub flag: u8,
    pub payload: Bytes,
}

/// Incremental envelope decoder: feed bytes as they arrive, take whole envelopes out.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole envelope, or `None` if more bytes are needed.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE {
            return Err(FrameError::TooLarge(len));
        }
        if flag & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flag, payload }))
    }

    /// Call at end of input: leftover bytes mean the peer cut an envelope short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_in_pieces() {
        let mut wire =
            encode_message(&serde_json::json!({"event":{"start":{"pid":4242}}})).to_vec();
        wire.extend_from_slice(&encode_end(None));
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        for byte in wire {
            dec.push(&[byte]);
            while let Some(env) = dec.next_envelope().unwrap() {
                got.push(env);
            }
        }
        dec.finish().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].flag, FLAG_MESSAGE);
        assert_eq!(&got[0].payload[..], br#"{"event":{"start":{"pid":4242}}}"#);
        assert_eq!(got[1].flag, FLAG_END_STREAM);
        assert_eq!(&got[1].payload[..], b"{}");
    }

    #[test]
    fn matches_captured_transcript_lengths() {
        // From the captured SDK transcript: `00 00000020 {"event":{"start":{"pid":4242}}}`.
        let env = encode_message(&serde_json::json!({"event":{"start":{"pid":4242}}}));
        assert_eq!(&env[..5], &[0, 0, 0, 0, 0x20]);
    }

    #[test]
    fn rejects_oversized_and_truncated() {
        let mut dec = Decoder::default();
        dec.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_envelope(), Err(FrameError::TooLarge(_))));
        let mut dec = Decoder::default();
        dec.push(&[0, 0, 0, 0, 9, b'{']);
        assert_eq!(dec.next_envelope(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn error_codes_serialize_snake_case() {
        let err = ConnectError::new(Code::NotFound, "nope");
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"code":"not_found","message":"nope"}"#
        );
        assert_eq!(Code::NotFound.http_status(), 404);
    }
}
