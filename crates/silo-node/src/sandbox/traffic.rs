//! Which proxied traffic may still flow to a sandbox.
//!
//! Each running sandbox has a [`CancellationToken`]; the proxy ties every request it
//! forwards, and its pool of connections to the sandbox, to the token it got with the
//! route. Pausing cancels the token: streams in flight end, pooled connections close, and
//! the next route after a resume hands out a fresh token. Stopping silo cancels them all
//! at once.

use std::collections::HashMap;
use std::sync::Mutex;

use silo_protocol::ids::SandboxId;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(super) struct Traffic {
    tokens: Mutex<HashMap<SandboxId, CancellationToken>>,
    /// The parent of every sandbox's token.
    all: CancellationToken,
}

impl Traffic {
    /// The token of the sandbox's current traffic.
    pub(super) fn token(&self, id: &SandboxId) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(id.clone())
            .or_insert_with(|| self.all.child_token())
            .clone()
    }

    /// End all traffic to every sandbox, for good: tokens handed out later are born
    /// cancelled.
    pub(super) fn close_all(&self) {
        self.all.cancel();
    }

    /// End all traffic to the sandbox.
    pub(super) fn close(&self, id: &SandboxId) {
        let token = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(token) = token {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_cancels_and_the_next_token_is_fresh() {
        let traffic = Traffic::default();
        let id = SandboxId::generate();
        let first = traffic.token(&id);
        assert!(!first.is_cancelled());
        traffic.close(&id);
        assert!(first.is_cancelled());
        assert!(!traffic.token(&id).is_cancelled());
        traffic.close(&SandboxId::generate());
    }

    #[test]
    fn close_all_ends_every_sandbox_s_traffic() {
        let traffic = Traffic::default();
        let (a, b) = (SandboxId::generate(), SandboxId::generate());
        let first = traffic.token(&a);
        traffic.close_all();
        assert!(first.is_cancelled());
        assert!(traffic.token(&a).is_cancelled());
        assert!(traffic.token(&b).is_cancelled());
    }
}
