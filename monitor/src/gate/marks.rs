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
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, warn};

use super::group::{DIR_MASK, FILE_MASK, PermGroup};
use super::{GateCounters, GateError};
use crate::os::fs::{self, pseudo_fs_name};
use crate::os::path_cstring;
use crate::os::walk::{self, Step, Visitor};

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
        let fd = fs::open_dir(root).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                GateError::WrongKind {
                    path: root.to_path_buf(),
                    what: "not a directory (use mark_file)",
                }
            } else {
                err(e)
            }
        })?;
        let st = fs::fstat(fd.as_fd()).map_err(err)?;
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
        let pfd = fs::open_dir(parent).map_err(err)?;
        self.check_fs(pfd.as_fd(), file)?;
        let cname = path_cstring(Path::new(name)).map_err(err)?;
        let st = fs::fstatat_nofollow(pfd.as_fd(), &cname).map_err(err)?;
        if !fs::is_reg(&st) {
            return Err(GateError::WrongKind {
                path: file.to_path_buf(),
                what: "not a regular file (directories: mark_tree; symlinks are not followed)",
            });
        }
        self.mark_one_file(pfd.as_fd(), &cname)
            .map_err(|e| self.mark_error(file, e))
    }

    /// Remove every mark of the group (`FAN_MARK_FLUSH`).
    pub fn flush(&self) -> io::Result<()> {
        self.group.flush_marks()
    }

    fn check_fs(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<(), GateError> {
        let info = fs::fstatfs(fd).map_err(|source| GateError::Mark {
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
        let mut gate = GateWalk {
            marks: self,
            report,
            warned: 0,
        };
        walk::walk(&mut gate, fd, path, &st, ())
    }
}

/// The gate's side of a tree walk: directories get a directory mark, regular files an
/// inode mark; pseudo filesystems are not entered.
struct GateWalk<'a> {
    marks: &'a Marks,
    report: &'a mut MarkReport,
    /// Errors logged at warn so far.
    warned: u64,
}

impl Visitor for GateWalk<'_> {
    type Fs = ();
    type Stop = GateError;

    fn wants(&self, file_type: Option<nix::dir::Type>) -> bool {
        matches!(
            file_type,
            None | Some(nix::dir::Type::Directory) | Some(nix::dir::Type::File)
        )
    }

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        _parent: &Path,
        name: &CStr,
        st: &libc::stat,
    ) -> io::Result<()> {
        if fs::is_reg(st) {
            self.marks.mark_one_file(dir, name)?;
            self.report.files += 1;
        }
        Ok(())
    }

    fn filesystem(&mut self, fd: BorrowedFd<'_>, _st: &libc::stat) -> io::Result<Option<()>> {
        let info = fs::fstatfs(fd)?;
        Ok(pseudo_fs_name(info.magic).is_none().then_some(()))
    }

    fn directory(&mut self, fd: BorrowedFd<'_>, _path: &Path, _fs: ()) -> io::Result<()> {
        self.marks.mark_one_dir(fd)?;
        self.report.dirs += 1;
        Ok(())
    }

    fn failed(&mut self, path: &Path, step: Step, e: io::Error) -> Result<(), GateError> {
        if step == Step::Marking && is_limit(&e) {
            return Err(self.marks.mark_error(path, e));
        }
        self.report.errors += 1;
        GateCounters::add(&self.marks.group.counters().mark_errors);
        if self.warned < WARN_ERRORS_PER_WALK {
            self.warned += 1;
            warn!(path = %path.display(), error = %e, "gate: {step} failed; not gated");
        } else {
            debug!(path = %path.display(), error = %e, "gate: {step} failed; not gated");
        }
        Ok(())
    }
}
