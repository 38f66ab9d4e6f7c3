//! The set of watched paths, derived from the `[watch]` section of the configuration.
//!
//! One [`WatchSet`] answers three questions: which byte prefixes go into the kernel's LPM
//! trie ([`WatchSet::kernel_prefixes`]), what fanotify marks
//! ([`WatchSet::fanotify_trees`], [`WatchSet::fanotify_files`]), and whether a given path
//! is watched at all ([`WatchSet::matches`], the final word for both event sources).
//!
//! Paths are handled as bytes throughout: a file name need not be UTF-8.
//!
//! # Symlinks
//!
//! The kernel compares the path *argument* of a syscall, as the process wrote it, while
//! fanotify reports the path of the object reached, with every symlink resolved. A
//! configured path that goes through a symlink (`/var/run` -> `/run`, `/home` ->
//! `/var/home`, `/etc/resolv.conf` -> `/run/systemd/resolve/stub-resolv.conf`) is
//! therefore kept in both forms: as written and canonicalised. When only an ancestor
//! exists, that ancestor is canonicalised and the rest appended. Both forms go into the
//! kernel prefixes and into [`WatchSet::matches`]; fanotify marks use the canonical form.
//! Symlinks *inside* a watched tree are not followed (their targets are not watched).
//!
//! The filesystem is looked at when the set is built (symlinks, file or directory) and,
//! for the fanotify lists, again at each call; build a new set after a watched root
//! appears, disappears or changes kind.
//!
//! A configured path that does not exist yet is treated as a directory tree, which also
//! gives the exact path: it is covered whether it appears as a file or a directory.
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use globset::{Candidate, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::{
    self, ConfigError, MAX_KERNEL_PREFIX, WatchSection, build_glob, split_project_root,
};

/// Watched paths, ready for the kernel, fanotify and userspace matching.
#[derive(Clone, Debug)]
pub struct WatchSet {
    /// Configured `paths` entries, normalised, in configuration order.
    configured: Vec<PathBuf>,
    /// Directory trees (as written and canonical), without trailing `/` (`/` itself
    /// stays `/`), none inside another.
    trees: Vec<Vec<u8>>,
    /// Single files (both forms) not inside a tree.
    files: Vec<Vec<u8>>,
    /// Project roots (both forms of their fixed directory).
    roots: Vec<ProjectRoot>,
    /// File-name globs of project configuration files.
    project_globs: GlobSet,
    /// Globs of absolute paths never reported.
    exclude: GlobSet,
}

#[derive(Clone, Debug)]
struct ProjectRoot {
    /// Fixed leading directory, without trailing `/` (`/` stays `/`).
    fixed: Vec<u8>,
    /// Glob of the one component below `fixed` that names a project root, if the
    /// configured root ends in a glob (`/home/*`); otherwise `fixed` is the root.
    last: Option<GlobMatcher>,
}

impl ProjectRoot {
    /// Whether `path` lies strictly below this project root.
    fn contains(&self, path: &[u8]) -> bool {
        let Some(rest) = strip_dir(path, &self.fixed) else {
            return false;
        };
        match &self.last {
            None => !rest.is_empty(),
            Some(glob) => match rest.iter().position(|b| *b == b'/') {
                Some(slash) => {
                    slash + 1 < rest.len()
                        && glob.is_match_candidate(&Candidate::from_bytes(&rest[..slash]))
                }
                None => false,
            },
        }
    }
}

/// What a configured path is, as seen when the set is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A directory, or nothing yet (watched as a tree, which covers both).
    Tree,
    File,
}

impl WatchSet {
    /// Build the set, checking the section as [`crate::config::Config::validate`] does.
    /// Errors name the field (`watch.paths[2]`) but no file: call it on a validated
    /// configuration to have those located.
    pub fn new(cfg: &WatchSection) -> Result<WatchSet, ConfigError> {
        let mut checker = config::Checker::default();
        config::check_watch(cfg, &mut checker);
        if let Some(e) = checker.problems.into_iter().next() {
            return Err(e);
        }

        let mut configured = Vec::new();
        let mut trees = Vec::new();
        let mut files = Vec::new();
        for (i, p) in cfg.paths.iter().enumerate() {
            let literal: PathBuf = p.components().collect();
            let kind = match fs::metadata(&literal) {
                Ok(m) if !m.is_dir() => Kind::File,
                _ => Kind::Tree,
            };
            let canonical = resolve(&literal);
            for form in dedup_forms(&literal, &canonical) {
                // A tree needs room for its trailing '/'.
                let len = form.len() + usize::from(kind == Kind::Tree && form != b"/");
                if len > MAX_KERNEL_PREFIX {
                    return Err(ConfigError::invalid(
                        format!("watch.paths[{i}]"),
                        format!(
                            "resolves to {}, whose kernel prefix would be {len} bytes; \
                             at most {MAX_KERNEL_PREFIX}",
                            form.escape_ascii()
                        ),
                    ));
                }
                match kind {
                    Kind::Tree => trees.push(form),
                    Kind::File => files.push(form),
                }
            }
            configured.push(literal);
        }
        let trees = outermost(trees);
        let files = uncovered_files(files, &trees);

        let mut roots = Vec::new();
        for (i, r) in cfg.project_roots.iter().enumerate() {
            let field = format!("watch.project_roots[{i}]");
            let (fixed, last) =
                split_project_root(r).map_err(|m| ConfigError::invalid(&field, m))?;
            let last = match last {
                Some(g) => Some(
                    build_glob(g, true)
                        .map_err(|m| ConfigError::invalid(&field, m))?
                        .compile_matcher(),
                ),
                None => None,
            };
            let literal: PathBuf = Path::new(fixed).components().collect();
            let canonical = resolve(&literal);
            for fixed in dedup_forms(&literal, &canonical) {
                let len = fixed.len() + usize::from(fixed != b"/");
                if len > MAX_KERNEL_PREFIX {
                    return Err(ConfigError::invalid(
                        &field,
                        format!(
                            "resolves to {}, whose kernel prefix would be {len} bytes; \
                             at most {MAX_KERNEL_PREFIX}",
                            fixed.escape_ascii()
                        ),
                    ));
                }
                roots.push(ProjectRoot {
                    fixed,
                    last: last.clone(),
                });
            }
        }

        Ok(WatchSet {
            configured,
            trees,
            files,
            roots,
            project_globs: glob_set("watch.project_globs", &cfg.project_globs)?,
            exclude: glob_set("watch.exclude", &cfg.exclude)?,
        })
    }

    /// Byte prefixes for the kernel LPM trie, sorted. A directory tree gives `"/etc/"`
    /// (everything below) and `"/etc"` (the directory itself, e.g. its removal or
    /// rename); a single file gives its exact path; a project root gives its fixed
    /// leading directory (`"/home/"` for `"/home/*"`). Entries inside a directory
    /// prefix are dropped: the trie answers with the longest match only, so an exact
    /// entry below a directory prefix would hide that prefix for longer paths.
    pub fn kernel_prefixes(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for t in &self.trees {
            all.push(dir_prefix(t));
            if t != b"/" {
                all.push(t.clone());
            }
        }
        all.extend(self.files.iter().cloned());
        all.extend(self.roots.iter().map(|r| dir_prefix(&r.fixed)));
        all.sort();
        all.dedup();
        let dirs: Vec<Vec<u8>> = all.iter().filter(|p| p.ends_with(b"/")).cloned().collect();
        all.retain(|p| !dirs.iter().any(|d| p.len() > d.len() && p.starts_with(d)));
        all
    }

    /// Existing directories to mark recursively with fanotify: the canonical form of
    /// every configured tree that is a directory now, none inside another. Project
    /// roots are not included (no marks on whole home directories).
    pub fn fanotify_trees(&self) -> Vec<PathBuf> {
        self.fanotify_marks().0
    }

    /// Existing single files (canonical) to mark with fanotify, outside every tree of
    /// [`WatchSet::fanotify_trees`].
    pub fn fanotify_files(&self) -> Vec<PathBuf> {
        self.fanotify_marks().1
    }

    fn fanotify_marks(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut trees = Vec::new();
        let mut files = Vec::new();
        for p in &self.configured {
            let Ok(canonical) = fs::canonicalize(p) else {
                continue;
            };
            let bytes = canonical.as_os_str().as_bytes().to_vec();
            match fs::metadata(&canonical) {
                Ok(m) if m.is_dir() => trees.push(bytes),
                Ok(_) => files.push(bytes),
                Err(_) => {}
            }
        }
        let trees = outermost(trees);
        let files = uncovered_files(files, &trees);
        (into_paths(trees), into_paths(files))
    }

    /// Whether a canonical absolute path is watched: not excluded, and either inside a
    /// watched tree (or the tree itself), equal to a watched file, or strictly below a
    /// project root with a file name matching `project_globs`.
    pub fn matches(&self, path: &Path) -> bool {
        let p = path.as_os_str().as_bytes();
        if !p.starts_with(b"/") || self.excluded(p) {
            return false;
        }
        if self
            .trees
            .iter()
            .any(|t| t == p || strip_dir(p, t).is_some())
            || self.files.iter().any(|f| f == p)
        {
            return true;
        }
        self.is_project_file(p)
    }

    fn is_project_file(&self, p: &[u8]) -> bool {
        let name = match p.iter().rposition(|b| *b == b'/') {
            Some(slash) => &p[slash + 1..],
            None => p,
        };
        !name.is_empty()
            && self
                .project_globs
                .is_match_candidate(&Candidate::from_bytes(name))
            && self.roots.iter().any(|r| r.contains(p))
    }

    /// Whether a canonical absolute path is an IaC file ([`crate::config::iac`]) strictly
    /// below a project root: its events are labelled `details.class = "iac"`.
    pub fn is_iac(&self, p: &[u8]) -> bool {
        let name = p.rsplit(|b| *b == b'/').next().unwrap_or(p);
        crate::config::iac::is_iac_name(name) && self.roots.iter().any(|r| r.contains(p))
    }

    /// Whether `p` or one of its ancestors matches an exclude glob.
    fn excluded(&self, p: &[u8]) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        let ancestors = p
            .iter()
            .enumerate()
            .filter(|(i, b)| **b == b'/' && *i > 0)
            .map(|(i, _)| &p[..i]);
        ancestors
            .chain(std::iter::once(p))
            .any(|a| self.exclude.is_match_candidate(&Candidate::from_bytes(a)))
    }
}

/// `p` below directory `dir` (not `dir` itself): the part after `dir/`.
fn strip_dir<'a>(p: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    if dir == b"/" {
        return p.strip_prefix(b"/").filter(|rest| !rest.is_empty());
    }
    p.strip_prefix(dir)?.strip_prefix(b"/")
}

fn dir_prefix(dir: &[u8]) -> Vec<u8> {
    if dir == b"/" {
        return dir.to_vec();
    }
    let mut p = dir.to_vec();
    p.push(b'/');
    p
}

/// Sorted, deduplicated directories with those inside another dropped.
fn outermost(mut dirs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for d in dirs {
        if !kept.iter().any(|k| strip_dir(&d, k).is_some()) {
            kept.push(d);
        }
    }
    kept
}

/// Sorted, deduplicated files with those inside (or equal to) a tree dropped.
fn uncovered_files(mut files: Vec<Vec<u8>>, trees: &[Vec<u8>]) -> Vec<Vec<u8>> {
    files.sort();
    files.dedup();
    files.retain(|f| !trees.iter().any(|t| t == f || strip_dir(f, t).is_some()));
    files
}

fn into_paths(v: Vec<Vec<u8>>) -> Vec<PathBuf> {
    v.into_iter()
        .map(|b| PathBuf::from(OsString::from_vec(b)))
        .collect()
}

/// The path as written and its canonical form, once each.
fn dedup_forms(literal: &Path, canonical: &Path) -> Vec<Vec<u8>> {
    let a = literal.as_os_str().as_bytes().to_vec();
    let b = canonical.as_os_str().as_bytes().to_vec();
    if a == b { vec![a] } else { vec![a, b] }
}

/// Canonicalise the longest existing ancestor of `p` and append the rest; `p` itself if
/// nothing resolves.
fn resolve(p: &Path) -> PathBuf {
    let mut existing = p;
    let mut rest = Vec::new();
    loop {
        if let Ok(mut c) = fs::canonicalize(existing) {
            for name in rest.iter().rev() {
                c.push(name);
            }
            return c;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p.to_owned(),
        }
    }
}

fn glob_set(field: &str, patterns: &[String]) -> Result<GlobSet, ConfigError> {
    let mut builder = GlobSetBuilder::new();
    for (i, g) in patterns.iter().enumerate() {
        let glob =
            build_glob(g, true).map_err(|m| ConfigError::invalid(format!("{field}[{i}]"), m))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| ConfigError::invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::symlink;

    use super::*;

    /// A root no test machine has, so that every configured path is "not there yet".
    const NX: &str = "/nonexistent-confgate-test";

    fn section(paths: &[&str]) -> WatchSection {
        WatchSection {
            paths: paths.iter().map(PathBuf::from).collect(),
            exclude: vec![],
            project_roots: vec![],
            project_globs: vec![],
            rename_sources: false,
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn bytes_path(b: &[u8]) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(b))
    }

    fn prefixes(set: &WatchSet) -> Vec<String> {
        set.kernel_prefixes()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn nested_entries_are_deduplicated() {
        let a = format!("{NX}/etc");
        let b = format!("{NX}/etc/cron.d");
        let c = format!("{NX}/etc/cron.d/x");
        let d = format!("{NX}/var/spool/cron");
        let set = WatchSet::new(&section(&[&b, &a, &c, &d, &a])).unwrap();
        assert_eq!(
            prefixes(&set),
            [
                format!("{NX}/etc"),
                format!("{NX}/etc/"),
                d.clone(),
                format!("{d}/")
            ]
        );
        assert!(set.matches(&p(&format!("{NX}/etc/cron.d/job"))));
        assert!(set.matches(&p(&a)));
        assert!(set.fanotify_trees().is_empty(), "nothing exists");
    }

    #[test]
    fn prefix_boundary() {
        let set = WatchSet::new(&section(&[&format!("{NX}/etc")])).unwrap();
        assert!(set.matches(&p(&format!("{NX}/etc"))));
        assert!(set.matches(&p(&format!("{NX}/etc/passwd"))));
        assert!(!set.matches(&p(&format!("{NX}/etcfoo"))));
        assert!(!set.matches(&p(&format!("{NX}/etcfoo/passwd"))));
        assert!(!set.matches(&p(&format!("{NX}/et"))));
        assert!(!set.matches(&p("etc/passwd")), "relative paths never match");
    }

    #[test]
    fn files_and_trees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let etc = root.join("etc");
        fs::create_dir_all(etc.join("cron.d")).unwrap();
        fs::write(etc.join("crontab"), "").unwrap();
        let spool = root.join("spool");
        fs::create_dir(&spool).unwrap();
        fs::write(spool.join("single"), "").unwrap();
        fs::write(root.join("lonely"), "").unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        let cfg = section(&[
            &s(&etc),
            &s(&etc.join("crontab")),
            &s(&etc.join("cron.d")),
            &s(&spool.join("single")),
            &s(&root.join("lonely")),
            &s(&root.join("later")),
        ]);
        let set = WatchSet::new(&cfg).unwrap();

        assert_eq!(set.fanotify_trees(), std::slice::from_ref(&etc));
        assert_eq!(
            set.fanotify_files(),
            [root.join("lonely"), spool.join("single")]
        );

        let r = s(&root);
        assert_eq!(
            prefixes(&set),
            [
                format!("{r}/etc"),
                format!("{r}/etc/"),
                format!("{r}/later"),
                format!("{r}/later/"),
                format!("{r}/lonely"),
                format!("{r}/spool/single"),
            ]
        );
        assert!(set.matches(&spool.join("single")));
        assert!(!set.matches(&spool.join("single2")));
        assert!(!set.matches(&spool.join("other")));
        assert!(
            set.matches(&root.join("later")),
            "a missing path may become a file"
        );
        assert!(set.matches(&root.join("later/x")), "or a directory");

        // Appears later: the fanotify lists look again, as a file or a directory.
        fs::create_dir(root.join("later")).unwrap();
        assert_eq!(set.fanotify_trees(), [etc.clone(), root.join("later")]);
    }

    #[test]
    fn symlinked_roots_are_kept_in_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::create_dir(root.join("run")).unwrap();
        fs::create_dir(root.join("var")).unwrap();
        symlink("../run", root.join("var/run")).unwrap();
        fs::write(root.join("run/stub.conf"), "").unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        symlink("../run/stub.conf", root.join("etc/resolv.conf")).unwrap();

        let s = |p: PathBuf| p.to_str().unwrap().to_owned();
        let cfg = section(&[
            &s(root.join("var/run/app")),
            &s(root.join("etc/resolv.conf")),
        ]);
        let set = WatchSet::new(&cfg).unwrap();
        let r = s(root.clone());
        assert_eq!(
            prefixes(&set),
            [
                format!("{r}/etc/resolv.conf"),
                format!("{r}/run/app"),
                format!("{r}/run/app/"),
                format!("{r}/run/stub.conf"),
                format!("{r}/var/run/app"),
                format!("{r}/var/run/app/"),
            ]
        );
        // Canonical paths (what fanotify reports) and the paths as written both match.
        assert!(set.matches(&root.join("run/app/x.conf")));
        assert!(set.matches(&root.join("var/run/app/x.conf")));
        assert!(set.matches(&root.join("run/stub.conf")));
        assert!(set.matches(&root.join("etc/resolv.conf")));
        // fanotify marks the canonical objects.
        assert!(
            set.fanotify_trees().is_empty(),
            "run/app does not exist yet"
        );
        assert_eq!(set.fanotify_files(), [root.join("run/stub.conf")]);
        fs::create_dir(root.join("run/app")).unwrap();
        assert_eq!(set.fanotify_trees(), [root.join("run/app")]);
    }

    #[test]
    fn excludes() {
        let mut cfg = section(&[&format!("{NX}/etc")]);
        cfg.exclude = vec![
            format!("{NX}/etc/ssl/private"),
            "**/*.swp".to_owned(),
            format!("{NX}/etc/*.bak"),
        ];
        let set = WatchSet::new(&cfg).unwrap();
        assert!(!set.matches(&p(&format!("{NX}/etc/ssl/private"))));
        assert!(!set.matches(&p(&format!("{NX}/etc/ssl/private/key.pem"))));
        assert!(set.matches(&p(&format!("{NX}/etc/ssl/private2/key.pem"))));
        assert!(!set.matches(&p(&format!("{NX}/etc/.hosts.swp"))));
        assert!(!set.matches(&p(&format!("{NX}/etc/a/b/.x.swp"))));
        assert!(!set.matches(&p(&format!("{NX}/etc/hosts.bak"))));
        assert!(
            set.matches(&p(&format!("{NX}/etc/sub/hosts.bak"))),
            "`*` stays in one component"
        );
        assert!(set.matches(&p(&format!("{NX}/etc/hosts"))));
        // Excludes do not change the kernel prefixes (the trie has no globs).
        assert_eq!(prefixes(&set), [format!("{NX}/etc"), format!("{NX}/etc/")]);
    }

    fn project_set() -> WatchSet {
        let mut cfg = section(&[]);
        cfg.project_roots = vec![
            format!("{NX}/home/*"),
            format!("{NX}/srv"),
            format!("{NX}/proj-?/"),
        ];
        cfg.project_globs = crate::config::WatchSection::default().project_globs;
        WatchSet::new(&cfg).unwrap()
    }

    #[test]
    fn project_globs_at_depth() {
        let set = project_set();
        let m = |s: &str| set.matches(&p(&format!("{NX}{s}")));
        assert!(m("/home/alice/app/.env"));
        assert!(m("/home/alice/.env.local"));
        assert!(m("/home/alice/a/b/c/d/config.yaml"));
        assert!(m("/home/.hidden/x.toml"), "`*` matches a dot-directory");
        assert!(!m("/home/alice/app/main.rs"));
        assert!(!m("/home/alice/app/.envrc"));
        assert!(!m("/home/.env"), "must be strictly below a project root");
        assert!(!m("/home/alice"));
        assert!(!m("/homeX/alice/.env"));
        assert!(m("/srv/.env"));
        assert!(m("/srv/site/nginx.conf"));
        assert!(!m("/srv"));
        assert!(!m("/srvx/a.conf"));
        assert!(m("/proj-1/x/.env"));
        assert!(!m("/proj-12/x/.env"));
        assert!(m("/proj-1/.env"), "directly in a project root");
        assert!(!m("/proj-1"));
        // "/proj-?" has the fixed directory NX itself, which covers the other two.
        assert_eq!(prefixes(&set), [format!("{NX}/")]);
        assert!(set.fanotify_trees().is_empty() && set.fanotify_files().is_empty());
    }

    #[test]
    fn non_utf8_paths() {
        let mut cfg = section(&[&format!("{NX}/etc")]);
        cfg.project_roots = vec![format!("{NX}/home/*")];
        cfg.project_globs = vec!["*.conf".to_owned(), ".env".to_owned()];
        cfg.exclude = vec!["**/*.swp".to_owned()];
        let set = WatchSet::new(&cfg).unwrap();
        let nx = NX.as_bytes();
        let path = |tail: &[u8]| bytes_path(&[nx, tail].concat());
        assert!(set.matches(&path(b"/etc/\xff\xfe")));
        assert!(set.matches(&path(b"/etc/caf\xe9/x")));
        assert!(!set.matches(&path(b"/etc/\xff.swp")));
        assert!(!set.matches(&path(b"/etc\xff/x")));
        assert!(set.matches(&path(b"/home/\xff\xfe/app/\xe9t\xe9.conf")));
        assert!(set.matches(&path(b"/home/\xff/.env")));
        assert!(!set.matches(&path(b"/home/\xff/\xff.rs")));
    }

    #[test]
    fn root_tree_and_project_dedup() {
        // `/` is refused (it would watch and mark the whole host), with the field named.
        let mut cfg = section(&["/"]);
        cfg.project_roots = vec!["/home/*".to_owned()];
        cfg.project_globs = vec![".env".to_owned()];
        let err = WatchSet::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("watch.paths[0]"), "{err}");

        // A tree inside a project root's fixed directory is covered by its prefix.
        let mut cfg = section(&[&format!("{NX}/root/.ssh"), &format!("{NX}/etc")]);
        cfg.project_roots = vec![format!("{NX}/root")];
        cfg.project_globs = vec!["*.conf".to_owned()];
        let set = WatchSet::new(&cfg).unwrap();
        assert_eq!(
            prefixes(&set),
            [
                format!("{NX}/etc"),
                format!("{NX}/etc/"),
                format!("{NX}/root/")
            ]
        );
        assert!(set.matches(&p(&format!("{NX}/root/.ssh/authorized_keys"))));
        assert!(!set.matches(&p(&format!("{NX}/root/notes.txt"))));
    }

    #[test]
    fn defaults_build() {
        let set = WatchSet::new(&WatchSection::default()).unwrap();
        let prefixes = set.kernel_prefixes();
        assert!(prefixes.iter().any(|p| p == b"/etc/"));
        assert!(!prefixes.iter().any(|p| p.starts_with(b"/etc/cron")));
        assert!(
            prefixes
                .iter()
                .all(|p| p.len() <= MAX_KERNEL_PREFIX && !p.is_empty())
        );
        assert!(set.matches(Path::new("/etc/cron.d/job")));
        assert!(set.matches(Path::new("/home/alice/app/.env")));
        assert!(!set.matches(Path::new("/home/alice/app/main.rs")));
        assert!(set.matches(Path::new("/home/alice/.env.local")));
        assert!(!set.matches(Path::new("/etcfoo")));
        assert!(!set.fanotify_trees().iter().any(|t| t.starts_with("/home")));
    }

    #[test]
    fn invalid_sections_are_rejected() {
        let e = WatchSet::new(&section(&["relative"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "watch.paths[0]: relative is not an absolute path"
        );
        let mut cfg = section(&[]);
        cfg.project_roots = vec!["/a/*/b".to_owned()];
        assert!(WatchSet::new(&cfg).is_err());
    }
}
