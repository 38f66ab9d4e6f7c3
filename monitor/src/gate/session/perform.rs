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
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ops::{Kind, Op};
use super::resolve::Target;
use crate::os::creds::{self, FsCreds};
use crate::os::pathops;
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

/// What performing gave: a descriptor to inject, or a return value.
enum Done {
    Fd(OwnedFd, bool),
    Value(i64),
}

/// A copy of the caller's descriptor `fd` (for fchmod, fchown, fsetxattr).
pub fn caller_fd(tgid: u32, fd: i32) -> io::Result<OwnedFd> {
    pathops::pidfd_getfd(tgid, fd).map_err(|e| match e.raw_os_error() {
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
            let (flags, mode) = super::ops::read_open_how(j.tid, how, how_size)?;
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
    let value = |r: io::Result<i64>| r.map(Done::Value);
    match &j.op.kind {
        Kind::Open { .. } => {
            let (flags, mode) = open_how(j)?;
            let fd = pathops::open(&path()?, flags, mode)?;
            Ok(Done::Fd(fd, flags & libc::O_CLOEXEC != 0))
        }
        Kind::Rename { flags } => {
            let (a, b) = two(j)?;
            value(pathops::rename(&a, &b, *flags))
        }
        Kind::Link { .. } => {
            let (a, b) = two(j)?;
            value(pathops::link(&a, &b))
        }
        Kind::Symlink { target } => {
            let content = notify::read_cstr(j.tid, *target, super::resolve::MAX_PATH)?;
            let content =
                CString::new(content).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            value(pathops::symlink(&content, &path()?))
        }
        Kind::Unlink { dir } => value(pathops::unlink(&path()?, *dir)),
        Kind::Mkdir { mode } => value(pathops::mkdir(&path()?, *mode)),
        Kind::Mknod { mode, dev } => value(pathops::mknod(&path()?, *mode, *dev)),
        Kind::Truncate { len } => value(pathops::truncate(&path()?, *len)),
        Kind::Chmod { mode, nofollow } => value(pathops::chmod(&path()?, *mode, *nofollow)),
        Kind::Chown { uid, gid, nofollow } => {
            value(pathops::chown(&path()?, *uid, *gid, *nofollow))
        }
        Kind::FdChmod { fd, mode } => {
            let f = caller_fd(j.tgid, *fd)?;
            value(pathops::fchmod(f.as_fd(), *mode))
        }
        Kind::FdChown { fd, uid, gid } => {
            let f = caller_fd(j.tgid, *fd)?;
            value(pathops::fchown(f.as_fd(), *uid, *gid))
        }
        Kind::Xattr { nofollow, set } => {
            let p = path()?;
            let (name, v, flags) = xattr_args(j)?;
            let on = pathops::XattrOn::Path {
                path: &p,
                nofollow: *nofollow,
            };
            value(pathops::xattr(
                on,
                &name,
                set.then_some((v.as_slice(), flags)),
            ))
        }
        Kind::FdXattr { fd, set } => {
            let f = caller_fd(j.tgid, *fd)?;
            let (name, v, flags) = xattr_args(j)?;
            let on = pathops::XattrOn::Fd(f.as_fd());
            value(pathops::xattr(
                on,
                &name,
                set.then_some((v.as_slice(), flags)),
            ))
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
        let old = pathops::umask(umask);
        let r = perform(j);
        pathops::umask(old);
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
            // Installed first, our copy closed, then answered: the caller's close is then
            // the last one, so the close-write the gate diffs on is reported as the
            // caller's (not as the daemon's own, which is ignored).
            match notify::addfd(listener, j.id, fd.as_fd(), cloexec) {
                Ok(n) => {
                    drop(fd);
                    let v = i64::from(n);
                    (notify::respond_value(listener, j.id, v).is_ok(), Ok(v))
                }
                Err(e) => (false, Err(e)),
            }
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
    pathops::unshare_fs()
}

/// Shared by a session's supervisor and performer.
pub type Shared = Arc<PerformCounters>;
