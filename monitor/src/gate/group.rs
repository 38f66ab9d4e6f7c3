//! The fanotify permission group: its flags, its marks' masks, and its counters. The raw
//! calls are `crate::os::fanotify`'s.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::{GateCounters, GateError, Verdict};
use crate::os::fanotify;

/// Mark mask on every directory of a gated tree: opens of its entries (not of the directory
/// itself nor of subdirectories: no `FAN_ONDIR`).
pub(crate) const DIR_MASK: u64 = libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD;
/// Mark mask on a single file (inode mark: every name of the inode is gated).
pub(crate) const FILE_MASK: u64 = libc::FAN_OPEN_PERM;

const INIT_FLAGS: u32 = libc::FAN_CLASS_CONTENT
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK
    | libc::FAN_UNLIMITED_QUEUE
    | libc::FAN_UNLIMITED_MARKS
    | libc::FAN_REPORT_TID;
const EVENT_F_FLAGS: u32 = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;

/// A fanotify `FAN_CLASS_CONTENT` group: `FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE |
/// FAN_UNLIMITED_MARKS | FAN_REPORT_TID`, event descriptors `O_RDONLY | O_LARGEFILE |
/// O_CLOEXEC | O_NOATIME` (without `O_NOATIME` if the kernel refuses it).
///
/// - `FAN_REPORT_TID` is required: the event's pid is then the thread id of the opener,
///   which is the key of the eBPF `PENDING` map and of `/proc/<tid>/syscall`. Without it
///   the pid is the thread group id, and the intent of a multi-threaded opener could be
///   read from the wrong thread; so a kernel that refuses it (older than 4.20) is refused.
/// - `FAN_UNLIMITED_QUEUE`: with a bounded queue, a permission event that does not fit is
///   silently allowed by the kernel.
/// - Share it with `Arc`: [`PermGroup::respond`] may be called from any thread. Closing the
///   group (dropping the last `Arc`) makes the kernel allow every pending event.
#[derive(Debug)]
pub struct PermGroup {
    fd: OwnedFd,
    noatime: bool,
    counters: GateCounters,
}

impl PermGroup {
    /// Create the group (needs CAP_SYS_ADMIN).
    pub fn new() -> Result<Self, GateError> {
        let with_noatime = EVENT_F_FLAGS | libc::O_NOATIME as u32;
        let (fd, noatime) = match fanotify::init(INIT_FLAGS, with_noatime) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let fd = fanotify::init(INIT_FLAGS, EVENT_F_FLAGS).map_err(|source| {
                    GateError::Init {
                        flags: INIT_FLAGS,
                        source,
                    }
                })?;
                tracing::warn!(
                    "gate: the kernel refused O_NOATIME for event descriptors; reading a \
                     held file's pre-image updates its access time"
                );
                (fd, false)
            }
            Err(source) => {
                return Err(GateError::Init {
                    flags: INIT_FLAGS,
                    source,
                });
            }
        };
        Ok(Self {
            fd,
            noatime,
            counters: GateCounters::default(),
        })
    }

    /// Counters of this group's marks, listener and held events.
    pub fn counters(&self) -> &GateCounters {
        &self.counters
    }

    /// Whether event descriptors are opened `O_NOATIME`.
    pub fn noatime(&self) -> bool {
        self.noatime
    }

    /// Answer the permission event whose descriptor is `event_fd` (`struct
    /// fanotify_response`). Safe from any thread. The descriptor must stay open until this
    /// returns: the kernel finds the event by its number.
    pub fn respond(&self, event_fd: BorrowedFd<'_>, verdict: Verdict) -> io::Result<()> {
        fanotify::respond(self.fd.as_fd(), event_fd, verdict == Verdict::Allow)
    }

    /// `fanotify_mark(FAN_MARK_ADD | flags, mask)` on the object `fd` refers to.
    pub(crate) fn mark_fd(&self, flags: u32, mask: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        fanotify::mark_fd(self.fd.as_fd(), libc::FAN_MARK_ADD | flags, mask, fd)
    }

    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW, mask)` on the entry `name` of
    /// the directory `dir`.
    pub(crate) fn mark_at(
        &self,
        mask: u64,
        dir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
    ) -> io::Result<()> {
        fanotify::mark_at(
            self.fd.as_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_DONT_FOLLOW,
            mask,
            dir,
            name,
        )
    }

    /// Remove every inode mark of the group (`FAN_MARK_FLUSH`): no new events after this
    /// (events already being queued by the kernel may still arrive).
    pub(crate) fn flush_marks(&self) -> io::Result<()> {
        fanotify::flush_marks(self.fd.as_fd())
    }

    /// One non-blocking `read(2)` of events (`EAGAIN` when none is queued).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        fanotify::read(self.fd.as_raw_fd(), buf)
    }
}

impl AsFd for PermGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
