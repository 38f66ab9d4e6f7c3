//! Process resource limits.
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
