//! `Connect`: subscribe to a running process's events (start first, then live output).

use axum::extract::State;
use axum::response::Response;
use silo_protocol::envd::ConnectRequest;

use super::start::{keepalive, responses};
use crate::rpc::{self, StreamOptions, StreamRequest};
use crate::state::AppState;

pub async fn connect(
    State(state): State<AppState>,
    opts: StreamOptions,
    StreamRequest(req): StreamRequest<ConnectRequest>,
) -> Response {
    let subscribed = state
        .processes
        .get(&req.process)
        .and_then(|p| p.subscribe());
    match subscribed {
        Ok(rx) => rpc::server_stream(responses(rx), keepalive(opts), opts.timeout),
        Err(e) => rpc::stream_error(e),
    }
}
