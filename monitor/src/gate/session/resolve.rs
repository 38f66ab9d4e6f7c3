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

use crate::os::seccomp::notify::read_cstr;

/// Longest path read from a caller (`PATH_MAX` without its NUL).
pub const MAX_PATH: usize = libc::PATH_MAX as usize - 1;
/// Symlinks followed at most on the final component (the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What is at a resolved path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Reads the path argument at `addr` of thread `tid`.
pub fn read(tid: u32, addr: u64) -> io::Result<Vec<u8>> {
    read_cstr(tid, addr, MAX_PATH)
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

/// Resolves `bytes` (as thread `tid` of process `tgid` named it, relative to `dirfd`);
/// `follow`: the final component is followed when it is a symlink.
pub fn resolve(tid: u32, tgid: u32, dirfd: i32, bytes: &[u8], follow: bool) -> io::Result<Target> {
    if bytes.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let given = Path::new(OsStr::from_bytes(bytes));
    let full = if given.is_absolute() {
        given.to_path_buf()
    } else {
        base_of(tid, dirfd)?.join(given)
    };
    // A path ending in "." or ".." names the directory itself.
    let follow = follow || ends_in_dots(bytes);
    walk(tid, tgid, &full, follow)
}

/// The caller's view of `/proc/self` and `/proc/thread-self` (the daemon's own would be
/// found by a plain lookup).
fn proc_alias(tid: u32, tgid: u32, dir: &Path, name: &OsStr) -> Option<PathBuf> {
    if dir != Path::new("/proc") {
        return None;
    }
    match name.as_bytes() {
        b"self" => Some(PathBuf::from(format!("/proc/{tgid}"))),
        b"thread-self" => Some(PathBuf::from(format!("/proc/{tgid}/task/{tid}"))),
        _ => None,
    }
}

/// Component by component, the way the kernel walks `path` (absolute) for the caller:
/// `..` after symlinks are resolved, at most [`MAX_LINKS`] symlinks, `/proc/self` taken as
/// the caller's. A `/proc` magic link that names no path (a pipe, a socket, a deleted
/// file's descriptor) ends the walk at the link itself.
fn walk(tid: u32, tgid: u32, path: &Path, follow_last: bool) -> io::Result<Target> {
    use std::collections::VecDeque;
    use std::path::Component;
    fn push_components(todo: &mut VecDeque<std::ffi::OsString>, p: &Path, front: bool) {
        let parts: Vec<std::ffi::OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        if front {
            for part in parts.into_iter().rev() {
                todo.push_front(part);
            }
        } else {
            todo.extend(parts);
        }
    }
    let mut todo = VecDeque::new();
    push_components(&mut todo, path, false);
    let mut out = PathBuf::from("/");
    let mut links = 0usize;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            out.pop();
            continue;
        }
        let last = todo.is_empty();
        let cand = proc_alias(tid, tgid, &out, &c).unwrap_or_else(|| out.join(&c));
        let found = lstat(&cand)?;
        let Some(f) = found else {
            if last {
                return Ok(Target {
                    path: cand,
                    found: None,
                });
            }
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        let is_link = f.mode & libc::S_IFMT == libc::S_IFLNK;
        if is_link && (!last || follow_last) {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let to = std::fs::read_link(&cand)?;
            if to.is_absolute() {
                out = PathBuf::from("/");
                push_components(&mut todo, &to, true);
            } else if cand.starts_with("/proc") && to.as_os_str().as_bytes().contains(&b':') {
                // "pipe:[123]", "socket:[..]", "anon_inode:[..]": no path behind it.
                if last {
                    return Ok(Target {
                        path: cand,
                        found: Some(f),
                    });
                }
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            } else {
                push_components(&mut todo, &to, true);
            }
            continue;
        }
        if last || f.is_dir() {
            out = cand;
            if last {
                return Ok(Target {
                    path: out,
                    found: Some(f),
                });
            }
            continue;
        }
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    let found = lstat(&out)?;
    Ok(Target { path: out, found })
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
            me(),
            libc::AT_FDCWD,
            root.join("via/../via/.").as_os_str().as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(t.path, root.join("real"));
        assert!(ends_in_dots(b"a/b/.."));
        assert!(ends_in_dots(b"./"));
        assert!(!ends_in_dots(b"a/b.."));
        let e = resolve(
            me(),
            me(),
            libc::AT_FDCWD,
            root.join("nope/x").as_os_str().as_bytes(),
            true,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            resolve(me(), me(), libc::AT_FDCWD, b"", true)
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
        let t = resolve(me(), me(), fd, b"sub/../f", true);
        // "sub" does not exist: the kernel fails such a path too.
        assert_eq!(t.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        let t = resolve(me(), me(), fd, b"f", true).unwrap();
        assert_eq!(t.path, root.join("f"));
        assert_eq!(
            base_of(me(), 987_654).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn proc_self_is_the_callers_and_pipes_end_the_walk() {
        // A "caller" that is another process: /proc/self must mean it, not us.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let t = resolve(pid, pid, libc::AT_FDCWD, b"/proc/self/fd/1", true).unwrap();
        assert_eq!(t.path, PathBuf::from(format!("/proc/{pid}/fd/1")));
        let t = resolve(pid, pid, libc::AT_FDCWD, b"/dev/stdout", true).unwrap();
        assert_eq!(t.path, PathBuf::from(format!("/proc/{pid}/fd/1")));
        let t = resolve(
            pid,
            pid,
            libc::AT_FDCWD,
            b"/proc/self/root/etc/hostname",
            true,
        )
        .unwrap();
        assert_eq!(t.path, PathBuf::from("/etc/hostname"));
        let _ = child.kill();
        let _ = child.wait();
    }
}
