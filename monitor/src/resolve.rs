//! Turning a syscall's path argument into the canonical absolute path of the object.
//!
//! Relative paths are joined to the writer's working directory (`AT_FDCWD`) or to the
//! directory behind its `dirfd`; the parent directory is then canonicalized (symlinks and
//! `..` resolved) and, for operations that follow a final symlink (open, truncate, chmod,
//! chown), so is the last component. The file itself may no longer exist (unlink, rename
//! source), which is why the parent is resolved rather than the full path.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use monitor_common::AT_FDCWD;

use crate::proctable::{ProcTable, live_link};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub path: Vec<u8>,
    /// The base directory was unknown: `path` is the raw (relative) argument.
    pub unresolved: bool,
}

/// The directory a relative path of `tgid` is relative to.
fn base_dir(procs: &ProcTable, tgid: u32, dfd: i32) -> Option<Vec<u8>> {
    if dfd == AT_FDCWD {
        procs
            .get(tgid)
            .and_then(|p| p.cwd.clone())
            .or_else(|| live_link(tgid, "cwd"))
    } else {
        procs
            .fd_path(tgid, dfd)
            .map(<[u8]>::to_vec)
            .or_else(|| live_link(tgid, &format!("fd/{dfd}")))
    }
}

/// Resolve a path argument of process `tgid`. `dfd` is the syscall's directory fd (or
/// `AT_FDCWD`); `follow` says whether the operation follows a final symlink.
pub fn resolve(procs: &ProcTable, tgid: u32, dfd: i32, raw: &[u8], follow: bool) -> Resolved {
    let joined: PathBuf = if raw.first() == Some(&b'/') {
        PathBuf::from(OsStr::from_bytes(raw))
    } else if raw.is_empty() {
        // AT_EMPTY_PATH: the operation is on dfd itself.
        match base_dir(procs, tgid, dfd) {
            Some(b) => PathBuf::from(OsStr::from_bytes(&b)),
            None => {
                return Resolved {
                    path: raw.to_vec(),
                    unresolved: true,
                };
            }
        }
    } else {
        match base_dir(procs, tgid, dfd) {
            Some(b) => Path::new(OsStr::from_bytes(&b)).join(OsStr::from_bytes(raw)),
            None => {
                return Resolved {
                    path: raw.to_vec(),
                    unresolved: true,
                };
            }
        }
    };
    Resolved {
        path: canonical(&joined, follow).as_os_str().as_bytes().to_vec(),
        unresolved: false,
    }
}

/// Lexical normalization: drop `.`, apply `..`, collapse separators.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Canonical form of an absolute path whose last component may not exist.
pub fn canonical(path: &Path, follow: bool) -> PathBuf {
    let norm_in = path.components().next_back();
    // A last component of "." or ".." names a directory: resolve the whole path.
    if matches!(
        norm_in,
        Some(Component::CurDir | Component::ParentDir) | None
    ) {
        return std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return normalize(path);
    };
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| normalize(parent));
    let candidate = parent.join(name);
    if !follow {
        return candidate;
    }
    match std::fs::symlink_metadata(&candidate) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(&candidate) {
            Ok(real) => real,
            // Dangling symlink (an O_CREAT open creates its target): resolve one level.
            Err(_) => match std::fs::read_link(&candidate) {
                Ok(target) => normalize(&parent.join(target)),
                Err(_) => candidate,
            },
        },
        _ => candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proctable::Proc;

    fn bytes(p: &Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    #[test]
    fn normalize_handles_dots() {
        assert_eq!(
            normalize(Path::new("/a/./b/../c//d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn relative_to_tracked_cwd_and_symlinked_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::create_dir(real.join("conf")).expect("mkdir");
        std::os::unix::fs::symlink(real.join("conf"), real.join("link")).expect("symlink");
        let mut t = ProcTable::default();
        let pid = 4242;
        t_insert(&mut t, pid, &real);
        let r = resolve(&t, pid, AT_FDCWD, b"link/../link/.env", true);
        assert_eq!(
            r,
            Resolved {
                path: bytes(&real.join("conf/.env")),
                unresolved: false
            }
        );
    }

    #[test]
    fn follows_final_symlink_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::write(real.join("target.conf"), b"x").expect("write");
        std::os::unix::fs::symlink(real.join("target.conf"), real.join("ln")).expect("symlink");
        let t = ProcTable::default();
        let raw = bytes(&real.join("ln"));
        assert_eq!(
            resolve(&t, 1, AT_FDCWD, &raw, true).path,
            bytes(&real.join("target.conf"))
        );
        assert_eq!(resolve(&t, 1, AT_FDCWD, &raw, false).path, raw);
    }

    #[test]
    fn missing_file_in_existing_dir_and_odd_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        let mut raw = bytes(&real);
        raw.extend_from_slice(b"/new\nline\xff");
        let t = ProcTable::default();
        assert_eq!(resolve(&t, 1, AT_FDCWD, &raw, true).path, raw);
    }

    #[test]
    fn unknown_base_is_reported_unresolved() {
        let t = ProcTable::default();
        // pid that cannot exist (above pid_max) and no table entry.
        let r = resolve(&t, u32::MAX - 1, AT_FDCWD, b"rel/.env", true);
        assert_eq!(
            r,
            Resolved {
                path: b"rel/.env".to_vec(),
                unresolved: true
            }
        );
    }

    fn t_insert(t: &mut ProcTable, pid: u32, cwd: &Path) {
        t.insert_for_test(Proc {
            pid,
            cwd: Some(bytes(cwd)),
            ..Proc::default()
        });
    }
}
