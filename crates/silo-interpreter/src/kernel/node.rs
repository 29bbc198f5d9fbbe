//! silo's own JavaScript/TypeScript kernel: a Node.js driver script (`node_driver.js`,
//! embedded here) spoken to over its stdin and stdout, one JSON object per line.
//!
//! tslab, the Jupyter kernel the template can install without a native build, prints a
//! cell's value to stdout and reports every failure as a bare "error"; E2B's clients expect
//! the value as the main result and the exception's name, message and stack. The driver does
//! that, and keeps the Jupyter message shapes (`stream`, `execute_result`, `error`,
//! `execute_reply`, `status`…), so [`Kernel`] routes its messages and the execution maps them
//! exactly as for a Jupyter kernel. No ZeroMQ is involved, so any `node` works.
//!
//! Requests (stdin): `{"msg_id","msg_type","content"}`. Messages (stdout):
//! `{"parent","msg_type","date","content"}`. Interrupts are SIGINT, as for Jupyter kernels
//! with `interrupt_mode: signal`.
//!
//! The driver finds the TypeScript compiler (which it also uses to parse JavaScript) next to
//! the kernelspec's program: tslab's `bin/tslab` lives in the tslab package, whose
//! dependencies include it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

use super::messages::{Header, Message};
use super::process::KernelProcess;
use super::START_TIMEOUT;
use super::{exited_during_start, lock, Channels, Kernel, KernelError, Routes, StartOptions};
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

/// One line of the driver's stdout.
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
    Ok(Message {
        header: Header {
            msg_id: String::new(),
            session: String::new(),
            username: String::new(),
            date: l.date,
            msg_type: l.msg_type,
            version: String::new(),
        },
        parent_msg_id: Some(l.parent),
        content: l.content,
    })
}

/// Routes the driver's messages until its stdout closes.
async fn read_loop(kernel: String, stdout: ChildStdout, routes: Routes) {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%kernel, error = %e, "driver stdout closed");
                return;
            }
        };
        let msg = match decode_line(&line) {
            Ok(m) => m,
            Err(e) => {
                // A child process of the user's code that inherited stdout, most likely.
                tracing::debug!(%kernel, error = %e, "dropping a non-protocol driver line");
                continue;
            }
        };
        let routes = lock(&routes);
        if let Some(tx) = msg.parent_msg_id.as_deref().and_then(|p| routes.get(p)) {
            // A closed receiver just means the request was abandoned.
            let _ = tx.send(msg);
        }
    }
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
        let (process, pipes) = KernelProcess::spawn_piped(&argv, &env, opts.cwd, opts.user)
            .map_err(|source| KernelError::Spawn {
                kernel: name.clone(),
                program: argv[0].clone(),
                source,
            })?;
        tracing::info!(kernel = %name, pid = process.pid(), "kernel process started");

        let routes = Routes::default();
        let reader = tokio::spawn(read_loop(name.clone(), pipes.stdout, routes.clone()));
        let kernel = Kernel {
            name: name.clone(),
            process,
            interrupt_mode: InterruptMode::Signal,
            channels: Channels::Node(Pipe {
                stdin: tokio::sync::Mutex::new(pipes.stdin),
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

    /// The real driver on the host's `node`; skipped where there is none.
    #[tokio::test]
    async fn driver_runs_code_and_survives_an_interrupt() {
        let path = std::env::var("PATH").unwrap_or_default();
        if kernelspec::find_program("node", &path).is_none() {
            eprintln!("skipped: no node on PATH");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = KernelSpec {
            name: "jslab".into(),
            language: Language::JavaScript,
            argv: vec!["tslab".into(), "kernel".into()],
            env: Default::default(),
            interrupt_mode: InterruptMode::Message,
            dir: dir.path().to_path_buf(),
        };
        let env = std::collections::BTreeMap::from([("PATH".to_string(), path.clone())]);
        let kernel = Kernel::start_node(
            &spec,
            StartOptions {
                cwd: dir.path(),
                env: &env,
                user: None,
                runtime_dir: dir.path(),
                path: &path,
            },
        )
        .await
        .expect("driver starts");

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
