//! One Jupyter kernel: its process and a client for its shell, iopub and control channels.
//!
//! [`Kernel::start`] writes a connection file, spawns the kernelspec's command as the sandbox
//! user, connects DEALER sockets to shell and control and a SUB socket to iopub, and then
//! repeats `kernel_info_request` until both its reply (shell) and a status message (iopub)
//! arrive: a SUB socket misses everything published before its subscription reaches the
//! kernel, so seeing iopub traffic is the only proof that outputs will not be lost.
//!
//! Two reader tasks (shell, iopub) decode every incoming message and route it, by the
//! `msg_id` of its parent header, to whoever sent that request ([`Kernel::request`]). Messages
//! nobody waits for are dropped; [`routes`] bounds what waits for a slow consumer.
//!
//! ipykernel is started by silo's launcher ([`launcher`]), which keeps its shell socket on
//! the main thread.
//!
//! JavaScript and TypeScript can instead run on silo's own Node.js driver ([`node`]), which
//! speaks the same messages as JSON lines over pipes; everything above the transport
//! (routing, [`Replies`], interrupt, kill) is shared.

pub mod connection;
mod launcher;
pub mod messages;
pub mod node;
pub mod process;
mod routes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::config::KernelUser;
use crate::kernelspec::{InterruptMode, KernelSpec};
use crate::language::Language;
use connection::{ConnectionFile, ConnectionInfo};
use messages::Signer;
use process::KernelProcess;
pub use routes::Replies;
use routes::{deliver, Routes};

/// How long a kernel may take from spawn to answering `kernel_info_request`. Generous: under
/// gVisor a cold Python import of ipykernel takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `kernel_info_request` waits before it is sent again.
const HANDSHAKE_RETRY: Duration = Duration::from_millis(500);
/// How long one zeromq connect (TCP and greeting, to a port already listening) may take.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);

/// Errors of starting and talking to one kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("writing connection file {path}")]
    ConnectionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting kernel {kernel} ({program})")]
    Spawn {
        kernel: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to kernel {kernel}")]
    Connect {
        kernel: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("kernel {kernel} exited while starting ({status}); its last output: {stderr}")]
    ExitedDuringStart {
        kernel: String,
        status: String,
        stderr: String,
    },
    #[error("kernel {kernel} did not answer within {}s of starting", START_TIMEOUT.as_secs())]
    StartTimeout { kernel: String },
    #[error("sending to kernel {kernel}")]
    Send {
        kernel: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("writing to kernel {kernel}")]
    PipeSend {
        kernel: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the Node.js driver script {path}")]
    DriverScript {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupting kernel {kernel}")]
    Interrupt {
        kernel: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {kernel} failed to run set-up code: {reply}")]
    Snippet { kernel: String, reply: String },
    #[error("kernel {kernel} died ({status})")]
    Died { kernel: String, status: String },
}

/// What [`Kernel::start`] needs besides the spec.
pub struct StartOptions<'a> {
    pub cwd: &'a Path,
    /// The complete environment of the kernel process.
    pub env: &'a BTreeMap<String, String>,
    pub user: Option<&'a KernelUser>,
    /// Where the connection file is written.
    pub runtime_dir: &'a Path,
    /// Passed to [`KernelSpec::command_line`] to resolve a bare program name.
    pub path: &'a str,
}

/// A started kernel. Dropping it kills the process group (see [`KernelProcess`]).
pub struct Kernel {
    name: String,
    process: KernelProcess,
    interrupt_mode: InterruptMode,
    channels: Channels,
    routes: Routes,
    readers: Vec<JoinHandle<()>>,
    /// Set by [`Kernel::kill`], so an execution that sees the exit can tell a restart or
    /// delete from a crash.
    killed: AtomicBool,
}

/// How requests reach the kernel.
// One per kernel, which lives behind an Arc for its context's lifetime: boxing the larger
// variant would save nothing that matters.
#[allow(clippy::large_enum_variant)]
enum Channels {
    Jupyter {
        signer: Signer,
        shell: tokio::sync::Mutex<zeromq::DealerSendHalf>,
        control: tokio::sync::Mutex<DealerSocket>,
        _connection_file: ConnectionFile,
    },
    Node(node::Pipe),
}

impl Kernel {
    pub async fn start(spec: &KernelSpec, opts: StartOptions<'_>) -> Result<Kernel, KernelError> {
        let name = spec.name.clone();
        let info = ConnectionInfo::generate(&name).map_err(|source| KernelError::Spawn {
            kernel: name.clone(),
            program: "(choosing ports)".into(),
            source,
        })?;
        let path = opts
            .runtime_dir
            .join(format!("kernel-{}.json", uuid::Uuid::new_v4()));
        info.write(&path, opts.user.map(|u| (u.uid, u.gid)))
            .map_err(|source| KernelError::ConnectionFile {
                path: path.clone(),
                source,
            })?;
        let connection_file = ConnectionFile { path };

        let mut argv = spec.command_line(&connection_file.path, opts.path);
        if spec.language == Language::Python {
            argv = launcher::with_silo_launcher(argv);
        }
        let mut env = opts.env.clone();
        env.extend(spec.env.clone());
        let process = KernelProcess::spawn(&argv, &env, opts.cwd, opts.user).map_err(|source| {
            KernelError::Spawn {
                kernel: name.clone(),
                program: argv.first().cloned().unwrap_or_default(),
                source,
            }
        })?;
        tracing::info!(kernel = %name, pid = process.pid(), "kernel process started");

        let started = tokio::time::timeout(
            START_TIMEOUT,
            Self::connect(name.clone(), process, spec, &info, connection_file),
        )
        .await;
        match started {
            Ok(result) => result,
            // The process was moved into the timed-out future; dropping it killed it.
            Err(_) => Err(KernelError::StartTimeout { kernel: name }),
        }
    }

    async fn connect(
        name: String,
        process: KernelProcess,
        spec: &KernelSpec,
        info: &ConnectionInfo,
        connection_file: ConnectionFile,
    ) -> Result<Kernel, KernelError> {
        let connect_err = |source| KernelError::Connect {
            kernel: name.clone(),
            source,
        };
        // zeromq's connect backs off exponentially while a port is closed, which would add
        // up to a second to every start, and each of its retries is a connect from an
        // ephemeral port to a closed one, which can land on itself (the kernel's ports are
        // ephemeral ones too) and then hang in the greeting until the 30 s connect timeout.
        // So wait until the kernel listens on every port we connect to, polling cheaply.
        // ipykernel binds shell before iopub.
        for port in [info.shell_port, info.control_port, info.iopub_port] {
            while !listening(&info.ip, port).await {
                if let Some(status) = process.exit_status() {
                    return Err(exited_during_start(&name, &process, status));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let mut iopub: SubSocket = connect_socket(&info.endpoint(info.iopub_port))
            .await
            .map_err(connect_err)?;
        iopub.subscribe("").await.map_err(connect_err)?;
        let shell: DealerSocket = connect_socket(&info.endpoint(info.shell_port))
            .await
            .map_err(connect_err)?;
        let control: DealerSocket = connect_socket(&info.endpoint(info.control_port))
            .await
            .map_err(connect_err)?;
        let (shell_tx, shell_rx) = shell.split();

        let signer = Signer::new(&info.key, uuid::Uuid::new_v4().to_string());
        let routes: Routes = Arc::default();
        let readers = vec![
            tokio::spawn(read_loop(
                name.clone(),
                "iopub",
                iopub,
                signer.clone(),
                routes.clone(),
            )),
            tokio::spawn(read_loop(
                name.clone(),
                "shell",
                shell_rx,
                signer.clone(),
                routes.clone(),
            )),
        ];
        let kernel = Kernel {
            name,
            process,
            interrupt_mode: spec.interrupt_mode,
            channels: Channels::Jupyter {
                signer,
                shell: tokio::sync::Mutex::new(shell_tx),
                control: tokio::sync::Mutex::new(control),
                _connection_file: connection_file,
            },
            routes,
            readers,
            killed: AtomicBool::new(false),
        };
        kernel.handshake().await?;
        Ok(kernel)
    }

    /// Repeats `kernel_info_request` until its reply and an iopub message for it arrived.
    async fn handshake(&self) -> Result<(), KernelError> {
        loop {
            let mut replies = self.request("kernel_info_request", json!({})).await?;
            let (mut replied, mut published) = (false, false);
            let deadline = tokio::time::sleep(HANDSHAKE_RETRY);
            tokio::pin!(deadline);
            while !(replied && published) {
                tokio::select! {
                    msg = replies.next() => match msg {
                        Some(m) if m.header.msg_type == "kernel_info_reply" => replied = true,
                        Some(m) if m.header.msg_type == "status" => published = true,
                        Some(_) => {}
                        None => break,
                    },
                    status = self.process.wait() => {
                        return Err(exited_during_start(&self.name, &self.process, status));
                    }
                    _ = &mut deadline => break,
                }
            }
            if replied && published {
                tracing::info!(kernel = %self.name, "kernel ready");
                return Ok(());
            }
        }
    }

    /// Sends a shell request and returns the stream of messages it causes. The route is
    /// registered before sending, so no early output can be missed.
    pub async fn request(&self, msg_type: &str, content: Value) -> Result<Replies, KernelError> {
        if let Some(status) = self.process.exit_status() {
            return Err(self.died(status));
        }
        match &self.channels {
            Channels::Jupyter { signer, shell, .. } => {
                let (msg_id, frames) = signer.request(msg_type, content);
                let replies = Replies::register(&self.routes, msg_id);
                self.send_frames(shell, frames).await?;
                Ok(replies)
            }
            Channels::Node(pipe) => {
                let msg_id = uuid::Uuid::new_v4().to_string();
                let replies = Replies::register(&self.routes, msg_id.clone());
                pipe.send(&msg_id, msg_type, content)
                    .await
                    .map_err(|source| KernelError::PipeSend {
                        kernel: self.name.clone(),
                        source,
                    })?;
                Ok(replies)
            }
        }
    }

    /// Runs `code` silently (no output, no execution count) and waits for its reply; for the
    /// interpreter's own snippets.
    pub async fn run_silent(&self, code: &str) -> Result<(), KernelError> {
        let mut replies = self
            .request("execute_request", messages::execute_request(code, true))
            .await?;
        loop {
            tokio::select! {
                msg = replies.next() => match msg {
                    Some(m) if m.header.msg_type == "execute_reply" => {
                        if m.content["status"] == "ok" {
                            return Ok(());
                        }
                        return Err(KernelError::Snippet {
                            kernel: self.name.clone(),
                            reply: m.content.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => return Err(self.died("connection lost".into())),
                },
                status = self.process.wait() => return Err(self.died(status)),
            }
        }
    }

    /// Interrupts the running execution, the way the kernelspec asks for.
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        let signal = || {
            self.process
                .signal_group(libc::SIGINT)
                .map_err(|source| KernelError::Interrupt {
                    kernel: self.name.clone(),
                    source,
                })
        };
        match (&self.channels, self.interrupt_mode) {
            (Channels::Node(_), _) | (Channels::Jupyter { .. }, InterruptMode::Signal) => signal(),
            (
                Channels::Jupyter {
                    signer, control, ..
                },
                InterruptMode::Message,
            ) => {
                let (_, frames) = signer.request("interrupt_request", json!({}));
                // The reply is not awaited: the effect shows up as the execution ending.
                self.send_frames(control, frames).await
            }
        }
    }

    /// Send a signed request's frames on one of the kernel's sockets.
    async fn send_frames<S: SocketSend>(
        &self,
        socket: &tokio::sync::Mutex<S>,
        frames: Vec<bytes::Bytes>,
    ) -> Result<(), KernelError> {
        let message = ZmqMessage::try_from(frames).expect("request has frames");
        socket
            .lock()
            .await
            .send(message)
            .await
            .map_err(|source| KernelError::Send {
                kernel: self.name.clone(),
                source,
            })
    }

    /// Kills the kernel's process group and waits until the kernel process is gone.
    pub async fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Err(e) = self.process.kill_tree() {
            tracing::warn!(kernel = %self.name, error = %e, "killing kernel");
        }
        self.process.wait().await;
    }

    /// Whether the kernel was ended by [`Kernel::kill`] rather than on its own.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// `Some(how it ended)` once the kernel process has exited.
    pub fn exit_status(&self) -> Option<String> {
        self.process.exit_status()
    }

    /// Resolves when the kernel process exits, with how it ended.
    pub async fn exited(&self) -> String {
        self.process.wait().await
    }

    /// The error for a kernel that has exited.
    pub fn died(&self, status: String) -> KernelError {
        KernelError::Died {
            kernel: self.name.clone(),
            status,
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// A socket of type `S` connected to `endpoint`, a port known to be listening. A handshake
/// that stalls (seen once in CI under load, 30 s without an answer) is given up after
/// [`CONNECT_ATTEMPT`] and tried again on a fresh socket; [`START_TIMEOUT`] bounds the whole.
async fn connect_socket<S: Socket>(endpoint: &str) -> Result<S, zeromq::ZmqError> {
    loop {
        let mut options = zeromq::SocketOptions::default();
        options.connect_timeout(CONNECT_ATTEMPT);
        let mut socket = S::with_options(options);
        match socket.connect(endpoint).await {
            Ok(()) => return Ok(socket),
            Err(zeromq::ZmqError::ConnectTimeout(_)) => {
                tracing::warn!(
                    endpoint,
                    "kernel socket handshake stalled; connecting again"
                );
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether something listens on `ip:port`. A connection to oneself (TCP simultaneous open,
/// possible when the source port chosen equals the closed destination port) does not count.
async fn listening(ip: &str, port: u16) -> bool {
    match tokio::net::TcpStream::connect((ip, port)).await {
        Ok(stream) => match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(peer)) => local != peer,
            _ => false,
        },
        Err(_) => false,
    }
}

fn exited_during_start(name: &str, process: &KernelProcess, status: String) -> KernelError {
    KernelError::ExitedDuringStart {
        kernel: name.to_string(),
        status,
        stderr: process.stderr_tail().join("\n"),
    }
}

/// Receives from one channel until its socket fails, routing each message to its request.
async fn read_loop<S: SocketRecv>(
    kernel: String,
    channel: &'static str,
    mut socket: S,
    signer: Signer,
    routes: Routes,
) {
    loop {
        let frames = match socket.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                // The kernel went away (exit is reported by the process watcher).
                tracing::debug!(%kernel, channel, error = %e, "kernel channel closed");
                return;
            }
        };
        let msg = match signer.decode(&frames) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%kernel, channel, error = %e, "dropping invalid kernel message");
                continue;
            }
        };
        deliver(&routes, msg);
    }
}
