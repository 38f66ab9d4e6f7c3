//! The supervisor's side of a seccomp user-notification listener: receiving notifications,
//! checking that one is still live, answering (CONTINUE, a value, an errno), injecting a
//! descriptor as the syscall's result, and reading strings from the notifying process.
//!
//! Every value in a notification comes from the watched process: its pointers and flags
//! are data to check, never to trust. A pointed-to string can change after it is read
//! (another thread of the process): a caller that answers CONTINUE must be backed by a
//! kernel check on the object actually used (Landlock), and an operation performed on the
//! process's behalf must use the copy read here.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::os::cvt;

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6): the kernel wakes the supervisor and
/// the answered thread on the same CPU, a round trip of about 10 us instead of 40-50.
const SYNC_WAKE_UP: u64 = 1;

/// One notified syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notif {
    /// The kernel's id of this notification (answers name it).
    pub id: u64,
    /// Thread id of the caller, in the supervisor's pid namespace (0: not visible).
    pub pid: u32,
    /// Syscall number.
    pub nr: i64,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
    /// The six raw arguments.
    pub args: [u64; 6],
}

fn ioctl(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: *mut libc::c_void) -> io::Result<i32> {
    // SAFETY: `fd` is a live descriptor; `arg` points to a value of the size the request
    // encodes (the callers pass the matching libc struct), valid for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) })
}

/// Checks that the kernel's notification structures are the size this build knows: a
/// kernel with larger ones would write past them.
pub fn check_sizes() -> io::Result<()> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes a `seccomp_notif_sizes` to the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let ok = usize::from(sizes.seccomp_notif) <= std::mem::size_of::<libc::seccomp_notif>()
        && usize::from(sizes.seccomp_notif_resp) <= std::mem::size_of::<libc::seccomp_notif_resp>();
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the kernel's seccomp notification structures are larger than this build's \
                 ({} / {} bytes)",
                sizes.seccomp_notif, sizes.seccomp_notif_resp
            ),
        ))
    }
}

/// Asks for synchronous wake-ups on `fd` (ignored, with `false`, by kernels before 6.6).
pub fn set_sync_wake_up(fd: impl AsFd) -> bool {
    // The flags are the ioctl's argument itself, not a pointer to them.
    // SAFETY: SET_FLAGS reads no memory; `fd` is live.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SYNC_WAKE_UP as libc::c_ulong,
        )
    };
    r == 0
}

/// Receives the next notification (blocks if none is pending: poll the descriptor first).
/// `ENOENT`: the caller was killed before it could be received; try again.
pub fn recv(fd: impl AsFd) -> io::Result<Notif> {
    // SAFETY: an all-zero `seccomp_notif` is valid (plain integers); the kernel requires it
    // zeroed.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    ioctl(
        fd.as_fd(),
        libc::SECCOMP_IOCTL_NOTIF_RECV,
        (&mut n as *mut libc::seccomp_notif).cast(),
    )?;
    Ok(Notif {
        id: n.id,
        pid: n.pid,
        nr: i64::from(n.data.nr),
        arch: n.data.arch,
        args: n.data.args,
    })
}

/// Whether notification `id` is still pending (its caller alive and waiting). Check it
/// after reading anything of the caller through `/proc` or its memory: the pid may have
/// been reused otherwise.
pub fn id_valid(fd: impl AsFd, id: u64) -> bool {
    let mut id = id;
    ioctl(
        fd.as_fd(),
        libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
        (&mut id as *mut u64).cast(),
    )
    .is_ok()
}

fn send(fd: BorrowedFd<'_>, id: u64, val: i64, error: i32, flags: u32) -> io::Result<()> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    ioctl(
        fd,
        libc::SECCOMP_IOCTL_NOTIF_SEND,
        (&mut resp as *mut libc::seccomp_notif_resp).cast(),
    )
    .map(|_| ())
}

/// Lets the syscall run as the caller made it. Only for calls a kernel check backs.
pub fn respond_continue(fd: impl AsFd, id: u64) -> io::Result<()> {
    send(
        fd.as_fd(),
        id,
        0,
        0,
        libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    )
}

/// Fails the syscall with `errno`.
pub fn respond_error(fd: impl AsFd, id: u64, errno: i32) -> io::Result<()> {
    send(fd.as_fd(), id, 0, -errno.abs(), 0)
}

/// Completes the syscall with return value `val` (the supervisor performed it).
pub fn respond_value(fd: impl AsFd, id: u64, val: i64) -> io::Result<()> {
    send(fd.as_fd(), id, val, 0, 0)
}

/// Installs `src` in the caller's descriptor table and completes the syscall with its
/// number, atomically (`SECCOMP_ADDFD_FLAG_SEND`); `cloexec` sets `O_CLOEXEC` on it.
pub fn addfd_send(fd: impl AsFd, id: u64, src: BorrowedFd<'_>, cloexec: bool) -> io::Result<i32> {
    add_fd(
        fd.as_fd(),
        id,
        src,
        cloexec,
        libc::SECCOMP_ADDFD_FLAG_SEND as u32,
    )
}

/// Installs `src` in the caller's descriptor table without completing the syscall;
/// returns the number it got there (answer it with [`respond_value`] after closing `src`).
pub fn addfd(fd: impl AsFd, id: u64, src: BorrowedFd<'_>, cloexec: bool) -> io::Result<i32> {
    add_fd(fd.as_fd(), id, src, cloexec, 0)
}

fn add_fd(
    fd: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    cloexec: bool,
    flags: u32,
) -> io::Result<i32> {
    let mut add = libc::seccomp_notif_addfd {
        id,
        flags,
        srcfd: src.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    ioctl(
        fd,
        libc::SECCOMP_IOCTL_NOTIF_ADDFD,
        (&mut add as *mut libc::seccomp_notif_addfd).cast(),
    )
}

/// Reads a NUL-terminated string at `addr` in process `pid` (at most `max` bytes before
/// the NUL). `ENAMETOOLONG` when there is no NUL within `max`; `EFAULT` for a bad address.
pub fn read_cstr(pid: u32, addr: u64, max: usize) -> io::Result<Vec<u8>> {
    const PAGE: u64 = 4096;
    if addr == 0 {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    let mut out = Vec::with_capacity(256);
    let mut at = addr;
    loop {
        // Never read across a page boundary in one call: the next page may be unmapped
        // while the string ends on this one.
        let room = (PAGE - at % PAGE) as usize;
        let want = room.min(max + 1 - out.len());
        let start = out.len();
        out.resize(start + want, 0);
        let local = libc::iovec {
            iov_base: out[start..].as_mut_ptr().cast(),
            iov_len: want,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: want,
        };
        // SAFETY: `local` points into `out`, which has `want` bytes from `start`; the
        // remote address is only read by the kernel, which checks it.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            let e = if n == 0 {
                io::Error::from_raw_os_error(libc::EFAULT)
            } else {
                io::Error::last_os_error()
            };
            return Err(e);
        }
        let n = n as usize;
        out.truncate(start + n);
        if let Some(pos) = out[start..].iter().position(|&b| b == 0) {
            out.truncate(start + pos);
            return Ok(out);
        }
        if out.len() > max {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        at = at.saturating_add(n as u64);
    }
}

/// Reads `len` bytes at `addr` in process `pid` (a small struct, e.g. `open_how`).
pub fn read_bytes(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` covers `out` (len bytes); the kernel checks the remote range.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(out)
}

/// What [`wait`] saw on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// A notification is pending.
    Notification,
    /// Every process the filter applied to is gone: nothing more will come.
    Gone,
    /// The timeout passed.
    Timeout,
}

/// Waits up to `timeout_ms` for the listener `fd`.
pub fn wait(fd: impl AsFd, timeout_ms: i32) -> io::Result<Ready> {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if p.revents & libc::POLLIN != 0 {
        Ready::Notification
    } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Ready::Gone
    } else {
        Ready::Timeout
    })
}

/// Whether `fd` is a seccomp user-notification listener (its anonymous inode is
/// `seccomp notify`), not some other descriptor handed over as one.
pub fn is_listener(fd: impl AsFd) -> bool {
    let link = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::read_link(link).is_ok_and(|p| {
        p.as_os_str() == "anon_inode:seccomp notify"
            || p.as_os_str() == "anon_inode:[seccomp notify]"
    })
}
