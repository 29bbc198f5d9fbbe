//! silo's code interpreter: the server on port 49999 that `e2b-code-interpreter` talks to,
//! backed by real Jupyter kernels over ZeroMQ (no Jupyter server in between).
//!
//! - [`kernelspec`] finds the installed kernels; [`Config`] says who runs them and where.
//! - [`Interpreter`] owns the contexts (one kernel each; [`contexts`]).
//! - [`router`] serves `/execute`, `/contexts…` and `/health`; an execution streams its
//!   outputs line by line ([`output`]).
//! - [`kernel`] is the Jupyter client: connection file, signed multipart messages, the
//!   kernel process. JavaScript and TypeScript run on silo's own Node.js driver instead
//!   ([`kernel::node`]), which speaks the same messages over a pipe.
//!
//! ```no_run
//! # async fn serve() -> std::io::Result<()> {
//! use silo_interpreter::{kernelspec, Config, Interpreter};
//! let specs = kernelspec::discover(&kernelspec::default_dirs("/home/user".as_ref()));
//! let interpreter = Interpreter::new(Config::new(specs));
//! tokio::spawn(interpreter.clone().start_default_kernels());
//! use axum::serve::ListenerExt;
//! // TCP_NODELAY matters: each output line is a small write, and without it Nagle's
//! // algorithm and delayed ACKs add ~40 ms to every execution.
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:49999")
//!     .await?
//!     .tap_io(|tcp| drop(tcp.set_nodelay(true)));
//! axum::serve(listener, silo_interpreter::router(interpreter)).await
//! # }
//! ```

pub mod config;
pub mod contexts;
mod execute;
pub mod http;
pub mod kernel;
pub mod kernelspec;
pub mod language;
pub mod output;
mod snippets;

use std::sync::Arc;

pub use config::{Config, GlobalEnvs, KernelUser};
pub use http::{router, ApiError};
pub use language::Language;

use contexts::Contexts;

/// The interpreter's shared state; cheap to clone.
#[derive(Clone)]
pub struct Interpreter {
    contexts: Arc<Contexts>,
}

impl Interpreter {
    pub fn new(config: Config) -> Self {
        Interpreter {
            contexts: Arc::new(Contexts::new(config)),
        }
    }

    pub fn config(&self) -> &Config {
        self.contexts.config()
    }

    pub(crate) fn contexts(&self) -> &Contexts {
        &self.contexts
    }

    /// Starts the default context of every `autostart` language that has a kernel, so the
    /// first `run_code` does not wait for a kernel. Failures are logged; the next request
    /// for that language tries again.
    pub async fn start_default_kernels(self) {
        let languages: Vec<Language> = self
            .config()
            .autostart
            .iter()
            .copied()
            .filter(|l| self.config().kernels.contains_key(l))
            .collect();
        let starts = languages.into_iter().map(|language| {
            let contexts = self.contexts.clone();
            async move {
                if let Err(e) = contexts.default_for(language).await {
                    tracing::warn!(%language, error = %e, "default kernel did not start");
                }
            }
        });
        futures_util::future::join_all(starts).await;
    }

    /// Kills every kernel, for a clean stop of the agent: kernels live in their own process
    /// groups and would otherwise outlive it.
    pub async fn shutdown(&self) {
        self.contexts.shutdown().await;
    }
}
