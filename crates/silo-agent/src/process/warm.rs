//! Warm shells: the login shell of the next `commands.run` is started before it is asked for.
//!
//! Every `commands.run(cmd)` of the E2B SDKs starts `/bin/bash -l -c cmd`. Inside gVisor
//! forking the agent and exec'ing bash costs ~40 ms, far more than most commands take
//! (ADR 0018). So the agent keeps one bash ready, started as
//! `bash --noprofile -l -c BOOTSTRAP` with the identity (user, groups, working directory,
//! environment) the last such command had, blocked on a pipe. A start request with that
//! identity writes its command into the shell's memfd and wakes it; the shell then reads the
//! login files as `bash -l` would (at that moment, so a change to `~/.profile` is seen) and
//! evaluates the command on line 1, so `$LINENO` and error lines read as they would.
//!
//! Anything else (a pty, stdin, another user, cwd or environment, a variable bash reads at
//! start-up) starts cold as before. A lone program in literal words (`ls -la`, `python3
//! -c "print(1)"`), or the last of a list of such commands cut by `;` (`cd /repo; make`),
//! replaces the shell, as `bash -c` does with it. What a command can tell
//! apart from a cold start: its `/proc/$$/cmdline` shows the bootstrap, a syntax error is
//! reported by `eval` rather than `-c`, and a lone program whose words have expansions
//! (`ls $HOME`) runs as bash's child instead of replacing it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::reaper::Reaper;
use super::spawn::{pipe, spawn, SpawnSpec, Spawned};
use crate::blocking;
use crate::users::User;

const BASH: &str = "/bin/bash";

/// Variables bash acts on when it starts, before the bootstrap could run the login files:
/// a request that sets one starts cold.
const START_UP_VARIABLES: [&str; 5] = [
    "BASH_ENV",
    "ENV",
    "POSIXLY_CORRECT",
    "SHELLOPTS",
    "BASHOPTS",
];

/// Warm shells that ended before they were used, in a row, after which warming stops (a
/// template whose /bin/bash is not bash, or something in the sandbox killing them).
const MAX_FAILURES: u32 = 3;

/// What a warm shell was started as; a request must match it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    user: User,
    groups: Vec<u32>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    /// The working directory's device and inode: one removed and made again is another.
    cwd_inode: (u64, u64),
}

impl Identity {
    fn of(spec: &SpawnSpec) -> Option<Identity> {
        let meta = std::fs::metadata(&spec.cwd).ok()?;
        Some(Identity {
            user: spec.user.clone(),
            groups: spec.groups.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            cwd_inode: (meta.dev(), meta.ino()),
        })
    }
}

/// The command of a start request a warm shell can run: `bash -l -c CMD`, no pty, no stdin,
/// no start-up variable.
fn shell_command(spec: &SpawnSpec) -> Option<&str> {
    let [login, dash_c, command] = spec.args.as_slice() else {
        return None;
    };
    let plain = spec.cmd == BASH
        && login == "-l"
        && dash_c == "-c"
        && spec.pty.is_none()
        && !spec.stdin
        && !spec
            .env
            .iter()
            .any(|(key, _)| START_UP_VARIABLES.contains(&key.as_str()));
    plain.then_some(command.as_str())
}

/// bash's reserved words that are spelled in plain characters.
#[rustfmt::skip]
const RESERVED_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until",
    "do", "done", "in", "function", "time", "coproc",
];

/// bash's builtins that are spelled in plain characters.
#[rustfmt::skip]
const BUILTINS: &[&str] = &[
    ".", ":", "alias", "bg", "bind", "break", "builtin", "caller", "cd", "command", "compgen",
    "complete", "compopt", "continue", "declare", "dirs", "disown", "echo", "enable", "eval",
    "exec", "exit", "export", "false", "fc", "fg", "getopts", "hash", "help", "history",
    "jobs", "kill", "let", "local", "logout", "mapfile", "popd", "printf", "pushd", "pwd",
    "read", "readarray", "readonly", "return", "set", "shift", "shopt", "source", "suspend",
    "test", "times", "trap", "true", "type", "typeset", "ulimit", "umask", "unalias", "unset",
    "wait",
];

/// How a warm shell runs its command: told by the byte that wakes it, and kept through
/// the login files by which of its two descriptors it leaves open (no variable the
/// command could see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// `eval` the command.
    Evaluate,
    /// A lone program: exec it in place of the shell, as `bash -c` does.
    InPlace,
    /// `S; L`: evaluate S, then exec the program L in place of the shell, as `bash -c`
    /// does with the last command of a list cut by `;`.
    InPlaceAfterList,
}

impl Run {
    /// Going by the text alone, whether `bash -c COMMAND` would exec a program in place
    /// of itself: a lone simple command, or the last of a list cut by `;` (bash 5.2 forks
    /// for a last command after `&&`, `||` or a newline). Every command in literal words
    /// (see [`literal_words`]), none starting with a reserved word (so none opens a
    /// compound command), those before the last `;` perhaps joined by `&&` and none of
    /// them `set` (after `set -x` or `-v` bash would trace the shell's own checks); the
    /// last a program: plain first word, neither an assignment nor a builtin, and no `;`
    /// even in quotes (the shell cuts the command at its last `;`). The shell checks the
    /// rest (no function of that name, no alias expansion, no trap) before it execs.
    fn of(command: &str) -> Run {
        let Some((before, last)) = split_list(command) else {
            return Run::Evaluate;
        };
        let last_is_program = simple_command(last).is_some_and(|first| {
            first.chars().all(plain)
                && !first.contains('=')
                && !first.starts_with('%')
                && !BUILTINS.contains(&first)
        });
        let before_are_simple = before
            .iter()
            .all(|(command, _)| simple_command(command).is_some_and(|first| first != "set"));
        match before.last() {
            _ if !last_is_program || !before_are_simple => Run::Evaluate,
            None => Run::InPlace,
            Some((_, Separator::Semicolon)) if !last.contains(';') => Run::InPlaceAfterList,
            Some(_) => Run::Evaluate,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Run::Evaluate => b'.',
            Run::InPlace => b'x',
            Run::InPlaceAfterList => b';',
        }
    }
}

/// What ends a command of a list that another follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Separator {
    Semicolon,
    And,
}

/// `command` cut at `;` and `&&` outside quotes: the commands followed by a separator,
/// each with its separator, and the last command; None for another `&` or an unclosed
/// quote. The pieces are not checked here.
fn split_list(command: &str) -> Option<(Vec<(&str, Separator)>, &str)> {
    let bytes = command.as_bytes();
    let mut commands = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let (separator, width) = match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1 + bytes[i + 1..].iter().position(|&b| b == quote)?;
                (None, 1)
            }
            b';' => (Some(Separator::Semicolon), 1),
            b'&' if bytes.get(i + 1) == Some(&b'&') => (Some(Separator::And), 2),
            b'&' => return None,
            _ => (None, 1),
        };
        if let Some(separator) = separator {
            commands.push((&command[start..i], separator));
            start = i + width;
        }
        i += width;
    }
    Some((commands, &command[start..]))
}

/// The first word of `command` if it is a simple command in literal words (see
/// [`literal_words`]) that opens no compound command (its first word no reserved word).
fn simple_command(command: &str) -> Option<&str> {
    let first = first_word(command);
    (literal_words(command) && !first.is_empty() && !RESERVED_WORDS.contains(&first))
        .then_some(first)
}

fn first_word(command: &str) -> &str {
    command
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or_default()
}

/// Characters that stand for themselves in a word outside quotes.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c)
}

/// Whether `command` is blank-separated words that bash takes literally, but for quote
/// removal: plain characters, text in single quotes, text in double quotes without `$`,
/// `` ` `` or `\`. No expansion, glob, redirection, operator or comment; no newline
/// outside quotes.
fn literal_words(command: &str) -> bool {
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        let literal = match c {
            ' ' | '\t' => true,
            '\'' => chars.any(|c| c == '\''),
            '"' => loop {
                match chars.next() {
                    Some('"') => break true,
                    Some('$' | '`' | '\\') | None => break false,
                    Some(_) => {}
                }
            },
            c => plain(c),
        };
        if !literal {
            return false;
        }
    }
    true
}

/// The `-c` script of a warm shell: wait for one byte on `go`, close the descriptors that
/// byte says to, read the command from `command` (with `read -u`: a redirection would
/// move stdin aside and back around each read, ~0.1 ms under gVisor), read the login
/// files in bash's order, run the command. One line, so the command's lines count from
/// one. If `go` closes without a byte the shell ends having run nothing (and, not
/// running `exit`, without `~/.bash_logout`).
///
/// Left open through the login files: neither to evaluate the command; `command` for a
/// lone program; both for `S; L`. Aliases on: evaluate. For `S; L` the shell evaluates
/// the text before the last `;` with `command` closed (its children see no descriptor a
/// cold shell has not), reads the command again (S may have set the variable; and with
/// `set -e` from S, the `read` failing at the end of the memfd must not end the shell),
/// keeps L, and goes on with it as with a lone program. That it execs in place of
/// itself, as `bash -c` does, when no trap is set (`trap -p` written into the memfd is
/// empty), aliases are off, the words made its positional parameters (`eval "set -- L"`:
/// only quote removal, the words being literal) and the first no function and an
/// executable: with `$_` set to its path, as bash does (and, for a path, `-a` keeps the
/// name as typed in `$0` of a script without `#!`, as bash does). Otherwise it evaluates
/// L. The program check is written once: a longer bootstrap measured ~2-3 ms slower
/// (ADR 0018). A fork under gVisor's systrap costs ~20 ms more than an exec.
fn bootstrap(go: RawFd, command: RawFd) -> String {
    let [in_place, after_list] =
        [Run::InPlace, Run::InPlaceAfterList].map(|run| char::from(run.byte()));
    let read_command = format!("IFS= read -r -d '' -u {command} BASH_EXECUTION_STRING");
    let close_both = format!("exec {go}<&- {command}<&-");
    format!(
        "if IFS= read -r -N1 -u {go} BASH_EXECUTION_STRING; then \
         case $BASH_EXECUTION_STRING in \
         {in_place}) exec {go}<&-; {read_command};; \
         \\{after_list}) {read_command};; \
         *) {read_command}; {close_both};; esac; \
         SECONDS=0; \
         if [ -e /etc/profile ]; then . /etc/profile; fi; \
         if [ -e ~/.bash_profile ]; then . ~/.bash_profile; \
         elif [ -e ~/.bash_login ]; then . ~/.bash_login; \
         elif [ -e ~/.profile ]; then . ~/.profile; fi; \
         if [ -n \"${{BASH_ENV-}}\" ] && [ -e \"$BASH_ENV\" ]; then . \"$BASH_ENV\"; fi; \
         if [ -e /dev/fd/{command} ] && shopt -q expand_aliases; then {close_both}; fi; \
         if [ -e /dev/fd/{go} ]; then exec {go}<&-; \
         eval \"${{BASH_EXECUTION_STRING%;*}}\" {command}<&-; \
         IFS= read -r -d '' BASH_EXECUTION_STRING </dev/fd/{command} || :; \
         BASH_EXECUTION_STRING=${{BASH_EXECUTION_STRING##*;}}; fi; \
         if [ -e /dev/fd/{command} ]; then \
         if trap -p >/dev/fd/{command} && [ ! -s /dev/fd/{command} ] && ! shopt -q expand_aliases \
         && eval \"set -- $BASH_EXECUTION_STRING\" \
         && ! declare -F -- \"$1\" >/dev/null \
         && case $1 in */*) [ -f \"$1\" ] && [ -x \"$1\" ];; *) hash -- \"$1\" 2>/dev/null;; esac; \
         then exec {command}<&-; case $1 in \
         */*) _=$1 exec -a \"$1\" -- \"$@\";; *) _=${{BASH_CMDS[$1]}} exec -- \"$@\";; esac; fi; \
         exec {command}<&-; set --; fi; \
         eval \"$BASH_EXECUTION_STRING\"; \
         fi # silo: warm shell, waiting for its command (ADR 0018)"
    )
}

/// Warms a shell for the next command once this one has ended: started alongside it,
/// starting it would slow it (ADR 0018).
pub struct Rewarm {
    shells: Arc<WarmShells>,
    identity: Identity,
}

impl Rewarm {
    pub fn now(self) {
        self.shells.warm(self.identity);
    }
}

/// A started shell waiting for its command.
struct WarmShell {
    identity: Identity,
    spawned: Spawned,
    /// One byte written here starts the shell; closing it ends the shell unused.
    go: File,
    /// The memfd the command is written into (the shell reads it from offset 0).
    command: File,
}

impl WarmShell {
    fn start(identity: Identity, reaper: &Reaper) -> io::Result<WarmShell> {
        let (go_read, go) = pipe()?;
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let command = unsafe { libc::memfd_create(c"silo-command".as_ptr(), libc::MFD_CLOEXEC) };
        if command < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let command = File::from(unsafe { OwnedFd::from_raw_fd(command) });
        let spec = SpawnSpec {
            cmd: BASH.into(),
            args: vec![
                "--noprofile".into(),
                "-l".into(),
                "-c".into(),
                bootstrap(go_read.as_raw_fd(), command.as_raw_fd()),
            ],
            env: identity.env.clone(),
            cwd: identity.cwd.clone(),
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            pty: None,
            stdin: false,
            inherit_fds: vec![go_read.as_raw_fd(), command.as_raw_fd()],
        };
        let spawned = spawn(spec, reaper)?;
        Ok(WarmShell {
            identity,
            spawned,
            go: File::from(go),
            command,
        })
    }

    /// Give the shell its command. Fails if the shell is gone.
    fn run(mut self, command: &str) -> io::Result<Spawned> {
        match self.spawned.exit.try_recv() {
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            _ => return Err(io::Error::other("the warm shell has ended")),
        }
        self.command.write_all_at(command.as_bytes(), 0)?;
        // EPIPE if the shell died since (Rust ignores SIGPIPE).
        self.go.write_all(&[Run::of(command).byte()])?;
        Ok(self.spawned)
    }
}

#[derive(Default)]
struct Slot {
    shell: Option<WarmShell>,
    /// The identity of the shell being started (at most one at a time).
    starting: Option<Identity>,
    failures: u32,
}

/// The agent's warm shell (one: a second would cost memory in every idle sandbox for
/// the rare burst of concurrent commands).
pub struct WarmShells {
    reaper: Arc<Reaper>,
    slot: Mutex<Slot>,
    /// Notified when a start in flight has finished, well or not.
    started: Notify,
}

impl WarmShells {
    pub fn new(reaper: Arc<Reaper>) -> Arc<WarmShells> {
        Arc::new(WarmShells {
            reaper,
            slot: Mutex::new(Slot::default()),
            started: Notify::new(),
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `spec` in the warm shell if it is a shell command of the warm shell's identity
    /// (waiting for one of that identity being started: it is further along than a cold
    /// start would be); `None`: start it cold. Either way, for a shell command, the
    /// [`Rewarm`] warms a shell of this identity for the next one.
    pub async fn take(self: &Arc<Self>, spec: &SpawnSpec) -> (Option<Spawned>, Option<Rewarm>) {
        let Some(command) = shell_command(spec) else {
            return (None, None);
        };
        let Some(identity) = Identity::of(spec) else {
            return (None, None);
        };
        let mut waited = false;
        let shell = loop {
            // Registered before the slot is looked at, so a start finishing in between
            // still wakes it.
            let started = self.started.notified();
            {
                let mut slot = self.slot();
                match slot.shell.take() {
                    Some(shell) if shell.identity == identity => break Some(shell),
                    // Another identity: the newest request's is the likelier next one.
                    Some(_) | None => {}
                }
                if waited || slot.starting.as_ref() != Some(&identity) {
                    break None;
                }
            }
            started.await;
            waited = true;
        };
        let spawned = shell.and_then(|shell| match shell.run(command) {
            Ok(spawned) => {
                self.slot().failures = 0;
                Some(spawned)
            }
            Err(e) => {
                self.slot().failures += 1;
                tracing::debug!(error = %e, "warm shell unusable; starting cold");
                None
            }
        });
        let rewarm = Rewarm {
            shells: self.clone(),
            identity,
        };
        (spawned, Some(rewarm))
    }

    /// The pid of the shell waiting for a command, if one is.
    pub fn waiting(&self) -> Option<u32> {
        self.slot().shell.as_ref().map(|shell| shell.spawned.pid)
    }

    /// Start a shell for `spec`'s identity in the background, if it is a shell command.
    pub fn prepare(self: &Arc<Self>, spec: &SpawnSpec) {
        if shell_command(spec).is_some() {
            if let Some(identity) = Identity::of(spec) {
                self.warm(identity);
            }
        }
    }

    fn warm(self: &Arc<Self>, identity: Identity) {
        {
            let mut slot = self.slot();
            if slot.starting.is_some() || slot.failures >= MAX_FAILURES {
                return;
            }
            if slot.shell.as_ref().is_some_and(|s| s.identity == identity) {
                return;
            }
            slot.starting = Some(identity.clone());
        }
        let shells = self.clone();
        // Starting a process is synchronous (the thread waits for the exec) and, in gVisor,
        // slow: keep it off the async workers.
        let queued = blocking::spawn(move || {
            let started = WarmShell::start(identity, &shells.reaper);
            let mut slot = shells.slot();
            slot.starting = None;
            match started {
                // Replacing a shell drops its `go` pipe, which ends it unused.
                Ok(shell) => slot.shell = Some(shell),
                Err(e) => {
                    slot.failures += 1;
                    if slot.failures == MAX_FAILURES {
                        tracing::warn!(error = %e, "warm shells failed to start; commands start cold");
                    }
                }
            }
            drop(slot);
            shells.started.notify_waiters();
        });
        // No thread to start it on (only if the agent's failed to start): none is coming.
        if queued.is_err() {
            self.slot().starting = None;
            self.started.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_protocol::envd::PtySize;

    fn spec(cmd: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/".into(),
            user: User {
                name: "user".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/user".into(),
                shell: "/bin/bash".into(),
            },
            groups: vec![1000],
            pty: None,
            stdin: false,
            inherit_fds: Vec::new(),
        }
    }

    #[test]
    fn only_plain_login_shell_commands_are_warm() {
        assert_eq!(
            shell_command(&spec(BASH, &["-l", "-c", "echo hi"])),
            Some("echo hi")
        );
        assert_eq!(shell_command(&spec("/bin/sh", &["-l", "-c", "x"])), None);
        assert_eq!(shell_command(&spec(BASH, &["-c", "x"])), None);
        assert_eq!(shell_command(&spec(BASH, &["-l", "-c", "x", "arg0"])), None);

        let mut with_stdin = spec(BASH, &["-l", "-c", "x"]);
        with_stdin.stdin = true;
        assert_eq!(shell_command(&with_stdin), None);

        let mut with_pty = spec(BASH, &["-l", "-c", "x"]);
        with_pty.pty = Some(PtySize::default());
        assert_eq!(shell_command(&with_pty), None);

        let mut with_bash_env = spec(BASH, &["-l", "-c", "x"]);
        with_bash_env.env.push(("BASH_ENV".into(), "/tmp/x".into()));
        assert_eq!(shell_command(&with_bash_env), None);
    }

    #[test]
    fn the_bootstrap_is_one_line_naming_its_descriptors() {
        let script = bootstrap(12, 13);
        assert!(!script.contains('\n'));
        assert!(script.contains("-u 12 ") && script.contains("-u 13 "));
        assert!(script.contains("exec 12<&- 13<&-"));
        assert!(script.contains("/dev/fd/13"));
    }

    fn assert_runs_as(run: Run, commands: &[&str]) {
        for command in commands {
            assert_eq!(Run::of(command), run, "{command:?}");
        }
    }

    #[test]
    fn lone_programs_run_in_place() {
        assert_runs_as(
            Run::InPlace,
            &[
                "ls",
                "ls -la /tmp",
                "python3 script.py --n=3",
                "date +%s",
                "./run.sh",
                "/usr/bin/env",
                "pip install a==1 b@c",
                "python3 -c \"print(1 + 1)\nprint('x')\"",
                "sh -c 'echo $PPID > f'",
                "git commit -m \"a message\" ''",
                "python3 -c 'a = 1; b = 2 && 3'",
            ],
        );
    }

    #[test]
    fn lists_cut_by_semicolons_run_their_last_program_in_place() {
        assert_runs_as(
            Run::InPlaceAfterList,
            &[
                "cd /tmp; ls",
                "cd /tmp;ls -la",
                "mkdir -p a; cd a; git init",
                ". ./env; python3 main.py",
                "export X=1; env",
                "X=1; ls",
                "echo 'a;b'; ls",
                "true && cd /tmp; ls",
                "cd x; python3 -c 'a && b'",
            ],
        );
    }

    #[test]
    fn everything_else_is_evaluated() {
        assert_runs_as(
            Run::Evaluate,
            &[
                "",
                " ",
                "echo hi",
                "cd /tmp",
                ": x",
                ". ./env",
                "true",
                "X=1 ls",
                "ls | wc",
                "ls > f",
                "ls $HOME",
                "ls ~",
                "ls *",
                "ls \\a",
                "ls\n",
                "(ls)",
                "{ ls; }",
                "! ls",
                "time ls",
                "if",
                "%1",
                "ls # note",
                "ls {a,b}",
                "python3 -c \"print($x)\"",
                "ls \"a\\\"b\"",
                "ls 'open",
                "ls \"open",
                "'ls' x",
                "ls \"`id`\"",
                "ls 'a'>f",
                "echo 'hi'",
                // Lists: a builtin last, a last command after `&&` (bash forks for it), an
                // empty command, a compound command, a `;` in the last command's quotes,
                // other operators.
                "cd /tmp; echo hi",
                "cd /tmp && exit 3",
                "cd /repo && python3 main.py",
                "cd a; make && ./run",
                "true && ls",
                "ls;",
                "; ls",
                "ls;; ls",
                "ls && && ls",
                "ls &&",
                "if true; then ls; fi; ls",
                "if true; then ls",
                "for x in a b; do ls",
                "time make; ls",
                "cd x; python3 -c 'a; b'",
                "cd x; python3 -c 'a & b",
                "set -x; ls",
                "cd /tmp && set -e; make",
                "ls & ls",
                "ls &",
                "ls || ls",
                "cd $HOME; ls",
                "cd x\nls",
                "ls # a; ls",
            ],
        );
    }
}
