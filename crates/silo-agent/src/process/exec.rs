//! Starting a child with `clone(CLONE_VM | CLONE_VFORK)` instead of `fork`, as glibc's
//! `posix_spawn` does, plus what `posix_spawn` cannot do: switch user and groups, and
//! take a controlling terminal.
//!
//! In gVisor a `fork` copies the agent's address space and costs ~15 ms, about as much
//! again as the `exec` after it; a child that shares the parent's memory until it execs
//! skips the copy (ADR 0019). The price is discipline: between the clone and the exec
//! the child runs on the agent's memory, so it may not allocate, lock, or call anything
//! that touches shared state. Everything it needs is prepared in an [`ExecPlan`] first,
//! and it makes only plain system calls; user and groups are switched with raw system
//! calls, since glibc's wrappers would try to switch the agent's other threads too.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// The child's stack until it execs: it runs one small function.
const CHILD_STACK: usize = 64 * 1024;

/// The signals the agent catches: a child sets them back to default before it unblocks
/// signals, or a handler could run the agent's code on the agent's memory. Read once, not
/// in every child: asking for all 64 dispositions and resetting them took ~130 system
/// calls a spawn, and under gVisor's systrap one can cost 60 us.
static CAUGHT_SIGNALS: OnceLock<Vec<libc::c_int>> = OnceLock::new();

/// Note which signals the agent catches. Call once all of its handlers are installed: one
/// installed later is not reset in children (their `exec` still drops it; only a signal
/// arriving between unblocking and `exec` would run it).
pub fn note_signal_handlers() -> &'static [libc::c_int] {
    CAUGHT_SIGNALS.get_or_init(|| {
        (1..=libc::SIGRTMAX())
            .filter(|&sig| {
                // SAFETY: a query only; sigaction is plain data.
                let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
                let queried = unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) };
                queried == 0
                    && current.sa_sigaction != libc::SIG_DFL
                    && current.sa_sigaction != libc::SIG_IGN
            })
            .collect()
    })
}

/// Who the child becomes.
pub struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Credentials {
    /// `uid`, `gid` and `groups` when the agent is root; `None` (the child stays who the
    /// agent is) when it runs unprivileged, as in development, where it cannot switch.
    pub fn if_root(uid: u32, gid: u32, groups: &[u32]) -> Option<Credentials> {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() } == 0).then(|| Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        })
    }
}

/// Whether the child makes the terminal on its stdin its controlling terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    None,
    /// Must succeed (a pty the agent opened for it).
    Take,
    /// When no other session holds it (a sudo caller's own terminal cannot be taken
    /// without CAP_SYS_ADMIN; the command then runs without one).
    TakeIfFree,
}

/// What the child does between clone and exec, all prepared before the clone.
pub struct ExecPlan {
    /// The program's paths to try in order: the command itself, or each `PATH` entry
    /// joined with it, as `execvp` would.
    candidates: Vec<CString>,
    /// Own what `argv_ptrs` and `envp_ptrs` point at.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    /// Descriptors to become the child's 0, 1 and 2.
    stdio: [RawFd; 3],
    terminal: Terminal,
    credentials: Option<Credentials>,
    /// Descriptors the child keeps under their numbers (close-on-exec cleared).
    inherit_fds: Vec<RawFd>,
    caught_signals: &'static [libc::c_int],
    /// Written by a child that failed: the step (a [`Step`]) and its errno.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// Where a child failed before its program ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    None = 0,
    Session,
    Stdio,
    Terminal,
    Groups,
    Group,
    User,
    InheritFd,
    Directory,
    Exec,
}

impl Step {
    fn from_raw(raw: i32) -> Step {
        [
            Step::Session,
            Step::Stdio,
            Step::Terminal,
            Step::Groups,
            Step::Group,
            Step::User,
            Step::InheritFd,
            Step::Directory,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as i32 == raw)
        .unwrap_or(Step::None)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::None => "starting the process",
            Step::Session => "starting a session",
            Step::Stdio => "setting up stdin, stdout and stderr",
            Step::Terminal => "taking the terminal",
            Step::Groups => "setting supplementary groups",
            Step::Group => "switching group",
            Step::User => "switching user",
            Step::InheritFd => "passing a descriptor",
            Step::Directory => "entering the working directory",
            Step::Exec => "running the program",
        }
    }
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths `execvp` would try for `program` with `path` (the child's `PATH`): the
/// program itself when it names a path, else each entry joined with it (an empty entry
/// is the working directory).
fn candidates(program: &[u8], path: Option<&str>) -> Vec<Vec<u8>> {
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_vec()
            } else {
                let mut full = dir.trim_end_matches('/').as_bytes().to_vec();
                full.push(b'/');
                full.extend_from_slice(program);
                full
            }
        })
        .collect()
}

/// A child to start.
pub struct Child<'a> {
    /// A path, or a name looked up in the child's `PATH`.
    pub program: &'a Path,
    /// `argv`, from `argv[0]`.
    pub argv: Vec<&'a str>,
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Descriptors to become the child's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    pub terminal: Terminal,
    /// `None`: stay who the agent is.
    pub credentials: Option<Credentials>,
    /// Descriptors the child keeps under their numbers.
    pub inherit_fds: &'a [RawFd],
}

impl ExecPlan {
    pub fn new(child: Child<'_>) -> io::Result<ExecPlan> {
        let program = child.program.as_os_str().as_bytes();
        if program.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the program is empty",
            ));
        }
        let path = child
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let candidates = candidates(program, path)
            .iter()
            .map(|c| c_string(c, "the program"))
            .collect::<io::Result<Vec<_>>>()?;
        let argv = child
            .argv
            .iter()
            .map(|a| c_string(a.as_bytes(), "an argument"))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = child
            .env
            .iter()
            .map(|(k, v)| c_string(format!("{k}={v}").as_bytes(), "an environment variable"))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ExecPlan {
            candidates,
            argv_ptrs: pointers(&argv),
            _argv: argv,
            envp_ptrs: pointers(&envp),
            _envp: envp,
            cwd: c_string(child.cwd.as_os_str().as_bytes(), "the working directory")?,
            stdio: child.stdio,
            terminal: child.terminal,
            credentials: child.credentials,
            inherit_fds: child.inherit_fds.to_vec(),
            caught_signals: note_signal_handlers(),
            failed_step: AtomicI32::new(Step::None as i32),
            failed_errno: AtomicI32::new(0),
        })
    }

    /// Start the child; its pid once it has exec'd. A child that failed before its
    /// program ran has been reaped here, and its failure is the error.
    pub fn spawn(&self) -> io::Result<u32> {
        let mut stack = vec![0u8; CHILD_STACK];
        // SAFETY: one past the end of the allocation, rounded down to 16 bytes as the
        // ABI wants of a stack top.
        let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) };
        let top = (top as usize & !15) as *mut libc::c_void;

        // With every signal blocked, no handler of the agent's can run in the child
        // (on the agent's memory) before it resets them.
        // SAFETY: sigset_t is plain data that sigfillset initializes.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigset pointers.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        }
        // SAFETY: `child` only makes system calls on `self`, which outlives the child's
        // use of it: CLONE_VFORK suspends this thread until the child execs or exits.
        let pid = unsafe {
            libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                self as *const ExecPlan as *mut libc::c_void,
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        let step = Step::from_raw(self.failed_step.load(Ordering::SeqCst));
        if step == Step::None {
            return Ok(pid as u32);
        }
        let mut status = 0;
        // SAFETY: our own child, which has exited; the caller holds the reaper's lock,
        // so nothing else reaps it.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let err = io::Error::from_raw_os_error(self.failed_errno.load(Ordering::SeqCst));
        Err(match step {
            // As std's Command: a missing program is a plain NotFound.
            Step::Exec => err,
            other => io::Error::new(err.kind(), format!("{}: {err}", other.describe())),
        })
    }
}

/// Report `step` and errno to the parent, and end the child.
fn fail(plan: &ExecPlan, step: Step) -> ! {
    // SAFETY: errno is this thread's (the parent's, while it is suspended).
    let errno = unsafe { *libc::__errno_location() };
    plan.failed_errno.store(errno, Ordering::SeqCst);
    plan.failed_step.store(step as i32, Ordering::SeqCst);
    // SAFETY: ends only this child (it is its own thread group).
    unsafe { libc::_exit(127) }
}

/// The child between clone and exec. Only system calls; nothing allocates or locks.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the plan the parent passed, alive while the parent is suspended.
    let plan = unsafe { &*(arg as *const ExecPlan) };
    // SAFETY: each call is a plain system call on data prepared by the parent.
    unsafe {
        // Handlers are the agent's code: back to default (ignored signals stay
        // ignored, as across exec), and SIGPIPE, which Rust ignores, to default too.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for &sig in plan.caught_signals.iter().chain(&[libc::SIGPIPE]) {
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
        // Own session and process group: signals reach the whole job, and a pty
        // becomes the controlling terminal.
        if libc::setsid() < 0 {
            fail(plan, Step::Session);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            let target = target as RawFd;
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if done < 0 {
                fail(plan, Step::Stdio);
            }
        }
        match plan.terminal {
            Terminal::None => {}
            Terminal::Take => {
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    fail(plan, Step::Terminal);
                }
            }
            Terminal::TakeIfFree => {
                if libc::isatty(0) == 1 {
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                }
            }
        }
        if let Some(c) = &plan.credentials {
            // Groups first: they cannot be changed once root is gone.
            if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) < 0 {
                fail(plan, Step::Groups);
            }
            if libc::syscall(libc::SYS_setgid, c.gid) < 0 {
                fail(plan, Step::Group);
            }
            if libc::syscall(libc::SYS_setuid, c.uid) < 0 {
                fail(plan, Step::User);
            }
        }
        for &fd in &plan.inherit_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                fail(plan, Step::InheritFd);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail(plan, Step::Directory);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // As execvp: the first candidate that runs; a permission error is reported
        // over a later "not found".
        let mut denied = false;
        for candidate in &plan.candidates {
            libc::execve(
                candidate.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => fail(plan, Step::Exec),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(plan, Step::Exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use crate::process::spawn::pipe;

    #[test]
    fn candidates_follow_path_as_execvp() {
        let of = |p: &str, path| {
            candidates(p.as_bytes(), path)
                .into_iter()
                .map(|c| String::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(of("./run.sh", Some("/bin")), ["./run.sh"]);
        assert_eq!(of("/bin/ls", Some("/usr/bin")), ["/bin/ls"]);
        assert_eq!(
            of("ls", Some("/usr/bin/:/bin::")),
            ["/usr/bin/ls", "/bin/ls", "ls", "ls"]
        );
    }

    fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> io::Result<(String, i32)> {
        let (read, write) = pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = ExecPlan::new(Child {
            program: Path::new(program),
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .collect(),
            env: &env,
            cwd: Path::new("/tmp"),
            stdio: [null.as_raw_fd(), write.as_raw_fd(), write.as_raw_fd()],
            terminal: Terminal::None,
            credentials: None,
            inherit_fds: &[],
        })?;
        let pid = plan.spawn()?;
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        let mut status = 0;
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        Ok((out, libc::WEXITSTATUS(status)))
    }

    #[test]
    fn a_child_gets_its_arguments_environment_directory_and_stdio() {
        let (out, code) = run(
            "sh",
            &[
                "-c",
                "echo \"$0 $GREETING $(pwd)\"; echo err >&2; exit 3",
                "zero",
            ],
            &[("PATH", "/nonexistent:/usr/bin:/bin"), ("GREETING", "hi")],
        )
        .unwrap();
        assert_eq!(out, "zero hi /tmp\nerr\n");
        assert_eq!(code, 3);
    }

    #[test]
    fn a_child_starts_with_sigpipe_at_default() {
        // The test harness, as every Rust program, ignores SIGPIPE.
        let (out, code) = run("sh", &["-c", "grep SigIgn /proc/self/status"], &[]).unwrap();
        assert_eq!(code, 0);
        let ignored = u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16);
        assert_eq!(ignored.unwrap() & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn a_program_that_cannot_run_is_the_error() {
        let err = run("no-such-program-here", &[], &[("PATH", "/bin")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = run("/tmp", &[], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn nul_bytes_are_refused_before_anything_starts() {
        let err = run("sh", &["-c", "a\0b"], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
