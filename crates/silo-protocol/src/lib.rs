//! Wire types shared by every part of silo, and nothing else: no I/O, no runtime.
//!
//! - [`ids`]: typed, validated identifiers (`SandboxId`, `ApiKey`, ...).
//! - [`rest`]: the E2B control-plane REST bodies (`/v2/sandboxes`, errors).
//! - [`connect`]: Connect-RPC framing (envelopes) and error codes as envd speaks them.
//! - [`envd`]: the envd `process` and `filesystem` service messages, in proto3 JSON.
//! - [`files`]: envd's `/files` URLs and their signature.
//! - [`templates`]: the template build API (E2B's v2/v3 build endpoints).
//!
//! The server (`silo-api`), the in-sandbox agent (`silo-agent`) and the Rust client
//! (`silo-client`) all serialize through these types, so a field renamed here is renamed
//! on both ends of the wire at once.

pub mod connect;
pub mod envd;
pub mod files;
pub mod ids;
pub mod rest;
pub mod templates;

/// Ports the E2B SDKs address inside a sandbox.
pub mod ports {
    /// envd: process, filesystem and `/files`.
    pub const ENVD: u16 = 49983;
    /// The code interpreter (`/execute`, `/contexts`).
    pub const CODE_INTERPRETER: u16 = 49999;
}
