//! A private mount namespace for `runsc run` whose /proc/sys hides `net`.
//!
//! runsc 0.0~20240729 decides it was started in the host's network namespace when
//! `/proc/sys/net/core/rmem_default` exists, and then refuses `--network=sandbox`. On
//! kernels since ~6.x that file exists in every netns, so the test misfires. The fix
//! measured on these hosts: in the child, between fork and exec, unshare the mount
//! namespace, cover /proc/sys with a tmpfs, and bind back only `vm`, `kernel` and `fs`
//! (runsc needs `vm/mmap_min_addr`), through `/proc/self/fd/N` of handles opened
//! before the tmpfs went over them. The host's mounts are untouched, and the sandbox
//! and gofer processes runsc forks inherit the private namespace.
//!
//! Not `ip netns exec`: that remounts /sys, and runsc then loses the cgroup tree.

use std::io;

use tokio::process::Command;

/// The /proc/sys subtrees runsc needs, as NUL-terminated paths (no allocation after
/// fork).
const KEPT: [&std::ffi::CStr; 3] = [c"/proc/sys/vm", c"/proc/sys/kernel", c"/proc/sys/fs"];

/// Make `command`'s child enter a private mount namespace with /proc/sys/net hidden
/// before it execs.
pub(crate) fn install(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // syscalls (unshare, mount, open, mkdir, close) on static or stack buffers.
    unsafe {
        command.pre_exec(hide_net);
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `/proc/self/fd/<fd>` into `buf`, NUL-terminated, without allocating.
fn fd_path(fd: libc::c_int, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

fn hide_net() -> io::Result<()> {
    let null = std::ptr::null();
    // SAFETY: plain syscalls with valid NUL-terminated strings or null where allowed.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        // Opened inside the new namespace: a bind source must belong to it.
        let mut fds = [-1; KEPT.len()];
        for (fd, dir) in fds.iter_mut().zip(KEPT) {
            *fd = check(libc::open(
                dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            ))?;
        }
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/proc/sys".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0555,size=16k".as_ptr().cast(),
        ))?;
        for (fd, dir) in fds.into_iter().zip(KEPT) {
            let mut buf = [0u8; 32];
            check(libc::mkdir(dir.as_ptr(), 0o555))?;
            check(libc::mount(
                fd_path(fd, &mut buf),
                dir.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            libc::close(fd);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN); skipped otherwise.
    #[test]
    fn fd_paths() {
        let mut buf = [0u8; 32];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            fd_path(fd, &mut buf);
            let end = buf.iter().position(|b| *b == 0).expect("NUL");
            assert_eq!(&buf[..end], want.as_bytes());
        }
    }

    #[tokio::test]
    async fn child_sees_only_vm_kernel_fs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "ls /proc/sys; test -e /proc/sys/vm/mmap_min_addr && echo ok",
        ]);
        install(&mut cmd);
        let out = cmd.output().await.expect("run sh");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["fs", "kernel", "vm", "ok"]);
        // The host's view is unchanged.
        assert!(std::path::Path::new("/proc/sys/net").exists());
    }
}
