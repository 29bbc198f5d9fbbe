//! The unprivileged side: what runs when the agent binary is started as `sudo`.
//!
//! Synchronous and small: parse the command line, connect to the broker, hand it the
//! request with our stdin, stdout and stderr, then wait, forwarding the signals we get
//! (a self-pipe fed by the signal handler, polled with the socket), and finally exit
//! as the command did: its exit code, or death by the same signal.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use super::options::{self, Action, USAGE};
use super::protocol::{self, ClientMessage, Reply, Request};
use super::scm;

/// The write end of the self-pipe, for the signal handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Run `sudo` with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let result = match options::parse(&args) {
        Err(e) => {
            eprint!("sudo: {e}\n{USAGE}");
            return 1;
        }
        Ok(Action::Help) => {
            print!("{USAGE}");
            Ok(0)
        }
        Ok(Action::Version) => {
            println!(
                "silo sudo {} (a front end to the silo-agent sudo broker)",
                env!("CARGO_PKG_VERSION")
            );
            Ok(0)
        }
        Ok(Action::Forget) => Ok(0),
        Ok(Action::Validate(request)) => check(request).map(|_| 0),
        Ok(Action::List(request)) => check(request).map(|caller| {
            println!(
                "User {caller} may run the following commands on this sandbox:\n    (ALL : ALL) NOPASSWD: ALL"
            );
            0
        }),
        Ok(Action::Run(request)) => run(request),
    };
    result.unwrap_or_else(|message| {
        eprintln!("sudo: {message}");
        1
    })
}

/// Where the broker listens (`SILO_SUDO_SOCKET` overrides it, for an agent run outside a
/// sandbox; pointing it elsewhere gains nothing, the broker decides).
fn socket_path() -> PathBuf {
    std::env::var_os("SILO_SUDO_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(super::SOCKET))
}

fn connect() -> Result<UnixStream, String> {
    let path = socket_path();
    UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the sudo broker at {} ({e}); sudo works only inside a silo sandbox",
            path.display()
        )
    })
}

/// Send the request frame, with `fds` on its first bytes.
fn send_request(socket: &UnixStream, request: &Request, fds: &[RawFd]) -> io::Result<()> {
    let frame = protocol::encode(request);
    let sent = loop {
        match scm::send_with_fds(socket.as_fd(), &frame, fds) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    let mut socket = socket;
    socket.write_all(&frame[sent..])
}

fn with_caller_context(mut request: Request) -> Request {
    request.env = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    request.cwd = std::env::current_dir()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into());
    request
}

/// `-v`, `-l`: may we? Returns the caller's name.
fn check(request: Request) -> Result<String, String> {
    let socket = connect()?;
    send_request(&socket, &with_caller_context(request), &[]).map_err(lost)?;
    match next_reply(&socket, &mut Vec::new())? {
        Reply::Allowed { caller } => Ok(caller),
        Reply::Denied(text) | Reply::Failed(text) => Err(text),
        other => Err(format!("unexpected reply from the broker: {other:?}")),
    }
}

fn run(request: Request) -> Result<i32, String> {
    ensure_stdio();
    let signals = SignalPipe::install().map_err(|e| format!("install signal handlers: {e}"))?;
    let socket = connect()?;
    send_request(&socket, &with_caller_context(request), &[0, 1, 2]).map_err(lost)?;
    let mut buf = Vec::new();
    let mut send_buf = Vec::new();
    loop {
        // Everything the broker said so far.
        while let Some(reply) = protocol::decode::<Reply>(&mut buf).map_err(lost)? {
            match reply {
                Reply::Started { .. } | Reply::Allowed { .. } => {}
                Reply::Denied(text) | Reply::Failed(text) => return Err(text),
                Reply::Exited {
                    signal: Some(sig), ..
                } => die_by(sig),
                Reply::Exited { code, .. } => return Ok(code.unwrap_or(1)),
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[1].revents != 0 {
            for sig in signals.drain() {
                send_buf.extend(protocol::encode(&ClientMessage::Signal(sig)));
                if sig == libc::SIGTSTP {
                    // Stop with the command, as a shell's job expects; SIGCONT (relayed
                    // too) resumes both.
                    let mut s = &socket;
                    let _ = s.write_all(&std::mem::take(&mut send_buf));
                    // SAFETY: raise has no memory preconditions.
                    unsafe { libc::raise(libc::SIGSTOP) };
                }
            }
            if !send_buf.is_empty() {
                let mut s = &socket;
                // A broker gone away shows on the read side.
                let _ = s.write_all(&std::mem::take(&mut send_buf));
            }
        }
        if fds[0].revents != 0 {
            let mut chunk = [0u8; 4096];
            match (&socket).read(&mut chunk) {
                Ok(0) => return Err(lost("the broker closed the connection")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }
}

fn next_reply(socket: &UnixStream, buf: &mut Vec<u8>) -> Result<Reply, String> {
    loop {
        if let Some(reply) = protocol::decode::<Reply>(buf).map_err(lost)? {
            return Ok(reply);
        }
        let mut chunk = [0u8; 4096];
        match (&*socket).read(&mut chunk) {
            Ok(0) => return Err(lost("the broker closed the connection")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(lost(e)),
        }
    }
}

fn lost(e: impl std::fmt::Display) -> String {
    format!("lost the sudo broker: {e}")
}

/// Descriptors 0–2 must exist to be passed on: a closed one becomes /dev/null.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open of a constant path; dup2 onto the missing slot.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}

/// End this process the way the command ended: by the same signal (no core dump), or
/// with 128 + the signal as the shells report it, should the signal not end us.
fn die_by(sig: libc::c_int) -> ! {
    // SAFETY: plain system calls on valid arguments.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// The self-pipe the signal handler writes signal numbers into.
struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls; errno is saved and restored.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = sig as u8;
        libc::write(
            SIGNAL_PIPE.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        );
        *libc::__errno_location() = errno;
    }
}

impl SignalPipe {
    fn install() -> io::Result<SignalPipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into a valid array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
        for &sig in super::RELAYED_SIGNALS {
            // SAFETY: sigaction with a handler that is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(sig, &action, std::ptr::null_mut()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(SignalPipe {
            read,
            _write: write,
        })
    }

    /// The signals received since the last call.
    fn drain(&self) -> Vec<libc::c_int> {
        let mut bytes = [0u8; 64];
        let mut out = Vec::new();
        loop {
            // SAFETY: reading into a valid buffer of its length.
            let n = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    bytes.as_mut_ptr().cast(),
                    bytes.len(),
                )
            };
            if n <= 0 {
                return out;
            }
            out.extend(bytes[..n as usize].iter().map(|&b| libc::c_int::from(b)));
        }
    }
}
