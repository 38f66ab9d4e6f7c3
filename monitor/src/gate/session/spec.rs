//! [`ConfineSpec`]: what a session's confinement denies and hides.
//!
//! Landlock only allows (beneath a directory); it cannot deny beneath a subtree of an
//! allowed one. So "write-class access everywhere but beneath the denied paths" is spelled
//! as rules on the complement: along the path from `/` to each denied path, every sibling
//! that is not itself on the way to a denied path.
use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the helper installs for one session, as the daemon computed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Landlock grants write-class access beneath these (and only these) paths: the
    /// complement of the denied set, enumerated along the paths to it. The supervisor
    /// answers CONTINUE only for a target beneath one of them.
    pub write_allowed: Vec<PathBuf>,
    /// Hidden from the session (an empty read-only mount over each in its own mount
    /// namespace): confgate's configuration, credentials and state.
    pub hidden: Vec<PathBuf>,
}

impl ConfineSpec {
    /// The spec that denies write-class access beneath each of `denied` (absolute paths;
    /// they need not exist) and hides `hidden`. Existing paths are resolved first (symbolic
    /// links), so the rules name the directories Landlock will see. Fails if a directory on
    /// the way to a denied path cannot be listed (the spec would be too wide or too narrow
    /// without it).
    pub fn compute(denied: &[PathBuf], hidden: &[PathBuf]) -> io::Result<ConfineSpec> {
        let denied: BTreeSet<PathBuf> = denied
            .iter()
            .filter(|p| p.is_absolute())
            .map(|p| resolve(p))
            .collect();
        // Every directory strictly above a denied path, and the paths on the way (ancestors
        // or equal) to one: the latter are never allowed as a whole.
        let mut on_the_way: BTreeSet<PathBuf> = BTreeSet::new();
        let mut to_list: BTreeSet<PathBuf> = BTreeSet::new();
        for d in &denied {
            for a in d.ancestors() {
                on_the_way.insert(a.to_owned());
                if a != d.as_path() {
                    to_list.insert(a.to_owned());
                }
            }
        }
        let mut allowed = BTreeSet::new();
        if denied.is_empty() {
            allowed.insert(PathBuf::from("/"));
        }
        for dir in &to_list {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                // Not there (yet): nothing beneath it is allowed, which is the safe side.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("listing {}: {e}", dir.display()),
                    ));
                }
            };
            for entry in entries {
                let entry = entry?;
                // A rule on a symbolic link would name its target (Landlock opens the path):
                // links are left out; what they point at is listed where it lives.
                if entry.file_type()?.is_symlink() {
                    continue;
                }
                let child = entry.path();
                if !on_the_way.contains(&child) {
                    allowed.insert(child);
                }
            }
        }
        let mut hidden: Vec<PathBuf> = hidden.iter().map(|p| resolve(p)).collect();
        hidden.sort();
        hidden.dedup();
        Ok(ConfineSpec {
            write_allowed: allowed.into_iter().collect(),
            hidden,
        })
    }

    /// Whether Landlock lets the session write at `path` (a canonical absolute path):
    /// `path` is one of [`ConfineSpec::write_allowed`] or beneath one.
    pub fn covers(&self, path: &Path) -> bool {
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return false;
        }
        // write_allowed is sorted: the candidate that could contain `path` is the greatest
        // entry not after it, or one of its ancestors that is listed.
        path.ancestors().any(|a| {
            self.write_allowed
                .binary_search_by(|e| e.as_path().cmp(a))
                .is_ok()
        })
    }
}

/// `path` with its longest existing prefix resolved (symbolic links, `..`), the rest
/// appended as given.
fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                cur = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }

    #[test]
    fn complement_along_the_paths_to_denied() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        for f in [
            "etc/app/a.conf",
            "etc/app/sub/b",
            "etc/other",
            "srv/x",
            "etc/keep/y",
        ] {
            touch(&root.join(f));
        }
        std::fs::create_dir_all(root.join("home/u")).unwrap();
        let denied = [
            root.join("etc/app"),
            root.join("etc/other"),
            root.join("srv/missing/deep"),
        ];
        let spec = ConfineSpec::compute(&denied, &[root.join("etc/app/a.conf")]).unwrap();
        let allowed: BTreeSet<_> = spec.write_allowed.iter().cloned().collect();
        // Siblings along the way are allowed; the denied paths and their ancestors are not.
        assert!(allowed.contains(&root.join("etc/keep")));
        assert!(allowed.contains(&root.join("home")));
        assert!(allowed.contains(&root.join("srv/x")));
        for p in ["etc", "etc/app", "etc/other", "srv", "srv/missing"] {
            assert!(!allowed.contains(&root.join(p)), "{p}");
        }
        // Beyond the temp tree, the siblings of its ancestors are allowed (e.g. /proc).
        assert!(allowed.contains(Path::new("/proc")));
        assert!(!allowed.contains(Path::new("/")));
        assert!(spec.covers(&root.join("etc/keep/y")));
        assert!(spec.covers(&root.join("home/u/new")));
        assert!(spec.covers(Path::new("/proc/self/fd")));
        assert!(!spec.covers(&root.join("etc/app/a.conf")));
        assert!(!spec.covers(&root.join("etc/app/sub/b")));
        assert!(!spec.covers(&root.join("etc/other")));
        assert!(!spec.covers(&root.join("etc/new-file")));
        assert!(!spec.covers(&root.join("srv/missing/deep/z")));
        assert!(!spec.covers(&root.join("srv/new")));
        assert!(!spec.covers(&root.join("etc/keep/../app/a.conf")));
        assert!(!spec.covers(Path::new("relative")));
        assert_eq!(spec.hidden, vec![root.join("etc/app/a.conf")]);
    }

    #[test]
    fn symlinked_denied_paths_are_resolved() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        touch(&root.join("real/f"));
        touch(&root.join("real2/g"));
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let spec = ConfineSpec::compute(&[root.join("link/f")], &[]).unwrap();
        assert!(!spec.covers(&root.join("real/f")));
        assert!(spec.covers(&root.join("real2/g")));
        // A link is never a rule (Landlock would follow it to the denied tree).
        assert!(!spec.covers(&root.join("link")));
    }

    #[test]
    fn nothing_denied_allows_everything() {
        let spec = ConfineSpec::compute(&[], &[]).unwrap();
        assert_eq!(spec.write_allowed, vec![PathBuf::from("/")]);
        assert!(spec.covers(Path::new("/tmp")));
    }
}
