//! The code interpreter (port 49999): `POST /execute` streams one JSON object per line
//! (protocol spec §4.1); [`Client::run_code`] gathers them into an [`Execution`], as the
//! `e2b-code-interpreter` SDK's `run_code` does.

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use silo_protocol::ports::CODE_INTERPRETER;
use silo_protocol::rest::Sandbox;

use crate::{Client, ClientError, Result};

/// What one `/execute` produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Execution {
    pub stdout: String,
    pub stderr: String,
    /// Displayed values, in order; the cell's own value has `is_main_result`.
    pub results: Vec<ExecutionResult>,
    /// The exception the code raised, if it did.
    pub error: Option<ExecutionError>,
    pub execution_count: Option<i64>,
}

impl Execution {
    /// The main result's text, as the SDK's `Execution.text`.
    pub fn text(&self) -> Option<&str> {
        self.results
            .iter()
            .find(|r| r.is_main_result)
            .and_then(|r| r.text.as_deref())
    }
}

/// A `result` line, in the formats a client can show as text or an image; the others
/// (html, json, charts, ...) are left out.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub struct ExecutionResult {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub markdown: Option<String>,
    /// Base64.
    #[serde(default)]
    pub png: Option<String>,
    /// Base64.
    #[serde(default)]
    pub jpeg: Option<String>,
    #[serde(default)]
    pub is_main_result: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionError {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

/// One line of the response, by its `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    NumberOfExecutions {
        execution_count: i64,
    },
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Result(ExecutionResult),
    Error(ExecutionError),
    EndOfExecution,
    #[serde(other)]
    Other,
}

impl Client {
    /// Run `code` in the sandbox's default context for `language` (python when `None`:
    /// also javascript, typescript, bash, ... as the template has kernels for) and wait
    /// for the whole execution.
    pub async fn run_code(
        &self,
        sandbox: &Sandbox,
        code: &str,
        language: Option<&str>,
    ) -> Result<Execution> {
        let body = json!({
            "code": code,
            "context_id": null,
            "language": language,
            "env_vars": null,
        });
        let req = self
            .sandbox_request(reqwest::Method::POST, sandbox, CODE_INTERPRETER, "/execute")
            .json(&body);
        let resp = self.send(req).await?;
        let mut body = resp.bytes_stream();
        let mut execution = Execution::default();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| ClientError::Stream(err.to_string()))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if apply(&mut execution, &line[..end])? {
                    return Ok(execution);
                }
            }
        }
        if !pending.is_empty() && apply(&mut execution, &pending)? {
            return Ok(execution);
        }
        Err(ClientError::Stream(
            "the execution ended without end_of_execution".into(),
        ))
    }
}

/// Fold one line into `execution`; true at `end_of_execution`.
fn apply(execution: &mut Execution, line: &[u8]) -> Result<bool> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let line: Line = serde_json::from_slice(line)
        .map_err(|err| ClientError::Stream(format!("bad execution line: {err}")))?;
    match line {
        Line::NumberOfExecutions { execution_count } => {
            execution.execution_count = Some(execution_count)
        }
        Line::Stdout { text } => execution.stdout.push_str(&text),
        Line::Stderr { text } => execution.stderr.push_str(&text),
        Line::Result(result) => execution.results.push(result),
        Line::Error(error) => execution.error = Some(error),
        Line::EndOfExecution => return Ok(true),
        Line::Other => {}
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fold_into_an_execution() {
        let lines = [
            r#"{"type":"number_of_executions","execution_count":3}"#,
            r#"{"type":"stdout","text":"42\n","timestamp":"2026-01-01T00:00:00Z"}"#,
            r#"{"type":"keepalive"}"#,
            r#"{"type":"result","text":"7","html":"<b>7</b>","is_main_result":true}"#,
            r#"{"type":"error","name":"ValueError","value":"bad","traceback":"tb"}"#,
        ];
        let mut execution = Execution::default();
        for line in lines {
            assert!(!apply(&mut execution, line.as_bytes()).unwrap());
        }
        assert!(apply(&mut execution, br#"{"type":"end_of_execution"}"#).unwrap());
        assert_eq!(execution.execution_count, Some(3));
        assert_eq!(execution.stdout, "42\n");
        assert_eq!(execution.text(), Some("7"));
        assert_eq!(
            execution.error.as_ref().map(|e| e.name.as_str()),
            Some("ValueError")
        );
    }

    #[test]
    fn a_malformed_line_is_an_error_not_a_panic() {
        let mut execution = Execution::default();
        assert!(apply(&mut execution, b"{not json").is_err());
    }
}
