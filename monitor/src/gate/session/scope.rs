//! A session's declared scope (`confgate run --scope GLOB`): the paths it may write at all.
//!
//! Landlock grants by directory hierarchy, not by glob, so a scope is enforced in two
//! layers:
//! - **Landlock** (the backstop, irrevocable, also for what the supervisor never sees):
//!   each glob's *root*, its longest literal directory prefix (`/srv/app` for
//!   `/srv/app/**` and `/srv/app/*.conf`; the parent directory for a glob without
//!   wildcards, so that the file can be created), plus [`ALWAYS_WRITABLE`], intersected
//!   with the rest of the confinement (nothing beneath a gated tree or confgate's own
//!   files). A root that does not exist when the session starts gets no rule.
//! - **The supervisor** (precise, and what makes refusals visible): every write-intent
//!   path operation is notified to it; each target outside the globs is refused with
//!   `EACCES` at once, before Landlock or the gate's rules see it, counted
//!   (`session_scope_denied`), reported as an event and ledgered (`scope_denied`).
//!
//! Globs are matched against the path the supervisor resolved (symbolic links followed, as
//! the kernel would); their literal prefix is resolved once when the session is confined,
//! so `--scope /var/run/app/**` means `/run/app/**` where `/var/run` links to `/run`.
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use globset::{GlobSet, GlobSetBuilder};

use super::ConfineSpec;
use super::common::SupervisorCounters;
use super::ops::Op;
use super::report::Reporter;
use super::resolve::Target;
use crate::gate::listener::Decider;
use crate::sessions::scope::glob;

pub use crate::sessions::scope::{MAX_SCOPE_GLOB_BYTES, MAX_SCOPE_GLOBS, validate};

/// Always writable by a scoped session (terminals and the null devices: a shell's
/// `2>/dev/null` must keep working). Each is a path or a directory (everything beneath).
pub const ALWAYS_WRITABLE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

fn is_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
}

/// The glob's longest literal directory prefix, and the rest of the glob after it (empty
/// when the glob has no wildcard: then the prefix is the parent directory and the rest
/// is the file name).
fn split(glob: &str) -> (PathBuf, String) {
    let parts: Vec<&str> = glob.split('/').collect();
    let first_meta = parts.iter().position(|c| c.chars().any(is_meta));
    let literal = match first_meta {
        Some(i) => i,
        // No wildcard: the file's directory, so that the file can be created and replaced.
        None => parts.len().saturating_sub(1),
    };
    let prefix = parts[..literal].join("/");
    let rest = parts[literal..].join("/");
    let prefix = if prefix.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(prefix)
    };
    (prefix, rest)
}

/// The Landlock roots of `globs` (their literal directory prefixes, resolved) and the globs
/// with their prefixes resolved, as the supervisor matches them.
pub fn resolve(globs: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut roots = Vec::new();
    let mut resolved = Vec::new();
    for g in globs {
        let (prefix, rest) = split(g);
        let real = super::spec::resolve(&prefix);
        // A resolved prefix that is not UTF-8 cannot be written as a glob: the glob is kept
        // as given (it then matches only through the unresolved name: stricter, not wider).
        let text = match real.to_str() {
            Some(t) => format!("{}/{rest}", globset::escape(t.trim_end_matches('/'))),
            None => g.clone(),
        };
        roots.push(real);
        resolved.push(text);
    }
    roots.extend(ALWAYS_WRITABLE.iter().map(PathBuf::from));
    roots.sort();
    roots.dedup();
    (roots, resolved)
}

/// `spec` narrowed to a declared scope: Landlock allows writes only beneath the globs'
/// roots (and [`ALWAYS_WRITABLE`]) where it allowed them before; the supervisor matches
/// the globs themselves. No globs: unchanged.
pub fn narrow(mut spec: ConfineSpec, globs: &[String]) -> ConfineSpec {
    if globs.is_empty() {
        return spec;
    }
    let (roots, resolved) = resolve(globs);
    spec.write_allowed = intersect(&spec.write_allowed, &roots);
    spec.scope = resolved;
    spec
}

/// `allowed` (what the rest of the confinement allows beneath) narrowed to beneath
/// `roots`: each root beneath an allowed path, and each allowed path beneath a root.
pub fn intersect(allowed: &[PathBuf], roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in roots {
        for a in allowed {
            if r.starts_with(a) {
                out.push(r.clone());
            } else if a.starts_with(r) {
                out.push(a.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    // Nothing nested in another entry (the outer one covers it).
    let mut kept: Vec<PathBuf> = Vec::with_capacity(out.len());
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    kept
}

/// The supervisor's matcher of a session's scope.
#[derive(Debug)]
pub struct ScopeMatcher {
    set: GlobSet,
    always: Vec<PathBuf>,
}

impl ScopeMatcher {
    /// A matcher of `globs` (as [`resolve`] returns them); `None` without globs (no
    /// scope). A glob that does not compile (a damaged stored spec) matches nothing.
    pub fn new(globs: &[String]) -> Option<ScopeMatcher> {
        if globs.is_empty() {
            return None;
        }
        let mut b = GlobSetBuilder::new();
        for g in globs {
            match glob(g) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => {
                    tracing::warn!(glob = %crate::sessions::escape_text(g), error = %e, "session scope: a glob that does not compile matches nothing");
                }
            }
        }
        let set = b.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "session scope: the globs do not compile; nothing is in scope");
            GlobSet::empty()
        });
        Some(ScopeMatcher {
            set,
            always: ALWAYS_WRITABLE.iter().map(PathBuf::from).collect(),
        })
    }

    /// Whether the session may write at `path` (absolute, resolved).
    pub fn contains(&self, path: &Path) -> bool {
        self.always.iter().any(|a| path.starts_with(a)) || self.set.is_match(path)
    }

    /// The first of `targets` outside the scope. A `/proc/<pid>/fd/N` link to something
    /// without a path (a pipe, a socket: `echo > /dev/stdout`) is no file to scope.
    pub(super) fn first_outside(&self, targets: &[Target]) -> Option<usize> {
        targets.iter().position(|t| {
            let magic = t.path.starts_with("/proc")
                && t.found
                    .is_some_and(|f| f.mode & libc::S_IFMT == libc::S_IFLNK);
            !(magic || t.path.is_absolute() && self.contains(&t.path))
        })
    }
}

/// Records an operation the supervisor refused with `EACCES` because target `i` is outside
/// the session's scope: counted (`session_scope_denied`), reported as an event with
/// `details.scope_denied` (through `report`), ledgered (`scope_denied`, through the
/// decider), and logged the 1st, 2nd, 4th, ... time.
pub(super) fn refused(
    counters: &SupervisorCounters,
    report: &Reporter,
    decider: &dyn Decider,
    op: &Op,
    who: (u32, u32, u32),
    targets: &[Target],
    i: usize,
) {
    let total = counters.scope_denied.fetch_add(1, Ordering::Relaxed) + 1;
    report.send_as(op, who, targets, -i64::from(libc::EACCES), true);
    let path = targets
        .get(i)
        .map(|t| t.path.as_os_str().as_bytes().to_vec())
        .unwrap_or_default();
    decider.scope_denied(report.session, who.1, &path);
    if total.is_power_of_two() {
        tracing::warn!(
            session = report.session,
            pid = who.1,
            path = %crate::event::escape::encode(&path),
            refused_so_far = total,
            "confined session: a write outside its declared scope refused (EACCES)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn roots_are_literal_directory_prefixes() {
        assert_eq!(
            split("/srv/app/**"),
            (PathBuf::from("/srv/app"), "**".into())
        );
        assert_eq!(
            split("/srv/app/*.conf"),
            (PathBuf::from("/srv/app"), "*.conf".into())
        );
        assert_eq!(
            split("/srv/a*/x/**"),
            (PathBuf::from("/srv"), "a*/x/**".into())
        );
        assert_eq!(
            split("/srv/app/config.toml"),
            (PathBuf::from("/srv/app"), "config.toml".into())
        );
        assert_eq!(split("/**"), (PathBuf::from("/"), "**".into()));
    }

    #[test]
    fn resolved_globs_match_as_given() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("real/app")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let g = format!("{}/link/app/**", root.display());
        let file = format!("{}/link/app/one.conf", root.display());
        let (roots, globs) = resolve(&s(&[&g, &file]));
        assert!(roots.contains(&root.join("real/app")), "{roots:?}");
        assert!(roots.contains(&PathBuf::from("/dev/null")));
        let m = ScopeMatcher::new(&globs).unwrap();
        assert!(m.contains(&root.join("real/app/x/y")), "{globs:?}");
        assert!(!m.contains(&root.join("real/other")));
        assert!(!m.contains(&root.join("real/app")));
        assert!(m.contains(Path::new("/dev/null")));
        assert!(m.contains(Path::new("/dev/pts/3")));
        assert!(!m.contains(Path::new("/dev/sda")));
        let (_, only_file) = resolve(&s(&[&file]));
        let m = ScopeMatcher::new(&only_file).unwrap();
        assert!(m.contains(&root.join("real/app/one.conf")), "{only_file:?}");
        assert!(!m.contains(&root.join("real/app/two.conf")));
        assert!(ScopeMatcher::new(&[]).is_none());
    }

    #[test]
    fn a_star_stays_in_one_component() {
        let m = ScopeMatcher::new(&s(&["/srv/app/*.conf"])).unwrap();
        assert!(m.contains(Path::new("/srv/app/a.conf")));
        assert!(!m.contains(Path::new("/srv/app/sub/a.conf")));
    }

    #[test]
    fn intersection_with_the_rest_of_the_confinement() {
        let allowed = [
            PathBuf::from("/home"),
            PathBuf::from("/srv/app/data"),
            PathBuf::from("/srv/app/www"),
            PathBuf::from("/srv/other"),
            PathBuf::from("/dev/null"),
        ];
        let roots = [
            PathBuf::from("/home/u/proj"),
            PathBuf::from("/srv/app"),
            PathBuf::from("/dev/null"),
            PathBuf::from("/etc/app"),
        ];
        assert_eq!(
            intersect(&allowed, &roots),
            vec![
                PathBuf::from("/dev/null"),
                PathBuf::from("/home/u/proj"),
                PathBuf::from("/srv/app/data"),
                PathBuf::from("/srv/app/www"),
            ]
        );
        assert_eq!(
            intersect(
                &[PathBuf::from("/")],
                &[PathBuf::from("/a"), PathBuf::from("/a/b")]
            ),
            vec![PathBuf::from("/a")]
        );
    }

    #[test]
    fn bad_declarations_are_refused() {
        assert!(validate(&s(&["/srv/app/**"])).is_ok());
        for bad in ["relative/**", "/srv/[", "/srv/a\nb", "/srv/../etc/**", ""] {
            assert!(validate(&s(&[bad])).is_err(), "{bad:?}");
        }
        assert!(validate(&vec!["/a".to_owned(); MAX_SCOPE_GLOBS + 1]).is_err());
        assert!(validate(&[format!("/{}", "a".repeat(MAX_SCOPE_GLOB_BYTES))]).is_err());
    }
}
