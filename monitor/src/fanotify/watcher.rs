//! [`NotifyWatcher`]: the fanotify notification group, its marks, and the translation of
//! kernel events (directory file handle + entry name) into [`FanEvent`]s with paths.
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
use super::sys;
use super::{
    FAN_ATTRIB, FAN_CLOSE_WRITE, FAN_CREATE, FAN_DELETE, FAN_DELETE_SELF, FAN_EVENT_ON_CHILD,
    FAN_MODIFY, FAN_MOVED_FROM, FAN_MOVED_TO, FAN_ONDIR, FAN_Q_OVERFLOW, FAN_RENAME, FanEvent,
    FanotifyError, FanotifyStats,
};

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

    /// Identify the filesystem of `fd` (st_dev `dev`). `Ok(None)` for pseudo filesystems.
    /// The first directory seen on a filesystem becomes its mount fd for handle decoding,
    /// and the filesystem gets the rename mark.
    fn register_fs(&mut self, fd: BorrowedFd<'_>, dev: u64) -> io::Result<Option<[u8; 8]>> {
        if let Some(known) = self.dev_fsid.get(&dev) {
            return Ok(*known);
        }
        let fs = sys::fstatfs(fd)?;
        if let Some(name) = pseudo_fs_name(fs.magic) {
            self.dev_fsid.insert(dev, None);
            debug!(fs = name, "fanotify: not entering pseudo filesystem");
            return Ok(None);
        }
        self.dev_fsid.insert(dev, Some(fs.fsid));
        if let std::collections::hash_map::Entry::Vacant(v) = self.mount_fds.entry(fs.fsid) {
            v.insert(sys::mount_root(fd)?);
        }
        if self.rename_sources
            && self.dir_mask & FAN_RENAME != 0
            && !self.sb_rename.contains(&fs.fsid)
        {
            let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
            match sys::fanotify_mark_fd(self.group_fd(), flags, SB_RENAME_MASK, fd) {
                Ok(()) => {
                    self.sb_rename.insert(fs.fsid);
                }
                Err(e) => warn!(
                    error = %e,
                    "fanotify: cannot place the filesystem rename mark; renames from outside a \
                     watched tree into it will have an unknown (empty) old path"
                ),
            }
        }
        Ok(Some(fs.fsid))
    }

    /// Mark one directory; returns its handle key.
    fn mark_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        fsid: [u8; 8],
        path: &Path,
    ) -> io::Result<HandleKey> {
        let (handle_type, handle) = sys::handle_of_fd(fd)?;
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR;
        match sys::fanotify_mark_fd(self.group_fd(), flags, self.dir_mask, fd) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.dir_mask == DIR_MASK => {
                // Kernel without FAN_RENAME: fall back once, for good.
                sys::fanotify_mark_fd(self.group_fd(), flags, DIR_MASK_LEGACY, fd)?;
                warn!(
                    "fanotify: kernel refused FAN_RENAME (EINVAL, needs 5.17); using \
                     FAN_MOVED_FROM/FAN_MOVED_TO: a rename becomes two unlinked events"
                );
                self.dir_mask = DIR_MASK_LEGACY;
            }
            Err(e) => return Err(e),
        }
        let key = HandleKey {
            fsid,
            handle_type,
            handle: handle.into(),
        };
        let known = Known {
            path: path.to_path_buf(),
            generation: self.rename_gen,
        };
        self.marks.insert(key.clone(), known);
        Ok(key)
    }

    fn unmark_dir(&mut self, fd: BorrowedFd<'_>, fsid: [u8; 8]) -> io::Result<()> {
        let (handle_type, handle) = sys::handle_of_fd(fd)?;
        let key = HandleKey {
            fsid,
            handle_type,
            handle: handle.into(),
        };
        self.dir_cache.remove(&key);
        if self.marks.remove(&key).is_some() {
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_ONLYDIR;
            match sys::fanotify_mark_fd(self.group_fd(), flags, self.dir_mask, fd) {
                Ok(()) => {}
                // Mark already gone (e.g. the kernel dropped it).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Mark the tree whose root directory is open as `fd`. Errors on the root are returned,
    /// errors below are counted. With `synth_pid`, every entry found below the root is also
    /// reported as a synthesized creation event (see `mod.rs`).
    fn mark_tree_from(
        &mut self,
        fd: OwnedFd,
        path: &Path,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) -> Result<(usize, HandleKey), FanotifyError> {
        let mark_err = |source| FanotifyError::Mark {
            path: path.to_path_buf(),
            source,
        };
        let st = sys::fstat(fd.as_fd()).map_err(mark_err)?;
        let Some(fsid) = self.register_fs(fd.as_fd(), st.st_dev).map_err(mark_err)? else {
            let magic = sys::fstatfs(fd.as_fd()).map(|f| f.magic).unwrap_or(0);
            return Err(FanotifyError::PseudoFs {
                path: path.to_path_buf(),
                fs: pseudo_fs_name(magic).unwrap_or("pseudo"),
            });
        };
        let key = self.mark_dir(fd.as_fd(), fsid, path).map_err(mark_err)?;
        let below = self.walk(fd, path, st.st_dev, fsid, WalkOp::Mark, synth_pid, out);
        Ok((1 + below, key))
    }

    /// Walk below the directory open as `fd` (already handled by the caller), applying
    /// `op` to every directory. Returns the number of directories it succeeded on.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        fd: OwnedFd,
        path: &Path,
        dev: u64,
        fsid: [u8; 8],
        op: WalkOp,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) -> usize {
        let mut done = 0usize;
        let mut errors = 0u64;
        let mut visited: HashSet<(u64, u64)> = HashSet::new();
        if let Ok(st) = sys::fstat(fd.as_fd()) {
            visited.insert((st.st_dev, st.st_ino));
        }
        let mut stack: Vec<Frame> = Vec::new();
        match sys::list_dir(fd.as_fd()) {
            Ok(entries) => stack.push(Frame {
                fd,
                path: path.to_path_buf(),
                dev,
                fsid,
                depth: 0,
                entries: entries.into_iter(),
            }),
            Err(e) => self.walk_error(op, &mut errors, path, "listing", &e),
        }
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            let name: &CStr = &entry.name;
            let child = sys::join(&frame.path, name.to_bytes());
            let maybe_dir = matches!(entry.file_type, None | Some(nix::dir::Type::Directory));
            if !maybe_dir && synth_pid.is_none() {
                continue;
            }
            let st = match sys::fstatat_nofollow(frame.fd.as_fd(), name) {
                Ok(st) => st,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    self.walk_error(op, &mut errors, &child, "stat", &e);
                    continue;
                }
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if let Some(pid) = synth_pid {
                out.push(synthesized(child.clone(), pid, &st));
            }
            if !is_dir {
                continue;
            }
            if frame.depth + 1 >= MAX_DEPTH {
                let e = io::Error::other(format!("deeper than {MAX_DEPTH} levels"));
                self.walk_error(op, &mut errors, &child, "descending", &e);
                continue;
            }
            if !visited.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            let cfd = match sys::openat_dir(frame.fd.as_fd(), name) {
                Ok(fd) => fd,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    self.walk_error(op, &mut errors, &child, "opening", &e);
                    continue;
                }
            };
            let (cdev, cfsid, depth) = (st.st_dev, frame.fsid, frame.depth + 1);
            let cfsid = if cdev == frame.dev {
                cfsid
            } else {
                match self.register_fs(cfd.as_fd(), cdev) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        self.walk_error(op, &mut errors, &child, "statfs", &e);
                        continue;
                    }
                }
            };
            let r = match op {
                WalkOp::Mark => self.mark_dir(cfd.as_fd(), cfsid, &child).map(drop),
                WalkOp::Unmark => self.unmark_dir(cfd.as_fd(), cfsid),
            };
            match r {
                Ok(()) => done += 1,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    // Not marked: its subtree is skipped too (same filesystem, same error).
                    self.walk_error(op, &mut errors, &child, "marking", &e);
                    continue;
                }
            }
            match sys::list_dir(cfd.as_fd()) {
                Ok(entries) => stack.push(Frame {
                    fd: cfd,
                    path: child,
                    dev: cdev,
                    fsid: cfsid,
                    depth,
                    entries: entries.into_iter(),
                }),
                Err(e) if is_vanished(&e) => {}
                Err(e) => self.walk_error(op, &mut errors, &child, "listing", &e),
            }
        }
        if errors > WARN_ERRORS_PER_WALK {
            warn!(root = %path.display(), errors, "fanotify: directories below the root could not be handled");
        }
        done
    }

    fn walk_error(&mut self, op: WalkOp, errors: &mut u64, path: &Path, what: &str, e: &io::Error) {
        *errors += 1;
        if op == WalkOp::Unmark {
            debug!(path = %path.display(), error = %e, "fanotify: {what} failed while unmarking");
            return;
        }
        self.stats.mark_errors += 1;
        if *errors <= WARN_ERRORS_PER_WALK {
            warn!(path = %path.display(), error = %e, "fanotify: {what} failed; this directory (and below) is not watched");
        } else {
            debug!(path = %path.display(), error = %e, "fanotify: {what} failed");
        }
    }

    /// Inode mark on one (canonical) file.
    fn mark_file(&mut self, canon: &Path) -> Result<(HandleKey, HandleKey), FanotifyError> {
        let err = |source| FanotifyError::Mark {
            path: canon.to_path_buf(),
            source,
        };
        let (Some(parent), Some(name)) = (canon.parent(), canon.file_name()) else {
            return Err(FanotifyError::IsADirectory {
                path: canon.to_path_buf(),
            });
        };
        let pfd = sys::open_dir(parent).map_err(err)?;
        let pst = sys::fstat(pfd.as_fd()).map_err(err)?;
        let Some(fsid) = self.register_fs(pfd.as_fd(), pst.st_dev).map_err(err)? else {
            return Err(FanotifyError::PseudoFs {
                path: canon.to_path_buf(),
                fs: "pseudo",
            });
        };
        let cname = sys::path_cstring(Path::new(name)).map_err(err)?;
        let st = sys::fstatat_nofollow(pfd.as_fd(), &cname).map_err(err)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(FanotifyError::IsADirectory {
                path: canon.to_path_buf(),
            });
        }
        let (pt, ph) = sys::handle_of_fd(pfd.as_fd()).map_err(err)?;
        let (ft, fh) = sys::handle_at(pfd.as_fd(), &cname).map_err(err)?;
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_DONT_FOLLOW;
        sys::fanotify_mark_at(self.group_fd(), flags, FILE_MASK, pfd.as_fd(), &cname)
            .map_err(err)?;
        let parent_key = HandleKey {
            fsid,
            handle_type: pt,
            handle: ph.into(),
        };
        let key = HandleKey {
            fsid,
            handle_type: ft,
            handle: fh.into(),
        };
        let known = Known {
            path: canon.to_path_buf(),
            generation: self.rename_gen,
        };
        self.marks.insert(key.clone(), known);
        let entry = (parent_key.clone(), name.as_bytes().into());
        if let Some(old) = self.files.insert(
            entry,
            WatchedFile {
                path: canon.to_path_buf(),
                key: key.clone(),
            },
        ) && old.key != key
        {
            // The name now refers to another inode: the old mark is moot.
            self.marks.remove(&old.key);
        }
        Ok((parent_key, key))
    }

    /// Record (parent handle, name) of a tree root and of each of its ancestors. Best
    /// effort: what cannot be identified is logged and its renames are not recognised.
    fn remember_root_entry(&mut self, canon: &Path) {
        match entry_key(canon) {
            Ok(Some(k)) => {
                self.root_entries.insert(k, canon.to_path_buf());
            }
            Ok(None) => {}
            Err(e) => {
                debug!(root = %canon.display(), error = %e, "fanotify: parent of root not identifiable; renames of the root will not be seen")
            }
        }
        for a in canon.ancestors().skip(1) {
            match entry_key(a) {
                Ok(Some(k)) => {
                    self.ancestors.insert(k);
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(dir = %a.display(), error = %e, "fanotify: ancestor of a root not identifiable")
                }
            }
        }
    }

    /// An ancestor of a root was renamed: learn where the roots are now.
    fn refresh_roots(&mut self) {
        let roots: Vec<(HandleKey, PathBuf)> = self
            .roots
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        self.ancestors.clear();
        for (key, old) in roots {
            let now = self.resolve_dir(&key).unwrap_or_else(|| old.clone());
            if now != old {
                warn!(old = %old.display(), now = %now.display(), "fanotify: a watched tree moved with a renamed ancestor; it stays watched at its new path");
                self.roots.insert(key, now.clone());
            }
            for a in now.ancestors().skip(1) {
                if let Ok(Some(k)) = entry_key(a) {
                    self.ancestors.insert(k);
                }
            }
        }
    }

    fn is_ancestor(&self, r: &FidRecord) -> bool {
        r.name
            .clone()
            .is_some_and(|n| self.ancestors.contains(&(r.key.clone(), n)))
    }

    fn root_entry(&self, r: &FidRecord) -> Option<PathBuf> {
        let name = r.name.clone()?;
        self.root_entries.get(&(r.key.clone(), name)).cloned()
    }

    // ----- events --------------------------------------------------------------------

    /// Turn one read buffer into events (bookkeeping included).
    pub(super) fn process_buffer(&mut self, buf: &[u8]) -> Vec<FanEvent> {
        let parsed = records::parse_buffer(buf);
        if let Some(why) = parsed.truncated {
            self.stats.malformed += 1;
            warn!(
                why,
                bytes = buf.len(),
                "fanotify: malformed event buffer; the rest of it was skipped"
            );
        }
        let mut out = Vec::new();
        for ev in parsed.events {
            self.process_event(ev, &mut out);
        }
        // Drop what this process did itself (after the bookkeeping: a directory the daemon
        // creates inside a tree is still marked).
        let mut own: HashMap<u32, bool> = HashMap::new();
        out.retain(|e| e.mask & FAN_Q_OVERFLOW != 0 || !self.is_own(e.pid, &mut own));
        self.stats.events += out.len() as u64;
        out
    }

    fn is_own(&self, pid: u32, memo: &mut HashMap<u32, bool>) -> bool {
        if pid == self.own_pid {
            return true;
        }
        if !self.report_tid || pid == 0 {
            return false;
        }
        // With FAN_REPORT_TID the pid is a thread id: ours if it is one of our threads.
        *memo
            .entry(pid)
            .or_insert_with(|| Path::new(&format!("/proc/self/task/{pid}")).exists())
    }

    fn process_event(&mut self, ev: RawEvent, out: &mut Vec<FanEvent>) {
        if ev.fd >= 0 {
            // A group reporting fids never gets event descriptors (the kernel sets
            // FAN_NOFD), so this number is not one the kernel installed for us: closing it
            // could close one of our own descriptors. Leave it alone.
            warn!(
                fd = ev.fd,
                "fanotify: event carries a descriptor in fid mode; ignored"
            );
        }
        if ev.mask & FAN_Q_OVERFLOW != 0 {
            self.stats.overflows += 1;
            warn!(
                "fanotify queue overflow: events were LOST; changes in the watched trees may \
                 have gone unreported"
            );
            out.push(FanEvent {
                mask: FAN_Q_OVERFLOW,
                pid: 0,
                path: PathBuf::new(),
                new_path: None,
                is_dir: false,
            });
            self.rescan_after_overflow();
            return;
        }
        if let Some(why) = ev.malformed {
            self.stats.malformed += 1;
            warn!(
                why,
                mask = format_args!("{:#x}", ev.mask),
                "fanotify: malformed event skipped"
            );
            return;
        }
        let pid = u32::try_from(ev.pid).unwrap_or(0);
        if ev.mask & FAN_RENAME != 0 {
            self.process_rename(&ev, pid, out);
        } else {
            self.process_plain(&ev, pid, out);
        }
    }

    fn process_rename(&mut self, ev: &RawEvent, pid: u32, out: &mut Vec<FanEvent>) {
        let old = ev.records.iter().find(|r| r.kind == FidKind::OldDfidName);
        let new = ev.records.iter().find(|r| r.kind == FidKind::NewDfidName);
        if old.is_none() && new.is_none() {
            self.stats.malformed += 1;
            warn!("fanotify: FAN_RENAME without old or new parent record skipped");
            return;
        }
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let old_marked = old.is_some_and(|r| self.marks.contains_key(&r.key));
        let new_marked = new.is_some_and(|r| self.marks.contains_key(&r.key));
        let old_file = old
            .and_then(|r| self.watched_file(r))
            .map(|w| w.path.clone());
        let new_file = new
            .and_then(|r| self.watched_file(r))
            .map(|w| w.path.clone());
        let old_root = old.and_then(|r| self.root_entry(r));
        let new_root = new.and_then(|r| self.root_entry(r));
        let ancestor = old.is_some_and(|r| self.is_ancestor(r));
        if !(old_marked
            || new_marked
            || old_file.is_some()
            || new_file.is_some()
            || old_root.is_some()
            || new_root.is_some()
            || ancestor)
        {
            // Cannot change the path of any marked directory: only marked directories are
            // cached, and they move only with renames inside the trees, of a root, or of
            // an ancestor of a root.
            trace!("fanotify: rename outside the watched set ignored");
            return;
        }
        if is_dir {
            // Cached paths of the moved directory and everything below it are stale.
            // Directory renames in or above the trees are rare: clear the whole cache.
            self.dir_cache.clear();
            self.rename_gen += 1;
        }
        let path = old.map(|r| self.entry_path(r)).unwrap_or_default();
        let new_path = new.map(|r| self.entry_path(r)).unwrap_or_default();
        out.push(FanEvent {
            mask: ev.mask,
            pid,
            path,
            new_path: Some(new_path.clone()),
            is_dir,
        });
        if ancestor && is_dir {
            self.refresh_roots();
        }
        if let Some(root) = &old_root {
            // The configured path no longer holds the tree (typical prelude to swapping in
            // another directory). The moved tree is no longer watched unless it landed in
            // a watched directory.
            warn!(root = %root.display(), new = %new_path.display(), "fanotify: root of a watched tree was renamed away");
            self.roots.retain(|_, p| p != root);
        }
        if is_dir && new_path.is_absolute() {
            if let Some(root) = &new_root {
                // Something was renamed onto a root's path: watch what is there now.
                warn!(root = %root.display(), "fanotify: a directory was renamed onto the root of a watched tree; marking it");
                match sys::open_dir(&new_path)
                    .map_err(|source| FanotifyError::Mark {
                        path: new_path.clone(),
                        source,
                    })
                    .and_then(|fd| self.mark_tree_from(fd, &new_path, None, &mut Vec::new()))
                {
                    Ok((_, key)) => {
                        self.roots.insert(key, root.clone());
                    }
                    Err(e) => {
                        self.stats.mark_errors += 1;
                        warn!(root = %root.display(), error = %e, "fanotify: cannot mark the new root");
                    }
                }
            } else if new_marked {
                self.mark_moved_in(&new_path);
            } else if old_marked || old_root.is_some() {
                self.unmark_moved_out(&new_path);
            }
        }
        if let Some(p) = new_file {
            // Atomic replace of a watched file: the name now holds a new inode.
            match self.mark_file(&p) {
                Ok(_) => {
                    debug!(file = %p.display(), "fanotify: watched file replaced; new inode marked")
                }
                Err(e) => {
                    self.stats.mark_errors += 1;
                    warn!(file = %p.display(), error = %e, "fanotify: watched file replaced but the new one could not be marked");
                }
            }
        }
    }

    fn watched_file(&self, r: &FidRecord) -> Option<&WatchedFile> {
        let name = r.name.clone()?;
        self.files.get(&(r.key.clone(), name))
    }

    fn process_plain(&mut self, ev: &RawEvent, pid: u32, out: &mut Vec<FanEvent>) {
        let rec = ev.records.iter().find(|r| {
            matches!(
                r.kind,
                FidKind::DfidName | FidKind::Dfid | FidKind::NewDfidName
            )
        });
        let Some(rec) = rec else {
            // No directory information at all: nothing to attach the event to.
            self.stats.unresolved += 1;
            debug!(
                mask = format_args!("{:#x}", ev.mask),
                "fanotify: event without directory record dropped"
            );
            return;
        };
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let mut mask = ev.mask;
        if mask & FAN_DELETE_SELF != 0 {
            // A marked directory was removed: forget it. Only a tree root is reported
            // (its parent is not watched, so nothing else would tell).
            self.marks.remove(&rec.key);
            self.dir_cache.remove(&rec.key);
            if let Some(root) = self.roots.remove(&rec.key) {
                warn!(root = %root.display(), "fanotify: root of a watched tree was deleted; watching for it to reappear");
                out.push(FanEvent {
                    mask: FAN_DELETE_SELF | (mask & FAN_ONDIR),
                    pid,
                    path: root.clone(),
                    new_path: None,
                    is_dir,
                });
                self.await_root(&root, out);
            }
            mask &= !FAN_DELETE_SELF;
            if mask & !FAN_ONDIR == 0 {
                return;
            }
        }
        if mask & FAN_CREATE != 0
            && self.root_parents.contains_key(&rec.key)
            && !self.marks.contains_key(&rec.key)
        {
            // The parent of a deleted root: only the root's return matters here.
            if let Some(root) = self.root_entry(rec).filter(|r| is_dir && !self.is_root(r)) {
                out.push(FanEvent {
                    mask,
                    pid,
                    path: root.clone(),
                    new_path: None,
                    is_dir,
                });
                self.restore_root(&root, Some(pid), out);
            }
            return;
        }
        let path = self.entry_path(rec);
        if path.as_os_str().is_empty() {
            return;
        }
        let parent_marked = self.marks.contains_key(&rec.key);
        out.push(FanEvent {
            mask,
            pid,
            path: path.clone(),
            new_path: None,
            is_dir,
        });
        if !is_dir || !path.is_absolute() {
            return;
        }
        if mask & (FAN_DELETE | FAN_MOVED_FROM) != 0 {
            self.dir_cache.retain(|_, p| !p.starts_with(&path));
        }
        // CREATE|DELETE can be a merged mkdir+rmdir or rmdir+mkdir: the bits do not say
        // which came last, so try to mark (a directory that is gone is skipped quietly).
        if mask & FAN_CREATE != 0 && parent_marked {
            // A new directory: mark it (and whatever already appeared in it) before
            // returning; entries found are reported as created by the same thread.
            self.mark_new_dir(&path, Some(pid), out);
        } else if mask & FAN_MOVED_TO != 0 && parent_marked {
            self.mark_new_dir(&path, None, out);
        }
    }

    fn is_root(&self, path: &Path) -> bool {
        self.roots.values().any(|r| r == path)
    }

    /// A root was deleted: mark its parent for creations (unless the parent is watched
    /// anyway), so that a directory made at the root's path is watched again; if one is
    /// already there, watch it now (reported as created, pid 0).
    fn await_root(&mut self, root: &Path, out: &mut Vec<FanEvent>) {
        let Some(parent) = root.parent() else {
            return;
        };
        let placed = sys::open_dir(parent).and_then(|fd| {
            let fs = sys::fstatfs(fd.as_fd())?;
            let (handle_type, handle) = sys::handle_of_fd(fd.as_fd())?;
            let key = HandleKey {
                fsid: fs.fsid,
                handle_type,
                handle: handle.into(),
            };
            if !self.marks.contains_key(&key) && !self.root_parents.contains_key(&key) {
                let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR;
                sys::fanotify_mark_fd(self.group_fd(), flags, ROOT_RETURN_MASK, fd.as_fd())?;
                self.root_parents.insert(key, parent.to_path_buf());
            }
            Ok(())
        });
        if let Err(e) = placed {
            self.stats.mark_errors += 1;
            warn!(root = %root.display(), error = %e, "fanotify: cannot watch the parent of a deleted root; a directory made at its path will not be watched");
            return;
        }
        if root.is_dir() {
            out.push(FanEvent {
                mask: FAN_CREATE | FAN_ONDIR,
                pid: 0,
                path: root.to_path_buf(),
                new_path: None,
                is_dir: true,
            });
            self.restore_root(root, Some(0), out);
        }
    }

    /// A directory reappeared at a root's path: watch it (and report what it already
    /// holds, as for a new directory), and drop the parent's creation mark when no other
    /// root of that parent is missing.
    fn restore_root(&mut self, root: &Path, synth_pid: Option<u32>, out: &mut Vec<FanEvent>) {
        let marked = sys::open_dir(root)
            .map_err(|source| FanotifyError::Mark {
                path: root.to_path_buf(),
                source,
            })
            .and_then(|fd| self.mark_tree_from(fd, root, synth_pid, out));
        match marked {
            Ok((n, key)) => {
                warn!(root = %root.display(), marks = n, "fanotify: a directory reappeared at the root of a watched tree; watching it again");
                self.roots.insert(key, root.to_path_buf());
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(root = %root.display(), error = %e, "fanotify: cannot watch the reappeared root");
                return;
            }
        }
        let Some(parent) = root.parent() else {
            return;
        };
        let still_missing = self
            .root_entries
            .values()
            .any(|r| r.parent() == Some(parent) && !self.is_root(r));
        if still_missing {
            return;
        }
        let Some(key) = self
            .root_parents
            .iter()
            .find(|(_, p)| p.as_path() == parent)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.root_parents.remove(&key);
        if let Ok(fd) = sys::open_dir(parent) {
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_ONLYDIR;
            if let Err(e) =
                sys::fanotify_mark_fd(self.group_fd(), flags, ROOT_RETURN_MASK, fd.as_fd())
            {
                debug!(parent = %parent.display(), error = %e, "fanotify: removing the root-return mark failed");
            }
        }
    }

    /// Lost events may include renames (cached paths may be stale) and new directories
    /// (not marked): forget the paths and walk every tree again to mark what is new.
    fn rescan_after_overflow(&mut self) {
        self.dir_cache.clear();
        self.rename_gen += 1;
        let roots: Vec<(HandleKey, PathBuf)> = self
            .roots
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (old_key, root) in roots {
            let r = sys::open_dir(&root)
                .map_err(|source| FanotifyError::Mark {
                    path: root.clone(),
                    source,
                })
                .and_then(|fd| self.mark_tree_from(fd, &root, None, &mut Vec::new()));
            match r {
                Ok((n, key)) => {
                    self.roots.remove(&old_key);
                    self.roots.insert(key, root.clone());
                    info!(root = %root.display(), marks = n, "fanotify: tree walked again after overflow");
                }
                Err(e) => {
                    self.stats.mark_errors += 1;
                    warn!(root = %root.display(), error = %e, "fanotify: cannot walk tree again after overflow");
                }
            }
        }
    }

    /// Mark a directory that appeared in a tree (created, or moved in), with its subtree.
    fn mark_new_dir(&mut self, path: &Path, synth_pid: Option<u32>, out: &mut Vec<FanEvent>) {
        let fd = match sys::open_dir(path) {
            Ok(fd) => fd,
            Err(e) if is_vanished(&e) => {
                debug!(path = %path.display(), "fanotify: new directory already gone");
                return;
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(path = %path.display(), error = %e, "fanotify: cannot open new directory; it is not watched");
                return;
            }
        };
        match self.mark_tree_from(fd, path, synth_pid, out) {
            Ok((n, _)) => {
                debug!(path = %path.display(), marks = n, "fanotify: new directory marked")
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(path = %path.display(), error = %e, "fanotify: cannot mark new directory; it is not watched");
            }
        }
    }

    /// A directory was renamed into a marked directory.
    fn mark_moved_in(&mut self, path: &Path) {
        // Moved within the trees: its marks moved with the inodes, nothing to walk.
        if let Ok(fd) = sys::open_dir(path)
            && let Ok((t, h)) = sys::handle_of_fd(fd.as_fd())
            && let Ok(fs) = sys::fstatfs(fd.as_fd())
            && self.marks.contains_key(&HandleKey {
                fsid: fs.fsid,
                handle_type: t,
                handle: h.into(),
            })
        {
            return;
        }
        self.mark_new_dir(path, None, &mut Vec::new());
    }

    /// A marked directory was renamed out of the trees: drop the marks of its subtree.
    fn unmark_moved_out(&mut self, path: &Path) {
        let fd = match sys::open_dir(path) {
            Ok(fd) => fd,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "fanotify: moved-out directory not reachable; marks stay until it is deleted");
                return;
            }
        };
        let (Ok(st), Ok(fs)) = (sys::fstat(fd.as_fd()), sys::fstatfs(fd.as_fd())) else {
            return;
        };
        if let Err(e) = self.unmark_dir(fd.as_fd(), fs.fsid) {
            debug!(path = %path.display(), error = %e, "fanotify: unmarking moved-out directory failed");
        }
        let n = self.walk(
            fd,
            path,
            st.st_dev,
            fs.fsid,
            WalkOp::Unmark,
            None,
            &mut Vec::new(),
        );
        debug!(path = %path.display(), below = n, "fanotify: directory moved out of the trees; marks removed");
    }

    /// Path of the entry a fid record names: resolved directory + name ("." or no name:
    /// the directory itself). If the directory cannot be resolved the bare name is
    /// returned (a relative path; empty if there is no name) and `unresolved` counted.
    fn entry_path(&mut self, r: &FidRecord) -> PathBuf {
        let name = r.name.as_deref().filter(|n| *n != b".");
        match self.resolve_dir(&r.key) {
            Some(dir) => match name {
                Some(n) => sys::join(&dir, n),
                None => dir,
            },
            None => {
                self.stats.unresolved += 1;
                name.map(|n| PathBuf::from(OsStr::from_bytes(n)))
                    .unwrap_or_default()
            }
        }
    }

    /// Current path of a directory handle (cached); for a marked directory that is gone,
    /// its last known path if no directory was renamed since.
    fn resolve_dir(&mut self, key: &HandleKey) -> Option<PathBuf> {
        if let Some(p) = self.dir_cache.get(key) {
            return Some(p.clone());
        }
        let found = self.open_dir_handle(key);
        match (found, self.marks.get_mut(key)) {
            (Some(p), Some(known)) => {
                known.path.clone_from(&p);
                known.generation = self.rename_gen;
                Some(p)
            }
            (Some(p), None) => Some(p),
            (None, Some(known)) if known.generation == self.rename_gen => {
                debug!(path = %known.path.display(), "fanotify: directory gone; using its last known path");
                Some(known.path.clone())
            }
            (None, _) => None,
        }
    }

    /// `open_by_handle_at` + readlink, then cache.
    fn open_dir_handle(&mut self, key: &HandleKey) -> Option<PathBuf> {
        let Some(mount_fd) = self.mount_fds.get(&key.fsid) else {
            debug!("fanotify: event on a filesystem without a mount fd; path unknown");
            return None;
        };
        let fd = match sys::open_by_handle(mount_fd.as_fd(), key.handle_type, &key.handle) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.warned_no_cap {
                    self.warned_no_cap = true;
                    warn!(
                        "fanotify: open_by_handle_at refused (EPERM, needs CAP_DAC_READ_SEARCH): \
                         event paths cannot be resolved (bare names or last known paths)"
                    );
                }
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: directory handle does not resolve (deleted?)");
                return None;
            }
        };
        match sys::fstat(fd.as_fd()) {
            Ok(st) if st.st_nlink > 0 => {}
            Ok(_) => {
                debug!("fanotify: directory was deleted; path unknown");
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: fstat of resolved directory failed");
                return None;
            }
        }
        let path = match sys::fd_path(fd.as_fd()) {
            Ok(p) if p.is_absolute() => p,
            Ok(p) => {
                debug!(path = %p.display(), "fanotify: directory not reachable from our root");
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: readlink of resolved directory failed");
                return None;
            }
        };
        // Only marked directories are cached: renames that move them are all seen (see
        // process_rename). Others (the old parent of a rename from outside, the parent of
        // a single watched file) are resolved afresh each time.
        if self.marks.contains_key(key) {
            if self.dir_cache.len() >= DIR_CACHE_CAP {
                self.dir_cache.clear();
            }
            self.dir_cache.insert(key.clone(), path.clone());
        }
        Some(path)
    }
}

/// (parent directory handle, name) of `path`; `None` for "/".
fn entry_key(path: &Path) -> io::Result<Option<(HandleKey, Box<[u8]>)>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let pfd = sys::open_dir(parent)?;
    let fs = sys::fstatfs(pfd.as_fd())?;
    let (handle_type, handle) = sys::handle_of_fd(pfd.as_fd())?;
    let key = HandleKey {
        fsid: fs.fsid,
        handle_type,
        handle: handle.into(),
    };
    Ok(Some((key, name.as_bytes().into())))
}

/// A creation event for an entry found in a directory that was only just marked.
fn synthesized(path: PathBuf, pid: u32, st: &libc::stat) -> FanEvent {
    let fmt = st.st_mode & libc::S_IFMT;
    let is_dir = fmt == libc::S_IFDIR;
    let mut mask = FAN_CREATE;
    if is_dir {
        mask |= FAN_ONDIR;
    } else if fmt == libc::S_IFREG && st.st_size > 0 {
        // Content was written before we could watch: say so.
        mask |= FAN_MODIFY;
    }
    FanEvent {
        mask,
        pid,
        path,
        new_path: None,
        is_dir,
    }
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
