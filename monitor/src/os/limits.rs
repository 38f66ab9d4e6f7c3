//! Process resource limits and attributes.
use std::io;
use std::mem::MaybeUninit;

use super::cvt;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Returns (old soft, new soft).
pub(crate) fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut rl = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, rl.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    let mut rl = unsafe { rl.assume_init() };
    let old = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid pointer to an initialised rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) })?;
    }
    Ok((old, rl.rlim_cur))
}

/// Make this process not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dumps, and
/// `/proc/<pid>/{environ,mem,maps,fd}` need CAP_SYS_PTRACE, even for processes of the
/// same uid.
pub fn set_undumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE with 0 only changes this process's dumpable attribute; no
    // pointers are passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}
