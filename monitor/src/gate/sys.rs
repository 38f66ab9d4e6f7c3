//! The fanotify permission group and the few raw syscalls the gate needs. Each wrapper
//! returns `io::Result` with the errno of the failed call; no policy lives here.
//!
//! Why by hand and not `nix::sys::fanotify`: nix's `FanotifyEvent` keeps the event
//! descriptor private (it cannot be moved into a `Held` without a `dup`), panics when it
//! closes an invalid descriptor, and reads into a 4 KiB buffer. The directory helpers are
//! shared with the notification group (`crate::os::fanotify`).
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{GateCounters, GateError, Verdict};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

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
        let (fd, noatime) = match fanotify_init(INIT_FLAGS, with_noatime) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let fd =
                    fanotify_init(INIT_FLAGS, EVENT_F_FLAGS).map_err(|source| GateError::Init {
                        flags: INIT_FLAGS,
                        source,
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
        let resp = libc::fanotify_response {
            fd: event_fd.as_raw_fd(),
            response: match verdict {
                Verdict::Allow => libc::FAN_ALLOW,
                Verdict::Deny => libc::FAN_DENY,
            },
        };
        // SAFETY: resp is a plain struct of the size passed; the group fd is valid.
        let n = cvt_size(unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const resp).cast(),
                size_of::<libc::fanotify_response>(),
            )
        })?;
        if n != size_of::<libc::fanotify_response>() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// `fanotify_mark(FAN_MARK_ADD | flags, mask)` on the object `fd` refers to.
    pub(crate) fn mark_fd(&self, flags: u32, mask: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        crate::os::fanotify::fanotify_mark_fd(self.fd.as_fd(), libc::FAN_MARK_ADD | flags, mask, fd)
    }

    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW, mask)` on the entry `name` of
    /// the directory `dir`.
    pub(crate) fn mark_at(
        &self,
        mask: u64,
        dir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
    ) -> io::Result<()> {
        crate::os::fanotify::fanotify_mark_at(
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
        // SAFETY: plain syscall; a NULL pathname is allowed for FAN_MARK_FLUSH.
        cvt(unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_FLUSH,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        })
        .map(drop)
    }

    /// One non-blocking `read(2)` of events (`EAGAIN` when none is queued).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::os::fanotify::read(self.fd.as_raw_fd(), buf)
    }
}

impl AsFd for PermGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    crate::os::fanotify::fanotify_init(flags, event_f_flags)
}

/// One event as read from the group.
#[derive(Debug)]
pub(crate) struct RawEvent {
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

/// Parse a buffer returned by `read(2)` on the group. Every descriptor found is owned by
/// the returned events, so each is closed exactly once. Returns the number of malformed
/// records (a record whose length does not fit ends the parse).
pub(crate) fn parse_events(buf: &[u8], out: &mut Vec<RawEvent>) -> u64 {
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
        out.push(RawEvent {
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

/// `pread(2)`.
pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: buf is a valid writable region of buf.len() bytes.
    cvt_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    crate::os::fanotify::fstat(fd)
}

/// Read `clock`.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::clock_gettime(clock, ts.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    let ts = unsafe { ts.assume_init() };
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Resolution of `clock`.
pub(crate) fn clock_res(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::clock_getres(clock, ts.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    let ts = unsafe { ts.assume_init() };
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// What `pidfd_open(tid, 0)` says about a thread id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leader {
    /// The id is a thread group leader (its process id).
    Yes,
    /// The id is a thread that is not the leader of its group.
    No,
    /// No such task (it exited).
    Gone,
    /// The kernel cannot tell (no `pidfd_open`, or another error).
    Unknown,
}

/// Whether `tid` is a thread group leader: `pidfd_open` without `PIDFD_THREAD` refuses an
/// id that is not one (`EINVAL` on older kernels, `ENOENT` on 6.18; `ESRCH`: no such id). Two syscalls, no procfs text to format and parse.
pub(crate) fn is_leader(tid: u32) -> Leader {
    let Ok(pid) = libc::pid_t::try_from(tid) else {
        return Leader::Unknown;
    };
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this new descriptor; we own it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        return Leader::Yes;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINVAL | libc::ENOENT) => Leader::No,
        Some(libc::ESRCH) => Leader::Gone,
        _ => Leader::Unknown,
    }
}

/// Read `buf.len()` bytes at `addr` in the memory of task `tid` (`process_vm_readv`).
pub(crate) fn read_task_memory(tid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let pid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local points to buf (writable, buf.len() bytes); the remote address is only
    // interpreted by the kernel in the other process.
    let n = cvt_size(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) })?;
    if n != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// An `eventfd` used to wake the listener thread.
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
