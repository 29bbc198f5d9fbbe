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
//! `{"parent","msg_type","date","content","marks"}`. Interrupts are SIGINT, as for Jupyter
//! kernels with `interrupt_mode: signal`.
//!
//! Stream output does not go through the protocol: `console.log` writes to the driver's
//! stdout and stderr, pipes of their own, where a child the user's code starts with
//! inherited stdio writes too, so each pipe has a cell's output in the order it was
//! written. Two pipes have no order between them, so before each message the driver writes
//! a numbered mark to both, which the message names in `marks`: the bytes before the mark
//! are routed before the message, those after it after. That is what attributes output to
//! the cell that wrote it (its execute_input is a message like any other) and keeps it
//! ahead of the cell's reply, without waiting for anything but bytes already written. The
//! mark carries a random id given to the driver at its start, which output does not hold by
//! chance.
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
/// The most read from the driver's stdout or stderr at once, and so the most text in one
/// stream message of a child's output.
const READ_SIZE: usize = 64 * 1024;
/// The most a pipe holds, unless root raised fs.pipe-max-size.
const DRAIN_LIMIT: usize = 1 << 20;
/// Starts every mark the driver writes to its stdout and stderr, before the mark id.
const MARK_START: u8 = 0x1e;

/// One line of the driver's protocol.
#[derive(Deserialize)]
struct DriverLine {
    parent: String,
    msg_type: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    marks: Marks,
}

/// The number of the mark the driver wrote to each of its streams just before a message;
/// none where writing failed.
#[derive(Debug, Default, Deserialize, PartialEq)]
struct Marks {
    stdout: Option<u64>,
    stderr: Option<u64>,
}

impl Marks {
    fn of(&self, stream: &str) -> Option<u64> {
        match stream {
            "stdout" => self.stdout,
            _ => self.stderr,
        }
    }
}

/// A driver line as the Jupyter-shaped [`Message`] the rest of the interpreter handles, and
/// its marks.
fn decode_line(line: &str) -> Result<(Message, Marks), serde_json::Error> {
    let l: DriverLine = serde_json::from_str(line)?;
    let msg = Message::for_parent(l.parent, l.msg_type, l.date, l.content);
    Ok((msg, l.marks))
}

/// Routes the driver's messages, and what lands on its stdout and stderr, until the protocol
/// pipe closes.
///
/// Before a message is routed, each stream is read up to the mark the message names, which
/// the driver wrote before the message: it is in the pipe, or on its way with the bytes
/// ahead of it, so this waits for nothing else. Between messages, the streams are read as
/// their bytes come, up to the next mark, where a stream waits for its message.
async fn read_loop(
    kernel: String,
    protocol: pipe::Receiver,
    [mut stdout, mut stderr]: [Capture; 2],
    mut router: Router,
) {
    let mut lines = BufReader::new(protocol).lines();
    loop {
        tokio::select! {
            () = stdout.fill(), if stdout.reading() => stdout.route_text(&mut router),
            () = stderr.fill(), if stderr.reading() => stderr.route_text(&mut router),
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    // The driver is gone; its last words (a crash report on stderr) are in
                    // the pipe, to be read into the stderr tail. What it left there is read
                    // without waiting: a child may hold the pipe open.
                    Ok(None) => {
                        for capture in [&mut stdout, &mut stderr] {
                            capture.drain(&mut router);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%kernel, error = %e, "driver protocol pipe failed");
                        return;
                    }
                };
                let decoded = decode_line(&line);
                if let Ok((_, marks)) = &decoded {
                    for capture in [&mut stdout, &mut stderr] {
                        if let Some(mark) = marks.of(capture.name) {
                            capture.route_until(mark, &mut router).await;
                        }
                    }
                }
                router.protocol_line(&line, decoded.map(|(msg, _)| msg));
            }
        }
    }
}

/// A piece of what the driver's stdout or stderr holds.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    /// A mark that a protocol message names.
    Mark(u64),
}

/// The driver's stdout or stderr: stream output, and the driver's marks in it.
struct Capture {
    name: &'static str,
    pipe: pipe::Receiver,
    /// The same pipe, read directly: the runtime's own non-waiting read gives up when it has
    /// not yet been told the pipe is readable, which would leave bytes behind in [`drain`].
    ///
    /// [`drain`]: Capture::drain
    now: std::fs::File,
    /// `\x1e<mark id>:`, how every mark starts.
    mark: Vec<u8>,
    open: bool,
    buf: Vec<u8>,
    /// Bytes read and not yet routed.
    pending: Vec<u8>,
    /// A mark read whose message has not been routed yet: until it is, the bytes after it
    /// stay in the pipe.
    held: Option<u64>,
}

impl Capture {
    fn new(name: &'static str, pipe: pipe::Receiver, mark_id: &str) -> std::io::Result<Capture> {
        let now = std::fs::File::from(pipe.as_fd().try_clone_to_owned()?);
        let mut mark = vec![MARK_START];
        mark.extend_from_slice(mark_id.as_bytes());
        mark.push(b':');
        Ok(Capture {
            name,
            pipe,
            now,
            mark,
            open: true,
            buf: vec![0; READ_SIZE],
            pending: Vec::new(),
            held: None,
        })
    }

    /// Whether bytes are read as they come: not past a mark whose message is still ahead.
    fn reading(&self) -> bool {
        self.open && self.held.is_none()
    }

    /// Reads the next bytes, once there are some. Cancel-safe: nothing is read but in the
    /// one await.
    async fn fill(&mut self) {
        let read = self.pipe.read(&mut self.buf).await;
        self.keep(read);
    }

    fn keep(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(n) if n > 0 => self.pending.extend_from_slice(&self.buf[..n]),
            // The end of the pipe, or a failure, taken as one.
            _ => self.open = false,
        }
    }

    /// Routes the text read, up to the first mark, which it then holds.
    fn route_text(&mut self, router: &mut Router) {
        while let Some(piece) = self.next_piece() {
            match piece {
                Piece::Text(text) => router.output(self.name, text),
                Piece::Mark(n) => {
                    self.held = Some(n);
                    return;
                }
            }
        }
    }

    /// Routes the text before mark `n`, reading until it is there. An older mark (its
    /// message was unreadable) is passed over; a newer one means `n` will not come, as at
    /// the end of the pipe.
    async fn route_until(&mut self, n: u64, router: &mut Router) {
        loop {
            match self.held {
                Some(held) if held > n => return,
                Some(held) => {
                    self.held = None;
                    if held == n {
                        return;
                    }
                }
                None if self.pending.is_empty() && !self.open => return,
                None => {}
            }
            self.route_text(router);
            if self.held.is_none() {
                if !self.open {
                    return;
                }
                self.fill().await;
            }
        }
    }

    /// Routes what the pipe holds now, without waiting: at most [`DRAIN_LIMIT`] bytes more,
    /// so a child that writes without pause cannot hold the reader up. Marks are passed
    /// over: no message follows them any more.
    fn drain(&mut self, router: &mut Router) {
        let mut read = 0;
        loop {
            while let Some(piece) = self.next_piece() {
                if let Piece::Text(text) = piece {
                    router.output(self.name, text);
                }
            }
            if !self.open || read >= DRAIN_LIMIT {
                break;
            }
            let got = (&self.now).read(&mut self.buf);
            if matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                break;
            }
            read += got.as_ref().map_or(0, |n| *n);
            self.keep(got);
        }
        self.held = None;
    }

    /// The next piece of the bytes read, if a whole one is there: text up to a mark, the
    /// end of a read or a character cut by it; or a numbered mark. The marks that only end
    /// one of the driver's writes are passed over.
    fn next_piece(&mut self) -> Option<Piece> {
        loop {
            let start = self.mark_start();
            if start > 0 {
                let text = self.take_text(start);
                return (!text.is_empty()).then_some(Piece::Text(text));
            }
            if self.pending.is_empty() {
                return None;
            }
            // A mark, if its end was read; at the end of the pipe, a cut one is text.
            let rest = &self.pending[self.mark.len().min(self.pending.len())..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                let text = (!self.open).then(|| self.take_text(self.pending.len()));
                return text.map(Piece::Text);
            };
            let number = std::str::from_utf8(&rest[..end])
                .ok()
                .map(str::parse::<u64>);
            self.pending.drain(..self.mark.len() + end + 1);
            match number {
                Some(Ok(n)) => return Some(Piece::Mark(n)),
                // An empty number: the end of one of the driver's writes.
                _ => continue,
            }
        }
    }

    /// Where the first mark starts in the bytes read: at 0 when they begin with a whole
    /// one; at the end when there is none, but for a tail that may begin one (and is read
    /// on when the pipe is still open).
    fn mark_start(&self) -> usize {
        let p = &self.pending;
        let mut from = 0;
        while let Some(i) = p[from..].iter().position(|&b| b == MARK_START) {
            let at = from + i;
            let n = self.mark.len().min(p.len() - at);
            if p[at..at + n] == self.mark[..n] && (n == self.mark.len() || self.open) {
                return at;
            }
            from = at + 1;
        }
        p.len()
    }

    /// The text of the first `n` bytes read, without a character cut at their end while
    /// the rest may still come.
    fn take_text(&mut self, n: usize) -> String {
        let whole = match std::str::from_utf8(&self.pending[..n]) {
            Err(e) if self.open && n == self.pending.len() && e.error_len().is_none() => {
                e.valid_up_to()
            }
            _ => n,
        };
        let text = String::from_utf8_lossy(&self.pending[..whole]).into_owned();
        self.pending.drain(..whole);
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

    /// Routes the message of a protocol line, as decoded.
    fn protocol_line(&mut self, line: &str, decoded: Result<Message, serde_json::Error>) {
        let msg = match decoded {
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

/// The argv of the driver for `spec`'s language, marking its streams with `mark_id`.
fn command_line(
    spec: &KernelSpec,
    node: &Path,
    script: &Path,
    mark_id: &str,
    path: &str,
) -> Vec<String> {
    let language = match spec.language {
        Language::TypeScript => "typescript",
        _ => "javascript",
    };
    let mut argv = vec![
        node.to_string_lossy().into_owned(),
        script.to_string_lossy().into_owned(),
        language.to_string(),
        mark_id.to_string(),
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
        let mark_id = uuid::Uuid::new_v4().simple().to_string();
        let argv = command_line(spec, &node, &script.path, &mark_id, opts.path);
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
            Capture::new("stdout", stdout, &mark_id).map_err(spawn_err)?,
            Capture::new("stderr", stderr, &mark_id).map_err(spawn_err)?,
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
        let (msg, marks) = decode_line(
            r#"{"parent":"id1","msg_type":"display_data","date":"2024-01-01T00:00:00.000Z","content":{"data":{}},"marks":{"stdout":7}}"#,
        )
        .expect("decodes");
        assert_eq!(msg.parent_msg_id.as_deref(), Some("id1"));
        assert_eq!(msg.header.msg_type, "display_data");
        assert_eq!(msg.header.date, "2024-01-01T00:00:00.000Z");
        assert_eq!(msg.content, json!({"data": {}}));
        assert_eq!(
            marks,
            Marks {
                stdout: Some(7),
                stderr: None
            }
        );
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
    /// the execute_reply was lost and the execution never ended. Its output comes in order
    /// with the cell's own and within the cell: when console.log went through the protocol,
    /// a loaded reader could take the child's bytes before or after the cell's lines, or give
    /// them to the cell before (1 run in 6).
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
        // One pipe per stream carries the cell's own output and its child's in the order
        // written, and the marks keep all of it inside the cell.
        assert_eq!(text("stdout").concat(), "before\ndoneafter\n");
        assert_eq!(text("stderr").concat(), "oops");
        assert_eq!(
            text("stdout")[0],
            "before\n",
            "each of the driver's writes is a message"
        );

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

    /// A capture of a pipe whose marks have id `id`, and the pipe's write end.
    fn capture() -> (Capture, std::fs::File) {
        let (tx, rx) = pipe::pipe().expect("pipe");
        let capture = Capture::new("stdout", rx, "id").expect("capture");
        let tx = std::fs::File::from(tx.into_blocking_fd().expect("blocking"));
        (capture, tx)
    }

    fn pieces(capture: &mut Capture) -> Vec<Piece> {
        std::iter::from_fn(|| capture.next_piece()).collect()
    }

    fn text(t: &str) -> Piece {
        Piece::Text(t.into())
    }

    #[tokio::test]
    async fn captures_cut_text_at_marks_and_keep_characters_and_marks_whole() {
        use std::io::Write;
        let (mut capture, mut tx) = capture();
        let mut send = async |bytes: &[u8], capture: &mut Capture| {
            tx.write_all(bytes).expect("write");
            capture.fill().await;
            pieces(capture)
        };
        assert_eq!(send(b"a\xc3", &mut capture).await, [text("a")]);
        assert_eq!(send(b"\xa9 \x1eid", &mut capture).await, [text("é ")]);
        assert_eq!(
            send(b":\nx\x1eid:3\ny\x1eother", &mut capture).await,
            [text("x"), Piece::Mark(3), text("y\x1eother")],
            "the end of a write passed over, a numbered mark, a byte that starts no mark"
        );
        assert_eq!(send(b"\x1eid:\n", &mut capture).await, []);

        // At the end of the pipe, what was cut is text.
        tx.write_all(b"z\xc3\x1eid:4").expect("write");
        drop(tx);
        let mut rest = vec![];
        while capture.open {
            capture.fill().await;
            rest.extend(pieces(&mut capture));
        }
        rest.extend(pieces(&mut capture));
        let rest: Vec<&str> = rest
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Mark(_) => panic!("a mark in {rest:?}"),
            })
            .collect();
        assert_eq!(rest.concat(), "z\u{FFFD}\x1eid:4");
    }

    #[tokio::test]
    async fn a_capture_routes_up_to_the_mark_of_each_message() {
        use std::io::Write;
        let routes = Routes::default();
        let mut replies = super::super::Replies::register(&routes, "r1".into());
        let mut router = Router::new("js".into(), routes, StderrTail::default());
        router.output = Some("r1".into());
        let (mut capture, mut tx) = capture();
        let mut routed = || -> Vec<String> {
            replies
                .drain()
                .into_iter()
                .filter_map(|m| m.content["text"].as_str().map(String::from))
                .collect()
        };

        tx.write_all(b"a\x1eid:1\nb\x1eid:2\nc").expect("write");
        capture.fill().await;
        capture.route_text(&mut router);
        assert_eq!(routed(), ["a"]);
        assert_eq!(capture.held, Some(1));
        assert!(
            !capture.reading(),
            "nothing after a mark before its message"
        );

        capture.route_until(2, &mut router).await;
        assert_eq!(
            routed(),
            ["b"],
            "an older mark (an unreadable message) passed over"
        );
        assert!(capture.reading());
        tx.write_all(b"d\x1eid:5\n").expect("write");
        capture.route_until(3, &mut router).await;
        assert_eq!(routed(), ["c", "d"], "reads on for the mark");
        assert_eq!(capture.held, Some(5), "a newer mark ends the wait");

        // Nothing there: no waiting.
        capture.drain(&mut router);
        assert_eq!(routed(), Vec::<String>::new());
    }

    #[test]
    fn a_request_ending_without_a_readable_reply_gets_an_error_reply() {
        let routes = Routes::default();
        let mut replies = super::super::Replies::register(&routes, "r1".into());
        let mut router = Router::new("js".into(), routes, StderrTail::default());
        let line = |msg_type: &str, content: Value| {
            json!({"parent": "r1", "msg_type": msg_type, "content": content}).to_string()
        };
        let feed = |router: &mut Router, line: &str| {
            router.protocol_line(line, decode_line(line).map(|(msg, _)| msg))
        };
        feed(
            &mut router,
            &line("status", json!({"execution_state": "busy"})),
        );
        router.output("stdout", "not yet the cell's\n".into());
        feed(
            &mut router,
            &line("execute_input", json!({"execution_count": 1})),
        );
        router.output("stderr", "child\n".into());
        feed(
            &mut router,
            "garbled{\"parent\":\"r1\",\"msg_type\":\"execute_reply\"",
        );
        feed(
            &mut router,
            &line("status", json!({"execution_state": "idle"})),
        );
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
