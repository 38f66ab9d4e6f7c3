//! The fanotify NOTIFICATION group over the watched trees.
//!
//! One `FAN_CLASS_NOTIF` group reporting directory file handles and entry names
//! (`FAN_REPORT_DFID_NAME`) and the writer's thread id (`FAN_REPORT_TID`). Every directory
//! of a watched tree carries an inode mark; single files can be marked too. Each event's
//! directory handle is turned back into a path with `open_by_handle_at` + the
//! `/proc/self/fd` link (cached), and the entry name is appended. Paths are bytes
//! throughout (newlines and invalid UTF-8 are kept as they are).
//!
//! What a [`FanEvent`] means:
//! - `mask` holds the raw `FAN_*` bits. Several bits can be set at once: the kernel merges
//!   queued events on the same entry from the same thread (e.g. `FAN_CREATE | FAN_MODIFY |
//!   FAN_CLOSE_WRITE` for `echo x > new`), and a batch can hold several events for one path.
//! - A rename is ONE event, `FAN_RENAME` (plus `FAN_ONDIR` for a directory), with `path` =
//!   old path and `new_path` = new path; either may lie outside the watched trees (a
//!   filesystem-wide rename mark makes the kernel report both sides; renames that touch
//!   no watched directory or watched file are dropped here). If that mark could not be
//!   placed (logged at warn), the side the kernel did not report is an empty path.
//!   `FAN_MOVED_FROM`/`FAN_MOVED_TO` only appear on kernels without `FAN_RENAME` (< 5.17).
//! - A directory path is resolved when the event is read, so it is the directory's
//!   location *now*; the entry name is the one at event time. A write followed at once by
//!   a rename of its directory (before the watcher read the write) is reported under the
//!   new location; the directory's rename event follows it.
//! - If the directory cannot be resolved any more (deleted before the event was read, as
//!   with `rm -r`), a marked directory's last known path is used, provided no directory
//!   was renamed since it was learned (so it is still exact). Failing that, the event is
//!   still returned with `path` = the bare entry name, a RELATIVE path
//!   (`!path.is_absolute()`), and `unresolved` is counted. An event with neither directory
//!   nor name is dropped (and counted).
//! - `FAN_Q_OVERFLOW`: the kernel dropped events (only possible when the group could not
//!   get `FAN_UNLIMITED_QUEUE`). Returned as an event with that mask, `pid` 0 and an empty
//!   path; counted in `overflows` and logged at warn. The watcher then forgets cached paths
//!   and walks every tree again (new directories get marked); what happened in between is
//!   unknown, so the caller should rescan what it cares about.
//! - `FAN_DELETE_SELF | FAN_ONDIR` is returned only for the root of a tree given to
//!   `add_tree` (nothing else would report it); the tree is then no longer watched.
//! - Renaming a tree's root away is reported (`path` = the root) and the moved tree is no
//!   longer watched; a directory renamed onto a root's path is reported and watched in its
//!   place. Renaming an ancestor of a root is reported too; the tree stays watched at its
//!   new path. When a root is deleted its parent gets a mark for creations only (unless
//!   it is watched anyway); a directory made at the root's path is then reported as
//!   created (`FAN_CREATE | FAN_ONDIR`, path = the root) and watched again with its
//!   subtree, and the parent's mark is dropped. One already there when the deletion is
//!   read is reported the same way with pid 0.
//! - A directory created in a tree is marked with its subtree before `next_batch` returns.
//!   Entries that already exist in it at that moment (written before the mark was in
//!   place) are reported as synthesized events right after the directory's `FAN_CREATE`:
//!   `FAN_CREATE` (+`FAN_ONDIR`; +`FAN_MODIFY` for a non-empty regular file) with the pid
//!   of the thread that created the directory. An entry created between the mark and the
//!   scan can be reported twice. A directory moved into a tree is marked the same way but
//!   its contents are not reported (they were moved, not written; writes into it between
//!   the rename and the mark are missed, so a caller that cares rescans `new_path`); one
//!   moved out of the trees loses its marks.
//! - Events caused by this process are dropped: its pid, and (with `FAN_REPORT_TID`) the
//!   ids of its threads that still exist when the event is read.
//! - `pid` is 0 when the writer is not visible in the watcher's pid namespace.
mod records;
mod watcher;

pub use watcher::NotifyWatcher;

use std::io;
use std::path::PathBuf;

// Event bits, values from include/uapi/linux/fanotify.h.
/// File was modified (`write`, `truncate`).
pub const FAN_MODIFY: u64 = 0x0000_0002;
/// Metadata changed (mode, owner, times, link count, xattrs).
pub const FAN_ATTRIB: u64 = 0x0000_0004;
/// Writable file closed.
pub const FAN_CLOSE_WRITE: u64 = 0x0000_0008;
/// Entry moved out of a directory (kernels without `FAN_RENAME` only).
pub const FAN_MOVED_FROM: u64 = 0x0000_0040;
/// Entry moved into a directory (kernels without `FAN_RENAME` only).
pub const FAN_MOVED_TO: u64 = 0x0000_0080;
/// Entry created.
pub const FAN_CREATE: u64 = 0x0000_0100;
/// Entry deleted.
pub const FAN_DELETE: u64 = 0x0000_0200;
/// The watched object itself was deleted (reported for tree roots only).
pub const FAN_DELETE_SELF: u64 = 0x0000_0400;
/// Event queue overflowed: events were lost.
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
/// Mark flag: report events on the children of a marked directory.
pub const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
/// Entry renamed (one event with old and new parent + name; kernel 5.17+).
pub const FAN_RENAME: u64 = 0x1000_0000;
/// The event is about a directory.
pub const FAN_ONDIR: u64 = 0x4000_0000;

/// One filesystem event in a watched tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanEvent {
    /// Raw `FAN_*` bits of this event (possibly several, see the module docs).
    pub mask: u64,
    /// Thread id of the writer (process id if the kernel refused `FAN_REPORT_TID`;
    /// 0 for `FAN_Q_OVERFLOW`).
    pub pid: u32,
    /// Absolute path of the object (directory path + entry name); for `FAN_RENAME` the
    /// old path. Relative (bare name) or empty when it could not be resolved.
    pub path: PathBuf,
    /// `FAN_RENAME`: the new path.
    pub new_path: Option<PathBuf>,
    /// `FAN_ONDIR` is set.
    pub is_dir: bool,
}

/// Counters of a [`NotifyWatcher`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanotifyStats {
    /// Events returned by `next_batch` (overflow events included).
    pub events: u64,
    /// `FAN_Q_OVERFLOW` events seen (each means events were lost).
    pub overflows: u64,
    /// Directory handles that could not be turned into a path.
    pub unresolved: u64,
    /// Directories or files that could not be marked.
    pub mark_errors: u64,
    /// Events or buffers that did not parse and were skipped.
    pub malformed: u64,
}

/// Errors of the fanotify module.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// `fanotify_init` failed (EPERM: needs CAP_SYS_ADMIN; EINVAL: kernel too old).
    #[error("fanotify_init(flags {flags:#x}) failed: {source}")]
    Init {
        /// Flags of the last attempt.
        flags: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A path given to `add_tree`/`add_file` could not be resolved or opened.
    #[error("{}: {source}", path.display())]
    Path {
        /// The path as given.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `fanotify_mark` (or a call needed for it) failed on a path.
    #[error("cannot watch {}: {source}", path.display())]
    Mark {
        /// The canonical path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `add_tree` was given something that is not a directory.
    #[error("{} is not a directory (use add_file)", path.display())]
    NotADirectory {
        /// The canonical path.
        path: PathBuf,
    },
    /// `add_file` was given a directory.
    #[error("{} is a directory (use add_tree)", path.display())]
    IsADirectory {
        /// The canonical path.
        path: PathBuf,
    },
    /// The path is on a pseudo filesystem (/proc, /sys, ...), which is never watched.
    #[error("{} is on a {fs} pseudo filesystem, which is not watched", path.display())]
    PseudoFs {
        /// The canonical path.
        path: PathBuf,
        /// Name of the filesystem type.
        fs: &'static str,
    },
    /// Reading events failed.
    #[error("reading fanotify events: {0}")]
    Read(#[source] io::Error),
}

impl FanotifyError {
    /// The errno behind the error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Init { source, .. }
            | Self::Path { source, .. }
            | Self::Mark { source, .. }
            | Self::Read(source) => source.raw_os_error(),
            Self::NotADirectory { .. } | Self::IsADirectory { .. } | Self::PseudoFs { .. } => None,
        }
    }

    /// True when the kernel refused for lack of privilege (EPERM/EACCES).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::EPERM | libc::EACCES))
    }
}

#[cfg(test)]
mod tests;
