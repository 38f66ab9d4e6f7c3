//! Waiting on descriptors from a plain thread: an `eventfd` to wake it and `poll(2)`.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{cvt, cvt_size};

/// A non-blocking `eventfd` (used to wake a thread waiting in [`poll_readable`]).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) }).map(drop)
}

/// `poll(2)` for readability of `N` descriptors. `timeout`: `None` waits forever.
/// Returns which are readable (or hung up / in error); `EINTR` is returned as an error.
pub(crate) fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: pfds is a valid array of N pollfd.
    cvt(unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, ms) })?;
    Ok(pfds.map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0))
}
