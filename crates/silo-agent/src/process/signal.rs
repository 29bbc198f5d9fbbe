//! `SendSignal`: SIGTERM or SIGKILL to a process (and its process group).

use axum::extract::State;
use axum::Json;
use silo_protocol::envd::{Empty, SendSignalRequest, Signal};

use crate::error::Error;
use crate::rpc::Unary;
use crate::state::AppState;

pub async fn send_signal(
    State(state): State<AppState>,
    Unary(req): Unary<SendSignalRequest>,
) -> Result<Json<Empty>, Error> {
    let sig = match req.signal {
        Signal::Sigkill => libc::SIGKILL,
        Signal::Sigterm => libc::SIGTERM,
        Signal::Unspecified => {
            return Err(Error::InvalidArgument("signal is unspecified".into()));
        }
    };
    state.processes.get(&req.process)?.signal(sig)?;
    Ok(Json(Empty {}))
}
