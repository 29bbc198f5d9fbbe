//! The tools: [`SiloMcp`] is the MCP server handler, one per session. Each tool resolves
//! its sandbox through the [`Session`], calls silo through [`silo_client`], and turns the
//! answer into text (and images) a model reads; what went wrong comes back as a tool
//! error with a message saying what to do ([`ToolError`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProtocolVersion};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use silo_client::code::Execution;
use silo_client::{Client, ClientError, Output, RunOptions};
use silo_protocol::rest::Sandbox;

use crate::error::ToolError;
use crate::session::{Config, Session};

/// Most bytes of a file `read_file` returns; past it, the model should read parts with
/// `run_command` (head, tail, grep).
pub const READ_LIMIT: usize = 1024 * 1024;
/// Most bytes of each output stream a tool returns (the rest is cut, and said so), so
/// one noisy command does not flood the model's context.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// How long `run_command` lets a command run unless told.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the tools' calls go, and with which API key.
#[derive(Clone)]
pub(crate) enum Backend {
    /// `silo mcp`: one server and key for the whole process.
    Fixed(Client),
    /// The `/mcp` endpoint of `silo serve`: the server itself over loopback, with the
    /// API key each request came with (the server's own middleware checked it).
    PerRequest(Client),
}

/// The MCP server of one session.
#[derive(Clone)]
pub struct SiloMcp {
    backend: Backend,
    session: Arc<Session>,
}

impl SiloMcp {
    /// A session whose calls go to `client`'s server with its key.
    pub fn new(client: Client, config: Config) -> SiloMcp {
        SiloMcp::with_backend(Backend::Fixed(client), config)
    }

    pub(crate) fn with_backend(backend: Backend, config: Config) -> SiloMcp {
        SiloMcp {
            backend,
            session: Arc::new(Session::new(config)),
        }
    }

    /// End the session: kill the sandboxes it created. (Dropping the last clone does
    /// too, in the background.)
    pub async fn close(&self) {
        self.session.close().await;
    }

    fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<Client, ToolError> {
        match &self.backend {
            Backend::Fixed(client) => Ok(client.clone()),
            Backend::PerRequest(client) => {
                let key = ctx
                    .extensions
                    .get::<http::request::Parts>()
                    .and_then(|parts| parts.headers.get("x-api-key"))
                    .and_then(|key| key.to_str().ok())
                    .ok_or(ToolError::NoApiKey)?;
                Ok(client.with_api_key(key))
            }
        }
    }

    /// The client and the sandbox a call works on.
    async fn target(
        &self,
        ctx: &RequestContext<RoleServer>,
        sandbox_id: Option<&str>,
    ) -> Result<(Client, Sandbox), ToolError> {
        let client = self.client(ctx)?;
        let sandbox = self.session.sandbox(&client, sandbox_id).await?;
        Ok((client, sandbox))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateSandboxArgs {
    /// Template to start from: code-interpreter (default; needed by run_code), base
    /// (bash, python3), or any template built on this server.
    pub template: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCodeArgs {
    /// The code to run, as in a notebook cell: the last expression's value is returned.
    pub code: String,
    /// python (default), javascript, typescript, r, java or bash.
    pub language: Option<String>,
    /// Sandbox to run in [default: this session's].
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCommandArgs {
    /// Shell command, run with `bash -l -c` as the sandbox's user (`sudo` works).
    pub command: String,
    /// Seconds until the command is killed [default: 60; 0: no limit].
    pub timeout_seconds: Option<u64>,
    /// Sandbox to run in [default: this session's].
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileArgs {
    /// Path in the sandbox; relative paths start at the user's home (/home/user).
    pub path: String,
    /// Sandbox to read from [default: this session's].
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileArgs {
    /// Path in the sandbox; relative paths start at the user's home. Parent directories
    /// are created; an existing file is replaced.
    pub path: String,
    /// The file's new contents (text).
    pub content: String,
    /// Sandbox to write to [default: this session's].
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesArgs {
    /// Directory in the sandbox [default: the user's home].
    pub path: Option<String>,
    /// How many levels down to list [default: 1, its entries only].
    pub depth: Option<u32>,
    /// Sandbox to list [default: this session's].
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KillSandboxArgs {
    /// Sandbox to kill [default: this session's; the next call without sandbox_id then
    /// starts a new one].
    pub sandbox_id: Option<String>,
}

#[tool_router]
impl SiloMcp {
    #[tool(
        description = "Create a new sandbox and make it this session's: tools without \
        sandbox_id use it from now on, and it is killed when the session ends. Returns its id. \
        Not needed before other tools: they create the session's sandbox on first use."
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateSandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let client = self.client(&ctx)?;
            let sandbox = self
                .session
                .create(&client, args.template.as_deref())
                .await?;
            Ok(format!(
                "created sandbox {} from template {}; tools without sandbox_id now use it",
                sandbox.sandbox_id, sandbox.template_id
            ))
        }
        .await;
        text_result(result)
    }

    #[tool(
        description = "Run code in a stateful Jupyter kernel (variables, imports and \
        files persist between calls) and return its stdout, stderr, the value of its last \
        expression (and images such as plots), or the exception it raised. Needs a sandbox \
        from the code-interpreter template, which the session's own is."
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let (client, sandbox) = self.target(&ctx, args.sandbox_id.as_deref()).await?;
            client
                .run_code(&sandbox, &args.code, args.language.as_deref())
                .await
                .map_err(|source| match source.status() {
                    // The proxy's answer when nothing listens on the interpreter's port.
                    Some(502) => ToolError::NoInterpreter {
                        id: sandbox.sandbox_id.clone(),
                        template: sandbox.template_id.clone(),
                    },
                    _ => sandbox_error("run_code", &sandbox, source),
                })
        }
        .await;
        match result {
            Ok(execution) => CallToolResult::success(execution_content(&execution)),
            Err(err) => tool_error(&err),
        }
    }

    #[tool(
        description = "Run a shell command (bash -l -c) in the sandbox and return its exit \
        code, stdout and stderr. A non-zero exit code is a result, not an error."
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let limit = match args.timeout_seconds {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => Some(DEFAULT_COMMAND_TIMEOUT),
        };
        let result = async {
            let (client, sandbox) = self.target(&ctx, args.sandbox_id.as_deref()).await?;
            let mut stdout = Capped::default();
            let mut stderr = Capped::default();
            let started = std::time::Instant::now();
            let options = RunOptions {
                limit,
                ..RunOptions::default()
            };
            let code = client
                .run_with(&sandbox, &args.command, &options, |out| match out {
                    Output::Stdout(bytes) => stdout.push(&bytes),
                    Output::Stderr(bytes) => stderr.push(&bytes),
                })
                .await
                .map_err(|source| sandbox_error("run_command", &sandbox, source))?;
            let mut text = format!("exit code {code}");
            // envd reports a process it killed at its limit as killed by a signal.
            if let Some(limit) = limit.filter(|limit| code == -1 && started.elapsed() >= *limit) {
                text.push_str(&format!(
                    " (killed: it ran past its {} s timeout)",
                    limit.as_secs()
                ));
            }
            text.push('\n');
            section(&mut text, "stdout", &stdout.finish());
            section(&mut text, "stderr", &stderr.finish());
            Ok(text)
        }
        .await;
        text_result(result)
    }

    #[tool(
        description = "Read a text file from the sandbox (up to 1 MiB; binary files come \
        back base64-encoded)."
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let (client, sandbox) = self.target(&ctx, args.sandbox_id.as_deref()).await?;
            let contents = client
                .read_file(&sandbox, &args.path, READ_LIMIT)
                .await
                .map_err(|source| {
                    sandbox_error(&format!("read_file {}", args.path), &sandbox, source)
                })?;
            Ok(match String::from_utf8(contents) {
                Ok(text) => text,
                Err(err) => {
                    let bytes = err.into_bytes();
                    format!(
                        "(binary file, {} bytes, base64)\n{}",
                        bytes.len(),
                        base64::engine::general_purpose::STANDARD.encode(&bytes)
                    )
                }
            })
        }
        .await;
        text_result(result)
    }

    #[tool(
        description = "Write a text file in the sandbox, creating parent directories and \
        replacing the file if it exists."
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let (client, sandbox) = self.target(&ctx, args.sandbox_id.as_deref()).await?;
            let len = args.content.len();
            let written = client
                .write_file(&sandbox, &args.path, args.content.into_bytes())
                .await
                .map_err(|source| {
                    sandbox_error(&format!("write_file {}", args.path), &sandbox, source)
                })?;
            Ok(format!("wrote {len} bytes to {}", written.path))
        }
        .await;
        text_result(result)
    }

    #[tool(
        description = "List a directory in the sandbox: one entry per line with its type \
        (dir, file, symlink), size in bytes and path."
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let (client, sandbox) = self.target(&ctx, args.sandbox_id.as_deref()).await?;
            let path = args.path.as_deref().unwrap_or("~");
            let entries = client
                .list_dir(&sandbox, path, args.depth.unwrap_or(1).max(1))
                .await
                .map_err(|source| sandbox_error(&format!("list_files {path}"), &sandbox, source))?;
            if entries.is_empty() {
                return Ok(format!("{path} is empty"));
            }
            let lines: Vec<String> = entries
                .iter()
                .map(|entry| {
                    let kind = match entry.file_type {
                        silo_protocol::envd::FileType::Directory => "dir",
                        silo_protocol::envd::FileType::Symlink => "symlink",
                        _ if entry.is_symlink => "symlink",
                        _ => "file",
                    };
                    format!("{kind}\t{}\t{}", entry.size, entry.path)
                })
                .collect();
            Ok(lines.join("\n"))
        }
        .await;
        text_result(result)
    }

    #[tool(
        description = "Kill a sandbox: the session's own unless sandbox_id names another. \
        Everything in it is lost."
    )]
    async fn kill_sandbox(
        &self,
        Parameters(args): Parameters<KillSandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let client = self.client(&ctx)?;
            let id = self
                .session
                .kill(&client, args.sandbox_id.as_deref())
                .await?;
            Ok(format!("killed sandbox {id}"))
        }
        .await;
        text_result(result)
    }
}

#[tool_handler(
    name = "silo",
    instructions = "\
Secure sandboxes (isolated Linux machines, gVisor) to run code and commands in. Tools \
without sandbox_id use this session's own sandbox, created on first use from the \
code-interpreter template (Python, JavaScript, bash kernels; variables persist between \
run_code calls) and killed when the session ends. Pass sandbox_id to work in another \
sandbox (from create_sandbox, or one made with the E2B SDK); those are left running."
)]
impl ServerHandler for SiloMcp {
    /// Only the versions with a session (the `initialize` handshake): the session is what
    /// owns a sandbox, and 2026-07-28 has none. Clients of that version fall back to the
    /// handshake (ADR 0014).
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(
            &ProtocolVersion::LATEST_WITH_INITIALIZE,
        ))
    }
}

fn sandbox_error(what: &str, sandbox: &Sandbox, source: ClientError) -> ToolError {
    ToolError::Sandbox {
        what: what.to_owned(),
        id: sandbox.sandbox_id.clone(),
        source,
    }
}

fn text_result(result: Result<String, ToolError>) -> CallToolResult {
    match result {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(err) => tool_error(&err),
    }
}

fn tool_error(err: &ToolError) -> CallToolResult {
    tracing::debug!(error = %err.chain(), "MCP tool failed");
    CallToolResult::error(vec![ContentBlock::text(err.chain())])
}

/// An execution as a model reads it: a text block with its output, its value and its
/// exception, then one image block per picture it displayed.
fn execution_content(execution: &Execution) -> Vec<ContentBlock> {
    let mut text = String::new();
    section(&mut text, "stdout", &cap(&execution.stdout));
    section(&mut text, "stderr", &cap(&execution.stderr));
    let mut images = Vec::new();
    for result in &execution.results {
        if let Some(png) = &result.png {
            images.push(ContentBlock::image(png.clone(), "image/png"));
        } else if let Some(jpeg) = &result.jpeg {
            images.push(ContentBlock::image(jpeg.clone(), "image/jpeg"));
        }
        let shown = result.markdown.as_deref().or(result.text.as_deref());
        if let Some(shown) = shown {
            let name = if result.is_main_result {
                "result"
            } else {
                "display"
            };
            section(&mut text, name, &cap(shown));
        }
    }
    if let Some(error) = &execution.error {
        let body = if error.traceback.is_empty() {
            format!("{}: {}", error.name, error.value)
        } else {
            error.traceback.clone()
        };
        section(&mut text, "error", &cap(&body));
    }
    if text.is_empty() {
        text.push_str("(no output)");
    }
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images);
    content
}

/// Append `body` under a `[name]` heading, if there is a body.
fn section(text: &mut String, name: &str, body: &str) {
    if body.is_empty() {
        return;
    }
    text.push_str(&format!("[{name}]\n{body}"));
    if !body.ends_with('\n') {
        text.push('\n');
    }
}

fn cap(text: &str) -> Cow<'_, str> {
    if text.len() <= OUTPUT_LIMIT {
        return Cow::Borrowed(text);
    }
    let mut end = OUTPUT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}\n[... {} more bytes cut]",
        &text[..end],
        text.len() - end
    ))
}

/// An output stream kept up to [`OUTPUT_LIMIT`] bytes, counting what was cut.
#[derive(Default)]
struct Capped {
    kept: Vec<u8>,
    cut: usize,
}

impl Capped {
    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        self.cut += bytes.len() - take;
    }

    fn finish(self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.cut > 0 {
            text.push_str(&format!("\n[... {} more bytes cut]", self.cut));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_client::code::{ExecutionError, ExecutionResult};

    fn text_of(content: &[ContentBlock]) -> String {
        match &content[0] {
            ContentBlock::Text(text) => text.text.clone(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn an_execution_reads_as_sections() {
        let execution = Execution {
            stdout: "42\n".into(),
            results: vec![ExecutionResult {
                text: Some("7".into()),
                png: Some("iVBOR".into()),
                is_main_result: true,
                ..Default::default()
            }],
            error: Some(ExecutionError {
                name: "ValueError".into(),
                value: "bad".into(),
                traceback: String::new(),
            }),
            ..Default::default()
        };
        let content = execution_content(&execution);
        assert_eq!(
            text_of(&content),
            "[stdout]\n42\n[result]\n7\n[error]\nValueError: bad\n"
        );
        assert!(matches!(content[1], ContentBlock::Image(_)));
    }

    #[test]
    fn silence_says_so() {
        assert_eq!(
            text_of(&execution_content(&Execution::default())),
            "(no output)"
        );
    }

    #[test]
    fn long_output_is_cut_and_says_how_much() {
        let mut out = Capped::default();
        out.push(&vec![b'a'; OUTPUT_LIMIT]);
        out.push(b"bcd");
        let text = out.finish();
        assert!(text.ends_with("[... 3 more bytes cut]"));
        // Cut at a character boundary, however the limit falls.
        let long = "é".repeat(OUTPUT_LIMIT);
        let cut = cap(&long);
        assert!(cut.starts_with(&"é".repeat(OUTPUT_LIMIT / 2)));
        assert!(cut.ends_with(&format!("[... {} more bytes cut]", OUTPUT_LIMIT)));
    }
}
