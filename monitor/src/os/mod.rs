//! The one layer that talks to the operating system directly. Everything above it sees
//! safe Rust types; every `unsafe` block of the daemon outside the eBPF crate lives here,
//! besides the few places that hand a descriptor to tokio and the watcher's placeholder
//! for a group descriptor it no longer holds.
//!
//! - [`fanotify`]: the raw fanotify calls both groups use (init, marks, reads, the
//!   permission response) and the parser of metadata-only event records.
//! - [`fs`]: directories, `stat`, file handles, directory listings, `pread`, and what a
//!   filesystem's magic says about it.
//! - [`walk`]: the descriptor-based directory-tree walk both groups mark trees with.
//! - [`procfs`]: facts about processes and threads (descriptor paths, start times, thread
//!   groups, supplementary groups, task memory) and the path of one of our own descriptors.
//! - [`clock`]: wall-clock instants as milliseconds or nanoseconds since the epoch, the
//!   kernel's clocks (and boot time in clock ticks), RFC 3339, the local UTC offset.
//! - [`poll`]: eventfd and `poll(2)`; [`limits`]: the open-file limit and the dumpable
//!   attribute; [`memory`]: process-wide memory hints; [`host`]: this host's name;
//!   [`environ`]: the start-up environment hidden from `/proc/<pid>/environ`;
//!   [`sdnotify`]: systemd's notification socket and the descriptors it passes back;
//!   [`journal`]: whether stdout/stderr are systemd's journal stream.
//!   [`environ`]: the start-up environment hidden from `/proc/<pid>/environ`.
//! - [`landlock`], [`seccomp`]: what confines an agent session (installed by the
//!   `confgate-confine` helper).
//!
//! Each wrapper returns `io::Result` (or an `Option` where "cannot tell" is an answer)
//! with the errno of the failed call; no policy lives here.
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub mod beneath;
pub mod clock;
pub mod creds;
pub mod environ;
pub mod fanotify;
pub mod fs;
pub mod host;
pub mod journal;
pub mod landlock;
pub mod limits;
pub mod memory;
pub mod pathops;
pub mod poll;
pub mod procfs;
pub mod sdnotify;
pub mod seccomp;
pub mod walk;

/// The result of a libc call that returns -1 (and sets errno) on failure.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`cvt`] for calls that return a byte count (`read`, `write`, `pread`, ...).
pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `path` as a C string (`EINVAL` if it holds a NUL).
pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
