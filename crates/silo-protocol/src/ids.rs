//! Typed identifiers. Each parses (validates) once at the edge and is trusted after.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// A sandbox id: `i` followed by 19 lowercase letters or digits.
///
/// Fixed length on purpose: runsc matches container ids by prefix, so `d1` would be
/// ambiguous once `d10` exists; ids of one length can never be a prefix of another.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(String);

impl SandboxId {
    pub const LEN: usize = 20;

    pub fn generate() -> Self {
        SandboxId(format!("i{}", random_string(Self::LEN - 1)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, still unique-enough tag for host names limited to 15 bytes (veth names).
    pub fn short(&self) -> &str {
        &self.0[1..12]
    }
}

impl FromStr for SandboxId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidId {
            kind: "sandbox id",
            value: s.chars().take(64).collect(),
            reason,
        };
        if s.len() != Self::LEN {
            return Err(invalid("must be 20 characters"));
        }
        if !s.starts_with('i') {
            return Err(invalid("must start with 'i'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid("must be lowercase letters and digits"));
        }
        Ok(SandboxId(s.to_owned()))
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxId({})", self.0)
    }
}

impl Serialize for SandboxId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SandboxId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SandboxId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^i[a-z0-9]{19}$"))
            .description(Some("A sandbox id: `i` and 19 lowercase letters or digits"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SandboxId {}

/// An API key as the E2B SDK expects it: `e2b_` and 40 hex digits.
/// Debug redacts it so that keys never reach a log line.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let hex: String = (0..40)
            .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("digit below 16"))
            .collect();
        ApiKey(format!("e2b_{hex}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for ApiKey {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("e2b_").ok_or(InvalidId {
            kind: "api key",
            value: "<redacted>".into(),
            reason: "must start with e2b_",
        })?;
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidId {
                kind: "api key",
                value: "<redacted>".into(),
                reason: "must be e2b_ followed by 40 hex digits",
            });
        }
        Ok(ApiKey(s.to_owned()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A random token for envd's `X-Access-Token`.
pub fn generate_access_token() -> String {
    random_string(32)
}

/// Whether `a` and `b` are the same secret, compared without leaking through timing how
/// much of it matched.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }

    #[test]
    fn generated_sandbox_ids_parse_back() {
        for _ in 0..100 {
            let id = SandboxId::generate();
            assert_eq!(id.as_str().parse::<SandboxId>().unwrap(), id);
        }
    }

    #[test]
    fn sandbox_id_rejects_bad_shapes() {
        for bad in [
            "",
            "i",
            "../etc/passwd",
            "iAAAAAAAAAAAAAAAAAAA",
            "x0000000000000000000",
            "i00000000000000000000",
        ] {
            assert!(
                bad.parse::<SandboxId>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn api_key_shape_and_redaction() {
        let key = ApiKey::generate();
        assert!(key.expose().starts_with("e2b_"));
        assert_eq!(key.expose().len(), 44);
        assert_eq!(key.expose().parse::<ApiKey>().unwrap(), key);
        assert!(!format!("{key:?}").contains(&key.expose()[4..]));
        assert!("e2b_xyz".parse::<ApiKey>().is_err());
    }
}
