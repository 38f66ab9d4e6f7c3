//! `FAN_OPEN_PERM` marks on gated trees and files.
//!
//! A gated tree gets a directory mark with `FAN_EVENT_ON_CHILD` on every directory (opens
//! of entries in it are held; opening the directory itself is not) and an inode mark on
//! every regular file (so a hard link to it elsewhere is gated too). The walk does not
//! follow symlinks, does not enter pseudo filesystems (/proc, /sys, ...) mounted below a
//! root, and visits a directory reachable twice (bind mounts) once.
//!
//! A content-class group cannot receive `FAN_CREATE`, so new entries are learned from the
//! notification watcher: the daemon calls [`Marks::mark_dir`] for a new subdirectory (it is
//! walked: it may already hold entries) and [`Marks::mark_file`] for a new regular file
//! whose hard links must be gated too (opens through its directory are gated anyway).
//!
//! The kernel limit on marks (`/proc/sys/fs/fanotify/max_user_marks`, lifted by
//! `FAN_UNLIMITED_MARKS`, which the group asks for) is reported as
//! [`GateError::MarkLimit`], never skipped silently.
use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use super::group::{DIR_MASK, FILE_MASK, PermGroup};
use super::{GateCounters, GateError};
use crate::os::fs::{self as fsys, is_dir, is_reg, is_vanished, pseudo_fs_name};
use crate::os::path_cstring;

/// Deepest directory level walked below a root.
const MAX_DEPTH: usize = 1024;
/// Errors below a root logged at warn per walk (the rest at debug; all are counted).
const WARN_ERRORS_PER_WALK: u64 = 5;

/// What one call marked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkReport {
    /// Directories marked (`FAN_OPEN_PERM | FAN_EVENT_ON_CHILD`).
    pub dirs: u64,
    /// Regular files marked (inode marks).
    pub files: u64,
    /// Entries below the root that could not be marked (counted in `mark_errors`, logged).
    pub errors: u64,
}

/// Places marks on the group. Holds no state besides the group: safe to share and to
/// call from any thread.
#[derive(Clone, Debug)]
pub struct Marks {
    group: Arc<PermGroup>,
}

fn is_limit(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

impl Marks {
    /// Marks on `group`.
    pub fn new(group: Arc<PermGroup>) -> Self {
        Self { group }
    }

    /// Gate the tree rooted at the directory `root` (a symlink as the last component is
    /// refused). Errors on the root itself, and the mark limit anywhere, are returned;
    /// other errors below the root are counted in the report.
    pub fn mark_tree(&self, root: &Path) -> Result<MarkReport, GateError> {
        let err = |source| GateError::Mark {
            path: root.to_path_buf(),
            source,
        };
        let fd = fsys::open_dir(root).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                GateError::WrongKind {
                    path: root.to_path_buf(),
                    what: "not a directory (use mark_file)",
                }
            } else {
                err(e)
            }
        })?;
        let st = fsys::fstat(fd.as_fd()).map_err(err)?;
        self.check_fs(fd.as_fd(), root)?;
        self.mark_one_dir(fd.as_fd())
            .map_err(|e| self.mark_error(root, e))?;
        let mut report = MarkReport {
            dirs: 1,
            ..MarkReport::default()
        };
        self.walk(fd, root, st, &mut report)?;
        if report.errors > 0 {
            warn!(
                root = %root.display(),
                errors = report.errors,
                "gate: some entries below the root could not be gated"
            );
        }
        Ok(report)
    }

    /// Gate a directory that appeared in a gated tree (reported by the notification
    /// watcher), with whatever it already contains. Same as [`mark_tree`](Self::mark_tree).
    pub fn mark_dir(&self, dir: &Path) -> Result<MarkReport, GateError> {
        self.mark_tree(dir)
    }

    /// Gate one regular file with an inode mark (a symlink as the last component is not
    /// followed and is refused). Every name of the inode, present and future, is gated.
    pub fn mark_file(&self, file: &Path) -> Result<(), GateError> {
        let err = |source| GateError::Mark {
            path: file.to_path_buf(),
            source,
        };
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(GateError::WrongKind {
                path: file.to_path_buf(),
                what: "not a file path",
            });
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let pfd = fsys::open_dir(parent).map_err(err)?;
        self.check_fs(pfd.as_fd(), file)?;
        let cname = path_cstring(Path::new(name)).map_err(err)?;
        let st = fsys::fstatat_nofollow(pfd.as_fd(), &cname).map_err(err)?;
        if !is_reg(&st) {
            return Err(GateError::WrongKind {
                path: file.to_path_buf(),
                what: "not a regular file (directories: mark_tree; symlinks are not followed)",
            });
        }
        self.mark_one_file(pfd.as_fd(), &cname)
            .map_err(|e| self.mark_error(file, e))
    }

    fn check_fs(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<(), GateError> {
        let info = fsys::fstatfs(fd).map_err(|source| GateError::Mark {
            path: path.to_path_buf(),
            source,
        })?;
        match pseudo_fs_name(info.magic) {
            Some(fs) => Err(GateError::PseudoFs {
                path: path.to_path_buf(),
                fs,
            }),
            None => Ok(()),
        }
    }

    fn count_mark(&self) {
        GateCounters::add(&self.group.counters().marks);
    }

    fn mark_error(&self, path: &Path, source: io::Error) -> GateError {
        GateCounters::add(&self.group.counters().mark_errors);
        if is_limit(&source) {
            GateError::MarkLimit {
                path: path.to_path_buf(),
            }
        } else {
            GateError::Mark {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    fn mark_one_dir(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.group.mark_fd(libc::FAN_MARK_ONLYDIR, DIR_MASK, fd)?;
        self.count_mark();
        Ok(())
    }

    fn mark_one_file(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        self.group.mark_at(FILE_MASK, dir, name)?;
        self.count_mark();
        Ok(())
    }

    /// Walk below the directory open as `fd` (already marked). Returns `Err` only for the
    /// mark limit: every further mark would fail the same way.
    fn walk(
        &self,
        fd: OwnedFd,
        path: &Path,
        st: libc::stat,
        report: &mut MarkReport,
    ) -> Result<(), GateError> {
        struct Frame {
            fd: OwnedFd,
            path: PathBuf,
            dev: u64,
            depth: usize,
            entries: std::vec::IntoIter<fsys::DirEntry>,
        }
        let mut warned = 0u64;
        let mut note =
            |report: &mut MarkReport, path: &Path, what: &str, e: &dyn std::fmt::Display| {
                report.errors += 1;
                GateCounters::add(&self.group.counters().mark_errors);
                if warned < WARN_ERRORS_PER_WALK {
                    warned += 1;
                    warn!(path = %path.display(), error = %e, "gate: {what} failed; not gated");
                } else {
                    debug!(path = %path.display(), error = %e, "gate: {what} failed; not gated");
                }
            };
        let mut visited: HashSet<(u64, u64)> = HashSet::new();
        visited.insert((st.st_dev, st.st_ino));
        let mut stack = Vec::new();
        match fsys::list_dir(fd.as_fd()) {
            Ok(entries) => stack.push(Frame {
                fd,
                path: path.to_path_buf(),
                dev: st.st_dev,
                depth: 0,
                entries: entries.into_iter(),
            }),
            Err(e) => {
                note(report, path, "listing", &e);
            }
        }
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            let name: &CStr = &entry.name;
            let child = fsys::join(&frame.path, name.to_bytes());
            let maybe = matches!(
                entry.file_type,
                None | Some(nix::dir::Type::Directory) | Some(nix::dir::Type::File)
            );
            if !maybe {
                continue;
            }
            let cst = match fsys::fstatat_nofollow(frame.fd.as_fd(), name) {
                Ok(s) => s,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    note(report, &child, "stat", &e);
                    continue;
                }
            };
            if is_reg(&cst) {
                match self.mark_one_file(frame.fd.as_fd(), name) {
                    Ok(()) => report.files += 1,
                    Err(e) if is_vanished(&e) => {}
                    Err(e) if is_limit(&e) => return Err(self.mark_error(&child, e)),
                    Err(e) => {
                        note(report, &child, "marking", &e);
                    }
                }
                continue;
            }
            if !is_dir(&cst) {
                continue;
            }
            if frame.depth + 1 >= MAX_DEPTH {
                note(
                    report,
                    &child,
                    "descending",
                    &format!("deeper than {MAX_DEPTH} levels"),
                );
                continue;
            }
            if !visited.insert((cst.st_dev, cst.st_ino)) {
                continue;
            }
            let cfd = match fsys::openat_dir(frame.fd.as_fd(), name) {
                Ok(fd) => fd,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    note(report, &child, "opening", &e);
                    continue;
                }
            };
            if cst.st_dev != frame.dev {
                match fsys::fstatfs(cfd.as_fd()) {
                    Ok(info) if pseudo_fs_name(info.magic).is_some() => continue,
                    Ok(_) => {}
                    Err(e) => {
                        note(report, &child, "statfs", &e);
                        continue;
                    }
                }
            }
            match self.mark_one_dir(cfd.as_fd()) {
                Ok(()) => report.dirs += 1,
                Err(e) if is_vanished(&e) => continue,
                Err(e) if is_limit(&e) => return Err(self.mark_error(&child, e)),
                Err(e) => {
                    // Not marked: its subtree is skipped too (same filesystem, same error).
                    note(report, &child, "marking", &e);
                    continue;
                }
            }
            let depth = frame.depth + 1;
            match fsys::list_dir(cfd.as_fd()) {
                Ok(entries) => stack.push(Frame {
                    fd: cfd,
                    path: child,
                    dev: cst.st_dev,
                    depth,
                    entries: entries.into_iter(),
                }),
                Err(e) if is_vanished(&e) => {}
                Err(e) => {
                    note(report, &child, "listing", &e);
                }
            }
        }
        Ok(())
    }
}
