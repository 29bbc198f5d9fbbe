//! A Rust client for silo, used by the `silo sandbox ...` commands, `silo mcp` and the
//! Rust integration tests. It speaks the same wire as the E2B SDKs: REST for the control
//! plane, and through the sandbox proxy (mode A headers: `E2b-Sandbox-Id`,
//! `E2b-Sandbox-Port`) envd's Connect-JSON for commands ([`Client::run`]) and the file
//! system ([`files`]), and the code interpreter's `/execute` ([`code`]).

pub mod code;
pub mod files;

use base64::Engine;
use futures_util::StreamExt;
use serde_json::json;
use silo_protocol::connect::{self, Decoder, EndStream, FLAG_END_STREAM};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{
    ListedSandbox, NewSandbox, Sandbox, SandboxDetail, SandboxLogsV2, SandboxMetric, SandboxState,
};
use silo_protocol::templates::{
    AliasInfo, AssignTags, AssignedTags, BuildInfo, BuildRequest, BuildRequested, BuildStart,
    FileUpload, RemoveTags, TemplateInfo, TemplateTag,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach silo at {url}: is `silo serve` running? (set --api-url or E2B_API_URL)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("silo answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from silo")]
    Decode(#[source] reqwest::Error),
    #[error("command stream broke: {0}")]
    Stream(String),
    #[error("cannot write what was downloaded: {0}")]
    LocalWrite(#[source] std::io::Error),
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: usize },
}

impl ClientError {
    /// The HTTP status silo (or the sandbox behind it) answered, if it answered with an
    /// error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How [`Client::run_with`] runs a command; the default is [`Client::run`]'s: the
/// sandbox's default user in its home, the sandbox's environment, no time limit.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Variables added to the sandbox's environment.
    pub envs: std::collections::BTreeMap<String, String>,
    /// Working directory; relative to the user's home unless absolute.
    pub cwd: Option<String>,
    /// The user to run as (`root`, `user`, ...).
    pub user: Option<String>,
    /// envd kills the process once this has passed (its `connect-timeout-ms`, as the
    /// SDK's `timeout`); the exit code is then -1.
    pub limit: Option<std::time::Duration>,
}

/// Which sandboxes [`Client::list_where`] lists; the default is E2B's: running and
/// paused ones, of any template and metadata.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Empty for running and paused; `Killed` adds those the server still remembers.
    pub states: Vec<SandboxState>,
    /// Those with all of these metadata entries.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// A template's name or alias.
    pub template: Option<String>,
}

impl ListQuery {
    /// As `/v2/sandboxes` takes them: metadata as `k=v&k2=v2`, each part encoded
    /// before the whole is (as the SDK does), states comma-separated.
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if !self.metadata.is_empty() {
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.metadata)
                .finish();
            params.push(("metadata", encoded));
        }
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|state| state.as_str()).collect();
            params.push(("state", states.join(",")));
        }
        if let Some(template) = &self.template {
            params.push(("template", template.clone()));
        }
        params
    }
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

/// Output of a command, as it arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

#[derive(Clone)]
pub struct Client {
    api_url: String,
    api_key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(api_url: &str, api_key: &str) -> Client {
        Client {
            api_url: api_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The same server with another API key; the connection pool is shared.
    pub fn with_api_key(&self, api_key: &str) -> Client {
        Client {
            api_url: self.api_url.clone(),
            api_key: api_key.to_owned(),
            http: self.http.clone(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.api_url.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(ClientError::Api {
            status,
            message: error_message(text),
        })
    }

    /// Create a sandbox: `NewSandbox { template_id, ..Default::default() }` for the
    /// server's defaults.
    pub async fn create(&self, body: &NewSandbox) -> Result<Sandbox> {
        let req = self.api(reqwest::Method::POST, "/v2/sandboxes").json(body);
        self.json(req).await
    }

    /// Every running and paused sandbox: the server answers in pages, followed here.
    pub async fn list(&self) -> Result<Vec<ListedSandbox>> {
        self.list_where(&ListQuery::default()).await
    }

    /// The sandboxes `query` picks, newest first, every page.
    pub async fn list_where(&self, query: &ListQuery) -> Result<Vec<ListedSandbox>> {
        let mut params = query.params();
        let mut all = Vec::new();
        loop {
            let req = self
                .api(reqwest::Method::GET, "/v2/sandboxes")
                .query(&params);
            let resp = self.send(req).await?;
            let next_token = resp
                .headers()
                .get("x-next-token")
                .and_then(|token| token.to_str().ok())
                .map(str::to_owned);
            let page: Vec<ListedSandbox> = resp.json().await.map_err(ClientError::Decode)?;
            all.extend(page);
            match next_token {
                Some(token) => {
                    params.retain(|(key, _)| *key != "nextToken");
                    params.push(("nextToken", token));
                }
                None => return Ok(all),
            }
        }
    }

    pub async fn get(&self, id: &SandboxId) -> Result<SandboxDetail> {
        self.json(self.api(reqwest::Method::GET, &format!("/sandboxes/{id}")))
            .await
    }

    /// A page of the sandbox's log and timeline, oldest first, from `cursor_ms` on.
    pub async fn logs(&self, id: &SandboxId, cursor_ms: Option<i64>) -> Result<SandboxLogsV2> {
        let mut req = self.api(reqwest::Method::GET, &format!("/v2/sandboxes/{id}/logs"));
        if let Some(cursor) = cursor_ms {
            req = req.query(&[("cursor", cursor)]);
        }
        self.json(req).await
    }

    /// The CPU, memory and disk samples of a sandbox taken at `start` (Unix seconds) or
    /// later, oldest first; all the server keeps without `start`.
    pub async fn metrics(&self, id: &SandboxId, start: Option<i64>) -> Result<Vec<SandboxMetric>> {
        let mut req = self.api(reqwest::Method::GET, &format!("/sandboxes/{id}/metrics"));
        if let Some(start) = start {
            req = req.query(&[("start", start)]);
        }
        self.json(req).await
    }

    /// Connect to a sandbox: a paused one is resumed; `timeout_secs` only ever extends
    /// its life. Returns what talking to it takes (its tokens), as create does.
    pub async fn connect(&self, id: &SandboxId, timeout_secs: Option<u64>) -> Result<Sandbox> {
        let body = match timeout_secs {
            Some(timeout) => json!({ "timeout": timeout }),
            None => json!({}),
        };
        let req = self
            .api(reqwest::Method::POST, &format!("/sandboxes/{id}/connect"))
            .json(&body);
        self.json(req).await
    }

    /// Pause a running sandbox; [`Client::connect`] resumes it.
    pub async fn pause(&self, id: &SandboxId) -> Result<()> {
        let req = self.api(reqwest::Method::POST, &format!("/sandboxes/{id}/pause"));
        self.send(req).await.map(drop)
    }

    pub async fn kill(&self, id: &SandboxId) -> Result<()> {
        let req = self.api(reqwest::Method::DELETE, &format!("/sandboxes/{id}"));
        self.send(req).await.map(drop)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(ClientError::Decode)
    }

    /// A request to the control plane, with the API key.
    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .header("x-api-key", &self.api_key)
    }

    /// A request to `port` of `sandbox` through silo's proxy, with its envd token. Not
    /// the API key: the proxy hands the request to code in the sandbox, which has no
    /// business with the server's key.
    fn sandbox_request(
        &self,
        method: reqwest::Method,
        sandbox: &Sandbox,
        port: u16,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .header("e2b-sandbox-id", sandbox.sandbox_id.as_str())
            .header("e2b-sandbox-port", port.to_string());
        if let Some(token) = &sandbox.envd_access_token {
            req = req.header("x-access-token", token);
        }
        if let Some(token) = &sandbox.traffic_access_token {
            req = req.header("e2b-traffic-access-token", token);
        }
        req
    }

    /// Ask for a build of template `req.name`.
    pub async fn request_build(&self, req: &BuildRequest) -> Result<BuildRequested> {
        self.json(self.api(reqwest::Method::POST, "/v3/templates").json(req))
            .await
    }

    /// Whether the server has the files with `hash`, and where to upload them if not.
    pub async fn file_upload(&self, template: &str, hash: &str) -> Result<FileUpload> {
        self.json(self.api(
            reqwest::Method::GET,
            &format!("/templates/{template}/files/{hash}"),
        ))
        .await
    }

    /// Upload a tar (streamed from `file`, `len` bytes) to the URL
    /// [`Client::file_upload`] gave; its one-time token is the right to, no key is sent.
    pub async fn upload(&self, url: &str, file: tokio::fs::File, len: u64) -> Result<()> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let req = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.send(req).await.map(drop)
    }

    pub async fn start_build(&self, template: &str, build: &str, start: &BuildStart) -> Result<()> {
        let path = format!("/v2/templates/{template}/builds/{build}");
        self.send(self.api(reqwest::Method::POST, &path).json(start))
            .await
            .map(drop)
    }

    /// A build's status and its log entries from `offset` on.
    pub async fn build_status(
        &self,
        template: &str,
        build: &str,
        offset: usize,
    ) -> Result<BuildInfo> {
        let path = format!("/templates/{template}/builds/{build}/status?logsOffset={offset}");
        self.json(self.api(reqwest::Method::GET, &path)).await
    }

    pub async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        self.json(self.api(reqwest::Method::GET, "/templates"))
            .await
    }

    pub async fn template(&self, name: &str) -> Result<TemplateInfo> {
        self.json(self.api(reqwest::Method::GET, &format!("/templates/{name}")))
            .await
    }

    pub async fn delete_template(&self, name: &str) -> Result<()> {
        let req = self.api(reqwest::Method::DELETE, &format!("/templates/{name}"));
        self.send(req).await.map(drop)
    }

    /// Point `alias` at `template`.
    pub async fn set_alias(&self, alias: &str, template: &str) -> Result<AliasInfo> {
        let req = self
            .api(reqwest::Method::PUT, &format!("/templates/aliases/{alias}"))
            .json(&json!({ "templateID": template }));
        self.json(req).await
    }

    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        let req = self.api(
            reqwest::Method::DELETE,
            &format!("/templates/aliases/{alias}"),
        );
        self.send(req).await.map(drop)
    }

    /// A template's tags, by name.
    pub async fn tags(&self, template: &str) -> Result<Vec<TemplateTag>> {
        self.json(self.api(reqwest::Method::GET, &format!("/templates/{template}/tags")))
            .await
    }

    /// Point `tags` at the build `target` (`name:tag`, or `name` for its default) names.
    pub async fn assign_tags(&self, target: &str, tags: &[String]) -> Result<AssignedTags> {
        let req = self
            .api(reqwest::Method::POST, "/templates/tags")
            .json(&AssignTags {
                target: target.to_owned(),
                tags: tags.to_vec(),
            });
        self.json(req).await
    }

    /// Remove `tags` of `template`, all or none.
    pub async fn remove_tags(&self, template: &str, tags: &[String]) -> Result<()> {
        let req = self
            .api(reqwest::Method::DELETE, "/templates/tags")
            .json(&RemoveTags {
                name: template.to_owned(),
                tags: tags.to_vec(),
            });
        self.send(req).await.map(drop)
    }

    /// Run `cmd` with `bash -l -c` in the sandbox, handing output to `on_output` as it
    /// arrives; returns the exit code (-1 if killed by a signal).
    pub async fn run(
        &self,
        sandbox: &Sandbox,
        cmd: &str,
        on_output: impl FnMut(Output),
    ) -> Result<i32> {
        self.run_with(sandbox, cmd, &RunOptions::default(), on_output)
            .await
    }

    /// [`Client::run`] with the environment, directory, user and time limit of `options`.
    pub async fn run_with(
        &self,
        sandbox: &Sandbox,
        cmd: &str,
        options: &RunOptions,
        mut on_output: impl FnMut(Output),
    ) -> Result<i32> {
        let start = json!({
            "process": process(&["-l", "-c", cmd], options),
            "stdin": false,
        });
        self.start_process(
            sandbox,
            start,
            options,
            |_| {},
            |event| {
                if let ProcessEvent::Output(out) = event {
                    on_output(out);
                }
            },
        )
        .await
    }

    /// [`Client::run_with`] with a stdin to write to: `on_start` gets the process's pid
    /// for [`Client::send_stdin`] and [`Client::close_stdin`].
    pub async fn run_with_stdin(
        &self,
        sandbox: &Sandbox,
        cmd: &str,
        options: &RunOptions,
        on_start: impl FnOnce(u32),
        mut on_output: impl FnMut(Output),
    ) -> Result<i32> {
        let start = json!({
            "process": process(&["-l", "-c", cmd], options),
            "stdin": true,
        });
        self.start_process(sandbox, start, options, on_start, |event| {
            if let ProcessEvent::Output(out) = event {
                on_output(out);
            }
        })
        .await
    }

    /// Write `input` to the stdin of process `pid` (started with one).
    pub async fn send_stdin(&self, sandbox: &Sandbox, pid: u32, input: &[u8]) -> Result<()> {
        self.send_input(sandbox, pid, "stdin", input).await
    }

    /// Close the stdin of process `pid`: it reads its end.
    pub async fn close_stdin(&self, sandbox: &Sandbox, pid: u32) -> Result<()> {
        self.process_call(sandbox, "CloseStdin", json!({ "process": { "pid": pid } }))
            .await
    }

    /// Run an interactive login shell (`bash -i -l`) on a terminal of `size`, as the
    /// SDK's `pty.create` does, with `TERM`, `LANG` and `LC_ALL` set as it sets them
    /// unless `options` does. `on_start` gets its pid, for [`Client::send_terminal_input`]
    /// and [`Client::resize_terminal`]; `on_output` what the terminal shows. Returns the
    /// shell's exit code.
    pub async fn terminal(
        &self,
        sandbox: &Sandbox,
        options: &RunOptions,
        size: TerminalSize,
        on_start: impl FnOnce(u32),
        mut on_output: impl FnMut(Vec<u8>),
    ) -> Result<i32> {
        let mut options = options.clone();
        for (key, value) in [
            ("TERM", "xterm-256color"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
        ] {
            options
                .envs
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
        }
        let start = json!({
            "process": process(&["-i", "-l"], &options),
            "pty": { "size": size },
        });
        self.start_process(sandbox, start, &options, on_start, |event| {
            if let ProcessEvent::Terminal(bytes) = event {
                on_output(bytes);
            }
        })
        .await
    }

    /// Type `input` into the terminal of process `pid`.
    pub async fn send_terminal_input(
        &self,
        sandbox: &Sandbox,
        pid: u32,
        input: &[u8],
    ) -> Result<()> {
        self.send_input(sandbox, pid, "pty", input).await
    }

    /// `SendInput` of `input` to process `pid`'s `stream` (`stdin` or `pty`).
    async fn send_input(
        &self,
        sandbox: &Sandbox,
        pid: u32,
        stream: &str,
        input: &[u8],
    ) -> Result<()> {
        let input = base64::engine::general_purpose::STANDARD.encode(input);
        self.process_call(
            sandbox,
            "SendInput",
            json!({ "process": { "pid": pid }, "input": { stream: input } }),
        )
        .await
    }

    /// Tell the terminal of process `pid` its new size (the shell gets SIGWINCH).
    pub async fn resize_terminal(
        &self,
        sandbox: &Sandbox,
        pid: u32,
        size: TerminalSize,
    ) -> Result<()> {
        self.process_call(
            sandbox,
            "Update",
            json!({ "process": { "pid": pid }, "pty": { "size": size } }),
        )
        .await
    }

    /// A unary call of envd's `process.Process` service.
    async fn process_call(
        &self,
        sandbox: &Sandbox,
        method: &str,
        request: serde_json::Value,
    ) -> Result<()> {
        let req = self
            .sandbox_request(
                reqwest::Method::POST,
                sandbox,
                silo_protocol::ports::ENVD,
                &format!("/process.Process/{method}"),
            )
            .header("content-type", connect::CONTENT_TYPE_UNARY)
            .header("connect-protocol-version", "1")
            .json(&request);
        self.send(req).await.map(drop)
    }

    /// Start a process with envd's `Start` request `start`, as `options.user` and
    /// within `options.limit`: `on_start` gets its pid once it started, `on_event` its
    /// output as it arrives; returns its exit code (-1 if killed by a signal).
    async fn start_process(
        &self,
        sandbox: &Sandbox,
        start: serde_json::Value,
        options: &RunOptions,
        on_start: impl FnOnce(u32),
        mut on_event: impl FnMut(ProcessEvent),
    ) -> Result<i32> {
        let limit = options.limit;
        let mut on_start = Some(on_start);
        let mut req = self
            .sandbox_request(
                reqwest::Method::POST,
                sandbox,
                silo_protocol::ports::ENVD,
                "/process.Process/Start",
            )
            .header("content-type", connect::CONTENT_TYPE_STREAM)
            .header("connect-protocol-version", "1")
            .body(connect::encode_message(&start));
        if let Some(user) = &options.user {
            // envd's RPCs take the user as HTTP Basic auth with an empty password.
            req = req.basic_auth(user, Some(""));
        }
        if let Some(limit) = limit {
            req = req.header("connect-timeout-ms", limit.as_millis().to_string());
        }
        let resp = self.send(req).await?;
        let mut body = resp.bytes_stream();
        let mut decoder = Decoder::default();
        let mut exit_code = None;
        let stream_error = |err: &dyn std::fmt::Display| ClientError::Stream(err.to_string());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| stream_error(&err))?;
            decoder.push(&chunk);
            while let Some(envelope) = decoder.next_envelope().map_err(|err| stream_error(&err))? {
                if envelope.flag & FLAG_END_STREAM != 0 {
                    let end: EndStream = serde_json::from_slice(&envelope.payload)
                        .map_err(|err| stream_error(&err))?;
                    if let Some(err) = end.error {
                        // envd ends a stream that outlives its connect-timeout-ms with
                        // deadline_exceeded, having killed the process at that limit: its
                        // end, as a process killed by a signal.
                        if limit.is_some() && err.code == connect::Code::DeadlineExceeded {
                            return Ok(-1);
                        }
                        return Err(stream_error(&err));
                    }
                    return exit_code
                        .ok_or_else(|| ClientError::Stream("ended without an end event".into()));
                }
                let msg: serde_json::Value =
                    serde_json::from_slice(&envelope.payload).map_err(|err| stream_error(&err))?;
                let event = &msg["event"];
                if let Some(data) = event.get("data") {
                    let decode = |b64: &str| {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|err| stream_error(&err))
                    };
                    for (key, wrap) in [
                        (
                            "stdout",
                            (|b| ProcessEvent::Output(Output::Stdout(b)))
                                as fn(Vec<u8>) -> ProcessEvent,
                        ),
                        ("stderr", |b| ProcessEvent::Output(Output::Stderr(b))),
                        ("pty", ProcessEvent::Terminal),
                    ] {
                        if let Some(b64) = data.get(key).and_then(|v| v.as_str()) {
                            on_event(wrap(decode(b64)?));
                        }
                    }
                } else if let Some(pid) = event.pointer("/start/pid").and_then(|v| v.as_u64()) {
                    let pid = u32::try_from(pid).map_err(|err| stream_error(&err))?;
                    if let Some(on_start) = on_start.take() {
                        on_start(pid);
                    }
                } else if let Some(end) = event.get("end") {
                    exit_code =
                        Some(end.get("exitCode").and_then(|v| v.as_i64()).unwrap_or(0) as i32);
                }
            }
        }
        decoder.finish().map_err(|err| stream_error(&err))?;
        Err(ClientError::Stream("stream closed before its end".into()))
    }
}

/// A `Start` request's `process`: bash with `args`, and what `options` sets.
fn process(args: &[&str], options: &RunOptions) -> serde_json::Value {
    let mut process = json!({ "cmd": "/bin/bash", "args": args });
    if !options.envs.is_empty() {
        process["envs"] = json!(options.envs);
    }
    if let Some(cwd) = &options.cwd {
        process["cwd"] = json!(cwd);
    }
    process
}

/// What a process started through envd writes, as it comes.
enum ProcessEvent {
    Output(Output),
    /// What its terminal shows.
    Terminal(Vec<u8>),
}

/// The message of an error body: E2B's `{"code":404,"message":...}`, Connect's
/// `{"code":"not_found","message":...}`, or else the text itself.
fn error_message(text: String) -> String {
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(body) => match body.get("message").and_then(|m| m.as_str()) {
            Some(message) => message.to_owned(),
            None => text,
        },
        Err(_) => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_encode_metadata_twice_as_the_sdk_does() {
        let query = ListQuery {
            states: vec![SandboxState::Running, SandboxState::Killed],
            metadata: [("a b".into(), "x&y=z".into()), ("k".into(), "v".into())].into(),
            template: Some("base".into()),
        };
        let url = reqwest::Client::new()
            .get("http://silo.test/v2/sandboxes")
            .query(&query.params())
            .build()
            .unwrap()
            .url()
            .clone();
        assert_eq!(
            url.query(),
            Some("metadata=a%2Bb%3Dx%2526y%253Dz%26k%3Dv&state=running%2Ckilled&template=base")
        );
        for state in [
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Killed,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert!(ListQuery::default().params().is_empty());
    }

    #[test]
    fn error_message_of_each_body_shape() {
        let rest = r#"{"code":404,"message":"sandbox x not found"}"#;
        assert_eq!(error_message(rest.into()), "sandbox x not found");
        let connect = r#"{"code":"not_found","message":"no such file"}"#;
        assert_eq!(error_message(connect.into()), "no such file");
        assert_eq!(error_message("bad gateway".into()), "bad gateway");
    }

    #[tokio::test]
    async fn list_follows_the_next_token_until_there_is_none() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for token in [Some("1_ia"), None] {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                requests.push(line.trim_end().to_owned());
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    header.clear();
                }
                let token = token.map_or(String::new(), |t| format!("X-Next-Token: {t}\r\n"));
                write!(
                    reader.into_inner(),
                    "HTTP/1.1 200 OK\r\n{token}Content-Type: application/json\r\n\
                     Content-Length: 2\r\nConnection: close\r\n\r\n[]"
                )
                .unwrap();
            }
            requests
        });
        let listed = Client::new(&url, "e2b_key").list().await.unwrap();
        assert!(listed.is_empty());
        assert_eq!(
            server.join().unwrap(),
            [
                "GET /v2/sandboxes HTTP/1.1",
                "GET /v2/sandboxes?nextToken=1_ia HTTP/1.1"
            ]
        );
    }

    #[test]
    fn the_api_key_goes_to_the_control_plane_only() {
        let client = Client::new("http://silo.test", "key");
        let api = client
            .api(reqwest::Method::GET, "/templates")
            .build()
            .unwrap();
        assert_eq!(api.headers()["x-api-key"], "key");
        let sandbox = Sandbox {
            template_id: "base".into(),
            sandbox_id: SandboxId::generate(),
            client_id: "silo".into(),
            envd_version: "0.5.0".into(),
            alias: None,
            envd_access_token: Some("envd".into()),
            traffic_access_token: Some("traffic".into()),
            domain: None,
        };
        let proxied = client
            .sandbox_request(reqwest::Method::GET, &sandbox, 49983, "/files")
            .build()
            .unwrap();
        assert!(proxied.headers().get("x-api-key").is_none());
        assert_eq!(proxied.headers()["x-access-token"], "envd");
        assert_eq!(proxied.headers()["e2b-traffic-access-token"], "traffic");
    }
}
