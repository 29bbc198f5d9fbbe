//! envd's `/files` URLs and their v1 signature, which lets a URL stand in for the envd
//! access token (the SDKs' `upload_url` / `download_url`). The agent checks it on every
//! `/files` request; the proxy checks it too, before such a URL may resume a paused
//! sandbox.

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ids::same_secret;

/// envd's file transfer route.
pub const PATH: &str = "/files";

/// The `/files` operations a signature can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
}

impl FileOp {
    /// What a `/files` request with this HTTP method does: GET reads, POST writes.
    pub fn of_method(method: &str) -> Option<FileOp> {
        match method {
            "GET" => Some(FileOp::Read),
            "POST" => Some(FileOp::Write),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
        }
    }
}

/// The query of a `/files` request.
#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    pub path: Option<String>,
    pub username: Option<String>,
    pub signature: Option<String>,
    pub signature_expiration: Option<i64>,
}

/// Why a `/files` request's signature does not grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing access token or signature")]
    Missing,
    #[error("signature has expired")]
    Expired,
    #[error("invalid signature")]
    Invalid,
}

impl FilesQuery {
    /// The user named, or `None` for the default user.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.is_empty())
    }

    /// Whether this query's signature grants `op` to holders of `token` at unix time `now`.
    pub fn check_signature(&self, op: FileOp, token: &str, now: i64) -> Result<(), SignatureError> {
        let signature = self.signature.as_deref().ok_or(SignatureError::Missing)?;
        if self.signature_expiration.is_some_and(|exp| exp < now) {
            return Err(SignatureError::Expired);
        }
        let want = sign_v1(
            self.path.as_deref().unwrap_or(""),
            op,
            self.username().unwrap_or(""),
            token,
            self.signature_expiration,
        );
        if same_secret(want.as_bytes(), signature.as_bytes()) {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        }
    }
}

/// `"v1_" + base64_raw_std(sha256("path:op:user:token[:expiration]"))`, where `user` is
/// empty for the default user: the SDKs' algorithm.
pub fn sign_v1(path: &str, op: FileOp, user: &str, token: &str, expiration: Option<i64>) -> String {
    let mut text = format!("{path}:{}:{user}:{token}", op.as_str());
    if let Some(exp) = expiration {
        text.push_str(&format!(":{exp}"));
    }
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_sdk_algorithm() {
        // The SDK: sha256("path:read:user:token") → raw std base64, "v1_" prefix.
        let digest = Sha256::digest(b"/home/user/a.txt:read::tok");
        let want = format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        );
        assert_eq!(
            sign_v1("/home/user/a.txt", FileOp::Read, "", "tok", None),
            want
        );
        assert_ne!(
            sign_v1("/a", FileOp::Write, "", "tok", Some(5)),
            sign_v1("/a", FileOp::Write, "", "tok", None)
        );
    }

    #[test]
    fn signatures_grant_their_operation_path_user_and_time_only() {
        let query = |path: &str, user: &str, signature: String, exp| FilesQuery {
            path: Some(path.into()),
            username: Some(user.into()),
            signature: Some(signature),
            signature_expiration: exp,
        };
        let signed = sign_v1("/a", FileOp::Read, "", "tok", Some(100));
        let q = query("/a", "", signed.clone(), Some(100));
        assert_eq!(q.check_signature(FileOp::Read, "tok", 50), Ok(()));
        assert_eq!(
            q.check_signature(FileOp::Read, "tok", 101),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            q.check_signature(FileOp::Write, "tok", 50),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            q.check_signature(FileOp::Read, "other", 50),
            Err(SignatureError::Invalid)
        );
        let moved = query("/b", "", signed.clone(), Some(100));
        assert_eq!(
            moved.check_signature(FileOp::Read, "tok", 50),
            Err(SignatureError::Invalid)
        );
        let later = query("/a", "", signed, Some(200));
        assert_eq!(
            later.check_signature(FileOp::Read, "tok", 50),
            Err(SignatureError::Invalid)
        );
        let root = query(
            "/a",
            "root",
            sign_v1("/a", FileOp::Read, "root", "tok", None),
            None,
        );
        assert_eq!(root.check_signature(FileOp::Read, "tok", i64::MAX), Ok(()));
        assert_eq!(
            FilesQuery::default().check_signature(FileOp::Read, "tok", 0),
            Err(SignatureError::Missing)
        );
        assert_eq!(FileOp::of_method("GET"), Some(FileOp::Read));
        assert_eq!(FileOp::of_method("POST"), Some(FileOp::Write));
        assert_eq!(FileOp::of_method("PUT"), None);
    }
}
