//! Turning a syscall's path argument into the canonical absolute path of the object.
//!
//! Relative paths are joined to the writer's working directory (`AT_FDCWD`) or to the
//! directory behind its `dirfd`; the parent directory is then canonicalized (symlinks and
//! `..` resolved) and, for operations that follow a final symlink (open, truncate, chmod,
//! chown), so is the last component. The file itself may no longer exist (unlink, rename
//! source), which is why the parent is resolved rather than the full path.
//!
//! Canonicalizing a directory costs one `readlink` per path component (glibc's
//! `realpath`), and a busy writer names the same few directories over and over, so the
//! canonical forms of directories are kept in a [`DirCache`] for at most
//! [`DIR_CACHE_TTL`]. Every operation the pipeline sees that can change what a path
//! resolves to (rename, unlink, rmdir, mkdir, symlink) makes the cache forget the entries
//! at and below its paths, by the name asked for and by the canonical form (so entries
//! reached through a symlink go too). Changes it cannot see (outside the watched trees
//! and sessions, or a symlink named through another symlink) are picked up within the
//! TTL. Resolution happens after the syscall anyway (the daemon reads records later), so
//! a path is always "as resolved shortly after"; the cache bounds how much later.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use monitor_common::AT_FDCWD;

use crate::{
    event::Kind,
    proctable::{ProcTable, live_link},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub path: Vec<u8>,
    /// The base directory was unknown: `path` is the raw (relative) argument.
    pub unresolved: bool,
}

/// How long a cached canonical directory is trusted without a change seen.
pub const DIR_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most directories cached; a full cache is emptied.
const DIR_CACHE_MAX: usize = 4096;

/// Canonical forms of directories (see the module documentation), by the bytes of the
/// path asked for, with an index by canonical form. Both are ordered, so the entries at
/// and below a path are one range of each.
#[derive(Debug)]
pub struct DirCache {
    map: BTreeMap<Vec<u8>, (PathBuf, Instant)>,
    /// (canonical form, name asked for) of every entry of `map`.
    by_canonical: BTreeSet<(Vec<u8>, Vec<u8>)>,
    ttl: Duration,
    stats: DirCacheStats,
}

/// Counters of a [`DirCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped because an operation may have changed them (or the cache was full).
    pub forgotten: u64,
}

impl Default for DirCache {
    fn default() -> Self {
        DirCache::new(DIR_CACHE_TTL)
    }
}

/// Whether `p` is `dir` or below it.
fn at_or_below(p: &[u8], dir: &[u8]) -> bool {
    p.starts_with(dir) && (p.len() == dir.len() || p[dir.len()] == b'/' || dir.ends_with(b"/"))
}

impl DirCache {
    /// A cache trusting an entry for `ttl` (zero: no caching).
    pub fn new(ttl: Duration) -> Self {
        DirCache {
            map: BTreeMap::new(),
            by_canonical: BTreeSet::new(),
            ttl,
            stats: DirCacheStats::default(),
        }
    }

    /// Canonical form of directory `dir` (lexically normalized if it does not exist).
    fn canonical_dir(&mut self, dir: &Path) -> PathBuf {
        let now = Instant::now();
        let key = dir.as_os_str().as_bytes();
        if let Some((c, at)) = self.map.get(key)
            && now.duration_since(*at) < self.ttl
        {
            self.stats.hits += 1;
            return c.clone();
        }
        self.stats.misses += 1;
        self.remove(key);
        match std::fs::canonicalize(dir) {
            Ok(c) => {
                if self.map.len() >= DIR_CACHE_MAX {
                    self.stats.forgotten += self.map.len() as u64;
                    self.map.clear();
                    self.by_canonical.clear();
                }
                self.by_canonical
                    .insert((c.as_os_str().as_bytes().to_vec(), key.to_vec()));
                self.map.insert(key.to_vec(), (c.clone(), now));
                c
            }
            // Not cached: it may appear at any moment.
            Err(_) => normalize(dir),
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((c, _)) = self.map.remove(key) {
            self.by_canonical
                .remove(&(c.into_os_string().into_vec(), key.to_vec()));
            self.stats.forgotten += 1;
        }
    }

    /// Forget every entry asked for at or below `path`, or resolving there.
    pub fn forget(&mut self, path: &[u8]) {
        let mut keys: Vec<Vec<u8>> = self
            .map
            .range(path.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(path))
            .filter(|k| at_or_below(k, path))
            .cloned()
            .collect();
        keys.extend(
            self.by_canonical
                .range((path.to_vec(), Vec::new())..)
                .take_while(|(c, _)| c.starts_with(path))
                .filter(|(c, _)| at_or_below(c, path))
                .map(|(_, k)| k.clone()),
        );
        for k in keys {
            self.remove(&k);
        }
    }

    /// An operation of `kind` on `path` (a rename's new name: `target`) happened, or was
    /// attempted: `failed` when it is known to have failed. Forget what it may have
    /// changed: only names that appear, disappear or move change how a path resolves;
    /// writes, chmod, chown, new files and hard links change nothing.
    pub fn note(&mut self, kind: Kind, path: &[u8], target: Option<&[u8]>, failed: bool) {
        if failed || self.map.is_empty() {
            return;
        }
        match kind {
            Kind::Rename => {
                self.forget(path);
                if let Some(t) = target {
                    self.forget(t);
                }
            }
            Kind::Unlink | Kind::Mkdir | Kind::Symlink => self.forget(path),
            _ => {}
        }
    }

    pub fn stats(&self) -> DirCacheStats {
        self.stats
    }
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
pub fn resolve(
    procs: &ProcTable,
    dirs: &mut DirCache,
    tgid: u32,
    dfd: i32,
    raw: &[u8],
    follow: bool,
) -> Resolved {
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
        path: canonical(dirs, &joined, follow).into_os_string().into_vec(),
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
pub fn canonical(dirs: &mut DirCache, path: &Path, follow: bool) -> PathBuf {
    let norm_in = path.components().next_back();
    // A last component of "." or ".." names a directory: resolve the whole path.
    if matches!(
        norm_in,
        Some(Component::CurDir | Component::ParentDir) | None
    ) {
        return dirs.canonical_dir(path);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return normalize(path);
    };
    let parent = dirs.canonical_dir(parent);
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
        let r = resolve(
            &t,
            &mut DirCache::default(),
            pid,
            AT_FDCWD,
            b"link/../link/.env",
            true,
        );
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
            resolve(&t, &mut DirCache::default(), 1, AT_FDCWD, &raw, true).path,
            bytes(&real.join("target.conf"))
        );
        assert_eq!(
            resolve(&t, &mut DirCache::default(), 1, AT_FDCWD, &raw, false).path,
            raw
        );
    }

    #[test]
    fn missing_file_in_existing_dir_and_odd_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        let mut raw = bytes(&real);
        raw.extend_from_slice(b"/new\nline\xff");
        let t = ProcTable::default();
        assert_eq!(
            resolve(&t, &mut DirCache::default(), 1, AT_FDCWD, &raw, true).path,
            raw
        );
    }

    #[test]
    fn unknown_base_is_reported_unresolved() {
        let t = ProcTable::default();
        // pid that cannot exist (above pid_max) and no table entry.
        let r = resolve(
            &t,
            &mut DirCache::default(),
            u32::MAX - 1,
            AT_FDCWD,
            b"rel/.env",
            true,
        );
        assert_eq!(
            r,
            Resolved {
                path: b"rel/.env".to_vec(),
                unresolved: true
            }
        );
    }

    #[test]
    fn cached_directories_until_forgotten_or_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        for d in ["a", "b"] {
            std::fs::create_dir(real.join(d)).expect("mkdir");
        }
        let link = real.join("l");
        std::os::unix::fs::symlink(real.join("a"), &link).expect("symlink");
        let t = ProcTable::default();
        let raw = bytes(&link.join("x.conf"));
        let mut dirs = DirCache::default();
        let r = |dirs: &mut DirCache| resolve(&t, dirs, 1, AT_FDCWD, &raw, false).path;
        assert_eq!(r(&mut dirs), bytes(&real.join("a/x.conf")));
        // The link now points elsewhere, unseen by the pipeline: the cache still answers.
        std::fs::remove_file(&link).expect("rm");
        std::os::unix::fs::symlink(real.join("b"), &link).expect("symlink");
        assert_eq!(r(&mut dirs), bytes(&real.join("a/x.conf")));
        assert_eq!(dirs.stats().hits, 1);
        // Seen: the symlink was replaced (unlink, then symlink).
        dirs.note(Kind::Unlink, &bytes(&link), None, false);
        assert_eq!(r(&mut dirs), bytes(&real.join("b/x.conf")));
        assert_eq!(dirs.stats().forgotten, 1);
        // Without a TTL nothing is reused.
        let mut fresh = DirCache::new(Duration::ZERO);
        assert_eq!(r(&mut fresh), bytes(&real.join("b/x.conf")));
        assert_eq!(r(&mut fresh), bytes(&real.join("b/x.conf")));
        assert_eq!((fresh.stats().hits, fresh.stats().misses), (0, 2));
    }

    #[test]
    fn operations_forget_entries_by_name_and_by_canonical_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::create_dir_all(real.join("d/sub")).expect("mkdir");
        std::fs::create_dir_all(real.join("e")).expect("mkdir");
        std::fs::create_dir_all(real.join("dd")).expect("mkdir");
        std::os::unix::fs::symlink(real.join("d"), real.join("l")).expect("symlink");
        let t = ProcTable::default();
        let mut dirs = DirCache::default();
        let warm = |dirs: &mut DirCache| {
            for p in ["d/x", "d/sub/x", "l/sub/x", "e/x", "dd/x"] {
                resolve(&t, dirs, 1, AT_FDCWD, &bytes(&real.join(p)), false);
            }
            assert_eq!(dirs.map.len(), 5);
        };
        warm(&mut dirs);
        dirs.note(Kind::Write, &bytes(&real.join("d")), None, false);
        dirs.note(Kind::Unlink, &bytes(&real.join("d")), None, true);
        dirs.note(Kind::Create, &bytes(&real.join("d/new")), None, false);
        dirs.note(
            Kind::Rename,
            &bytes(&real.join("e/x")),
            Some(&bytes(&real.join("e/y"))),
            false,
        );
        assert_eq!(dirs.map.len(), 5, "writes, failures, files: nothing moves");
        // d/sub moves: its entry, and l/sub (which resolves there), go; d, e, dd stay.
        dirs.note(
            Kind::Rename,
            &bytes(&real.join("d/sub")),
            Some(&bytes(&real.join("e/sub"))),
            false,
        );
        assert_eq!(dirs.map.len(), 3);
        // The symlink goes: only what was asked for through it.
        warm(&mut dirs);
        dirs.note(Kind::Unlink, &bytes(&real.join("l")), None, false);
        assert_eq!(dirs.map.len(), 4);
        // d goes: everything at or below it by name or by canonical form, not "dd".
        warm(&mut dirs);
        dirs.note(Kind::Unlink, &bytes(&real.join("d")), None, false);
        assert_eq!(dirs.map.len(), 2);
        // A rename whose old name fanotify did not know (empty): everything.
        dirs.note(Kind::Rename, b"", Some(&bytes(&real.join("e"))), false);
        assert!(dirs.map.is_empty() && dirs.by_canonical.is_empty());
    }

    fn t_insert(t: &mut ProcTable, pid: u32, cwd: &Path) {
        t.insert_for_test(Proc {
            pid,
            cwd: Some(bytes(cwd)),
            ..Proc::default()
        });
    }
}
