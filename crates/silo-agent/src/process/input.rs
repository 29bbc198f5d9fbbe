//! Input to a process: `SendInput` (one chunk), `StreamInput` (a client stream of chunks,
//! in order) and `CloseStdin` (EOF on a pipe stdin).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use silo_protocol::envd::{
    CloseStdinRequest, Empty, ProcessInput, SendInputRequest, StreamInputRequest,
};
use tokio::io::AsyncWriteExt;

use super::Process;
use crate::error::Error;
use crate::rpc::{self, ClientStream, Unary};
use crate::state::AppState;

/// Write `input` to the process: pty input to the terminal, stdin input to the stdin pipe
/// (or, for a pty process, to the terminal, which is its stdin).
async fn write_input(process: &Process, input: ProcessInput) -> Result<(), Error> {
    let (data, want_pty) = match input {
        ProcessInput::Stdin(d) => (d.0, false),
        ProcessInput::Pty(d) => (d.0, true),
    };
    if let Some(pty) = &process.pty {
        return pty
            .write_all(&data)
            .await
            .map_err(|e| Error::io(format!("write to pty of process {}", process.pid), e));
    }
    if want_pty {
        return Err(Error::FailedPrecondition(format!(
            "process {} has no pty",
            process.pid
        )));
    }
    let mut stdin = process.stdin.lock().await;
    let pipe = stdin.as_mut().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "stdin of process {} is not open (start it with stdin enabled)",
            process.pid
        ))
    })?;
    pipe.write_all(&data)
        .await
        .map_err(|e| Error::io(format!("write to stdin of process {}", process.pid), e))
}

pub async fn send_input(
    State(state): State<AppState>,
    Unary(req): Unary<SendInputRequest>,
) -> Result<Json<Empty>, Error> {
    let process = state.processes.get(&req.process)?;
    write_input(&process, req.input).await?;
    Ok(Json(Empty {}))
}

pub async fn stream_input(State(state): State<AppState>, req: Request) -> Response {
    let Some(mut stream) = ClientStream::new(req) else {
        return rpc::not_a_stream();
    };
    let result = async {
        let process = match stream.next::<StreamInputRequest>().await? {
            Some(StreamInputRequest::Start { process }) => state.processes.get(&process)?,
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "the first StreamInput message must be start".into(),
                ))
            }
            None => return Ok(Empty {}),
        };
        while let Some(msg) = stream.next::<StreamInputRequest>().await? {
            match msg {
                StreamInputRequest::Data { input } => write_input(&process, input).await?,
                StreamInputRequest::Keepalive {} => {}
                StreamInputRequest::Start { .. } => {
                    return Err(Error::InvalidArgument(
                        "start may only be the first StreamInput message".into(),
                    ))
                }
            }
        }
        Ok(Empty {})
    }
    .await;
    rpc::client_stream_response(result).into_response()
}

pub async fn close_stdin(
    State(state): State<AppState>,
    Unary(req): Unary<CloseStdinRequest>,
) -> Result<Json<Empty>, Error> {
    let process = state.processes.get(&req.process)?;
    if process.pty.is_some() {
        return Err(Error::FailedPrecondition(format!(
            "process {} uses a pty: send Ctrl-D (0x04) instead",
            process.pid
        )));
    }
    // Dropping the write end is the EOF. Closing twice is fine.
    process.stdin.lock().await.take();
    Ok(Json(Empty {}))
}
