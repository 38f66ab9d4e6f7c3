//! [`NotifyWatcher`]: the fanotify notification group, its marks, and the translation of
//! kernel events (directory file handle + entry name) into [`FanEvent`]s with paths.
//!
//! This module holds the group, its settings and its public API; the rest is in [`marks`]
//! (filesystems, trees, files, new and moved directories), [`roots`] (roots removed and
//! recreated), [`events`] (records into events) and [`handles`] (handles into paths).
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, trace, warn};

use super::records::{self, FidKind, FidRecord, HandleKey, RawEvent};
use super::{
    FAN_ATTRIB, FAN_CLOSE_WRITE, FAN_CREATE, FAN_DELETE, FAN_DELETE_SELF, FAN_EVENT_ON_CHILD,
    FAN_MODIFY, FAN_MOVED_FROM, FAN_MOVED_TO, FAN_ONDIR, FAN_Q_OVERFLOW, FAN_RENAME, FanEvent,
    FanotifyError, FanotifyStats,
};
use crate::os::fanotify as sys;

mod events;
mod handles;
mod marks;
mod roots;

use events::synthesized;
use marks::entry_key;

/// Flags of the group we ask for first; see [`NotifyWatcher::new`] for the fallbacks.
const INIT_BASE: u32 =
    libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_DFID_NAME | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
const INIT_UNLIMITED: u32 = libc::FAN_UNLIMITED_QUEUE | libc::FAN_UNLIMITED_MARKS;

/// Mask on every directory of a watched tree. FAN_RENAME replaces FAN_MOVED_FROM/TO:
/// one event per rename carrying both the old and the new parent+name. FAN_DELETE_SELF is
/// only for bookkeeping (forgetting marks of removed directories); it is not passed on
/// except for the root of a tree.
const DIR_MASK: u64 = FAN_CREATE
    | FAN_DELETE
    | FAN_RENAME
    | FAN_MODIFY
    | FAN_CLOSE_WRITE
    | FAN_ATTRIB
    | FAN_DELETE_SELF
    | FAN_ONDIR
    | FAN_EVENT_ON_CHILD;
/// The same for kernels without FAN_RENAME (< 5.17): renames become separate
/// FAN_MOVED_FROM and FAN_MOVED_TO events without a link between them.
const DIR_MASK_LEGACY: u64 = (DIR_MASK & !FAN_RENAME) | FAN_MOVED_FROM | FAN_MOVED_TO;
/// Mask of a single-file inode mark. With FAN_REPORT_DIR_FID the kernel adds
/// FAN_EVENT_ON_CHILD itself and reports the parent directory + name.
const FILE_MASK: u64 = FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB;
/// Filesystem-wide mark, one per filesystem that holds a watched tree. The kernel reports
/// the OLD parent+name of a rename only if the old directory (or the filesystem) is marked:
/// with inode marks alone, a rename from an unwatched directory (e.g. /tmp) into a watched
/// tree arrives with the new side only (verified on 6.18). This mark makes every FAN_RENAME
/// on the filesystem carry both sides; renames that touch neither a marked directory nor a
/// watched file are dropped here without any path resolution.
const SB_RENAME_MASK: u64 = FAN_RENAME | FAN_ONDIR;
/// Mask on the (otherwise unwatched) parent of a tree root that was deleted: only entries
/// created there, so that the root is watched again when a directory reappears at its path.
const ROOT_RETURN_MASK: u64 = FAN_CREATE | FAN_ONDIR;

/// Resolved-directory cache size; when full it is cleared (cheap, refills lazily).
const DIR_CACHE_CAP: usize = 8192;
/// Deeper directories are not marked (and counted as mark errors).
const MAX_DEPTH: usize = 1024;
/// Per walk, the first mark errors are logged at warn, the rest at debug plus one summary.
const WARN_ERRORS_PER_WALK: u64 = 5;
/// Read buffer: far more than one event (an event with two names is < 1 KiB).
const READ_BUF: usize = 64 * 1024;

/// Superblock magics of pseudo filesystems a tree walk never enters (and that cannot be
/// roots): they have no stable file handles or would trigger side effects (autofs).
const PSEUDO_FS: &[(u32, &str)] = &[
    (0x0000_9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x0000_1cd1, "devpts"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x0000_0187, "autofs"),
    (0x6e73_6673, "nsfs"),
    (0xde5e_81e4, "efivarfs"),
];

/// Name of the pseudo filesystem with superblock magic `magic`, if it is one.
pub(crate) fn pseudo_fs_name(magic: u32) -> Option<&'static str> {
    PSEUDO_FS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
}

/// Errors that mean "the entry went away or is not a plain directory", not a failure.
fn is_vanished(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ESTALE)
    )
}

/// What a tree walk does to each directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WalkOp {
    Mark,
    Unmark,
}

/// Where a walk starts: a directory the caller already handled (marked or unmarked), open
/// as `fd`, on the filesystem `dev` / `fsid`.
struct WalkRoot<'a> {
    fd: OwnedFd,
    path: &'a Path,
    dev: u64,
    fsid: [u8; 8],
}

/// One open directory on the walk stack (the stack depth, not the tree width, bounds the
/// number of open descriptors).
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    fsid: [u8; 8],
    depth: usize,
    entries: std::vec::IntoIter<sys::DirEntry>,
}

/// Where a marked object was when we last learned its path (at mark time or at the last
/// handle resolution), and the rename generation then. Used when a directory handle no
/// longer resolves because the directory was deleted before its events were read (e.g.
/// `rm -r`): if no directory was renamed since, the path is still exact.
struct Known {
    path: PathBuf,
    generation: u64,
}

/// A single watched file (inode mark) whose directory is not watched: remembered by the
/// parent directory's handle and the entry name so a rename onto that name (atomic
/// replace) is recognised and the new inode is marked again.
struct WatchedFile {
    path: PathBuf,
    key: HandleKey,
}

/// The fanotify notification group over the watched trees. See the module docs.
pub struct NotifyWatcher {
    /// The group fd until the first `next_batch` registers it with tokio.
    fd: Option<OwnedFd>,
    afd: Option<AsyncFd<OwnedFd>>,
    report_tid: bool,
    dir_mask: u64,
    buf: Vec<u8>,
    /// Every object we placed an inode mark on, with its last known path.
    marks: HashMap<HandleKey, Known>,
    /// Bumped on every directory rename seen (the filesystem rename mark shows them all):
    /// a `Known` path recorded at the current generation is still where the object is.
    rename_gen: u64,
    /// Roots of the trees given to `add_tree` (their deletion is passed on).
    roots: HashMap<HandleKey, PathBuf>,
    /// The same roots by (parent dir handle, name): the parent is not marked, so a rename
    /// of a root (or onto a root's name) is recognised in the filesystem rename stream.
    root_entries: HashMap<(HandleKey, Box<[u8]>), PathBuf>,
    /// (parent dir handle, name) of every ancestor of a root: renaming one moves a tree.
    ancestors: HashSet<(HandleKey, Box<[u8]>)>,
    /// Parents of deleted roots that carry a `ROOT_RETURN_MASK` mark (and no other), by
    /// handle, with their path.
    root_parents: HashMap<HandleKey, PathBuf>,
    /// Files given to `add_file`, keyed by (parent dir handle, name).
    files: HashMap<(HandleKey, Box<[u8]>), WatchedFile>,
    /// `open_by_handle_at` needs a descriptor on the same filesystem. Events identify the
    /// filesystem only by fsid, so the map is keyed by fsid: for the first directory we
    /// mark on a filesystem, the root of its mount is opened O_RDONLY (O_PATH descriptors
    /// are refused as mount_fd) and kept. The mount root, not the watched directory: an
    /// open descriptor pins its directory, and a pinned directory's FAN_DELETE_SELF only
    /// comes at the last close. Paths are reported through that mount.
    mount_fds: HashMap<[u8; 8], OwnedFd>,
    /// st_dev -> fsid (`None` for pseudo filesystems): saves a statfs per directory.
    dev_fsid: HashMap<u64, Option<[u8; 8]>>,
    /// Filesystems carrying the FAN_MARK_FILESYSTEM rename mark.
    sb_rename: HashSet<[u8; 8]>,
    /// Place the filesystem-wide rename mark (see `SB_RENAME_MASK`). Off by default: it
    /// makes every rename on the filesystem wake the daemon.
    rename_sources: bool,
    /// Directory handle -> current path.
    dir_cache: HashMap<HandleKey, PathBuf>,
    stats: FanotifyStats,
    own_pid: u32,
    warned_no_cap: bool,
}

impl std::fmt::Debug for NotifyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyWatcher")
            .field("fd", &self.group_fd().as_raw_fd())
            .field("report_tid", &self.report_tid)
            .field("marks", &self.marks.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl NotifyWatcher {
    /// Create the group: `FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_REPORT_TID |
    /// FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS`.
    ///
    /// Fallbacks, each logged at warn: EINVAL -> retry without FAN_REPORT_TID (pids are
    /// then process ids); EPERM -> retry without the two UNLIMITED flags (the kernel's
    /// default queue and mark limits apply; overflows become possible). Any other error, or
    /// EINVAL without FAN_REPORT_TID (kernel < 5.9: no FAN_REPORT_DFID_NAME), is returned.
    ///
    /// Does not need a tokio runtime; the first [`next_batch`](Self::next_batch) registers
    /// the descriptor with the current runtime.
    pub fn new() -> Result<Self, FanotifyError> {
        let (fd, flags) = init_group()?;
        info!(
            flags = format_args!("{flags:#x}"),
            report_tid = flags & libc::FAN_REPORT_TID != 0,
            unlimited = flags & INIT_UNLIMITED == INIT_UNLIMITED,
            "fanotify notification group created"
        );
        Ok(Self {
            fd: Some(fd),
            afd: None,
            report_tid: flags & libc::FAN_REPORT_TID != 0,
            dir_mask: DIR_MASK,
            buf: vec![0u8; READ_BUF],
            marks: HashMap::new(),
            rename_gen: 0,
            roots: HashMap::new(),
            root_entries: HashMap::new(),
            ancestors: HashSet::new(),
            root_parents: HashMap::new(),
            files: HashMap::new(),
            mount_fds: HashMap::new(),
            dev_fsid: HashMap::new(),
            sb_rename: HashSet::new(),
            rename_sources: false,
            dir_cache: HashMap::new(),
            stats: FanotifyStats::default(),
            own_pid: std::process::id(),
            warned_no_cap: false,
        })
    }

    /// Mark `root` and every directory below it (module docs: what is then reported).
    ///
    /// `root` is canonicalised first (symlinks in it are resolved); below it symlinks are
    /// never followed and pseudo filesystems (/proc, /sys, cgroup, autofs, ...) are not
    /// entered; other mounted filesystems are. Returns the number of directories marked by
    /// this call (already-marked ones included). Errors on the root are returned; errors
    /// below it are counted in `mark_errors` and logged.
    pub fn add_tree(&mut self, root: &Path) -> Result<usize, FanotifyError> {
        let canon = std::fs::canonicalize(root).map_err(|source| FanotifyError::Path {
            path: root.to_path_buf(),
            source,
        })?;
        let fd = sys::open_dir(&canon).map_err(|source| {
            if source.raw_os_error() == Some(libc::ENOTDIR) {
                FanotifyError::NotADirectory {
                    path: canon.clone(),
                }
            } else {
                FanotifyError::Path {
                    path: canon.clone(),
                    source,
                }
            }
        })?;
        let (n, key) = self.mark_tree_from(fd, &canon, None, &mut Vec::new())?;
        self.roots.insert(key, canon.clone());
        self.remember_root_entry(&canon);
        info!(root = %canon.display(), marks = n, total = self.marks.len(), "fanotify: watching tree");
        Ok(n)
    }

    /// Inode mark on a single file (for watched files whose directory is not watched).
    ///
    /// `file` is canonicalised (a symlink is followed to its target, which is what gets
    /// marked). Events are reported with the parent directory + name. A rename onto the
    /// file's name (the usual atomic replace) is reported and the new file is marked
    /// again; a plain unlink of the file is not visible without a directory mark.
    pub fn add_file(&mut self, file: &Path) -> Result<(), FanotifyError> {
        let canon = std::fs::canonicalize(file).map_err(|source| FanotifyError::Path {
            path: file.to_path_buf(),
            source,
        })?;
        self.mark_file(&canon)?;
        info!(file = %canon.display(), total = self.marks.len(), "fanotify: watching file");
        Ok(())
    }

    /// Wait for the next batch of events (see `mod.rs`). Never returns an empty batch.
    ///
    /// Must be polled on a tokio runtime. Cancel-safe: nothing is read until the
    /// descriptor is readable, and nothing is awaited between a read and the return. The
    /// bookkeeping (marking new directories, resolving handles) is synchronous filesystem
    /// work on the calling thread: moving a large tree into a watched one walks it here.
    pub async fn next_batch(&mut self) -> Result<Vec<FanEvent>, FanotifyError> {
        if self.afd.is_none() {
            let Some(fd) = self.fd.take() else {
                return Err(FanotifyError::Read(io::Error::other(
                    "fanotify descriptor lost",
                )));
            };
            // SAFETY: the OwnedFd is moved into the AsyncFd, stays open and is the same
            // descriptor until the AsyncFd is dropped.
            match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                Ok(afd) => self.afd = Some(afd),
                Err(e) => {
                    let (fd, err) = e.into_parts();
                    self.fd = Some(fd);
                    return Err(FanotifyError::Read(err));
                }
            }
        }
        loop {
            let n = {
                let Some(afd) = self.afd.as_ref() else {
                    return Err(FanotifyError::Read(io::Error::other(
                        "fanotify descriptor lost",
                    )));
                };
                let mut guard = afd.readable().await.map_err(FanotifyError::Read)?;
                let buf = &mut self.buf;
                match guard.try_io(|a| sys::read(a.as_raw_fd(), buf)) {
                    Ok(Ok(0)) => {
                        return Err(FanotifyError::Read(io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => return Err(FanotifyError::Read(e)),
                    Err(_would_block) => continue,
                }
            };
            let buf = std::mem::take(&mut self.buf);
            let events = self.process_buffer(&buf[..n.min(buf.len())]);
            self.buf = buf;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// Also report the old path of renames into a watched tree from outside it, by placing
    /// one filesystem-wide rename mark per filesystem holding a watched tree. Call before
    /// [`Self::add_tree`]. Costly: every rename on those filesystems reaches the daemon
    /// (measured in BENCHMARKS.md). Without it such a rename is still reported, with an
    /// empty old path.
    pub fn enable_rename_sources(&mut self) {
        self.rename_sources = true;
    }

    /// Read every event queued right now without waiting (the descriptor is non-blocking).
    /// The daemon calls this before correlating, so that every fanotify event the kernel
    /// queued before this call is known. A stale tokio readiness left by this direct read
    /// is cleared by `try_io` in the next [`Self::next_batch`].
    pub fn drain(&mut self) -> Result<Vec<FanEvent>, FanotifyError> {
        let raw = match (&self.fd, &self.afd) {
            (Some(fd), _) => fd.as_raw_fd(),
            (None, Some(afd)) => afd.get_ref().as_raw_fd(),
            (None, None) => {
                return Err(FanotifyError::Read(io::Error::other(
                    "fanotify descriptor lost",
                )));
            }
        };
        let mut out = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let n = match sys::read(raw, &mut buf) {
                Ok(0) => {
                    self.buf = buf;
                    return Err(FanotifyError::Read(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.buf = buf;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.buf = buf;
                    return Ok(out);
                }
                Err(e) => {
                    self.buf = buf;
                    return Err(FanotifyError::Read(e));
                }
            };
            out.extend(self.process_buffer(&buf[..n.min(buf.len())]));
            self.buf = buf;
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> FanotifyStats {
        self.stats
    }

    /// Number of inode marks (directories and files) currently held. The per-filesystem
    /// rename marks are not counted.
    pub fn marks(&self) -> usize {
        self.marks.len()
    }

    fn group_fd(&self) -> BorrowedFd<'_> {
        match (&self.afd, &self.fd) {
            (Some(a), _) => a.get_ref().as_fd(),
            (None, Some(fd)) => fd.as_fd(),
            // Unreachable by construction: exactly one of the two is set, except during
            // the swap in next_batch, which does not call this.
            // SAFETY: -1 is never a valid descriptor; calls on it fail with EBADF.
            (None, None) => unsafe { BorrowedFd::borrow_raw(-1) },
        }
    }

    /// Raw descriptor of the group (tests check it is closed on drop).
    #[cfg(test)]
    pub(super) fn raw_fd(&self) -> i32 {
        self.group_fd().as_raw_fd()
    }

    // ----- marking -------------------------------------------------------------------
}

fn init_group() -> Result<(OwnedFd, u32), FanotifyError> {
    let event_f_flags = (libc::O_RDONLY | libc::O_LARGEFILE) as u32;
    let mut flags = INIT_BASE | libc::FAN_REPORT_TID | INIT_UNLIMITED;
    loop {
        match sys::fanotify_init(flags, event_f_flags) {
            Ok(fd) => return Ok((fd, flags)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINVAL) if flags & libc::FAN_REPORT_TID != 0 => {
                    warn!(
                        "fanotify_init refused FAN_REPORT_TID (EINVAL); retrying without it: \
                         event pids will be process ids, not thread ids"
                    );
                    flags &= !libc::FAN_REPORT_TID;
                }
                Some(libc::EPERM) if flags & INIT_UNLIMITED != 0 => {
                    warn!(
                        "fanotify_init refused FAN_UNLIMITED_QUEUE|FAN_UNLIMITED_MARKS (EPERM, \
                         needs CAP_SYS_ADMIN); retrying with the kernel's default limits: the \
                         queue can overflow and marks are capped"
                    );
                    flags &= !INIT_UNLIMITED;
                }
                _ => return Err(FanotifyError::Init { flags, source: e }),
            },
        }
    }
}
