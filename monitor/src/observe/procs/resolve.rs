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
//!
//! Operations that follow a final symlink need to know whether the name is one. Rather
//! than an `lstat` per open, the cache keeps a census of the symlinks of each directory
//! (one `readdir`, renewed after the TTL), kept true by the operations the pipeline sees
//! (new symlinks, renames, unlinks; a creation fanotify reports without a syscall twin
//! drops the directory's census). A name the census lists is checked with `lstat`; a
//! symlink made by a process the daemon does not see can go unnoticed for up to the TTL,
//! and its open is then reported under the symlink's name.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use monitor_common::AT_FDCWD;

use crate::{event::Kind, observe::procs::proctable::ProcTable, os::procfs};

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
    /// Symlink names by canonical directory (see the module documentation).
    census: BTreeMap<Vec<u8>, Census>,
    ttl: Duration,
    stats: DirCacheStats,
}

/// The names of the symlinks in one directory, as of `built` plus what was seen since.
#[derive(Debug)]
struct Census {
    built: Instant,
    symlinks: HashSet<Vec<u8>>,
}

/// Directories with more entries than this get no census (their names are checked one
/// by one); and at most this many directories have one.
const CENSUS_MAX: usize = 4096;

/// The symlink names of `dir` (None if it cannot be read or is too big).
fn take_census(dir: &Path) -> Option<HashSet<Vec<u8>>> {
    let mut out = HashSet::new();
    for (i, entry) in std::fs::read_dir(dir).ok()?.enumerate() {
        if i >= CENSUS_MAX {
            return None;
        }
        let entry = entry.ok()?;
        // d_type from the directory itself; an lstat only where the filesystem lacks it.
        if entry.file_type().ok()?.is_symlink() {
            out.insert(entry.file_name().into_vec());
        }
    }
    Some(out)
}

/// (directory, name) of an absolute path.
fn split(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = p.iter().rposition(|&b| b == b'/')?;
    let dir = if slash == 0 { &p[..1] } else { &p[..slash] };
    Some((dir, &p[slash + 1..]))
}

/// Counters of a [`DirCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped because an operation may have changed them (or the cache was full).
    pub forgotten: u64,
    /// Directory symlink censuses taken (`readdir`).
    pub census_taken: u64,
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
            census: BTreeMap::new(),
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

    /// Whether `name` in canonical directory `dir` may be a symlink (see the module
    /// documentation): false only when the directory's census says it is not.
    fn may_be_symlink(&mut self, dir: &Path, name: &OsStr) -> bool {
        let now = Instant::now();
        let key = dir.as_os_str().as_bytes();
        let fresh = self
            .census
            .get(key)
            .is_some_and(|c| now.duration_since(c.built) < self.ttl);
        if !fresh {
            self.census.remove(key);
            self.stats.census_taken += 1;
            let Some(symlinks) = take_census(dir) else {
                return true;
            };
            if self.census.len() >= CENSUS_MAX {
                self.census.clear();
            }
            self.census.insert(
                key.to_vec(),
                Census {
                    built: now,
                    symlinks,
                },
            );
        }
        self.census
            .get(key)
            .is_none_or(|c| c.symlinks.contains(name.as_bytes()))
    }

    /// Record in the census of its directory whether `path` is now a symlink.
    fn census_set(&mut self, path: &[u8], symlink: bool) {
        if let Some((dir, name)) = split(path)
            && let Some(c) = self.census.get_mut(dir)
        {
            if symlink {
                c.symlinks.insert(name.to_vec());
            } else {
                c.symlinks.remove(name);
            }
        }
    }

    /// Drop the census of the directory of `path` (something of unknown type appeared).
    fn census_drop(&mut self, path: &[u8]) {
        if let Some((dir, _)) = split(path) {
            self.census.remove(dir);
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
        let dirs: Vec<Vec<u8>> = self
            .census
            .range(path.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(path))
            .filter(|k| at_or_below(k, path))
            .cloned()
            .collect();
        for d in dirs {
            self.census.remove(&d);
        }
    }

    /// An operation of `kind` on `path` (a rename's new name: `target`) happened, or was
    /// attempted: `failed` when it is known to have failed. Forget what it may have
    /// changed: only names that appear, disappear or move change how a path resolves;
    /// writes, chmod, chown, new files and hard links change nothing.
    pub fn note(&mut self, kind: Kind, path: &[u8], target: Option<&[u8]>, failed: bool) {
        if failed || (self.map.is_empty() && self.census.is_empty()) {
            return;
        }
        match kind {
            Kind::Rename => {
                self.forget(path);
                // What the old name was, the new name is now.
                let was = split(path).and_then(|(dir, name)| {
                    self.census.get_mut(dir).map(|c| c.symlinks.remove(name))
                });
                if let Some(t) = target {
                    self.forget(t);
                    match was {
                        Some(symlink) => self.census_set(t, symlink),
                        None => self.census_drop(t),
                    }
                }
            }
            Kind::Unlink | Kind::Mkdir => {
                self.forget(path);
                self.census_set(path, false);
            }
            Kind::Symlink => {
                self.forget(path);
                self.census_set(path, true);
            }
            // A hard link to a symlink is a symlink: don't guess.
            Kind::Link => {
                if let Some(t) = target {
                    self.census_drop(t);
                }
            }
            _ => {}
        }
    }

    /// fanotify reported `kind` on `path` (`target`): forget the directories it may have
    /// moved. The census is left to the syscall twin's [`DirCache::note`] (noting both
    /// would apply a rename twice) or, when there is none, to
    /// [`DirCache::note_unpaired`].
    pub fn note_fanotify(&mut self, kind: Kind, path: &[u8], target: Option<&[u8]>) {
        if self.map.is_empty() && self.census.is_empty() {
            return;
        }
        if matches!(kind, Kind::Rename | Kind::Unlink | Kind::Mkdir) {
            self.forget(path);
            if let Some(t) = target {
                self.forget(t);
            }
        }
    }

    /// fanotify reported `kind` on `path` (`target`) with no syscall twin: the type of
    /// what appeared is unknown, so the census of its directory goes.
    pub fn note_unpaired(&mut self, kind: Kind, path: &[u8], target: Option<&[u8]>) {
        match kind {
            Kind::Create => self.census_drop(path),
            Kind::Rename => {
                if let Some(t) = target {
                    self.census_drop(t);
                }
            }
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
        match procs.get(tgid).and_then(|p| p.cwd.clone()) {
            // Unknown since a chdir the daemon could not follow (`ProcTable::forget_cwd`).
            Some(cwd) if cwd.is_empty() => None,
            Some(cwd) => Some(cwd),
            None => procfs::link(tgid, "cwd"),
        }
    } else {
        procfs::fd_path_or_live(procs.fd_path(tgid, dfd).map(<[u8]>::to_vec), tgid, dfd)
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
    if !follow || !dirs.may_be_symlink(&parent, name) {
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
    use crate::observe::procs::proctable::Proc;

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

    #[test]
    fn census_of_symlinks_follows_what_the_pipeline_sees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::write(real.join("target.conf"), b"x").expect("write");
        std::os::unix::fs::symlink(real.join("target.conf"), real.join("ln")).expect("ln");
        let t = ProcTable::default();
        let mut dirs = DirCache::default();
        let open = |dirs: &mut DirCache, name: &str| {
            resolve(&t, dirs, 1, AT_FDCWD, &bytes(&real.join(name)), true).path
        };
        assert_eq!(open(&mut dirs, "ln"), bytes(&real.join("target.conf")));
        assert_eq!(open(&mut dirs, "plain"), bytes(&real.join("plain")));
        assert_eq!(
            dirs.stats().census_taken,
            1,
            "one readdir for the directory"
        );
        // A symlink the pipeline saw being made.
        std::os::unix::fs::symlink(real.join("target.conf"), real.join("ln2")).expect("ln");
        dirs.note(Kind::Symlink, &bytes(&real.join("ln2")), None, false);
        assert_eq!(open(&mut dirs, "ln2"), bytes(&real.join("target.conf")));
        // Renamed over a plain name: that name is a symlink now, the old one is gone.
        std::fs::rename(real.join("ln2"), real.join("plain")).expect("mv");
        dirs.note(
            Kind::Rename,
            &bytes(&real.join("ln2")),
            Some(&bytes(&real.join("plain"))),
            false,
        );
        assert_eq!(open(&mut dirs, "plain"), bytes(&real.join("target.conf")));
        // fanotify's view of the same rename changes nothing more.
        dirs.note_fanotify(
            Kind::Rename,
            &bytes(&real.join("ln2")),
            Some(&bytes(&real.join("plain"))),
        );
        assert_eq!(open(&mut dirs, "plain"), bytes(&real.join("target.conf")));
        // A file created by fanotify alone (type unknown): a new census.
        std::os::unix::fs::symlink(real.join("target.conf"), real.join("ln3")).expect("ln");
        dirs.note_unpaired(Kind::Create, &bytes(&real.join("ln3")), None);
        assert_eq!(open(&mut dirs, "ln3"), bytes(&real.join("target.conf")));
        assert_eq!(dirs.stats().census_taken, 2);
        // Unseen: reported under the symlink's own name until the census is renewed.
        std::os::unix::fs::symlink(real.join("target.conf"), real.join("ln4")).expect("ln");
        assert_eq!(open(&mut dirs, "ln4"), bytes(&real.join("ln4")));
        let mut fresh = DirCache::new(Duration::ZERO);
        assert_eq!(open(&mut fresh, "ln4"), bytes(&real.join("target.conf")));
    }

    fn t_insert(t: &mut ProcTable, pid: u32, cwd: &Path) {
        t.insert_for_test(Proc {
            pid,
            cwd: Some(bytes(cwd)),
            ..Proc::default()
        });
    }
}
