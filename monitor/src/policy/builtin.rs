//! The built-in self-protection rule.
//!
//! Every agent session is denied **any** open (read or write) of confgate's own
//! configuration, credentials and state (store, ledger), and any write of its binary. The
//! binary is readable: sessions run `confgate propose` and `confgate mcp`, and an exec
//! opens the file without a write intent the gate could tell from a read. The rule is evaluated
//! before every configured rule and cannot be disabled or overridden by configuration: a
//! `[[gate.rule]]` with `verdict = "allow"` on these paths never gets to decide, because
//! [`super::Policy::evaluate`] returns the built-in match first. Reads are included because
//! the store and credentials hold secrets (client keys, tokens) and the approval context of
//! other sessions.
//!
//! Matching is by path (the path the kernel reports for the opened file, symlinks
//! resolved): a tree protects itself and everything below it, a file itself. Every path is
//! also protected under its canonical form when it exists, so a configured path through a
//! symlink (`/etc/confgate` -> `/srv/cfg`) still protects the real location. Processes
//! outside any session (administrators, the daemon itself) are not affected.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Name of the built-in rule as it appears in matches, ledgers and requests.
pub const BUILTIN_RULE_NAME: &str = "builtin:self-protection";

/// confgate's own directory of configuration (and, by convention, its PKI and tokens).
pub const CONFIG_DIR: &str = "/etc/confgate";

/// The paths the built-in rule protects. Built by the daemon from the loaded configuration
/// (`daemon::protected`) and handed to [`super::Policy::compile`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtectedPaths {
    trees: Vec<PathBuf>,
    files: Vec<PathBuf>,
    /// Those of `files` that sessions may read and execute (not write).
    readable: Vec<PathBuf>,
}

impl ProtectedPaths {
    /// An empty set (tests, or callers adding every path themselves).
    pub fn new() -> ProtectedPaths {
        ProtectedPaths::default()
    }

    /// Protects a directory and everything below it.
    pub fn tree(&mut self, path: impl AsRef<Path>) -> &mut Self {
        add(&mut self.trees, path.as_ref());
        self
    }

    /// Protects a single file.
    pub fn file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        add(&mut self.files, path.as_ref());
        self
    }

    /// Protects a single file from writes only: sessions may read and execute it.
    pub fn executable(&mut self, path: impl AsRef<Path>) -> &mut Self {
        add(&mut self.files, path.as_ref());
        add(&mut self.readable, path.as_ref());
        self
    }

    /// Protects the binary this process runs (the target of `/proc/self/exe`, read now)
    /// from writes ([`ProtectedPaths::executable`]). When it cannot be read, that is
    /// logged and nothing is added.
    pub fn current_binary(&mut self) -> &mut Self {
        match std::fs::read_link("/proc/self/exe") {
            Ok(exe) => {
                self.executable(exe);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve /proc/self/exe; the confgate binary is not self-protected")
            }
        }
        self
    }

    /// Protected directories (each with its canonical form when that differs).
    pub fn trees(&self) -> &[PathBuf] {
        &self.trees
    }

    /// Protected files (each with its canonical form when that differs), the readable
    /// ones among them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The files protected from writes only (each with its canonical form).
    pub fn readable(&self) -> &[PathBuf] {
        &self.readable
    }
}

/// Adds `path` (relative paths are ignored: they cannot match a kernel path) and its
/// canonical form when it exists and differs.
fn add(list: &mut Vec<PathBuf>, path: &Path) {
    if !path.is_absolute() {
        tracing::warn!(path = %path.display(), "relative path cannot be self-protected; ignored");
        return;
    }
    let trimmed = strip_trailing_slashes(path);
    if !list.contains(&trimmed) {
        list.push(trimmed);
    }
    if let Ok(real) = std::fs::canonicalize(path)
        && !list.contains(&real)
    {
        list.push(real);
    }
}

fn strip_trailing_slashes(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let mut end = bytes.len();
    while end > 1 && bytes[end - 1] == b'/' {
        end -= 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..end]))
}

/// The compiled built-in matcher: byte comparisons only, no allocation.
#[derive(Debug)]
pub(crate) struct Builtin {
    trees: Vec<Vec<u8>>,
    files: Vec<Vec<u8>>,
    readable: Vec<Vec<u8>>,
}

impl Builtin {
    pub(crate) fn new(p: &ProtectedPaths) -> Builtin {
        let bytes = |v: &[PathBuf]| -> Vec<Vec<u8>> {
            v.iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect()
        };
        Builtin {
            trees: bytes(&p.trees),
            files: bytes(&p.files),
            readable: bytes(&p.readable),
        }
    }

    /// Whether `path` is a protected file, a protected tree, or inside one.
    pub(crate) fn matches(&self, path: &[u8]) -> bool {
        self.files.iter().any(|f| f.as_slice() == path)
            || self.trees.iter().any(|t| within(path, t))
    }

    /// Whether an open of `path` (`write`: with a known write intent) is denied: any open
    /// of a protected path, except a read (or exec) of a readable file.
    pub(crate) fn denies(&self, path: &[u8], write: bool) -> bool {
        self.matches(path)
            && (write
                || self.trees.iter().any(|t| within(path, t))
                || !self.readable.iter().any(|f| f.as_slice() == path))
    }
}

/// Whether `path` is `dir` or below it (`/etc/confgate` covers `/etc/confgate/x` but not
/// `/etc/confgate2`). `dir == "/"` covers every absolute path.
fn within(path: &[u8], dir: &[u8]) -> bool {
    match path.strip_prefix(dir) {
        Some(rest) => rest.is_empty() || rest[0] == b'/' || dir.ends_with(b"/"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_is_component_wise() {
        assert!(within(b"/etc/confgate", b"/etc/confgate"));
        assert!(within(b"/etc/confgate/config.toml", b"/etc/confgate"));
        assert!(!within(b"/etc/confgate2", b"/etc/confgate"));
        assert!(!within(b"/etc", b"/etc/confgate"));
        assert!(within(b"/anything", b"/"));
    }

    #[test]
    fn symlinked_paths_are_protected_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut p = ProtectedPaths::new();
        p.tree(format!("{}/", link.display()));
        let real = std::fs::canonicalize(&real).unwrap();
        assert_eq!(p.trees(), [link.clone(), real.clone()]);
        let b = Builtin::new(&p);
        assert!(b.matches(real.join("store.redb").as_os_str().as_bytes()));
        assert!(b.matches(link.join("x").as_os_str().as_bytes()));
    }

    #[test]
    fn a_readable_file_is_protected_from_writes_only() {
        let mut p = ProtectedPaths::new();
        p.executable("/usr/bin/confgate").file("/etc/x.toml");
        assert_eq!(p.readable(), [PathBuf::from("/usr/bin/confgate")]);
        let b = Builtin::new(&p);
        assert!(b.matches(b"/usr/bin/confgate"));
        assert!(b.denies(b"/usr/bin/confgate", true));
        assert!(!b.denies(b"/usr/bin/confgate", false));
        assert!(b.denies(b"/etc/x.toml", false));
        assert!(!b.denies(b"/usr/bin/other", true));
        // Readable inside a protected tree is still protected as the tree is.
        p.tree("/usr/bin");
        let b = Builtin::new(&p);
        assert!(b.denies(b"/usr/bin/confgate", false));
    }

    #[test]
    fn relative_paths_are_ignored() {
        let mut p = ProtectedPaths::new();
        p.file("config.toml").tree("state");
        assert!(p.files().is_empty() && p.trees().is_empty());
    }
}
