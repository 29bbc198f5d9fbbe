//! One `/execute`: runs code in a context and streams its outputs as they happen.
//!
//! The execution runs in its own task, not in the HTTP response: if the client goes away
//! (an SDK timeout closes the connection), the task notices, interrupts the kernel and keeps
//! draining until the kernel is idle, so the context is free and consistent for the next call.
//! The response body only reads lines from a channel; hyper drops it when a write fails, and
//! the periodic `keepalive` lines make sure a write happens even while the code is silent.
//!
//! Steps, all holding the context's execution lock:
//! 1. bring the kernel's global env vars up to date (they may change after it started);
//! 2. set this call's `env_vars` (a silent execution);
//! 3. run the code: `number_of_executions`, then outputs as they come;
//! 4. put the env vars back to their global values, or remove them;
//! 5. `end_of_execution`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::contexts::Context;
use crate::kernel::{messages, Kernel};
use crate::output::{OutputLine, ResultLine};
use crate::snippets;
use crate::Interpreter;

/// Lines buffered between the execution and a slow client.
const CHANNEL_LINES: usize = 64;

/// What to run.
pub(crate) struct Job {
    pub code: String,
    pub env_vars: BTreeMap<String, String>,
}

/// Starts the execution and returns the response body's stream of lines.
pub(crate) fn start(
    interpreter: Interpreter,
    ctx: Arc<Context>,
    job: Job,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel(CHANNEL_LINES);
    let out = Output {
        tx,
        gone: false,
        last: Instant::now(),
        keepalive: interpreter.config().keepalive,
    };
    tokio::spawn(run(interpreter, ctx, job, out));
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// The response side: sends lines until the client is gone, then swallows them.
struct Output {
    tx: mpsc::Sender<Bytes>,
    gone: bool,
    last: Instant,
    keepalive: Duration,
}

impl Output {
    async fn send(&mut self, line: OutputLine) {
        if self.gone {
            return;
        }
        if self.tx.send(line.to_bytes()).await.is_err() {
            self.gone = true;
        }
        self.last = Instant::now();
    }

    fn keepalive_due(&self) -> Instant {
        self.last + self.keepalive
    }

    /// Sends keepalives until the client disconnects; never returns while it is there.
    async fn keepalive_until_gone(&mut self) {
        while !self.gone {
            tokio::time::sleep_until(self.keepalive_due()).await;
            self.send(OutputLine::Keepalive).await;
        }
    }
}

async fn run(interpreter: Interpreter, ctx: Arc<Context>, job: Job, mut out: Output) {
    // Wait for the previous execution in this context; a client that leaves while queued
    // never runs its code.
    let _turn = tokio::select! {
        guard = ctx.exec.lock() => guard,
        _ = out.keepalive_until_gone() => return,
    };
    let kernel = ctx.kernel();
    if let Some(status) = kernel.exit_status() {
        out.send(died(&ctx, &kernel, &status, false)).await;
        out.send(OutputLine::EndOfExecution).await;
        return;
    }

    let globals = (interpreter.config().global_envs)();
    let mut setup = vec![ctx.sync_globals(&globals)];
    setup.push(snippets::set_env(ctx.language, &job.env_vars));
    for code in setup.into_iter().flatten() {
        if let Err(e) = kernel.run_silent(&code).await {
            tracing::warn!(context = %ctx.id, error = %e, "setting env vars");
        }
    }

    run_code(&ctx, &kernel, &job.code, &mut out).await;

    if !job.env_vars.is_empty() && kernel.exit_status().is_none() {
        // Back to the global value where there is one, else gone.
        let (restore, remove): (BTreeMap<String, String>, Vec<&String>) = {
            let mut restore = BTreeMap::new();
            let mut remove = Vec::new();
            for key in job.env_vars.keys() {
                match globals.get(key) {
                    Some(v) => {
                        restore.insert(key.clone(), v.clone());
                    }
                    None => remove.push(key),
                }
            }
            (restore, remove)
        };
        let cleanup = [
            snippets::set_env(ctx.language, &restore),
            snippets::unset_env(ctx.language, &remove),
        ];
        for code in cleanup.into_iter().flatten() {
            if let Err(e) = kernel.run_silent(&code).await {
                tracing::warn!(context = %ctx.id, error = %e, "restoring env vars");
            }
        }
    }
    out.send(OutputLine::EndOfExecution).await;
}

/// Sends the code and streams what it causes until the kernel is idle and has replied.
async fn run_code(ctx: &Context, kernel: &Kernel, code: &str, out: &mut Output) {
    let mut replies = match kernel
        .request("execute_request", messages::execute_request(code, false))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            out.send(OutputLine::error("KernelError", e.to_string()))
                .await;
            return;
        }
    };
    let client = out.tx.clone();
    let mut state = State::default();
    let mut interrupted = false;
    while !(state.idle && state.replied) {
        // Biased towards messages, so output is forwarded before a death is reported.
        tokio::select! {
            biased;
            msg = replies.next() => match msg {
                Some(msg) => {
                    for line in state.handle(&msg.header.msg_type, &msg.header.date, &msg.content) {
                        out.send(line).await;
                    }
                }
                None => {
                    let status = kernel.exited().await;
                    out.send(died(ctx, kernel, &status, true)).await;
                    return;
                }
            },
            status = kernel.exited() => {
                for msg in replies.drain() {
                    for line in state.handle(&msg.header.msg_type, &msg.header.date, &msg.content) {
                        out.send(line).await;
                    }
                }
                out.send(died(ctx, kernel, &status, true)).await;
                return;
            }
            _ = tokio::time::sleep_until(out.keepalive_due()), if !out.gone => {
                out.send(OutputLine::Keepalive).await;
            }
            _ = client.closed(), if !out.gone => out.gone = true,
        }
        if out.gone && !interrupted {
            interrupted = true;
            tracing::info!(context = %ctx.id, "client went away, interrupting the kernel");
            if let Err(e) = kernel.interrupt().await {
                tracing::warn!(context = %ctx.id, error = %e, "interrupt failed");
            }
        }
    }
}

/// The error line for a kernel that is gone.
fn died(ctx: &Context, kernel: &Kernel, status: &str, during: bool) -> OutputLine {
    if kernel.was_killed() {
        return OutputLine::error(
            "ContextRestarted",
            "the context was restarted or deleted while this code was running",
        );
    }
    let when = if during {
        "while running this code"
    } else {
        "earlier"
    };
    OutputLine::error(
        "KernelDied",
        format!(
            "the {} kernel of context {} died {when} ({status}); its state is lost. \
             Restart the context to use it again (restart_code_context / POST /contexts/{}/restart)",
            ctx.language, ctx.id, ctx.id
        ),
    )
}

/// What one execution has seen so far, and the mapping of kernel messages to lines.
#[derive(Default)]
struct State {
    idle: bool,
    replied: bool,
    errored: bool,
    counted: bool,
}

impl State {
    /// The `number_of_executions` line, once per execution.
    fn count(&mut self, content: &Value) -> Vec<OutputLine> {
        match content["execution_count"].as_i64() {
            Some(n) if !self.counted => {
                self.counted = true;
                vec![OutputLine::NumberOfExecutions { execution_count: n }]
            }
            _ => vec![],
        }
    }

    fn handle(&mut self, msg_type: &str, date: &str, content: &Value) -> Vec<OutputLine> {
        let str_of = |key: &str| content[key].as_str().unwrap_or_default().to_string();
        match msg_type {
            "execute_input" => self.count(content),
            "stream" => {
                let text = str_of("text");
                let timestamp = if date.is_empty() {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                } else {
                    date.to_string()
                };
                match content["name"].as_str() {
                    Some("stderr") => vec![OutputLine::Stderr { text, timestamp }],
                    _ => vec![OutputLine::Stdout { text, timestamp }],
                }
            }
            "execute_result" | "display_data" => match content["data"].as_object() {
                Some(bundle) => vec![OutputLine::Result(Box::new(ResultLine::from_bundle(
                    bundle,
                    msg_type == "execute_result",
                )))],
                None => vec![],
            },
            "error" => self.error(content),
            "execute_reply" => {
                self.replied = true;
                // Kernels that publish no execute_input (tslab) still count in the reply.
                let mut lines = self.count(content);
                match content["status"].as_str() {
                    Some("error") => lines.extend(self.error(content)),
                    Some("abort") | Some("aborted") => lines.push(OutputLine::error(
                        "ExecutionAborted",
                        "the execution was aborted by the kernel",
                    )),
                    _ => {}
                }
                lines
            }
            "status" => {
                if content["execution_state"] == "idle" {
                    self.idle = true;
                }
                vec![]
            }
            _ => vec![],
        }
    }

    /// An error line from an `error` message or an error reply; only the first counts, as
    /// kernels report one failure on both channels.
    fn error(&mut self, content: &Value) -> Vec<OutputLine> {
        if self.errored {
            return vec![];
        }
        self.errored = true;
        let traceback: Vec<&str> = content["traceback"]
            .as_array()
            .map(|lines| lines.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // Some kernels fail without naming the error (tslab, which prints the exception to
        // stderr; bash_kernel, which gives only the exit status as the value).
        let text = |key: &str, default: &str| match content[key].as_str() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => default.to_string(),
        };
        vec![OutputLine::Error {
            name: text("ename", "Error"),
            value: text("evalue", "the code failed; see stderr"),
            traceback: traceback.join("\n"),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_a_typical_execution() {
        let mut s = State::default();
        let date = "2024-01-01T00:00:00.000001Z";
        let mut lines = vec![];
        for (t, c) in [
            ("status", json!({"execution_state":"busy"})),
            ("execute_input", json!({"code":"x","execution_count":4})),
            ("stream", json!({"name":"stdout","text":"a\n"})),
            ("stream", json!({"name":"stderr","text":"b\n"})),
            (
                "display_data",
                json!({"data":{"image/png":"iVBOR","text/plain":"<Figure>"},"metadata":{}}),
            ),
            (
                "execute_result",
                json!({"data":{"text/plain":"2"},"execution_count":4}),
            ),
        ] {
            lines.extend(s.handle(t, date, &c));
        }
        assert!(!s.idle && !s.replied);
        lines.extend(s.handle("status", date, &json!({"execution_state":"idle"})));
        lines.extend(s.handle("execute_reply", date, &json!({"status":"ok"})));
        assert!(s.idle && s.replied);
        let json: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_slice(&l.to_bytes()).expect("json"))
            .collect();
        assert_eq!(
            json,
            [
                json!({"type":"number_of_executions","execution_count":4}),
                json!({"type":"stdout","text":"a\n","timestamp":date}),
                json!({"type":"stderr","text":"b\n","timestamp":date}),
                json!({"type":"result","png":"iVBOR","text":"<Figure>","is_main_result":false}),
                json!({"type":"result","text":"2","is_main_result":true}),
            ]
        );
    }

    #[test]
    fn one_error_line_per_failure_with_joined_traceback() {
        let mut s = State::default();
        let err = json!({"ename":"ZeroDivisionError","evalue":"division by zero",
            "traceback":["Traceback:", "  line 1", "ZeroDivisionError: division by zero"]});
        let lines = s.handle("error", "", &err);
        assert_eq!(
            lines,
            [OutputLine::Error {
                name: "ZeroDivisionError".into(),
                value: "division by zero".into(),
                traceback: "Traceback:\n  line 1\nZeroDivisionError: division by zero".into(),
            }]
        );
        let mut reply = err.clone();
        reply["status"] = json!("error");
        assert!(s.handle("execute_reply", "", &reply).is_empty());
    }

    #[test]
    fn error_only_in_reply_still_reported() {
        // bash_kernel reports a failing command in the reply alone.
        let mut s = State::default();
        let lines = s.handle(
            "execute_reply",
            "",
            &json!({"status":"error","execution_count":2,"ename":"","evalue":"1","traceback":[]}),
        );
        assert_eq!(
            lines,
            [
                OutputLine::NumberOfExecutions { execution_count: 2 },
                OutputLine::Error {
                    name: "Error".into(),
                    value: "1".into(),
                    traceback: String::new()
                }
            ]
        );
        let aborted = State::default().handle("execute_reply", "", &json!({"status":"aborted"}));
        assert_eq!(
            aborted,
            [OutputLine::error(
                "ExecutionAborted",
                "the execution was aborted by the kernel"
            )]
        );
    }
}
