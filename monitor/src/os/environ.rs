//! Hiding the environment a process was started with from `/proc/<pid>/environ`.
//!
//! The kernel serves `/proc/<pid>/environ` (to any process allowed to read it: the same
//! user with ptrace access, or root with CAP_SYS_PTRACE, whatever `PR_SET_DUMPABLE` says)
//! from the block of strings `execve` placed on the new process's stack, between the
//! addresses `env_start` and `env_end` of `/proc/<pid>/stat` (fields 50 and 51, see
//! proc(5)). Changing the environment through libc changes the `environ` array, not that
//! block, so a secret passed in the daemon's environment (a token, a key) stays readable
//! there for the life of the process.
//!
//! [`hide_initial`] makes the block hold nothing: it copies every variable into memory the
//! C library owns (`clearenv`, then `setenv` of each, which copies name and value into a
//! new allocation: POSIX requires `setenv` to copy, and glibc and musl allocate a new
//! `environ` array once it was cleared), checks that no variable still points into the
//! block, and then overwrites the block with zeros. The process keeps every value:
//! `std::env::var` and the C library's `getenv` read the copies, and children get them
//! through `execve`. `/proc/<pid>/environ` then reads as NUL bytes.
//!
//! Not covered: the copies live on the heap, which a process with ptrace access to this
//! one can still read (`/proc/<pid>/mem`, `ptrace`); values the dynamic loader took at
//! start (`LD_*`) keep the effect they had.
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Errors of [`hide_initial`]; after each, the process's environment is as usable as
/// before (only the block may still hold the original strings).
#[derive(Debug, thiserror::Error)]
pub enum EnvironError {
    #[error(
        "{0} threads are running (the environment may only be replaced before the first starts)"
    )]
    Threads(usize),
    #[error("reading {path}: {source}")]
    Proc {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("/proc/self/stat: {0}")]
    Stat(String),
    #[error(
        "/proc/self/stat names an environment block of {stat} bytes, /proc/self/environ has {read}"
    )]
    Bounds { stat: usize, read: usize },
    #[error("clearenv failed")]
    Clear,
    #[error("variable {0:?} still points into the original block after it was copied")]
    NotCopied(OsString),
    #[error("/proc/self/environ still shows {0} non-zero bytes after the block was zeroed")]
    NotZeroed(usize),
}

/// What [`hide_initial`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hidden {
    /// Variables copied and kept.
    pub kept: usize,
    /// Entries of the original environment that could not be set again and are gone: no
    /// `=`, an empty name, a name with `=`, or a later duplicate of a name (the first
    /// occurrence is what `getenv` returned, and is kept).
    pub dropped: usize,
    /// Bytes of the original block overwritten with zeros.
    pub zeroed: usize,
}

/// The bounds of the environment block, `[env_start, env_end)`, from the text of
/// `/proc/<pid>/stat`. The second field (the command name, in parentheses) may hold spaces
/// and parentheses: fields are counted after its last `)`.
pub fn env_bounds(stat: &str) -> Result<(usize, usize), EnvironError> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| EnvironError::Stat("no ')' after the command name".into()))?;
    // `rest` starts with field 3 (state).
    let field = |n: usize| -> Result<usize, EnvironError> {
        rest.split_ascii_whitespace()
            .nth(n - 3)
            .ok_or_else(|| EnvironError::Stat(format!("no field {n} (kernel older than 3.5?)")))?
            .parse::<usize>()
            .map_err(|e| EnvironError::Stat(format!("field {n}: {e}")))
    };
    let (start, end) = (field(50)?, field(51)?);
    if start == 0 || end < start {
        return Err(EnvironError::Stat(format!(
            "environment bounds {start:#x}..{end:#x} make no sense"
        )));
    }
    Ok((start, end))
}

/// The variables to set again: the first occurrence of each settable name, in order.
fn to_keep(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let mut keep: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in vars {
        let settable = !k.is_empty() && !k.as_bytes().contains(&b'=');
        if settable && !keep.iter().any(|(seen, _)| *seen == k) {
            keep.push((k, v));
        }
    }
    keep
}

fn read_proc(path: &'static str) -> Result<Vec<u8>, EnvironError> {
    std::fs::read(path).map_err(|source| EnvironError::Proc { path, source })
}

/// Threads of this process, from `/proc/self/task`.
fn threads() -> Result<usize, EnvironError> {
    let path = "/proc/self/task";
    Ok(std::fs::read_dir(Path::new(path))
        .map_err(|source| EnvironError::Proc { path, source })?
        .count())
}

/// Whether `getenv(key)` points into `[start, end)`.
fn points_into(key: &OsStr, start: usize, end: usize) -> bool {
    let Ok(c) = std::ffi::CString::new(key.as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; getenv only reads
    // it and the environment, which no other thread changes (checked by the caller).
    let p = unsafe { libc::getenv(c.as_ptr()) };
    let addr = p as usize;
    !p.is_null() && (start..end).contains(&addr)
}

/// Copies the environment into process-owned memory and zeroes the block the kernel shows
/// as `/proc/self/environ` (see the module documentation).
///
/// # Safety
///
/// No other thread may exist (none may read or change the environment meanwhile, as for
/// [`std::env::set_var`]): call it first thing in `main`. It checks `/proc/self/task` and
/// refuses when more than one thread runs, but cannot stop a thread from starting
/// meanwhile.
pub unsafe fn hide_initial() -> Result<Hidden, EnvironError> {
    let n = threads()?;
    if n != 1 {
        return Err(EnvironError::Threads(n));
    }
    let (start, end) = env_bounds(&String::from_utf8_lossy(&read_proc("/proc/self/stat")?))?;
    let block = read_proc("/proc/self/environ")?;
    if block.len() != end - start {
        return Err(EnvironError::Bounds {
            stat: end - start,
            read: block.len(),
        });
    }
    let entries = block.split(|&b| b == 0).filter(|e| !e.is_empty()).count();
    let keep = to_keep(std::env::vars_os());
    // SAFETY: clearenv only resets the C library's `environ`; no other thread reads or
    // changes the environment (this function's contract, checked above), and nothing in
    // this process holds a pointer from getenv across this call.
    if unsafe { libc::clearenv() } != 0 {
        return Err(EnvironError::Clear);
    }
    for (k, v) in &keep {
        // SAFETY: single-threaded (this function's contract); `k` is non-empty without
        // `=` and neither holds a NUL (they came from C strings), so set_var cannot panic.
        unsafe { std::env::set_var(k, v) };
    }
    if let Some((k, _)) = keep.iter().find(|(k, _)| points_into(k, start, end)) {
        return Err(EnvironError::NotCopied(k.clone()));
    }
    let len = end - start;
    let base = start as *mut u8;
    for i in 0..len {
        // SAFETY: `[start, end)` is the environment block the kernel wrote on this
        // process's stack at execve (its bounds and length checked against
        // /proc/self/environ above): mapped and writable for the life of the process. No
        // variable points into it any more (checked above) and nothing else of this
        // process reads it. Volatile, so that the stores are not elided.
        unsafe { std::ptr::write_volatile(base.add(i), 0) };
    }
    let after = read_proc("/proc/self/environ")?;
    let left = after.iter().filter(|&&b| b != 0).count();
    if left != 0 {
        return Err(EnvironError::NotZeroed(left));
    }
    Ok(Hidden {
        kept: keep.len(),
        dropped: entries.saturating_sub(keep.len()),
        zeroed: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_fields_50_and_51_counted_after_the_command_name() {
        // A command name with spaces and parentheses; fields 3..=52.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[50 - 3] = "140737488347000".into();
        fields[51 - 3] = "140737488348000".into();
        let stat = format!("1234 (a) b (c) {}\n", fields.join(" "));
        assert_eq!(
            env_bounds(&stat).unwrap(),
            (140_737_488_347_000, 140_737_488_348_000)
        );
    }

    #[test]
    fn bounds_missing_or_nonsense_are_errors() {
        assert!(env_bounds("1 (x) S 1 2 3").is_err());
        assert!(env_bounds("no parenthesis").is_err());
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[50 - 3] = "0".into();
        fields[51 - 3] = "0".into();
        assert!(env_bounds(&format!("1 (x) {}", fields.join(" "))).is_err());
    }

    #[test]
    fn the_first_occurrence_of_each_settable_name_is_kept() {
        let v = |k: &str, val: &str| (OsString::from(k), OsString::from(val));
        let keep = to_keep(
            [
                v("A", "1"),
                v("B", "2"),
                v("A", "3"),
                v("=", "x"),
                v("", "y"),
            ]
            .into_iter(),
        );
        assert_eq!(keep, vec![v("A", "1"), v("B", "2")]);
    }

    #[test]
    fn refuses_while_other_threads_run() {
        // A second thread that lives until the check is done (the harness may run this
        // test on the main thread when run alone).
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        // SAFETY: with two threads it returns before touching the environment (what the
        // assertion checks).
        let r = unsafe { hide_initial() };
        drop(done);
        other.join().unwrap().unwrap_err();
        assert!(matches!(r, Err(EnvironError::Threads(n)) if n > 1), "{r:?}");
    }
}
