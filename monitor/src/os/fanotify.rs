//! The raw fanotify calls both groups use: `fanotify_init`, `fanotify_mark`, reading
//! events, answering a permission event, and the parser of event records that carry a
//! descriptor and no info records (the permission group's; the notification group reports
//! file handles and has its own parser in `notify::records`).
//!
//! Why by hand and not `nix::sys::fanotify`: nix's `FanotifyEvent` keeps the event
//! descriptor private (it cannot be moved into a held event without a `dup`), panics when
//! it closes an invalid descriptor, and reads into a 4 KiB buffer.
use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_size};

/// `fanotify_init(2)`.
pub(crate) fn init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = cvt(unsafe { libc::fanotify_init(flags, event_f_flags) })?;
    // SAFETY: the kernel just returned this new descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(2)` on the object `fd` refers to (pathname NULL).
pub(crate) fn mark_fd(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    // SAFETY: both descriptors are valid for the call; a NULL pathname means "dirfd itself".
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            fd.as_raw_fd(),
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `fanotify_mark(2)` on the entry `name` of the directory `dir`.
pub(crate) fn mark_at(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid descriptors and a NUL-terminated name that outlives the call.
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            dir.as_raw_fd(),
            name.as_ptr(),
        )
    })
    .map(drop)
}

/// Remove every inode mark of `group` (`FAN_MARK_FLUSH`).
pub(crate) fn flush_marks(group: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall; a NULL pathname is allowed for FAN_MARK_FLUSH.
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_FLUSH,
            0,
            libc::AT_FDCWD,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// One `read(2)` of events.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable region of buf.len() bytes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Answer the permission event whose descriptor is `event_fd` on `group` (`struct
/// fanotify_response`, `FAN_ALLOW` or `FAN_DENY`). The descriptor must stay open until
/// this returns: the kernel finds the event by its number.
pub(crate) fn respond(
    group: BorrowedFd<'_>,
    event_fd: BorrowedFd<'_>,
    allow: bool,
) -> io::Result<()> {
    let resp = libc::fanotify_response {
        fd: event_fd.as_raw_fd(),
        response: if allow {
            libc::FAN_ALLOW
        } else {
            libc::FAN_DENY
        },
    };
    // SAFETY: resp is a plain struct of the size passed; the group fd is valid.
    let n = cvt_size(unsafe {
        libc::write(
            group.as_raw_fd(),
            (&raw const resp).cast(),
            size_of::<libc::fanotify_response>(),
        )
    })?;
    if n != size_of::<libc::fanotify_response>() {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// One event as read from a group that reports descriptors (no info records).
#[derive(Debug)]
pub(crate) struct FdEvent {
    pub mask: u64,
    /// Thread id of the opener (0: not visible in our pid namespace).
    pub pid: i32,
    /// The event descriptor the kernel installed for us (`None`: `FAN_NOFD`).
    pub fd: Option<OwnedFd>,
    /// The record did not parse cleanly (wrong version or length); its descriptor, if
    /// any, is still ours and the event must still be answered.
    pub malformed: bool,
}

const META_LEN: usize = size_of::<libc::fanotify_event_metadata>();

/// Parse a buffer returned by `read(2)` on a descriptor-reporting group. Every descriptor
/// found is owned by the returned events, so each is closed exactly once. Returns the
/// number of malformed records (a record whose length does not fit ends the parse).
pub(crate) fn parse_fd_events(buf: &[u8], out: &mut Vec<FdEvent>) -> u64 {
    let mut off = 0usize;
    let mut malformed = 0u64;
    while buf.len() - off >= META_LEN {
        // SAFETY: at least META_LEN bytes remain at off; the struct is plain old data
        // and read_unaligned has no alignment requirement.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
        let len = meta.event_len as usize;
        let bad_len = len < META_LEN || len > buf.len() - off;
        let bad = bad_len || meta.vers != libc::FANOTIFY_METADATA_VERSION;
        if bad {
            malformed += 1;
        }
        let fd = (meta.fd >= 0).then(|| {
            // SAFETY: the kernel installed this descriptor in our table for this event;
            // nothing else refers to it.
            unsafe { OwnedFd::from_raw_fd(meta.fd) }
        });
        out.push(FdEvent {
            mask: meta.mask,
            pid: meta.pid,
            fd,
            malformed: bad,
        });
        if bad_len {
            return malformed;
        }
        off += len;
    }
    if off < buf.len() {
        // Trailing bytes shorter than a header.
        malformed += 1;
    }
    malformed
}
