//! Landlock for a confined session: write-class access handled, allowed beneath given
//! paths only; signals and abstract unix sockets scoped to the domain.
//!
//! Installed by the setuid helper without `no_new_privs` (it holds `CAP_SYS_ADMIN`), so
//! setuid programs such as `sudo` keep working below it; the domain is inherited and
//! irrevocable. Fails closed: a kernel without Landlock ABI 6 (scopes) is an error.
use std::path::{Path, PathBuf};

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, make_bitflags,
};

/// Why the domain could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel lacks what the domain needs (Landlock ABI >= 6), or a call failed.
    #[error("landlock: {0} (confinement needs Landlock ABI 6, Linux 6.12 or later)")]
    Ruleset(#[from] landlock::RulesetError),
    /// An allowed path could not be opened.
    #[error("landlock: cannot open {path}: {reason}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kernel accepted the ruleset only in part.
    #[error("landlock: the domain is not fully enforced ({0:?})")]
    Partial(RulesetStatus),
}

/// The access rights the domain handles: every write-class right (ABI 3: write, truncate,
/// make, remove, refer). Device ioctls (ABI 5) stay unhandled: terminals keep working.
pub fn write_class() -> BitFlags<AccessFs> {
    make_bitflags!(AccessFs::{
        WriteFile | Truncate | MakeChar | MakeDir | MakeReg | MakeSock | MakeFifo | MakeBlock
            | MakeSym | RemoveDir | RemoveFile | Refer
    })
}

/// The part of [`write_class`] that applies to a file (not a directory).
pub fn write_class_file() -> BitFlags<AccessFs> {
    write_class() & AccessFs::from_file(landlock::ABI::V6)
}

/// Restricts the calling thread (and what it execs or forks later): write-class access is
/// allowed beneath each of `write_allowed` only (paths that do not exist are skipped:
/// nothing can be written beneath them anyway), and signals and abstract unix sockets
/// cannot reach outside the domain. Does not set `no_new_privs` (the caller needs
/// `CAP_SYS_ADMIN`). Call it single-threaded: other threads are not restricted.
pub fn restrict_self(write_allowed: &[PathBuf]) -> Result<(), LandlockError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(write_class())?
        .scope(make_bitflags!(Scope::{Signal | AbstractUnixSocket}))?
        .create()?
        .no_new_privs(false);
    for path in write_allowed {
        let Some(rule) = rule_for(path)? else {
            continue;
        };
        ruleset = ruleset.add_rule(rule)?;
    }
    let status: RestrictionStatus = ruleset.restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::Partial(status.ruleset));
    }
    Ok(())
}

/// The rule for one allowed path: full write-class beneath a directory, the file subset on
/// anything else. `None` when the path does not exist; a symbolic link is an error.
fn rule_for(path: &Path) -> Result<Option<PathBeneath<PathFd>>, LandlockError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LandlockError::Path {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if meta.file_type().is_symlink() {
        // The rule would name the link's target, not the link.
        return Err(LandlockError::Path {
            path: path.to_owned(),
            reason: "is a symbolic link".into(),
        });
    }
    let fd = PathFd::new(path).map_err(|e| LandlockError::Path {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let access = if meta.is_dir() {
        write_class()
    } else {
        write_class_file()
    };
    Ok(Some(PathBeneath::new(fd, access)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// Runs `f` in a forked child (the restriction is irrevocable) and returns its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `f` (plain syscalls) and exits without returning.
        match unsafe { libc::fork() } {
            0 => {
                let code = f();
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
            _ => panic!("fork failed"),
        }
    }

    #[test]
    fn writes_only_beneath_allowed_paths_and_signals_are_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let denied = dir.path().join("denied");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&denied).unwrap();
        let single = dir.path().join("single-file");
        std::fs::write(&single, "x").unwrap();
        std::fs::write(denied.join("f"), "x").unwrap();
        let parent = std::process::id() as i32;
        let code = in_child(|| {
            if let Err(e) =
                restrict_self(&[allowed.clone(), single.clone(), "/nonexistent/x".into()])
            {
                eprintln!("{e}");
                return 10;
            }
            if std::fs::write(allowed.join("new"), "ok").is_err() {
                return 11;
            }
            let open_w = |p: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(0)
                    .open(p)
                    .map(drop)
                    .map_err(|e| e.raw_os_error())
            };
            if open_w(&single).is_err() {
                return 12;
            }
            if open_w(&denied.join("f")) != Err(Some(libc::EACCES)) {
                return 13;
            }
            if std::fs::remove_file(denied.join("f")).is_ok() {
                return 14;
            }
            if std::fs::create_dir(denied.join("d")).is_ok() {
                return 15;
            }
            // Signal 0 to a process outside the domain: EPERM under the signal scope.
            // SAFETY: kill with signal 0 only checks permission.
            let r = unsafe { libc::kill(parent, 0) };
            if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                return 16;
            }
            0
        });
        assert_eq!(code, 0, "child check failed with code {code}");
    }
}
