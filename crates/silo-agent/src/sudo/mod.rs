//! `sudo` for gVisor sandboxes, where setuid binaries cannot work (gVisor ignores setuid
//! bits and always sets `NO_NEW_PRIVS`; docs/adr/0005-sudo-in-gvisor.md).
//!
//! The agent, already root, is the one that switches users:
//!
//! - [`broker`]: the agent serves [`SOCKET`]; it checks each caller by `SCM_CREDENTIALS`,
//!   and runs the allowed commands with the caller's own stdin, stdout and stderr.
//! - [`client`]: the same binary started as `sudo` (the base template links
//!   `/usr/bin/sudo` to `/opt/silo/silo-agent`) sends the request and waits.
//! - [`options`] parses sudo's command line; [`policy`] decides who may do what and
//!   builds the command's user, environment and arguments; [`protocol`] is the framing
//!   between them and [`scm`] the descriptor passing.

pub mod broker;
pub mod client;
pub mod options;
pub mod policy;
pub mod protocol;
pub mod scm;

use std::ffi::OsStr;
use std::path::Path;

/// Where the broker listens inside a sandbox.
pub const SOCKET: &str = "/run/silo/sudo.sock";

/// Signals the client catches and the broker passes on to the command, as sudo relays them.
pub const RELAYED_SIGNALS: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTSTP,
    libc::SIGCONT,
    libc::SIGWINCH,
];

/// Whether the binary was started as `sudo` (argv[0], as a symlink names it).
pub fn invoked_as_sudo(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == "sudo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_is_by_program_name() {
        for yes in ["sudo", "/usr/bin/sudo", "./sudo"] {
            assert!(invoked_as_sudo(Some(OsStr::new(yes))), "{yes}");
        }
        for no in ["silo-agent", "/opt/silo/silo-agent", "sudoedit"] {
            assert!(!invoked_as_sudo(Some(OsStr::new(no))), "{no}");
        }
        assert!(!invoked_as_sudo(None));
    }
}
