//! Blocking work (filesystem calls, starting a process) moved off the runtime's workers.
//! The agent has one worker per sandbox vCPU, often one or two: a `remove` of a large tree
//! or a deep listing run there would stall every process's output, keepalive and request
//! until it ended.

use crate::error::Error;

/// Run `work` on tokio's blocking pool and wait for it. A panic in it is the request's
/// internal error.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::io("blocking task", std::io::Error::other(e)))?
}
