//! Performing a supervised operation on the caller's behalf, with the caller's
//! filesystem credentials and umask, on the path the supervisor resolved (never the
//! caller's string read again), and answering the notification with the result: the
//! descriptor of an open injected atomically (`SECCOMP_ADDFD_FLAG_SEND`), `0` or the errno
//! of anything else.
//!
//! Each confined session has one performer thread. It has its own filesystem context
//! (`unshare(CLONE_FS)`), so setting the caller's umask there leaves the daemon's alone.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ops::{Kind, Op};
use super::resolve::Target;
use crate::os::creds::{self, FsCreds};
use crate::os::seccomp::notify;

/// Longest xattr value a caller may set through the supervisor (the kernel's limit).
const XATTR_SIZE_MAX: usize = 65536;
/// Longest xattr name (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;

/// One operation to perform.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// The notification to answer.
    pub id: u64,
    /// The caller's thread and process.
    pub tid: u32,
    pub tgid: u32,
    pub op: Op,
    /// The resolved paths, in the order of `op.paths`.
    pub targets: Vec<Target>,
    pub creds: FsCreds,
}

/// Counters of the performers.
#[derive(Debug, Default)]
pub struct PerformCounters {
    /// Operations performed (whatever their result).
    pub performed: AtomicU64,
    /// Operations not performed because the caller was gone (killed while held).
    pub caller_gone: AtomicU64,
    /// Performed, but the answer was refused (the caller was killed in between: the effect
    /// happened, the caller never saw its result).
    pub unanswered: AtomicU64,
    /// The caller's credentials could not be taken on (the operation failed with EPERM).
    pub cred_errors: AtomicU64,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i64::from(r))
    }
}

/// What performing gave: a descriptor to inject, or a return value.
enum Done {
    Fd(OwnedFd, bool),
    Value(i64),
}

fn pidfd_getfd(tgid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd is a descriptor we own from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd duplicates descriptor `fd` of the process into ours.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// A copy of the caller's descriptor `fd` (for fchmod, fchown, fsetxattr).
pub fn caller_fd(tgid: u32, fd: i32) -> io::Result<OwnedFd> {
    pidfd_getfd(tgid, fd).map_err(|e| match e.raw_os_error() {
        Some(libc::EBADF) => e,
        _ => io::Error::from_raw_os_error(libc::EBADF),
    })
}

fn xattr_args(j: &Job) -> io::Result<(CString, Vec<u8>, i32)> {
    let (name_at, value_at, size, flags) = match j.op.kind {
        Kind::Xattr { set: true, .. } | Kind::FdXattr { set: true, .. } => (
            j.op.args[1],
            j.op.args[2],
            j.op.args[3] as usize,
            j.op.args[4] as i32,
        ),
        _ => (j.op.args[1], 0, 0, 0),
    };
    let name = notify::read_cstr(j.tid, name_at, XATTR_NAME_MAX)
        .map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))?;
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if size > XATTR_SIZE_MAX {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let value = if size == 0 {
        Vec::new()
    } else {
        notify::read_bytes(j.tid, value_at, size)?
    };
    Ok((name, value, flags))
}

fn open_how(j: &Job) -> io::Result<(i32, u32)> {
    match j.op.kind {
        Kind::Open {
            how: 0,
            flags,
            mode,
            ..
        } => Ok((flags, mode)),
        Kind::Open { how, how_size, .. } => {
            let (flags, mode) = super::supervisor::read_open_how(j.tid, how, how_size)?;
            Ok((flags, mode))
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Performs `j` as the caller (call on a performer thread).
fn perform(j: &Job) -> io::Result<Done> {
    let t0 = j.targets.first().map(|t| t.path.as_path());
    let path = || {
        t0.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
            .and_then(cstr)
    };
    // SAFETY (for every libc call below): the C strings live until the call returns; the
    // other arguments are plain integers.
    match &j.op.kind {
        Kind::Open { .. } => {
            let (flags, mode) = open_how(j)?;
            let existed = j.targets.first().is_some_and(|t| t.found.is_some());
            let p = path()?;
            let fd = check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
            // SAFETY: open returned a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let _ = existed;
            Ok(Done::Fd(fd, flags & libc::O_CLOEXEC != 0))
        }
        Kind::Rename { flags } => {
            let (a, b) = two(j)?;
            let r = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    *flags,
                )
            };
            check(r as i32).map(Done::Value)
        }
        Kind::Link { .. } => {
            let (a, b) = two(j)?;
            check(unsafe {
                libc::linkat(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), 0)
            })
            .map(Done::Value)
        }
        Kind::Symlink { target } => {
            let content = notify::read_cstr(j.tid, *target, super::resolve::MAX_PATH)?;
            let content =
                CString::new(content).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let p = path()?;
            check(unsafe { libc::symlink(content.as_ptr(), p.as_ptr()) }).map(Done::Value)
        }
        Kind::Unlink { dir } => {
            let p = path()?;
            let flag = if *dir { libc::AT_REMOVEDIR } else { 0 };
            check(unsafe { libc::unlinkat(libc::AT_FDCWD, p.as_ptr(), flag) }).map(Done::Value)
        }
        Kind::Mkdir { mode } => {
            let p = path()?;
            check(unsafe { libc::mkdir(p.as_ptr(), *mode) }).map(Done::Value)
        }
        Kind::Mknod { mode, dev } => {
            let p = path()?;
            check(unsafe { libc::mknod(p.as_ptr(), *mode, *dev) }).map(Done::Value)
        }
        Kind::Truncate { len } => {
            let p = path()?;
            check(unsafe { libc::truncate(p.as_ptr(), *len) }).map(Done::Value)
        }
        Kind::Chmod { mode, nofollow } => {
            let p = path()?;
            let flags = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    *mode,
                    flags,
                )
            };
            if r < 0
                && flags == 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
            {
                return check(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), *mode, 0) })
                    .map(Done::Value);
            }
            check(r as i32).map(Done::Value)
        }
        Kind::Chown { uid, gid, nofollow } => {
            let p = path()?;
            let flags = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            check(unsafe { libc::fchownat(libc::AT_FDCWD, p.as_ptr(), *uid, *gid, flags) })
                .map(Done::Value)
        }
        Kind::FdChmod { fd, mode } => {
            let f = caller_fd(j.tgid, *fd)?;
            check(unsafe { libc::fchmod(f.as_raw_fd(), *mode) }).map(Done::Value)
        }
        Kind::FdChown { fd, uid, gid } => {
            let f = caller_fd(j.tgid, *fd)?;
            check(unsafe { libc::fchown(f.as_raw_fd(), *uid, *gid) }).map(Done::Value)
        }
        Kind::Xattr { nofollow, set } => {
            let p = path()?;
            let (name, value, flags) = xattr_args(j)?;
            let r = match (set, nofollow) {
                (true, false) => unsafe {
                    libc::setxattr(
                        p.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                },
                (true, true) => unsafe {
                    libc::lsetxattr(
                        p.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                },
                (false, false) => unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) },
                (false, true) => unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) },
            };
            check(r).map(Done::Value)
        }
        Kind::FdXattr { fd, set } => {
            let f = caller_fd(j.tgid, *fd)?;
            let (name, value, flags) = xattr_args(j)?;
            let r = if *set {
                unsafe {
                    libc::fsetxattr(
                        f.as_raw_fd(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                }
            } else {
                unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) }
            };
            check(r).map(Done::Value)
        }
    }
}

fn two(j: &Job) -> io::Result<(CString, CString)> {
    match j.targets.as_slice() {
        [a, b, ..] => Ok((cstr(&a.path)?, cstr(&b.path)?)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Performs `j` as its caller and answers its notification on `listener`. Returns the
/// operation's own result (for the ledger): `Ok(value)` or its error.
pub fn perform_and_answer(
    listener: &OwnedFd,
    j: &Job,
    counters: &PerformCounters,
) -> io::Result<i64> {
    if !notify::id_valid(listener, j.id) {
        counters.caller_gone.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let umask = j.creds.umask;
    let done = match creds::as_writer(&j.creds, || {
        // SAFETY: umask only swaps this thread's (unshared) mask.
        let old = unsafe { libc::umask(umask as libc::mode_t) };
        let r = perform(j);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        r
    }) {
        Ok(r) => r,
        Err(e) => {
            counters.cred_errors.fetch_add(1, Ordering::Relaxed);
            let _ = notify::respond_error(listener, j.id, libc::EPERM);
            return Err(e);
        }
    };
    counters.performed.fetch_add(1, Ordering::Relaxed);
    let (answered, result) = match done {
        Ok(Done::Fd(fd, cloexec)) => {
            let r = notify::addfd_send(listener, j.id, fd.as_fd(), cloexec);
            (r.is_ok(), r.map(i64::from))
        }
        Ok(Done::Value(v)) => (notify::respond_value(listener, j.id, v).is_ok(), Ok(v)),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            (notify::respond_error(listener, j.id, errno).is_ok(), Err(e))
        }
    };
    if !answered {
        counters.unanswered.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// Gives the calling thread its own filesystem context (umask, cwd), so that a performer
/// can set the caller's umask without touching the daemon's.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) only copies this thread's fs_struct.
    check(unsafe { libc::unshare(libc::CLONE_FS) }).map(|_| ())
}

/// Shared by a session's supervisor and performer.
pub type Shared = Arc<PerformCounters>;
