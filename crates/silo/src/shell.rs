//! `silo sandbox shell`: this terminal attached to a login shell in a sandbox, as
//! `docker exec -it` or `e2b sandbox connect` do. Keys go to the sandbox's terminal
//! as typed (this one in raw mode), what it shows comes back, and a resize of this
//! window resizes it.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;

use silo_client::{Client, RunOptions, TerminalSize};
use silo_protocol::rest::Sandbox;
use tokio::sync::{mpsc, oneshot};

/// The size a terminal is given when this side has none (input from a pipe).
const DEFAULT_SIZE: TerminalSize = TerminalSize { cols: 80, rows: 24 };
/// What a terminal reads as end of input: sent when stdin ends, as typing Ctrl-D.
const END_OF_INPUT: u8 = 0x04;

/// Run the sandbox's shell on this terminal until it exits; its exit code.
pub async fn attach(
    client: &Client,
    sandbox: &Sandbox,
    options: &RunOptions,
) -> anyhow::Result<i32> {
    let _raw = RawMode::enable()?;
    let (started, pid) = oneshot::channel();
    let shell = client.terminal(
        sandbox,
        options,
        window_size().unwrap_or(DEFAULT_SIZE),
        |pid| {
            let _ = started.send(pid);
        },
        |shown| {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout is no reason to stop the shell.
            let _ = stdout.write_all(&shown).and_then(|()| stdout.flush());
        },
    );
    tokio::select! {
        code = shell => Ok(code?),
        err = forward_input(client, sandbox, pid) => Err(err),
    }
}

/// Send what stdin reads, and this window's new sizes, to the terminal of the process
/// `pid` names once it started; returns only when that fails (the shell's end ends it
/// first).
async fn forward_input(
    client: &Client,
    sandbox: &Sandbox,
    pid: oneshot::Receiver<u32>,
) -> anyhow::Error {
    let Ok(pid) = pid.await else {
        // The shell ended before it started: its own error says why.
        return std::future::pending().await;
    };
    let mut typed = read_stdin();
    let mut ended = false;
    let mut resized =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) {
            Ok(signal) => signal,
            Err(err) => return anyhow::anyhow!("cannot watch the window's size: {err}"),
        };
    loop {
        let sent = tokio::select! {
            input = typed.recv(), if !ended => match input {
                Some(input) => client.send_terminal_input(sandbox, pid, &input).await,
                // Output goes on until the shell exits.
                None => {
                    ended = true;
                    client.send_terminal_input(sandbox, pid, &[END_OF_INPUT]).await
                }
            },
            Some(()) = resized.recv() => match window_size() {
                Some(size) => client.resize_terminal(sandbox, pid, size).await,
                None => Ok(()),
            },
            else => return std::future::pending().await,
        };
        if let Err(err) = sent {
            return anyhow::Error::new(err).context("cannot type into the sandbox's terminal");
        }
    }
}

/// What stdin reads, as it comes; closed at its end. A thread of its own, not the
/// runtime's blocking pool: a read that never returns must not hold the exit.
pub fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// This terminal's size, if stdout is one.
fn window_size() -> Option<TerminalSize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given; the result is checked.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_col > 0 && size.ws_row > 0).then_some(TerminalSize {
        cols: size.ws_col,
        rows: size.ws_row,
    })
}

/// Stdin's terminal in raw mode (keys passed as typed, no local echo: the sandbox's
/// terminal echoes), set back as it was when dropped. Nothing when stdin is no
/// terminal.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode(None));
        }
        let fd = stdin.as_raw_fd();
        // SAFETY: tcgetattr and tcsetattr on stdin with a termios of our own; results
        // are checked.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut raw = saved;
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(RawMode(Some(saved)))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `enable` on the same descriptor.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, saved) };
        }
    }
}
