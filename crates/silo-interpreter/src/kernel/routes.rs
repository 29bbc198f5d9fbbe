//! Routing of a kernel's messages to the request that caused them ([`Replies`]), through a
//! buffer that a slow consumer cannot grow without limit.
//!
//! The readers (a Jupyter kernel's iopub and shell, the Node driver's pipes) never wait for
//! a consumer. A reader that stopped would hold up every message behind it, and the
//! back-pressure would not end well: ZeroMQ's PUB socket drops messages at its high-water
//! mark, a status `idle` among them, and an execution that misses it waits forever. So what
//! a request's buffer bounds is stream output: once [`STREAM_BUDGET`] bytes of it wait for
//! a consumer that lags (an /execute whose client reads slowly), further stream messages
//! are dropped, and one marker line in their place says how many bytes went. Until the
//! consumer reaches that marker, whatever else is dropped adds to it, so a slow client sees
//! at most one marker per budget of output. Results, errors, replies and status messages
//! are always kept: they are few, and they end the execution.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::mpsc;

use super::messages::Message;

/// The most stream text, in bytes, buffered for one request's consumer.
const STREAM_BUDGET: usize = 4 << 20;

/// Where the messages of each request in flight go, by the request's msg_id.
pub(super) type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// The sending side of one request's buffer.
pub(super) struct Route {
    tx: mpsc::UnboundedSender<Item>,
    budget: Arc<Mutex<Budget>>,
}

enum Item {
    Message(Message),
    /// Where dropped stream output was; how much is in the [`Budget`].
    Dropped,
}

#[derive(Default)]
struct Budget {
    /// Bytes of stream text buffered.
    queued: usize,
    /// Bytes dropped since the marker was buffered, until it is received.
    dropped: Option<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("kernel routing lock poisoned")
}

/// The bytes a message counts against the budget: the text of a stream message.
fn stream_bytes(msg: &Message) -> Option<usize> {
    (msg.header.msg_type == "stream").then(|| msg.content["text"].as_str().map_or(0, str::len))
}

/// Hands `msg` to the request it answers, if anyone still waits for that one. Never waits.
pub(super) fn deliver(routes: &Routes, msg: Message) {
    let Some(parent) = msg.parent_msg_id.as_deref() else {
        return;
    };
    let routes = lock(routes);
    let Some(route) = routes.get(parent) else {
        return;
    };
    let mut guard = lock(&route.budget);
    let budget = &mut *guard;
    let item = match (stream_bytes(&msg), &mut budget.dropped) {
        (None, _) => Item::Message(msg),
        (Some(n), Some(dropped)) => {
            *dropped += n;
            return;
        }
        (Some(n), None) if budget.queued >= STREAM_BUDGET => {
            budget.dropped = Some(n);
            Item::Dropped
        }
        (Some(n), None) => {
            budget.queued += n;
            Item::Message(msg)
        }
    };
    // A closed receiver just means the request was abandoned.
    let _ = route.tx.send(item);
}

/// The messages caused by one request, in arrival order (iopub and shell interleaved).
/// Dropping it stops the routing.
pub struct Replies {
    pub msg_id: String,
    rx: mpsc::UnboundedReceiver<Item>,
    budget: Arc<Mutex<Budget>>,
    routes: Routes,
}

impl Replies {
    /// Routes the messages of request `msg_id` to the returned receiver.
    pub(super) fn register(routes: &Routes, msg_id: String) -> Replies {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::<Mutex<Budget>>::default();
        let route = Route {
            tx,
            budget: budget.clone(),
        };
        lock(routes).insert(msg_id.clone(), route);
        Replies {
            msg_id,
            rx,
            budget,
            routes: routes.clone(),
        }
    }

    /// The next message, or `None` once the kernel's sockets are gone.
    pub async fn next(&mut self) -> Option<Message> {
        let item = self.rx.recv().await?;
        Some(self.received(item))
    }

    /// The messages already received, without waiting: what a kernel said before it died.
    pub fn drain(&mut self) -> Vec<Message> {
        let items: Vec<Item> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        items.into_iter().map(|item| self.received(item)).collect()
    }

    /// Frees the budget `item` held, and turns a marker into its line.
    fn received(&self, item: Item) -> Message {
        let mut budget = lock(&self.budget);
        match item {
            Item::Message(msg) => {
                if let Some(n) = stream_bytes(&msg) {
                    budget.queued -= n;
                }
                msg
            }
            Item::Dropped => {
                let n = budget.dropped.take().unwrap_or_default();
                Message::for_parent(
                    self.msg_id.clone(),
                    "stream".into(),
                    String::new(),
                    json!({
                        "name": "stderr",
                        "text": format!("[output truncated: {n} bytes dropped, the client read too slowly]\n"),
                    }),
                )
            }
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.msg_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn msg(msg_type: &str, content: Value) -> Message {
        Message::for_parent("r".into(), msg_type.into(), String::new(), content)
    }

    fn stream(text: &str) -> Message {
        msg("stream", json!({"name": "stdout", "text": text}))
    }

    #[test]
    fn stream_output_beyond_the_budget_is_dropped_for_one_marker_and_the_rest_kept() {
        let routes = Routes::default();
        let mut replies = Replies::register(&routes, "r".into());
        let quarter = "x".repeat(STREAM_BUDGET / 4);
        for _ in 0..4 {
            deliver(&routes, stream(&quarter));
        }
        deliver(&routes, stream("dropped"));
        deliver(
            &routes,
            msg("execute_result", json!({"data": {"text/plain": "1"}})),
        );
        deliver(&routes, stream("dropped too"));
        deliver(&routes, msg("execute_reply", json!({"status": "ok"})));
        deliver(&routes, msg("status", json!({"execution_state": "idle"})));
        assert_eq!(lock(&replies.budget).queued, STREAM_BUDGET);

        let seen = replies.drain();
        let types: Vec<&str> = seen.iter().map(|m| m.header.msg_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "stream",
                "stream",
                "stream",
                "stream",
                "stream",
                "execute_result",
                "execute_reply",
                "status"
            ]
        );
        assert_eq!(
            seen[4].content,
            json!({"name": "stderr", "text": "[output truncated: 18 bytes dropped, the client read too slowly]\n"})
        );
        assert_eq!(lock(&replies.budget).queued, 0);

        // Caught up: output flows again.
        deliver(&routes, stream("again"));
        let again = replies.drain();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].content["text"], "again");
    }

    #[test]
    fn routing_ends_with_the_replies() {
        let routes = Routes::default();
        let replies = Replies::register(&routes, "r".into());
        deliver(&routes, stream("kept"));
        drop(replies);
        assert!(lock(&routes).is_empty());
        // Nobody waits any more: dropped, not buffered.
        deliver(&routes, stream("gone"));
    }
}
