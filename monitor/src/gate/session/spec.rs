//! [`ConfineSpec`]: what a session's confinement denies and hides.
//!
//! Landlock only allows (beneath a directory); it cannot deny beneath a subtree of an
//! allowed one. So "write-class access everywhere but beneath the denied paths" is spelled
//! as rules on the complement: along the path from `/` to each denied path, every sibling
//! that is not itself on the way to a denied path.
use std::collections::BTreeSet;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the helper installs for one session, as the daemon computed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Landlock grants write-class access beneath these (and only these) paths: the
    /// complement of the denied set, enumerated along the paths to it. The supervisor
    /// answers CONTINUE only for a target beneath one of them.
    #[serde(with = "escaped_paths")]
    pub write_allowed: Vec<PathBuf>,
    /// Hidden from the session (an empty read-only mount over each in its own mount
    /// namespace): confgate's configuration, credentials and state.
    #[serde(with = "escaped_paths")]
    pub hidden: Vec<PathBuf>,
    /// The session's declared scope (`confgate run --scope`), its literal prefixes resolved
    /// (see `scope::narrow`); empty: no scope. `write_allowed` is already narrowed to
    /// the globs' roots; the supervisor refuses every target outside the globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
}

/// Paths as the project's escaped text (`\xNN` for bytes that are not printable UTF-8):
/// any file name, valid UTF-8 or not, survives the JSON of the supervise socket and the
/// store (a name that is not UTF-8 in a listed directory must not make confinement fail).
mod escaped_paths {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::event::escape::{decode, encode};

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| encode(p.as_os_str().as_bytes())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|t| {
                decode(&t)
                    .map(|b| PathBuf::from(OsString::from_vec(b)))
                    .ok_or_else(|| D::Error::custom(format!("bad escaped path {t:?}")))
            })
            .collect()
    }
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
            // A directory that is itself denied (or beneath a denied one, as /etc/systemd
            // beneath /etc when both are gated) allows nothing beneath it.
            if denied.iter().any(|d| dir.starts_with(d)) {
                continue;
            }
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
            scope: Vec::new(),
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

/// [`ConfineSpec::covers`] for the supervisor's hot path: the allowed paths as bytes in a
/// hash set, each ancestor of a path looked up once (a component-wise binary search of
/// `Path`s cost several microseconds per notification).
#[derive(Debug)]
pub struct CoverSet {
    allowed: std::collections::HashSet<Vec<u8>>,
}

impl CoverSet {
    pub fn new(spec: &ConfineSpec) -> CoverSet {
        CoverSet {
            allowed: spec
                .write_allowed
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
        }
    }

    /// The same answer as [`ConfineSpec::covers`].
    pub fn covers(&self, path: &Path) -> bool {
        let b = path.as_os_str().as_bytes();
        if b.first() != Some(&b'/') {
            return false;
        }
        if b.windows(2).any(|w| w == b"//")
            || b.split(|&c| c == b'/').any(|c| c == b"." || c == b"..")
        {
            // Not what the supervisor's resolution produces: compared as `Path` does
            // (repeated slashes and "." are the same path, ".." is never covered).
            if path.components().any(|c| matches!(c, Component::ParentDir)) {
                return false;
            }
            let norm: PathBuf = path.components().collect();
            if norm.as_os_str().as_bytes() == b {
                return false;
            }
            return self.covers(&norm);
        }
        // The path without trailing slashes, then each ancestor, then "/".
        let mut end = b.len();
        while end > 1 && b[end - 1] == b'/' {
            end -= 1;
        }
        loop {
            if self.allowed.contains(&b[..end]) {
                return true;
            }
            if end <= 1 {
                return false;
            }
            let Some(slash) = b[..end].iter().rposition(|&c| c == b'/') else {
                return false;
            };
            end = slash.max(1);
        }
    }
}

/// `path` with its longest existing prefix resolved (symbolic links, `..`), the rest
/// appended as given.
pub(super) fn resolve(path: &Path) -> PathBuf {
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

    #[test]
    fn nested_denied_paths_allow_nothing_beneath_the_outer_one() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::write(root.join("etc/passwd"), "x").unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        let spec = ConfineSpec::compute(&[root.join("etc"), root.join("etc/systemd/system")], &[])
            .unwrap();
        assert!(!spec.covers(&root.join("etc/passwd")), "{spec:?}");
        assert!(!spec.covers(&root.join("etc/systemd/x")), "{spec:?}");
        assert!(
            !spec.covers(&root.join("etc/systemd/system/u.service")),
            "{spec:?}"
        );
        assert!(spec.covers(&root.join("home/u")), "{spec:?}");
    }

    #[test]
    fn names_that_are_not_utf8_survive_the_wire() {
        use std::os::unix::ffi::OsStrExt as _;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/a\xff\nb"));
        let spec = ConfineSpec {
            write_allowed: vec![odd.clone(), PathBuf::from("/home")],
            hidden: vec![PathBuf::from("/etc/confgate")],
            scope: vec![],
        };
        let json = serde_json::to_string(&spec).unwrap();
        let back: ConfineSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        assert!(!json.contains('\n'));
    }

    #[test]
    fn cover_set_answers_as_the_spec_does() {
        let mut write_allowed = vec![
            PathBuf::from("/a-b"),
            PathBuf::from("/a/b"),
            PathBuf::from("/etc/hosts"),
            PathBuf::from("/tmp"),
        ];
        // As `compute` keeps them (the spec's search needs `Path` order).
        write_allowed.sort();
        let spec = ConfineSpec {
            write_allowed,
            hidden: vec![],
            scope: vec![],
        };
        let set = CoverSet::new(&spec);
        for p in [
            "/a/b",
            "/a/b/c",
            "/a/bc",
            "/a",
            "/a-b/x",
            "/a-bc",
            "/etc/hosts",
            "/etc/hosts/x",
            "/etc/host",
            "/etc",
            "/",
            "/tmp/",
            "/tmp//x",
            "//tmp/x",
            "/tmp/../etc/x",
            "/tmp/./x",
            "tmp/x",
            "",
            "/tmpx",
        ] {
            assert_eq!(set.covers(Path::new(p)), spec.covers(Path::new(p)), "{p:?}");
        }
        let root = CoverSet::new(&ConfineSpec {
            write_allowed: vec![PathBuf::from("/")],
            hidden: vec![],
            scope: vec![],
        });
        assert!(root.covers(Path::new("/x/y")));
    }
}
