//! Damaged state files, and the state directory's mode.
//!
//! The daemon must always start, whatever bytes are in its state directory: a store or
//! ledger that cannot be opened is moved aside to `<name>.damaged-<unix ms>` (kept for
//! forensics) and a new one is started. This module keeps what every part needs for that:
//! the process-wide counters shown by `confgate stats`, the notes of damage waiting to be
//! written to a ledger, [`move_aside`], and [`secure_dir`] for the state directory.
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters of damaged state and store failures.
#[derive(Debug, Default)]
pub struct StateCounters {
    /// State files (store, ledger) found damaged at open and moved aside.
    pub damaged_files: AtomicU64,
    /// Stores that needed a repair by redb's integrity check at open (kept in place).
    pub store_integrity_repairs: AtomicU64,
    /// Records of the store that could not be decoded and were skipped.
    pub records_skipped: AtomicU64,
    /// Store transactions that failed to commit (a full disk, an I/O error).
    pub store_commit_failures: AtomicU64,
    /// Store reopens after a failed commit (redb refuses all work after an I/O error).
    pub store_reopens: AtomicU64,
    /// Reopens that failed (retried at the next use of the store).
    pub store_reopen_failures: AtomicU64,
    /// Ledgers whose broken tail made the writer start a new chain.
    pub ledger_chain_restarts: AtomicU64,
}

static COUNTERS: StateCounters = StateCounters {
    damaged_files: AtomicU64::new(0),
    store_integrity_repairs: AtomicU64::new(0),
    records_skipped: AtomicU64::new(0),
    store_commit_failures: AtomicU64::new(0),
    store_reopens: AtomicU64::new(0),
    store_reopen_failures: AtomicU64::new(0),
    ledger_chain_restarts: AtomicU64::new(0),
};

/// The process-wide counters.
pub fn counters() -> &'static StateCounters {
    &COUNTERS
}

/// Adds one to `c`.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Name/value pairs for `confgate stats`.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    let c = &COUNTERS;
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    vec![
        ("state_damaged_files", v(&c.damaged_files)),
        ("store_integrity_repairs", v(&c.store_integrity_repairs)),
        ("store_records_skipped", v(&c.records_skipped)),
        ("store_commit_failures", v(&c.store_commit_failures)),
        ("store_reopens", v(&c.store_reopens)),
        ("store_reopen_failures", v(&c.store_reopen_failures)),
        ("ledger_chain_restarts", v(&c.ledger_chain_restarts)),
    ]
}

/// A damaged state file that was moved aside and replaced by a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file's path (a new, empty file of the same kind is there now).
    pub file: PathBuf,
    /// Where the damaged file is kept.
    pub moved_to: PathBuf,
    /// What was wrong with it.
    pub problem: String,
}

/// Damage not yet written to a ledger (bounded: the oldest are dropped beyond this).
const MAX_NOTES: usize = 64;
static NOTES: Mutex<VecDeque<Damage>> = Mutex::new(VecDeque::new());

/// Counts and logs `damage` and keeps it for [`take_notes`].
pub fn record_damage(damage: Damage) {
    inc(&COUNTERS.damaged_files);
    tracing::error!(
        file = %damage.file.display(),
        moved_to = %damage.moved_to.display(),
        problem = %damage.problem,
        "damaged state file moved aside; starting a new one"
    );
    let mut notes = NOTES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if notes.len() >= MAX_NOTES {
        notes.pop_front();
    }
    notes.push_back(damage);
}

/// Takes the recorded damage of files in `dir` (to write it to the ledger kept there).
pub fn take_notes(dir: &Path) -> Vec<Damage> {
    let mut notes = NOTES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (mine, rest): (Vec<Damage>, Vec<Damage>) =
        notes.drain(..).partition(|d| d.file.parent() == Some(dir));
    notes.extend(rest);
    mine
}

/// How many notes wait for files in `dir`.
pub fn pending_notes(dir: &Path) -> usize {
    let notes = NOTES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    notes
        .iter()
        .filter(|d| d.file.parent() == Some(dir))
        .count()
}

/// Puts notes back (their ledger append failed; a later one may succeed).
pub fn return_notes(notes: Vec<Damage>) {
    let mut q = NOTES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for n in notes.into_iter().rev() {
        q.push_front(n);
    }
    while q.len() > MAX_NOTES {
        q.pop_back();
    }
}

/// Writes the damage noted for files in `dir` to a ledger with `append` (kind
/// `state_file_damaged`: the file, where it was moved, the problem). Notes whose append
/// fails are kept for a later call.
pub fn ledger_notes(
    dir: &Path,
    mut append: impl FnMut(&str, serde_json::Value) -> Result<(), String>,
) {
    let mut failed = Vec::new();
    for d in take_notes(dir) {
        let body = serde_json::json!({
            "file": d.file.to_string_lossy(),
            "moved_to": d.moved_to.to_string_lossy(),
            "problem": d.problem,
        });
        if let Err(e) = append("state_file_damaged", body) {
            tracing::error!(file = %d.file.display(), error = %e, "cannot record the damaged state file in the ledger");
            failed.push(d);
        }
    }
    if !failed.is_empty() {
        return_notes(failed);
    }
}

/// Renames `path` to `<path>.damaged-<unix ms>` (`-<n>` added if that exists) in the same
/// directory, syncs the directory, and returns the new name.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let ms = crate::os::clock::now_ms();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{ms}"));
    let mut target = PathBuf::from(&name);
    let mut n = 1u32;
    while target.symlink_metadata().is_ok() {
        let mut again = name.clone();
        again.push(format!("-{n}"));
        target = PathBuf::from(again);
        n += 1;
    }
    std::fs::rename(path, &target)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(target)
}

/// Why the entry at `path` cannot be a state file, if it exists and is not a regular file
/// (a symlink, a FIFO, a directory, a device: whatever was moved there must not be
/// followed, blocked on or written through).
pub fn not_a_regular_file(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    let what = if t.is_symlink() {
        match std::fs::read_link(path) {
            Ok(to) => format!("a symbolic link to {}", to.display()),
            Err(_) => "a symbolic link".to_owned(),
        }
    } else if t.is_dir() {
        "a directory".to_owned()
    } else {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            "a FIFO".to_owned()
        } else if t.is_socket() {
            "a socket".to_owned()
        } else {
            "a device".to_owned()
        }
    };
    Some(format!("{} is {what}, not a regular file", path.display()))
}

/// Flags for opening a state file: never through a symbolic link, never blocking on a FIFO.
pub const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// Errors of [`secure_dir`].
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create the state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "the state directory {path} has mode {mode:04o} and cannot be made 0700 ({source}); \
         confgate keeps command lines, pre-images and its ledger there and refuses to use it"
    )]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error(
        "the state directory {path} belongs to uid {uid}, not to this process (uid {me}); \
         refusing to use it"
    )]
    Owner { path: PathBuf, uid: u32, me: u32 },
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing one to 0700
/// (a fresh tmpfs mount point is 1777, for instance). Returns the mode it had when it was
/// changed. Refuses a directory owned by another user or one whose mode cannot be changed.
pub fn secure_dir(dir: &Path) -> Result<Option<u32>, StateDirError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateDirError::Create {
                path: dir.to_owned(),
                source,
            })?;
    }
    // Follows a symlink: a state directory may be a link to another disk.
    let meta = std::fs::metadata(dir).map_err(|source| StateDirError::Create {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StateDirError::Owner {
            path: dir.to_owned(),
            uid: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode == 0o700 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        StateDirError::Chmod {
            path: dir.to_owned(),
            mode,
            source,
        }
    })?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_aside_keeps_the_file_under_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.redb");
        std::fs::write(&p, b"one").unwrap();
        let a = move_aside(&p).unwrap();
        std::fs::write(&p, b"two").unwrap();
        let b = move_aside(&p).unwrap();
        assert_ne!(a, b);
        assert!(!p.exists());
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("x.redb.damaged-"), "{name}");
    }

    #[test]
    fn secure_dir_tightens_a_world_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("state");
        std::fs::create_dir(&s).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(secure_dir(&s).unwrap(), Some(0o1777));
        let mode = std::fs::metadata(&s).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert_eq!(secure_dir(&s).unwrap(), None);
        let new = dir.path().join("a/b");
        assert_eq!(secure_dir(&new).unwrap(), None);
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn secure_dir_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(matches!(
            secure_dir(&f),
            Err(StateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn notes_are_taken_per_directory() {
        let d = |f: &str| Damage {
            file: PathBuf::from(f),
            moved_to: PathBuf::from(format!("{f}.damaged-1")),
            problem: "x".into(),
        };
        record_damage(d("/notes-test/a/s.redb"));
        record_damage(d("/notes-test/a/sub/s.redb"));
        record_damage(d("/notes-test/b/s.redb"));
        assert_eq!(
            take_notes(Path::new("/notes-test/a")),
            vec![d("/notes-test/a/s.redb")]
        );
        assert!(take_notes(Path::new("/notes-test/a")).is_empty());
        let mut written = Vec::new();
        ledger_notes(Path::new("/notes-test/b"), |kind, body| {
            written.push((kind.to_owned(), body));
            Ok(())
        });
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].0, "state_file_damaged");
        assert_eq!(written[0].1["file"], "/notes-test/b/s.redb");
        // A failed append keeps the note for later.
        ledger_notes(Path::new("/notes-test/a/sub"), |_, _| {
            Err("disk full".into())
        });
        assert_eq!(take_notes(Path::new("/notes-test/a/sub")).len(), 1);
    }
}
