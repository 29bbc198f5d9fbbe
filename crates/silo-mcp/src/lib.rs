//! silo's MCP server: tools an MCP client (an agent, Claude Desktop) uses to create a
//! sandbox, run code and commands in it, read, write and list its files, and kill it.
//!
//! - [`SiloMcp`] (in `tools`) is the handler of one MCP session: the tools, built on
//!   [`silo_client`] (REST for sandboxes, the sandbox proxy for envd and the code
//!   interpreter), so they behave as the E2B SDK would against the same server.
//! - A session owns the sandbox its tools use unless the client names one: created on
//!   first use, kept alive while used, killed when the session ends (`session`).
//! - Two transports: [`stdio::serve`] for `silo mcp`, [`http::service`] for the `/mcp`
//!   endpoint of `silo serve`.
//!
//! Failures come back as tool errors whose text says what went wrong and what to do
//! (`error`); a bad input never ends the session.

mod error;
pub mod http;
mod session;
pub mod stdio;
mod tools;

pub use error::ToolError;
pub use session::Config;
pub use tools::{SiloMcp, DEFAULT_COMMAND_TIMEOUT, OUTPUT_LIMIT, READ_LIMIT};
