//! The directory-tree walk both fanotify groups mark their trees with.
//!
//! Descriptor-based: every directory is opened relative to its parent with `O_NOFOLLOW`
//! and every entry is looked at with `AT_SYMLINK_NOFOLLOW`, so symlinks are never
//! followed and a rename of a directory above does not redirect the walk. Depth first,
//! with one open descriptor per level (the depth, not the width, bounds the descriptors
//! held); a directory reachable twice (bind mounts) is visited once; at most
//! [`MAX_DEPTH`] levels. Other filesystems are entered if the [`Visitor`] says so.
//!
//! What to do with each entry and directory, and how errors are counted and logged, is
//! the visitor's. Entries that vanish during the walk (`ENOENT`, `ENOTDIR`, `ELOOP`,
//! `ESTALE` below the root) are skipped without a word. Paths are built only for what
//! needs one: each directory entered, and an entry that failed.
use std::collections::HashSet;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::fs::{self, DirEntry, is_vanished};

/// Deepest directory level walked below a root.
pub(crate) const MAX_DEPTH: usize = 1024;

/// The step of the walk that failed, as logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Listing a directory's entries.
    Listing,
    /// `stat` of an entry.
    Stat,
    /// A directory deeper than [`MAX_DEPTH`].
    Descending,
    /// Opening a subdirectory.
    Opening,
    /// Identifying the filesystem of a subdirectory on another device.
    Statfs,
    /// What the visitor does with an entry or a directory.
    Marking,
}

impl Step {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Listing => "listing",
            Step::Stat => "stat",
            Step::Descending => "descending",
            Step::Opening => "opening",
            Step::Statfs => "statfs",
            Step::Marking => "marking",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a walk does; see the module docs.
pub(crate) trait Visitor {
    /// What the visitor knows about the filesystem a directory is on, handed from a
    /// directory to its subdirectories on the same device (`()` if nothing).
    type Fs: Copy;
    /// Why a walk stops before its end.
    type Stop;

    /// Whether an entry of kind `file_type` (`None`: the filesystem does not say) is worth
    /// a `stat`. Directories must be wanted to be walked.
    fn wants(&self, file_type: Option<nix::dir::Type>) -> bool;

    /// Every wanted entry below the root, with its `stat`, directories included (before
    /// they are entered). `dir` is the parent directory, open, and `parent` its path. An
    /// error is reported as [`Step::Marking`].
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &Path,
        name: &CStr,
        st: &libc::stat,
    ) -> io::Result<()>;

    /// A subdirectory on another device than its parent, open as `fd`: `Ok(Some(fs))` to
    /// enter it, `Ok(None)` to leave it out without a word (a pseudo filesystem), `Err` to
    /// leave it out and report [`Step::Statfs`].
    fn filesystem(&mut self, fd: BorrowedFd<'_>, st: &libc::stat) -> io::Result<Option<Self::Fs>>;

    /// A subdirectory about to be entered, open as `fd`, before it is listed. An error
    /// leaves its subtree out and is reported as [`Step::Marking`].
    fn directory(&mut self, fd: BorrowedFd<'_>, path: &Path, fs: Self::Fs) -> io::Result<()>;

    /// `step` failed at `path` with `error`; `Err` stops the walk with that reason.
    fn failed(&mut self, path: &Path, step: Step, error: io::Error) -> Result<(), Self::Stop>;
}

/// One open directory on the walk stack.
struct Frame<F> {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    fs: F,
    depth: usize,
    entries: std::vec::IntoIter<DirEntry>,
}

/// Walk below the directory open as `fd` at `path` (`st`: its `stat`; `fs`: what the
/// visitor knows of its filesystem). The root itself is the caller's: the visitor is only
/// shown what is below it. Returns the visitor's reason if it stopped the walk.
pub(crate) fn walk<V: Visitor>(
    v: &mut V,
    fd: OwnedFd,
    path: &Path,
    st: &libc::stat,
    fs: V::Fs,
) -> Result<(), V::Stop> {
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    visited.insert((st.st_dev, st.st_ino));
    let mut stack: Vec<Frame<V::Fs>> = Vec::new();
    match fs::list_dir(fd.as_fd()) {
        Ok(entries) => stack.push(Frame {
            fd,
            path: path.to_path_buf(),
            dev: st.st_dev,
            fs,
            depth: 0,
            entries: entries.into_iter(),
        }),
        Err(e) => v.failed(path, Step::Listing, e)?,
    }
    while let Some(frame) = stack.last_mut() {
        let Some(entry) = frame.entries.next() else {
            stack.pop();
            continue;
        };
        if !v.wants(entry.file_type) {
            continue;
        }
        let name: &CStr = &entry.name;
        let child = |frame: &Frame<V::Fs>| fs::join(&frame.path, name.to_bytes());
        let st = match fs::fstatat_nofollow(frame.fd.as_fd(), name) {
            Ok(st) => st,
            Err(e) if is_vanished(&e) => continue,
            Err(e) => {
                v.failed(&child(frame), Step::Stat, e)?;
                continue;
            }
        };
        match v.entry(frame.fd.as_fd(), &frame.path, name, &st) {
            Ok(()) => {}
            Err(e) if is_vanished(&e) => {}
            Err(e) => v.failed(&child(frame), Step::Marking, e)?,
        }
        if !fs::is_dir(&st) {
            continue;
        }
        if frame.depth + 1 >= MAX_DEPTH {
            let e = io::Error::other(format!("deeper than {MAX_DEPTH} levels"));
            v.failed(&child(frame), Step::Descending, e)?;
            continue;
        }
        if !visited.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        let cfd = match fs::openat_dir(frame.fd.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if is_vanished(&e) => continue,
            Err(e) => {
                v.failed(&child(frame), Step::Opening, e)?;
                continue;
            }
        };
        let cfs = if st.st_dev == frame.dev {
            frame.fs
        } else {
            match v.filesystem(cfd.as_fd(), &st) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    v.failed(&child(frame), Step::Statfs, e)?;
                    continue;
                }
            }
        };
        let path = child(frame);
        let depth = frame.depth + 1;
        match v.directory(cfd.as_fd(), &path, cfs) {
            Ok(()) => {}
            Err(e) if is_vanished(&e) => continue,
            Err(e) => {
                // Not handled: its subtree is skipped too (same filesystem, same error).
                v.failed(&path, Step::Marking, e)?;
                continue;
            }
        }
        match fs::list_dir(cfd.as_fd()) {
            Ok(entries) => stack.push(Frame {
                fd: cfd,
                path,
                dev: st.st_dev,
                fs: cfs,
                depth,
                entries: entries.into_iter(),
            }),
            Err(e) if is_vanished(&e) => {}
            Err(e) => v.failed(&path, Step::Listing, e)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Records what the walk shows it.
    #[derive(Default)]
    struct Record {
        entries: Vec<PathBuf>,
        dirs: Vec<PathBuf>,
        failed: Vec<(PathBuf, Step)>,
    }

    impl Visitor for Record {
        type Fs = ();
        type Stop = ();

        fn wants(&self, _file_type: Option<nix::dir::Type>) -> bool {
            true
        }

        fn entry(
            &mut self,
            _dir: BorrowedFd<'_>,
            parent: &Path,
            name: &CStr,
            _st: &libc::stat,
        ) -> io::Result<()> {
            self.entries
                .push(parent.join(std::ffi::OsStr::from_bytes(name.to_bytes())));
            Ok(())
        }

        fn filesystem(&mut self, _fd: BorrowedFd<'_>, _st: &libc::stat) -> io::Result<Option<()>> {
            Ok(Some(()))
        }

        fn directory(&mut self, _fd: BorrowedFd<'_>, path: &Path, _fs: ()) -> io::Result<()> {
            self.dirs.push(path.to_path_buf());
            Ok(())
        }

        fn failed(&mut self, path: &Path, step: Step, _error: io::Error) -> Result<(), ()> {
            self.failed.push((path.to_path_buf(), step));
            Ok(())
        }
    }

    fn walk_all(root: &Path) -> Record {
        let fd = fs::open_dir(root).unwrap();
        let st = fs::fstat(fd.as_fd()).unwrap();
        let mut r = Record::default();
        walk(&mut r, fd, root, &st, ()).unwrap();
        r.entries.sort();
        r.dirs.sort();
        r
    }

    #[test]
    fn every_entry_once_and_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/c.txt"), b"x").unwrap();
        std::fs::write(root.join("f.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let r = walk_all(root);
        let rel = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(rel(&r.entries), ["a", "a/b", "a/b/c.txt", "f.txt", "link"]);
        assert_eq!(rel(&r.dirs), ["a", "a/b"]);
        assert!(r.failed.is_empty());
    }

    #[test]
    fn directories_below_the_depth_limit_are_reported_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 1 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let r = walk_all(tmp.path());
        assert_eq!(r.dirs.len(), MAX_DEPTH - 1);
        assert_eq!(r.entries.len(), MAX_DEPTH);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].1, Step::Descending);
    }
}
