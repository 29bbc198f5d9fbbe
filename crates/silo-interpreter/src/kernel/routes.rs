//! Routing of a kernel's messages to the request that caused them ([`Replies`]), through a
//! buffer that a slow consumer cannot grow without limit.
//!
//! The readers (a Jupyter kernel's iopub and shell, the Node driver's pipes) never wait for
//! a consumer. A reader that stopped would hold up every message behind it, and the
//! back-pressure would not end well: ZeroMQ's PUB socket drops messages at its high-water
//! mark, a status `idle` among them, and an execution that misses it waits forever. So what
//! a request's buffer bounds is output: once [`OUTPUT_BUDGET`] bytes of stream text and
//! result data (`execute_result`, `display_data`: an image or an HTML table weighs more
//! than any log) wait for a consumer that lags (an /execute whose client reads slowly),
//! further output is dropped, and one marker line on stderr in its place says how much
//! went. Until the consumer reaches that marker, whatever else is dropped adds to it, so a
//! slow client sees at most one marker per budget of output. Errors, replies and status
//! messages are always kept: they are few, and they end the execution.
//!
//! A message is let in while the budget is not yet used up, whatever its size, as stream
//! text always was: the buffer then holds at most the budget plus the one message the
//! reader already had in memory, and a large plot still reaches a client that keeps up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::messages::Message;

/// The most output (stream text and result data), in bytes, buffered for one request's
/// consumer.
const OUTPUT_BUDGET: usize = 4 << 20;

/// Where the messages of each request in flight go, by the request's msg_id.
pub(super) type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// The sending side of one request's buffer.
pub(super) struct Route {
    tx: mpsc::UnboundedSender<Item>,
    budget: Arc<Mutex<Budget>>,
}

enum Item {
    /// A message, and the bytes it holds of the budget.
    Message(Box<Message>, usize),
    /// Where dropped output was; how much is in the [`Budget`].
    Dropped,
}

#[derive(Default)]
struct Budget {
    /// Bytes of output buffered.
    queued: usize,
    /// What was dropped since the marker was buffered, until it is received.
    dropped: Option<Dropped>,
}

/// Output dropped in place of one marker.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Dropped {
    /// Bytes of stream text and result data.
    bytes: usize,
    /// Results (`execute_result`, `display_data`) among them.
    results: usize,
}

impl Dropped {
    fn add(&mut self, output: Output) {
        self.bytes += output.bytes;
        self.results += usize::from(output.is_result);
    }

    /// The marker's text, on stderr where a client shows it as it would a warning.
    fn marker(self) -> String {
        let results = match self.results {
            0 => String::new(),
            1 => " (1 result among them)".to_string(),
            n => format!(" ({n} results among them)"),
        };
        format!(
            "[output truncated: {} bytes dropped{results}, the client read too slowly]\n",
            self.bytes
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("kernel routing lock poisoned")
}

/// A message that counts against the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Output {
    bytes: usize,
    is_result: bool,
}

/// What a message counts against the budget: the text of a stream message, the MIME bundle
/// of a result; `None` for the messages that are always kept.
fn output(msg: &Message) -> Option<Output> {
    match msg.header.msg_type.as_str() {
        "stream" => Some(Output {
            bytes: msg.content["text"].as_str().map_or(0, str::len),
            is_result: false,
        }),
        "execute_result" | "display_data" => Some(Output {
            bytes: bundle_bytes(&msg.content["data"]),
            is_result: true,
        }),
        _ => None,
    }
}

/// The size of a MIME bundle: its text formats' lengths (base64 for images), and the JSON
/// length of anything else.
fn bundle_bytes(data: &Value) -> usize {
    match data {
        Value::Object(formats) => formats
            .iter()
            .map(|(mime, value)| {
                mime.len()
                    + match value {
                        Value::String(text) => text.len(),
                        other => other.to_string().len(),
                    }
            })
            .sum(),
        Value::Null => 0,
        other => other.to_string().len(),
    }
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
    let item = match (output(&msg), &mut budget.dropped) {
        (None, _) => Item::Message(Box::new(msg), 0),
        (Some(out), Some(dropped)) => {
            dropped.add(out);
            return;
        }
        (Some(out), None) if budget.queued >= OUTPUT_BUDGET => {
            let mut dropped = Dropped::default();
            dropped.add(out);
            budget.dropped = Some(dropped);
            Item::Dropped
        }
        (Some(out), None) => {
            budget.queued += out.bytes;
            Item::Message(Box::new(msg), out.bytes)
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
            Item::Message(msg, bytes) => {
                budget.queued -= bytes;
                *msg
            }
            Item::Dropped => {
                let dropped = budget.dropped.take().unwrap_or_default();
                Message::for_parent(
                    self.msg_id.clone(),
                    "stream".into(),
                    String::new(),
                    json!({"name": "stderr", "text": dropped.marker()}),
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
        let quarter = "x".repeat(OUTPUT_BUDGET / 4);
        for _ in 0..4 {
            deliver(&routes, stream(&quarter));
        }
        deliver(&routes, stream("dropped"));
        deliver(&routes, msg("error", json!({"ename": "E"})));
        deliver(&routes, stream("dropped too"));
        deliver(&routes, msg("execute_reply", json!({"status": "ok"})));
        deliver(&routes, msg("status", json!({"execution_state": "idle"})));
        assert_eq!(lock(&replies.budget).queued, OUTPUT_BUDGET);

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
                "error",
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

    fn display(mime: &str, value: &str) -> Message {
        msg(
            "display_data",
            json!({"data": {mime: value}, "metadata": {}}),
        )
    }

    #[test]
    fn results_count_against_the_budget_and_are_dropped_beyond_it() {
        let routes = Routes::default();
        let mut replies = Replies::register(&routes, "r".into());
        // A client that reads nothing yet: two images fill the budget, the next result and
        // the text after it go, the end of the execution stays.
        let image = "i".repeat(OUTPUT_BUDGET / 2);
        deliver(&routes, display("image/png", &image));
        deliver(&routes, display("image/png", &image));
        assert!(lock(&replies.budget).queued >= OUTPUT_BUDGET);
        deliver(&routes, display("text/html", "<b>late</b>"));
        deliver(
            &routes,
            msg("execute_result", json!({"data": {"text/plain": "7"}})),
        );
        deliver(&routes, stream("late text"));
        deliver(&routes, msg("error", json!({"ename": "E"})));
        deliver(&routes, msg("execute_reply", json!({"status": "ok"})));

        let seen = replies.drain();
        let types: Vec<&str> = seen.iter().map(|m| m.header.msg_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "display_data",
                "display_data",
                "stream",
                "error",
                "execute_reply"
            ]
        );
        let dropped = "text/html".len() + 11 + "text/plain".len() + 1 + "late text".len();
        assert_eq!(
            seen[2].content,
            json!({"name": "stderr", "text": format!("[output truncated: {dropped} bytes dropped (2 results among them), the client read too slowly]\n")})
        );
        assert_eq!(lock(&replies.budget).queued, 0);

        // Caught up: results flow again.
        deliver(&routes, display("image/png", &image));
        let again = replies.drain();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].content["data"]["image/png"], image.as_str());
    }

    #[test]
    fn a_bundle_weighs_its_formats() {
        assert_eq!(
            bundle_bytes(&json!({"image/png": "abcd", "application/json": {"a": 1}})),
            "image/png".len() + 4 + "application/json".len() + r#"{"a":1}"#.len()
        );
        assert_eq!(bundle_bytes(&Value::Null), 0);
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
