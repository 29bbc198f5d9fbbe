//! silo's own JavaScript/TypeScript kernel: a Node.js driver script (`node_driver.js`,
//! embedded here) spoken to over its stdin and fd 3
//! ([`PROTOCOL_FD`](super::process::PROTOCOL_FD)), one JSON object per line.
//!
//! tslab, the Jupyter kernel the template can install without a native build, prints a
//! cell's value to stdout and reports every failure as a bare "error"; E2B's clients expect
//! the value as the main result and the exception's name, message and stack. The driver does
//! that, and keeps the Jupyter message shapes (`stream`, `execute_result`, `error`,
//! `execute_reply`, `status`…), so [`Kernel`] routes its messages and the execution maps them
//! exactly as for a Jupyter kernel. No ZeroMQ is involved, so any `node` works.
//!
//! Requests (stdin): `{"msg_id","msg_type","content"}`. Messages (fd 3):
//! `{"parent","msg_type","date","content"}`. Interrupts are SIGINT, as for Jupyter kernels
//! with `interrupt_mode: signal`.
//!
//! The driver's stdout and stderr are pipes of their own, read as the running cell's stream
//! output: `console.log` goes through the protocol, but a child the user's code starts with
//! inherited stdio writes to them directly, and must not write into the protocol.
//!
//! The driver finds the TypeScript compiler (which it also uses to parse JavaScript) next to
//! the kernelspec's program: tslab's `bin/tslab` lives in the tslab package, whose
//! dependencies include it.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::ChildStdin;

use super::messages::Message;
use super::process::{KernelProcess, Pipes, StderrTail};
use super::START_TIMEOUT;
use super::{deliver, exited_during_start, Channels, Kernel, KernelError, Routes, StartOptions};
use crate::kernelspec::{self, InterruptMode, KernelSpec};
use crate::language::Language;

/// The driver's source, written to the runtime dir at each start (the agent's own directory
/// is read-only and may not be readable by the kernel user).
const DRIVER: &str = include_str!("node_driver.js");

/// The request side of a running driver, and the script file it was started from.
pub(super) struct Pipe {
    stdin: tokio::sync::Mutex<ChildStdin>,
    _script: ScriptFile,
}

impl Pipe {
    /// Writes one request line.
    pub(super) async fn send(
        &self,
        msg_id: &str,
        msg_type: &str,
        content: Value,
    ) -> std::io::Result<()> {
        let line = request_line(msg_id, msg_type, content);
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }
}

/// The driver script on disk, removed with the kernel.
struct ScriptFile {
    path: PathBuf,
}

impl ScriptFile {
    fn write(dir: &Path) -> Result<ScriptFile, KernelError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("node-driver-{}.js", uuid::Uuid::new_v4()));
        let err = |source| KernelError::DriverScript {
            path: path.clone(),
            source,
        };
        // Readable by the kernel user, who is not the agent's user.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(err)?;
        let script = ScriptFile { path: path.clone() };
        file.write_all(DRIVER.as_bytes()).map_err(err)?;
        Ok(script)
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing driver script");
            }
        }
    }
}

fn request_line(msg_id: &str, msg_type: &str, content: Value) -> String {
    let mut line = json!({"msg_id": msg_id, "msg_type": msg_type, "content": content}).to_string();
    line.push('\n');
    line
}

/// How much of an unreadable protocol line is logged.
const LOGGED_LINE: usize = 200;
/// The most a pipe holds, unless root raised fs.pipe-max-size.
const DRAIN_LIMIT: usize = 1 << 20;

/// One line of the driver's protocol.
#[derive(Deserialize)]
struct DriverLine {
    parent: String,
    msg_type: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    content: Value,
}

/// A driver line as the Jupyter-shaped [`Message`] the rest of the interpreter handles.
fn decode_line(line: &str) -> Result<Message, serde_json::Error> {
    let l: DriverLine = serde_json::from_str(line)?;
    Ok(Message::for_parent(l.parent, l.msg_type, l.date, l.content))
}

/// Routes the driver's messages, and what lands on its stdout and stderr, until the protocol
/// pipe closes.
///
/// Across the pipes, order is known one way only: whatever reached stdout or stderr before
/// the driver wrote a protocol line is in those pipes once the line is read, as the driver
/// writes synchronously and a child run synchronously is done writing when the driver goes
/// on. So the pipes are read dry before each line is routed, which keeps a child's output
/// ahead of the reply and of what the cell prints after it.
async fn read_loop(
    kernel: String,
    protocol: pipe::Receiver,
    [mut stdout, mut stderr]: [Capture; 2],
    mut router: Router,
) {
    let mut lines = BufReader::new(protocol).lines();
    loop {
        tokio::select! {
            text = stdout.read(), if stdout.open => router.output(stdout.name, text),
            text = stderr.read(), if stderr.open => router.output(stderr.name, text),
            line = lines.next_line() => {
                for capture in [&mut stdout, &mut stderr] {
                    let text = capture.drain();
                    router.output(capture.name, text);
                }
                match line {
                    Ok(Some(line)) => router.protocol_line(&line),
                    // The driver is gone; its last words (a crash report on stderr) were
                    // just read into the stderr tail.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%kernel, error = %e, "driver protocol pipe failed");
                        return;
                    }
                }
            }
        }
    }
}

/// The driver's stdout or stderr, whose bytes are stream output.
struct Capture {
    name: &'static str,
    pipe: pipe::Receiver,
    /// The same pipe, read directly: the runtime's own non-waiting read gives up when it has
    /// not yet been told the pipe is readable, which would leave bytes behind in [`drain`].
    ///
    /// [`drain`]: Capture::drain
    now: std::fs::File,
    open: bool,
    buf: Vec<u8>,
    /// The start of a UTF-8 character that the last read cut.
    partial: Vec<u8>,
}

impl Capture {
    fn new(name: &'static str, pipe: pipe::Receiver) -> std::io::Result<Capture> {
        let now = std::fs::File::from(pipe.as_fd().try_clone_to_owned()?);
        Ok(Capture {
            name,
            pipe,
            now,
            open: true,
            buf: vec![0; 64 * 1024],
            partial: Vec::new(),
        })
    }

    /// The text of the next bytes, once there are some.
    async fn read(&mut self) -> String {
        let read = self.pipe.read(&mut self.buf).await;
        self.text(read)
    }

    /// The text of what the pipe holds now, without waiting. At most [`DRAIN_LIMIT`] bytes,
    /// all the pipe held before, so a child that writes without pause cannot hold the
    /// protocol up.
    fn drain(&mut self) -> String {
        let mut text = String::new();
        while self.open && text.len() < DRAIN_LIMIT {
            let read = (&self.now).read(&mut self.buf);
            if matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                break;
            }
            text.push_str(&self.text(read));
        }
        text
    }

    /// The text of one read's bytes, without a character cut at their end; at the end of the
    /// pipe (or a failure, taken as one), everything that is left.
    fn text(&mut self, read: std::io::Result<usize>) -> String {
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => {
                self.open = false;
                0
            }
        };
        self.partial.extend_from_slice(&self.buf[..n]);
        let whole = match std::str::from_utf8(&self.partial) {
            Err(e) if self.open && e.error_len().is_none() => e.valid_up_to(),
            _ => self.partial.len(),
        };
        let cut = self.partial.split_off(whole);
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial = cut;
        text
    }
}

/// Routes what the reader gets, following the driver's requests as it goes.
struct Router {
    kernel: String,
    routes: Routes,
    stderr_tail: StderrTail,
    /// Whose the bytes on stdout and stderr are: as the driver's own `outputParent`, the
    /// request that announced a cell with execute_input, until the next request starts.
    output: Option<String>,
    /// The request the driver is handling, until its reply is seen.
    unanswered: Option<String>,
}

impl Router {
    fn new(kernel: String, routes: Routes, stderr_tail: StderrTail) -> Router {
        Router {
            kernel,
            routes,
            stderr_tail,
            output: None,
            unanswered: None,
        }
    }

    fn output(&mut self, name: &'static str, text: String) {
        if text.is_empty() {
            return;
        }
        if name == "stderr" {
            self.stderr_tail.record(&text);
        }
        match &self.output {
            Some(parent) => deliver(
                &self.routes,
                Message::for_parent(
                    parent.clone(),
                    "stream".into(),
                    String::new(),
                    json!({"name": name, "text": text}),
                ),
            ),
            None => {
                tracing::debug!(kernel = %self.kernel, name, bytes = text.len(), "dropping driver output outside a cell")
            }
        }
    }

    fn protocol_line(&mut self, line: &str) {
        let msg = match decode_line(line) {
            Ok(msg) => msg,
            Err(e) => {
                // Only the driver writes here (children do not inherit fd 3), unless the
                // user's code does itself. Were it a reply, `follow` makes one up at idle.
                let start: String = line.chars().take(LOGGED_LINE).collect();
                tracing::warn!(kernel = %self.kernel, error = %e, line = %start, "unreadable driver message");
                return;
            }
        };
        self.follow(&msg);
        deliver(&self.routes, msg);
    }

    /// Notes what `msg` says about the driver's requests. A request that ends without a
    /// reply gets an error reply before its idle status: the execution would otherwise wait
    /// for the reply forever, with nothing left to interrupt.
    fn follow(&mut self, msg: &Message) {
        let Some(parent) = msg.parent_msg_id.as_deref() else {
            return;
        };
        let state = msg.content["execution_state"].as_str();
        match msg.header.msg_type.as_str() {
            "status" if state == Some("busy") => {
                self.output = None;
                self.unanswered = Some(parent.to_string());
            }
            "status" if state == Some("idle") && self.unanswered.as_deref() == Some(parent) => {
                self.unanswered = None;
                tracing::warn!(kernel = %self.kernel, request = parent, "driver finished a request without a readable reply");
                deliver(&self.routes, lost_reply(parent));
            }
            "execute_input" => self.output = Some(parent.to_string()),
            t if t.ends_with("_reply") && self.unanswered.as_deref() == Some(parent) => {
                self.unanswered = None;
            }
            _ => {}
        }
    }
}

/// The reply made up for a request whose own reply could not be read.
fn lost_reply(parent: &str) -> Message {
    Message::for_parent(
        parent.to_string(),
        "execute_reply".into(),
        String::new(),
        json!({
            "status": "error",
            "ename": "KernelProtocolError",
            "evalue": "the kernel's reply was unreadable; the code ran, but its outcome is unknown",
            "traceback": [],
        }),
    )
}

/// The argv of the driver for `spec`'s language.
fn command_line(spec: &KernelSpec, node: &Path, script: &Path, path: &str) -> Vec<String> {
    let language = match spec.language {
        Language::TypeScript => "typescript",
        _ => "javascript",
    };
    let mut argv = vec![
        node.to_string_lossy().into_owned(),
        script.to_string_lossy().into_owned(),
        language.to_string(),
    ];
    if let Some(dir) = compiler_hint(spec, path) {
        argv.push(dir.to_string_lossy().into_owned());
    }
    argv
}

/// The package directory of the kernelspec's program (`…/tslab/bin/tslab` → `…/tslab`),
/// whose dependencies hold the TypeScript compiler.
fn compiler_hint(spec: &KernelSpec, path: &str) -> Option<PathBuf> {
    let program = spec.command_line(Path::new(""), path).into_iter().next()?;
    let real = std::fs::canonicalize(program).ok()?;
    real.ancestors().nth(2).map(Path::to_path_buf)
}

impl Kernel {
    /// Starts silo's Node.js driver for `spec`'s language (JavaScript or TypeScript) with
    /// the `node` found on `opts.path`; the spec gives its environment and where the
    /// compiler is.
    pub async fn start_node(
        spec: &KernelSpec,
        opts: StartOptions<'_>,
    ) -> Result<Kernel, KernelError> {
        let name = format!("{} (silo node driver)", spec.name);
        let node =
            kernelspec::find_program("node", opts.path).ok_or_else(|| KernelError::Spawn {
                kernel: name.clone(),
                program: "node".into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "node is not on PATH"),
            })?;
        let script = ScriptFile::write(opts.runtime_dir)?;
        let argv = command_line(spec, &node, &script.path, opts.path);
        let mut env = opts.env.clone();
        env.extend(spec.env.clone());
        let spawn_err = |source| KernelError::Spawn {
            kernel: name.clone(),
            program: argv[0].clone(),
            source,
        };
        let (process, pipes) =
            KernelProcess::spawn_piped(&argv, &env, opts.cwd, opts.user).map_err(spawn_err)?;
        tracing::info!(kernel = %name, pid = process.pid(), "kernel process started");
        let Pipes {
            stdin,
            protocol,
            stdout,
            stderr,
        } = pipes;
        let captures = [
            Capture::new("stdout", stdout).map_err(spawn_err)?,
            Capture::new("stderr", stderr).map_err(spawn_err)?,
        ];

        let routes = Routes::default();
        let router = Router::new(name.clone(), routes.clone(), process.stderr_recorder());
        let reader = tokio::spawn(read_loop(name.clone(), protocol, captures, router));
        let kernel = Kernel {
            name: name.clone(),
            process,
            interrupt_mode: InterruptMode::Signal,
            channels: Channels::Node(Pipe {
                stdin: tokio::sync::Mutex::new(stdin),
                _script: script,
            }),
            routes,
            readers: vec![reader],
            killed: AtomicBool::new(false),
        };
        match tokio::time::timeout(START_TIMEOUT, kernel.handshake()).await {
            Ok(Ok(())) => Ok(kernel),
            // A broken pipe is the driver dying before it read the handshake: report the
            // exit and its stderr, which say why.
            Ok(Err(KernelError::PipeSend { .. })) => {
                let status = kernel.process.wait().await;
                Err(exited_during_start(&name, &kernel.process, status))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(KernelError::StartTimeout { kernel: name }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let line = request_line("id1", "execute_request", json!({"code": "1\n+1"}));
        assert!(line.ends_with('\n'));
        assert_eq!(
            line.matches('\n').count(),
            1,
            "newlines in code are escaped"
        );
        let back: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            back,
            json!({"msg_id":"id1","msg_type":"execute_request","content":{"code":"1\n+1"}})
        );
    }

    #[test]
    fn driver_lines_decode_to_routed_messages() {
        let msg = decode_line(
            r#"{"parent":"id1","msg_type":"stream","date":"2024-01-01T00:00:00.000Z","content":{"name":"stdout","text":"hi\n"}}"#,
        )
        .expect("decodes");
        assert_eq!(msg.parent_msg_id.as_deref(), Some("id1"));
        assert_eq!(msg.header.msg_type, "stream");
        assert_eq!(msg.header.date, "2024-01-01T00:00:00.000Z");
        assert_eq!(msg.content, json!({"name":"stdout","text":"hi\n"}));
        assert!(decode_line("plain output of a child process").is_err());
        assert!(
            decode_line(r#"{"msg_type":"stream"}"#).is_err(),
            "no parent"
        );
    }

    /// The messages of one request until the driver is idle, as (msg_type, content).
    async fn run(kernel: &Kernel, code: &str) -> Vec<(String, Value)> {
        let mut replies = kernel
            .request(
                "execute_request",
                super::super::messages::execute_request(code, false),
            )
            .await
            .expect("sent");
        let mut seen = vec![];
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(30), replies.next())
                .await
                .expect("driver answers")
                .expect("driver alive");
            let idle = msg.header.msg_type == "status" && msg.content["execution_state"] == "idle";
            seen.push((msg.header.msg_type, msg.content));
            if idle {
                return seen;
            }
        }
    }

    fn of_type<'a>(seen: &'a [(String, Value)], t: &str) -> Vec<&'a Value> {
        seen.iter()
            .filter(|(m, _)| m == t)
            .map(|(_, c)| c)
            .collect()
    }

    /// The real driver on the host's `node` in `dir`, or `None` where there is no node.
    async fn start_driver(dir: &Path) -> Option<Kernel> {
        let path = std::env::var("PATH").unwrap_or_default();
        if kernelspec::find_program("node", &path).is_none() {
            eprintln!("skipped: no node on PATH");
            return None;
        }
        let spec = KernelSpec {
            name: "jslab".into(),
            language: Language::JavaScript,
            argv: vec!["tslab".into(), "kernel".into()],
            env: Default::default(),
            interrupt_mode: InterruptMode::Message,
            dir: dir.to_path_buf(),
        };
        let env = std::collections::BTreeMap::from([("PATH".to_string(), path.clone())]);
        let kernel = Kernel::start_node(
            &spec,
            StartOptions {
                cwd: dir,
                env: &env,
                user: None,
                runtime_dir: dir,
                path: &path,
            },
        )
        .await
        .expect("driver starts");
        Some(kernel)
    }

    #[tokio::test]
    async fn driver_runs_code_and_survives_an_interrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(kernel) = start_driver(dir.path()).await else {
            return;
        };

        let seen = run(&kernel, "console.log('hi'); 1 + 1").await;
        assert_eq!(
            of_type(&seen, "stream"),
            [&json!({"name": "stdout", "text": "hi\n"})]
        );
        assert_eq!(
            of_type(&seen, "execute_result")[0]["data"],
            json!({"text/plain": "2"})
        );
        assert_eq!(of_type(&seen, "execute_reply")[0]["status"], "ok");

        let failing = run(&kernel, "null.x").await;
        assert_eq!(of_type(&failing, "error")[0]["ename"], "TypeError");

        let looping = {
            let running = run(&kernel, "var kept = 5; while (true) {}");
            tokio::pin!(running);
            tokio::select! {
                _ = &mut running => panic!("an endless loop ended"),
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            kernel.interrupt().await.expect("interrupt");
            running.await
        };
        assert_eq!(
            of_type(&looping, "error")[0]["evalue"],
            "Script execution was interrupted by `SIGINT`"
        );
        let after = run(&kernel, "kept").await;
        assert_eq!(
            of_type(&after, "execute_result")[0]["data"]["text/plain"],
            "5"
        );
        kernel.kill().await;
    }

    /// A child that inherits the driver's stdout and stderr writes into capture pipes, not
    /// into the protocol: before, its unterminated "done" glued onto the next protocol line,
    /// the execute_reply was lost and the execution never ended.
    #[tokio::test]
    async fn child_with_inherited_stdio_neither_hangs_nor_loses_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(kernel) = start_driver(dir.path()).await else {
            return;
        };
        let alone = run(
            &kernel,
            "void require('child_process').execSync('printf done', {stdio: 'inherit'})",
        )
        .await;
        assert_eq!(of_type(&alone, "execute_reply")[0]["status"], "ok");
        assert_eq!(
            of_type(&alone, "stream"),
            [&json!({"name": "stdout", "text": "done"})]
        );

        let code = "console.log('before'); \
            require('child_process').execSync('printf done; printf oops >&2', {stdio: 'inherit'}); \
            console.log('after')";
        let seen = run(&kernel, code).await;
        assert_eq!(of_type(&seen, "execute_reply")[0]["status"], "ok");
        let text = |name: &str| -> Vec<&str> {
            of_type(&seen, "stream")
                .into_iter()
                .filter(|c| c["name"] == name)
                .filter_map(|c| c["text"].as_str())
                .collect()
        };
        // What the cell prints comes in order. The child's bytes come on a pipe of
        // their own: a loaded reader may take them before or after the cell's own
        // lines, or even before the cell's start (then they go to the cell before), so
        // only that the cell ends and keeps its own output is certain here.
        let stdout = text("stdout");
        let own: Vec<&str> = stdout.iter().copied().filter(|t| *t != "done").collect();
        assert_eq!(own, ["before\n", "after\n"], "{stdout:?}");
        assert_eq!(text("stderr"), ["oops"]);

        // More than a pipe holds, cut anywhere, multi-byte characters included.
        let big = run(
            &kernel,
            "void require('child_process').execSync(\"yes é | head -c 999999\", {stdio: 'inherit'})",
        )
        .await;
        let out: String = of_type(&big, "stream")
            .into_iter()
            .filter_map(|c| c["text"].as_str())
            .collect();
        assert_eq!(out.len(), 999_999);
        assert_eq!(out.matches("é\n").count(), 333_333);

        // The next cell runs as usual.
        let after = run(&kernel, "2 + 2").await;
        assert_eq!(
            of_type(&after, "execute_result")[0]["data"]["text/plain"],
            "4"
        );
        kernel.kill().await;
    }

    #[tokio::test]
    async fn captures_keep_characters_whole_and_drain_without_waiting() {
        use std::io::Write;
        let (tx, rx) = pipe::pipe().expect("pipe");
        let mut capture = Capture::new("stdout", rx).expect("capture");
        let mut tx = std::fs::File::from(tx.into_blocking_fd().expect("blocking"));
        let bytes = "aé".as_bytes();
        tx.write_all(&bytes[..2]).expect("write");
        assert_eq!(capture.drain(), "a");
        assert_eq!(capture.drain(), "", "nothing there, no waiting");
        tx.write_all(&bytes[2..]).expect("write");
        assert_eq!(capture.read().await, "é");
        tx.write_all(&bytes[1..2]).expect("write");
        drop(tx);
        // Read to the end, waiting: a process another test forks may hold a copy of the
        // write end for a moment, so the end need not be there at once.
        let mut rest = String::new();
        while capture.open {
            rest.push_str(&capture.read().await);
        }
        assert_eq!(rest, "\u{FFFD}", "a cut character at the end");
    }

    #[test]
    fn a_request_ending_without_a_readable_reply_gets_an_error_reply() {
        let routes = Routes::default();
        let mut replies = super::super::Replies::register(&routes, "r1".into());
        let mut router = Router::new("js".into(), routes, StderrTail::default());
        let line = |msg_type: &str, content: Value| {
            json!({"parent": "r1", "msg_type": msg_type, "content": content}).to_string()
        };
        router.protocol_line(&line("status", json!({"execution_state": "busy"})));
        router.output("stdout", "not yet the cell's\n".into());
        router.protocol_line(&line("execute_input", json!({"execution_count": 1})));
        router.output("stderr", "child\n".into());
        router.protocol_line("garbled{\"parent\":\"r1\",\"msg_type\":\"execute_reply\"");
        router.protocol_line(&line("status", json!({"execution_state": "idle"})));
        let seen: Vec<(String, Value)> = replies
            .drain()
            .into_iter()
            .map(|m| (m.header.msg_type, m.content))
            .collect();
        let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "status",
                "execute_input",
                "stream",
                "execute_reply",
                "status"
            ]
        );
        assert_eq!(seen[2].1, json!({"name": "stderr", "text": "child\n"}));
        assert_eq!(seen[3].1["status"], "error");
        assert_eq!(seen[3].1["ename"], "KernelProtocolError");
        assert_eq!(router.stderr_tail.lines(), ["child"]);
    }

    #[test]
    fn script_file_is_readable_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = {
            let script = ScriptFile::write(dir.path()).expect("written");
            let meta = std::fs::metadata(&script.path).expect("exists");
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
            assert_eq!(std::fs::read_to_string(&script.path).expect("read"), DRIVER);
            script.path.clone()
        };
        assert!(!path.exists());
    }
}
