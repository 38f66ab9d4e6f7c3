//! Resolving a path a session process named into the path the supervisor decides on and
//! acts on: absolute, its directory canonical (symlinks and `..` resolved the way the
//! kernel would, from the caller's working directory or directory descriptor), and its
//! final component followed when the syscall follows it.
//!
//! The directories along the result are either covered by the session's Landlock rules
//! (then the supervisor answers CONTINUE and Landlock checks the object the kernel really
//! uses) or not writable by the session at all (then the supervisor acts on this path
//! itself): a path swapped or a symlink planted after this resolution cannot redirect a
//! gated operation.
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::ops::RawPath;
use crate::os::seccomp::notify::read_cstr;

/// Longest path read from a caller (`PATH_MAX` without its NUL).
pub const MAX_PATH: usize = libc::PATH_MAX as usize - 1;
/// Symlinks followed at most on the final component (the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What is at a resolved path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// A resolved path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    /// What is there now (`None`: nothing).
    pub found: Option<Found>,
}

fn lstat(p: &Path) -> io::Result<Option<Found>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(Found {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The directory a relative path of thread `tid` starts from: its working directory, or
/// the directory behind descriptor `dirfd`.
pub fn base_of(tid: u32, dirfd: i32) -> io::Result<PathBuf> {
    let link = if dirfd == libc::AT_FDCWD {
        format!("/proc/{tid}/cwd")
    } else if dirfd >= 0 {
        format!("/proc/{tid}/fd/{dirfd}")
    } else {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    };
    let p = std::fs::read_link(link).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) if dirfd != libc::AT_FDCWD => io::Error::from_raw_os_error(libc::EBADF),
        _ => e,
    })?;
    // A deleted directory, a pipe or a socket: no path to resolve against.
    if !p.is_absolute() || p.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(p)
}

/// Reads the path argument `raw` of thread `tid`.
pub fn read(tid: u32, raw: RawPath) -> io::Result<Vec<u8>> {
    read_cstr(tid, raw.addr, MAX_PATH)
}

/// Whether the last component of `bytes` is `.` or `..` (the name itself cannot be made,
/// removed or renamed).
pub fn ends_in_dots(bytes: &[u8]) -> bool {
    let trimmed = {
        let mut end = bytes.len();
        while end > 1 && bytes[end - 1] == b'/' {
            end -= 1;
        }
        &bytes[..end]
    };
    let last = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    last == b"." || last == b".."
}

/// Resolves `bytes` (as thread `tid` named it, relative to `dirfd`); `follow`: the final
/// component is followed when it is a symlink.
pub fn resolve(tid: u32, dirfd: i32, bytes: &[u8], follow: bool) -> io::Result<Target> {
    if bytes.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let given = Path::new(OsStr::from_bytes(bytes));
    let full = if given.is_absolute() {
        given.to_path_buf()
    } else {
        base_of(tid, dirfd)?.join(given)
    };
    if ends_in_dots(bytes) {
        let path = std::fs::canonicalize(&full)?;
        let found = lstat(&path)?;
        return Ok(Target { path, found });
    }
    let mut current = full;
    for _ in 0..=MAX_LINKS {
        let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
            // "/" itself.
            let found = lstat(Path::new("/"))?;
            return Ok(Target {
                path: PathBuf::from("/"),
                found,
            });
        };
        let dir = std::fs::canonicalize(parent)?;
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let path = dir.join(name);
        let found = lstat(&path)?;
        let is_link = found.is_some_and(|f| f.mode & libc::S_IFMT == libc::S_IFLNK);
        if !(follow && is_link) {
            return Ok(Target { path, found });
        }
        let to = std::fs::read_link(&path)?;
        current = if to.is_absolute() { to } else { dir.join(to) };
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn resolves_symlinked_dirs_dangling_links_and_dots() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("via")).unwrap();
        std::os::unix::fs::symlink(root.join("real/new.conf"), root.join("dangling")).unwrap();
        let t = resolve(
            me(),
            libc::AT_FDCWD,
            root.join("via/x").as_os_str().as_bytes(),
            true,
        )
        .unwrap();
        assert_eq!(t.path, root.join("real/x"));
        assert_eq!(t.found, None);
        // A dangling link followed: the path an O_CREAT open would create.
        let t = resolve(
            me(),
            libc::AT_FDCWD,
            root.join("dangling").as_os_str().as_bytes(),
            true,
        )
        .unwrap();
        assert_eq!(t.path, root.join("real/new.conf"));
        // Not followed: the link itself.
        let t = resolve(
            me(),
            libc::AT_FDCWD,
            root.join("dangling").as_os_str().as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(t.path, root.join("dangling"));
        assert!(t.found.is_some());
        let t = resolve(
            me(),
            libc::AT_FDCWD,
            root.join("real/../via/.").as_os_str().as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(t.path, root.join("real"));
        assert!(ends_in_dots(b"a/b/.."));
        assert!(ends_in_dots(b"./"));
        assert!(!ends_in_dots(b"a/b.."));
        let e = resolve(
            me(),
            libc::AT_FDCWD,
            root.join("nope/x").as_os_str().as_bytes(),
            true,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            resolve(me(), libc::AT_FDCWD, b"", true)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn relative_paths_start_at_the_callers_directory_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let dir = std::fs::File::open(&root).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let t = resolve(me(), fd, b"sub/../f", true);
        // "sub" does not exist: the kernel fails such a path too.
        assert_eq!(t.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        let t = resolve(me(), fd, b"f", true).unwrap();
        assert_eq!(t.path, root.join("f"));
        assert_eq!(
            base_of(me(), 987_654).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
