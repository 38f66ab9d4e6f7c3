//! The path operations the session supervisor performs on a caller's behalf, as safe
//! calls on C strings and descriptors: each returns the syscall's result or its errno.
//! The caller sets the thread's credentials first ([`super::creds::as_writer`]).
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i64::from(r))
    }
}

fn check_long(r: libc::c_long) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `open(path, flags | O_CLOEXEC, mode)`.
pub fn open(path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid C string for the call; the rest are integers.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`.
pub fn rename(from: &CStr, to: &CStr, flags: u32) -> io::Result<i64> {
    // SAFETY: both C strings are valid for the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

/// `linkat(AT_FDCWD, old, AT_FDCWD, new, 0)`.
pub fn link(old: &CStr, new: &CStr) -> io::Result<i64> {
    // SAFETY: both C strings are valid for the call.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            old.as_ptr(),
            libc::AT_FDCWD,
            new.as_ptr(),
            0,
        )
    })
}

/// `symlink(content, path)`.
pub fn symlink(content: &CStr, path: &CStr) -> io::Result<i64> {
    // SAFETY: both C strings are valid for the call.
    check(unsafe { libc::symlink(content.as_ptr(), path.as_ptr()) })
}

/// `unlinkat(AT_FDCWD, path, dir ? AT_REMOVEDIR : 0)`.
pub fn unlink(path: &CStr, dir: bool) -> io::Result<i64> {
    let flag = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: the C string is valid for the call.
    check(unsafe { libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), flag) })
}

/// `mkdir(path, mode)`.
pub fn mkdir(path: &CStr, mode: u32) -> io::Result<i64> {
    // SAFETY: the C string is valid for the call.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) })
}

/// `mknod(path, mode, dev)`.
pub fn mknod(path: &CStr, mode: u32, dev: u64) -> io::Result<i64> {
    // SAFETY: the C string is valid for the call.
    check(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
}

/// `truncate(path, len)`.
pub fn truncate(path: &CStr, len: i64) -> io::Result<i64> {
    // SAFETY: the C string is valid for the call.
    check(unsafe { libc::truncate(path.as_ptr(), len) })
}

/// `fchmodat2(AT_FDCWD, path, mode, nofollow)`, `fchmodat` where that is missing.
pub fn chmod(path: &CStr, mode: u32, nofollow: bool) -> io::Result<i64> {
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: the C string is valid for the call.
    let r = check_long(unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            mode,
            flags,
        )
    });
    match r {
        Err(e) if !nofollow && e.raw_os_error() == Some(libc::ENOSYS) => {
            // SAFETY: as above.
            check(unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) })
        }
        r => r,
    }
}

/// `fchownat(AT_FDCWD, path, uid, gid, nofollow ? AT_SYMLINK_NOFOLLOW : 0)`.
pub fn chown(path: &CStr, uid: u32, gid: u32, nofollow: bool) -> io::Result<i64> {
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: the C string is valid for the call.
    check(unsafe { libc::fchownat(libc::AT_FDCWD, path.as_ptr(), uid, gid, flags) })
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<i64> {
    // SAFETY: integers only; `fd` is live.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<i64> {
    // SAFETY: integers only; `fd` is live.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

/// Where an extended attribute is set or removed.
pub enum XattrOn<'a> {
    Path { path: &'a CStr, nofollow: bool },
    Fd(BorrowedFd<'a>),
}

/// `*setxattr` (`value` given) or `*removexattr` (`None`).
pub fn xattr(on: XattrOn<'_>, name: &CStr, value: Option<(&[u8], i32)>) -> io::Result<i64> {
    let n = name.as_ptr();
    let r = match (on, value) {
        (XattrOn::Path { path, nofollow }, Some((v, f))) => {
            let call = if nofollow {
                libc::lsetxattr
            } else {
                libc::setxattr
            };
            // SAFETY: the C strings and the value slice (with its own length) are valid
            // for the call.
            unsafe { call(path.as_ptr(), n, v.as_ptr().cast(), v.len(), f) }
        }
        (XattrOn::Path { path, nofollow }, None) => {
            let call = if nofollow {
                libc::lremovexattr
            } else {
                libc::removexattr
            };
            // SAFETY: both C strings are valid for the call.
            unsafe { call(path.as_ptr(), n) }
        }
        (XattrOn::Fd(fd), Some((v, f))) => {
            // SAFETY: `fd` is live; the C string and the slice are valid for the call.
            unsafe { libc::fsetxattr(fd.as_raw_fd(), n, v.as_ptr().cast(), v.len(), f) }
        }
        (XattrOn::Fd(fd), None) => {
            // SAFETY: `fd` is live; the C string is valid for the call.
            unsafe { libc::fremovexattr(fd.as_raw_fd(), n) }
        }
    };
    check(r)
}

/// A copy of descriptor `fd` of process `tgid` (`pidfd_open` + `pidfd_getfd`).
pub fn pidfd_getfd(tgid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) })?;
    // SAFETY: a new descriptor we own from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: duplicates descriptor `fd` of the process into ours.
    let got =
        check_long(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// Gives the calling thread its own filesystem context (umask, cwd).
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) only copies this thread's fs_struct.
    check(unsafe { libc::unshare(libc::CLONE_FS) }).map(|_| ())
}

/// Sets this thread's umask (after [`unshare_fs`], the thread's own); returns the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask takes and returns a mode; no memory is involved.
    unsafe { libc::umask(mask as libc::mode_t) }
}
