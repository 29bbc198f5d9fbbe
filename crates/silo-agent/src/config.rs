//! The agent's command line. Every setting can also come from a `SILO_AGENT_*` environment
//! variable; nothing else in the agent reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// silo-agent: serves E2B's envd protocol inside a sandbox.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    /// Address to serve envd on.
    #[arg(long, env = "SILO_AGENT_LISTEN", default_value = "0.0.0.0:49983")]
    pub listen: SocketAddr,

    /// Address to serve the code interpreter on, when the template has Jupyter kernels.
    #[arg(
        long,
        env = "SILO_AGENT_INTERPRETER_LISTEN",
        default_value = "0.0.0.0:49999"
    )]
    pub interpreter_listen: SocketAddr,

    /// The user the code interpreter's kernels run as (the template's user).
    #[arg(long, env = "SILO_AGENT_INTERPRETER_USER", default_value = "user")]
    pub interpreter_user: String,

    /// User that processes and files belong to when a request names none, until
    /// `POST /init` sets another (envd's own fallback is root).
    #[arg(long, env = "SILO_AGENT_DEFAULT_USER", default_value = "root")]
    pub default_user: String,

    /// Working directory for processes started without a cwd [default: the user's home].
    #[arg(long, env = "SILO_AGENT_DEFAULT_WORKDIR")]
    pub default_workdir: Option<PathBuf>,

    /// The passwd file users are looked up in.
    #[arg(long, env = "SILO_AGENT_PASSWD", default_value = "/etc/passwd")]
    pub passwd: PathBuf,

    /// The group file groups are looked up in.
    #[arg(long, env = "SILO_AGENT_GROUP", default_value = "/etc/group")]
    pub group: PathBuf,

    /// Largest file `POST /files` accepts, in bytes (after gzip decoding).
    #[arg(long, env = "SILO_AGENT_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    pub max_upload_bytes: u64,

    /// Unix socket of the sudo broker (what `sudo` in the sandbox talks to); empty: none.
    #[arg(
        long,
        env = "SILO_AGENT_SUDO_SOCKET",
        default_value = "/run/silo/sudo.sock"
    )]
    pub sudo_socket: PathBuf,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `silo_agent=debug`.
    #[arg(long, env = "SILO_AGENT_LOG", default_value = "info")]
    pub log: String,

    /// Access token required from the start (normally set later by `POST /init`).
    #[arg(long, env = "SILO_AGENT_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
}
