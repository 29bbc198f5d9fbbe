//! Passing file descriptors (`SCM_RIGHTS`) and the sender's identity (`SCM_CREDENTIALS`)
//! over a Unix socket, for both ends.
//!
//! The identity is what the broker trusts: the kernel refuses credentials that are not
//! the sender's own (unless it holds CAP_SETUID), and stamps them per message. Not
//! `SO_PEERCRED`: this gVisor answers that with the *calling* task's credentials, so the
//! broker (root) would see every caller as root.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message may carry: stdin, stdout, stderr.
pub const MAX_FDS: usize = 3;

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe {
        libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize
            + libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize
    }
}

/// Who sent a message, as the kernel vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Ask the kernel to report each message's sender on `socket` (`SO_PASSCRED`).
pub fn pass_credentials(socket: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option.
    let ret = unsafe {
        libc::setsockopt(
            raw(socket),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send `data` (or its first part: the count is returned) with `fds` and our own
/// credentials (real uid and gid) attached.
pub fn send_with_fds(socket: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors");
    // SAFETY: getpid, getuid and getgid have no preconditions.
    let cred = unsafe {
        libc::ucred {
            pid: libc::getpid(),
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    };
    let cred_len = std::mem::size_of::<libc::ucred>();
    let mut control = vec![0u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let fds_len = std::mem::size_of_val(fds);
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe {
        libc::CMSG_SPACE(cred_len as u32) as usize
            + if fds.is_empty() {
                0
            } else {
                libc::CMSG_SPACE(fds_len as u32) as usize
            }
    };
    // SAFETY: the control buffer holds CMSG_SPACE of both parts, so both headers and
    // their data fit; CMSG_NXTHDR is only taken when a second header is wanted.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_CREDENTIALS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(cred_len as u32) as usize;
        std::ptr::copy_nonoverlapping(
            (&cred as *const libc::ucred).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            cred_len,
        );
        if !fds.is_empty() {
            let cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fds_len,
            );
        }
    }
    // SAFETY: msg points at live buffers; the socket is borrowed, so open.
    let n = unsafe { libc::sendmsg(raw(socket), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What one `recvmsg` brought.
pub struct Received {
    pub len: usize,
    /// Descriptors, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The sender, when the socket has [`pass_credentials`] on.
    pub sender: Option<Sender>,
}

/// Receive into `buf`. More than [`MAX_FDS`] descriptors, or a truncated control
/// message, is an error (whatever did arrive is closed).
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = vec![0u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: msg points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(raw(socket), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    let mut sender = None;
    // SAFETY: the kernel filled msg_control with well-formed headers; we walk them with
    // the CMSG macros and only read within each header's length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            } else if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                && (*cmsg).cmsg_len
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize
            {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>());
                sender = Some(Sender {
                    pid: cred.pid,
                    uid: cred.uid,
                    gid: cred.gid,
                });
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in one message",
        ));
    }
    Ok(Received {
        len: n as usize,
        fds,
        sender,
    })
}

fn raw(fd: BorrowedFd<'_>) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        pass_credentials(b.as_fd()).expect("SO_PASSCRED");
        let (mut near, far) = UnixStream::pair().expect("socketpair");
        let sent = send_with_fds(a.as_fd(), b"hello", &[far.as_raw_fd()]).expect("send");
        assert_eq!(sent, 5);
        drop(far);
        let mut buf = [0u8; 16];
        let Received { len, fds, sender } = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(fds.len(), 1);
        // SAFETY: getuid and getpid have no preconditions.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        let sender = sender.expect("credentials");
        assert_eq!((sender.uid, sender.pid), (uid, pid));
        // The received descriptor is the other end of `near`.
        let mut received = UnixStream::from(fds.into_iter().next().expect("one fd"));
        received.write_all(b"via fd").expect("write");
        drop(received);
        let mut out = String::new();
        near.read_to_string(&mut out).expect("read");
        assert_eq!(out, "via fd");
    }
}
