//! One MCP session's sandboxes: which one the tools use when the client names none, and
//! which ones the session created and so kills when it ends.
//!
//! The session's sandbox is created on first use (from [`Config::template`]), not at
//! connect time: a client that only lists tools, or names its own sandboxes, costs
//! nothing. Each call that uses a sandbox the session owns pushes its timeout out again
//! ([`Config::sandbox_timeout`]), so it lives while the session works with it and goes
//! on its own if the end of the session is never seen (a client killed with SIGKILL, a
//! server restart). Sandboxes the client names are used as they are: never extended,
//! never killed at the end (only by `kill_sandbox` naming them).

use std::time::Duration;

use silo_client::Client;
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{NewSandbox, Sandbox};

use crate::error::ToolError;

/// What a session's own sandboxes are like.
#[derive(Debug, Clone)]
pub struct Config {
    /// Template of the sandbox a session creates on first use [default: code-interpreter,
    /// which run_code needs].
    pub template: String,
    /// How long a session's sandbox lives after its last use [default: 15 minutes].
    pub sandbox_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            template: "code-interpreter".into(),
            sandbox_timeout: Duration::from_secs(15 * 60),
        }
    }
}

pub(crate) struct Session {
    config: Config,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What tools use when the client names no sandbox.
    current: Option<SandboxId>,
    /// Sandboxes this session created, with the client that did (and so may kill them).
    owned: Vec<(SandboxId, Client)>,
}

impl State {
    fn owns(&self, id: &SandboxId) -> bool {
        self.owned.iter().any(|(owned, _)| owned == id)
    }

    fn forget(&mut self, id: &SandboxId) {
        self.owned.retain(|(owned, _)| owned != id);
        if self.current.as_ref() == Some(id) {
            self.current = None;
        }
    }
}

impl Session {
    pub fn new(config: Config) -> Session {
        Session {
            config,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// The sandbox a tool works on: the one named, else the session's (created now if
    /// it has none). A paused sandbox is resumed, as the SDK's connect does.
    pub async fn sandbox(
        &self,
        client: &Client,
        named: Option<&str>,
    ) -> Result<Sandbox, ToolError> {
        // Held through the create, so two concurrent first calls make one sandbox.
        let mut state = self.state.lock().await;
        if let Some(named) = named {
            let id = parse_id(named)?;
            let timeout = state.owns(&id).then_some(self.timeout_secs());
            return connect(client, &id, timeout).await;
        }
        match state.current.clone() {
            Some(id) => match connect(client, &id, Some(self.timeout_secs())).await {
                Err(ToolError::SandboxNotFound(id)) => {
                    state.forget(&id);
                    Err(ToolError::SessionSandboxGone(id))
                }
                other => other,
            },
            None => {
                let template = self.config.template.clone();
                self.create_locked(&mut state, client, &template).await
            }
        }
    }

    /// Create a sandbox from `template` (the configured one when `None`); it becomes the
    /// session's.
    pub async fn create(
        &self,
        client: &Client,
        template: Option<&str>,
    ) -> Result<Sandbox, ToolError> {
        let mut state = self.state.lock().await;
        let template = template.unwrap_or(&self.config.template).to_owned();
        self.create_locked(&mut state, client, &template).await
    }

    async fn create_locked(
        &self,
        state: &mut State,
        client: &Client,
        template: &str,
    ) -> Result<Sandbox, ToolError> {
        let sandbox = client
            .create(&NewSandbox {
                template_id: template.to_owned(),
                timeout: Some(self.timeout_secs()),
                metadata: Some([("createdBy".to_owned(), "silo mcp".to_owned())].into()),
                ..NewSandbox::default()
            })
            .await
            .map_err(|source| ToolError::Create {
                template: template.to_owned(),
                source,
            })?;
        tracing::info!(sandbox_id = %sandbox.sandbox_id, template, "MCP session created its sandbox");
        state
            .owned
            .push((sandbox.sandbox_id.clone(), client.clone()));
        state.current = Some(sandbox.sandbox_id.clone());
        Ok(sandbox)
    }

    /// Kill the sandbox named, else the session's. Returns its id.
    pub async fn kill(&self, client: &Client, named: Option<&str>) -> Result<SandboxId, ToolError> {
        let mut state = self.state.lock().await;
        let id = match named {
            Some(named) => parse_id(named)?,
            None => state.current.clone().ok_or(ToolError::NoSessionSandbox)?,
        };
        let result = client.kill(&id).await;
        // Gone either way: killed now, or before (404).
        if result.is_ok() || result.as_ref().is_err_and(|err| err.status() == Some(404)) {
            state.forget(&id);
        }
        match result {
            Ok(()) => Ok(id),
            Err(err) if err.status() == Some(404) => Err(ToolError::SandboxNotFound(id)),
            Err(err) => Err(ToolError::Silo(err)),
        }
    }

    /// The session ended: kill the sandboxes it created.
    pub async fn close(&self) {
        let owned = std::mem::take(&mut self.state.lock().await.owned);
        for (id, client) in owned {
            kill_owned(&client, &id).await;
        }
    }

    fn timeout_secs(&self) -> u64 {
        self.config.sandbox_timeout.as_secs().max(1)
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::close`] (an HTTP session that ended, or
    /// expired) still kills what it created, in the background.
    fn drop(&mut self) {
        let owned = std::mem::take(&mut self.state.get_mut().owned);
        if owned.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                sandboxes = owned.len(),
                "MCP session ended outside the runtime; its sandboxes go at their timeout"
            );
            return;
        };
        runtime.spawn(async move {
            for (id, client) in owned {
                kill_owned(&client, &id).await;
            }
        });
    }
}

async fn kill_owned(client: &Client, id: &SandboxId) {
    match client.kill(id).await {
        Ok(()) => tracing::info!(sandbox_id = %id, "MCP session ended; killed its sandbox"),
        // Killed by a tool call or its timeout already.
        Err(err) if err.status() == Some(404) => {}
        Err(err) => {
            tracing::warn!(sandbox_id = %id, error = %err, "cannot kill the MCP session's sandbox; it goes at its timeout")
        }
    }
}

fn parse_id(raw: &str) -> Result<SandboxId, ToolError> {
    raw.trim().parse().map_err(ToolError::InvalidSandboxId)
}

async fn connect(
    client: &Client,
    id: &SandboxId,
    timeout: Option<u64>,
) -> Result<Sandbox, ToolError> {
    client
        .connect(id, timeout)
        .await
        .map_err(|err| match err.status() {
            Some(404) => ToolError::SandboxNotFound(id.clone()),
            _ => ToolError::Silo(err),
        })
}
