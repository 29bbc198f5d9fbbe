//! `silo serve` runs below a minimal init of its own, as containerd's shim and tini do.
//!
//! `runsc create` starts a sandbox's processes (the sandbox and its gofer) and exits, so
//! they are orphans: when one dies, whoever adopted it must reap it, and `runsc delete`
//! waits (up to 5 s, polling every 100 ms) until it has been. Adopted by a host PID 1
//! that reaps late, a delete took 1.3-1.7 s; by a PID 1 that never reaps (silo itself
//! in a container without an init), it would fail and leave the sandbox's cgroups. So
//! the first process marks itself the child subreaper (orphans below it come to it),
//! forks the server, reaps every process that comes to it as soon as it exits, forwards
//! the signals that stop the server, and exits as the server did. The server dies with
//! it (`PR_SET_PDEATHSIG`), so a SIGKILL still takes both.
//!
//! The fork happens before any thread exists (before the async runtime), so the child
//! is an ordinary copy of a single-threaded process.

use std::io;
use std::process::ExitCode;

/// Signals that stop the server, forwarded to it (the server shuts down on each, see
/// `serve::stop_signals`).
pub(crate) const FORWARDED: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// In the server: `Ok(None)`, go on serving. In the reaper: `Ok(Some(code))` once the
/// server has ended, its exit code (128 + the signal if one ended it).
pub fn serve_below_reaper() -> io::Result<Option<ExitCode>> {
    let mut waited = empty_set();
    for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
        // SAFETY: `waited` is an initialized sigset_t.
        unsafe { libc::sigaddset(&mut waited, signal) };
    }
    let mut previous = empty_set();
    // SAFETY: valid sigset pointers; blocked before the fork so none is lost in between.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut previous) })?;
    // SAFETY: prctl with integer arguments only (as unsigned longs, which it reads).
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
    let reaper = std::process::id();
    // SAFETY: no other thread exists yet (see the module comment).
    let server = check(unsafe { libc::fork() })?;
    if server == 0 {
        // SAFETY: prctl with integer arguments only; `previous` is the mask from before.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        })?;
        // SAFETY: as above.
        check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) })?;
        // The reaper may have died before PR_SET_PDEATHSIG took effect.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } as u32 != reaper {
            std::process::exit(1);
        }
        return Ok(None);
    }
    Ok(Some(reap_until_server_ends(server, &waited)))
}

fn reap_until_server_ends(server: libc::pid_t, waited: &libc::sigset_t) -> ExitCode {
    loop {
        // SAFETY: a valid, initialized sigset; a null info pointer is allowed.
        let signal = unsafe { libc::sigwaitinfo(waited, std::ptr::null_mut()) };
        if signal == libc::SIGCHLD {
            if let Some(code) = reap_all(server) {
                return code;
            }
        } else if signal > 0 {
            // SAFETY: kill has no memory preconditions; the server may be gone already.
            unsafe { libc::kill(server, signal) };
        }
    }
}

/// Reap every child that has ended; the server's exit code if it was among them.
fn reap_all(server: libc::pid_t) -> Option<ExitCode> {
    let mut ended = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        if pid == server {
            ended = Some(exit_code(status));
        }
    }
}

fn exit_code(status: libc::c_int) -> ExitCode {
    let code = if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_as_a_shell_would() {
        assert_eq!(exit_code(0), ExitCode::from(0));
        assert_eq!(exit_code(3 << 8), ExitCode::from(3));
        assert_eq!(exit_code(libc::SIGKILL), ExitCode::from(137));
    }
}
