//! Hash-chained, append-only audit ledger (one JSON object per line).
//!
//! Each line is a [`LedgerRecord`]: `seq` (1, 2, ...), `time` (RFC 3339 UTC, ms), `kind`,
//! `body` (a JSON object), `prev` (the previous record's `hash`; 64 zeros for the first) and
//! `hash` (SHA-256 over the canonical encoding documented in [`canonical`]). Changing,
//! removing, reordering or duplicating a record breaks the chain, and [`verify`] says
//! where. Removing records from the *end* cannot be seen from the file alone: anchor the
//! head that [`verify`] reports somewhere else and check it with [`verify_anchored`].
//!
//! Writing: [`Ledger::open`] takes an exclusive `flock` (one writer per file), recovers
//! the head from the last records, cuts a torn last line left by a crash mid-append
//! (recording a `ledger_recovered` record), and, when the tail's chain is broken, moves the
//! file aside and starts a new chain linked to the old one (see [`OnBrokenTail`]): the
//! writer never stays down because of what is in the file. [`Ledger::append`] returns only after
//! the line is written and `fdatasync`ed. [`SharedLedger`] is the cloneable handle for
//! many tasks.
//!
//! Reading: [`read`] (records, optionally since a time) and [`verify`] need no lock.
pub mod canonical;
mod read;
mod record;
mod restart;
mod tap;
mod verify;

#[cfg(test)]
mod tests;

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

pub use read::{ReadOutcome, SkippedLine, read, read_lenient};
pub use record::{GENESIS_PREV, LedgerRecord, format_time, format_unix_ms, parse_time};
pub use tap::Tap;
pub use verify::{Anchor, Head, Problem, VerifyReport, verify, verify_anchored};

/// Longest record line accepted by [`Ledger::append`], newline included. Callers with
/// larger payloads (diffs) must truncate them and say so in the body.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Longest `kind`.
pub const MAX_KIND_LEN: usize = 64;

/// File name of the host ledger inside the daemon's `state_dir`.
pub const FILE_NAME: &str = "ledger.jsonl";

/// The host ledger's path for a daemon `state_dir`: `<state_dir>/ledger.jsonl`.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file-system operation failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or handle) holds the ledger open for writing.
    #[error("{}: the ledger is already open for writing by another process or handle", path.display())]
    Locked { path: PathBuf },
    /// The last records do not form a valid chain (only with [`OnBrokenTail::Refuse`]).
    #[error(
        "{}: the chain is broken at the tail: {detail}; run `confgate audit verify`, then \
         `confgate audit repair`",
        path.display()
    )]
    BrokenTail { path: PathBuf, detail: String },
    /// A line that is not a valid record (strict [`read`]).
    #[error("{} line {line}: not a valid ledger record: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// `kind` is empty, too long or has characters outside `[a-z0-9_]`.
    #[error("invalid record kind {0:?}: use 1..=64 characters from [a-z0-9_]")]
    InvalidKind(String),
    /// `body` is not a JSON object.
    #[error("a ledger record body must be a JSON object")]
    BodyNotObject,
    /// The record's line would exceed [`MAX_LINE_BYTES`].
    #[error("ledger record of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// A failed append could not be rolled back; the file may end in a partial line.
    #[error(
        "{}: a failed append could not be rolled back; reopen the ledger (it cuts the partial line)",
        path.display()
    )]
    Poisoned { path: PathBuf },
    /// A thread panicked while holding the shared ledger, or its task failed.
    #[error("the shared ledger is unusable: {0}")]
    Shared(String),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// How [`Ledger::open_with`] treats a ledger whose tail chain is broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnBrokenTail {
    /// Move the file aside (`<name>.damaged-<unix ms>`) and start a new file whose first
    /// record, `ledger_chain_restarted`, names it and links to the seq and hash of its last
    /// record that verifies from the start. What the daemon does: it must always start.
    #[default]
    Restart,
    /// Continue the same file: link to the last line that parses as a record and append a
    /// `ledger_repaired` record describing the damage. The damaged lines stay in the file
    /// as evidence, so [`verify`] keeps reporting them.
    Repair,
    /// Fail with [`LedgerError::BrokenTail`] and leave the file alone.
    Refuse,
}

/// How [`Ledger::open_with`] treats a damaged ledger.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerOptions {
    pub on_broken_tail: OnBrokenTail,
}

/// Counters of a ledger, shared by all handles of it.
#[derive(Debug, Default)]
pub struct LedgerCounters {
    /// Records appended (durable).
    pub appended: AtomicU64,
    /// Appends that failed (I/O, size, kind, poisoned).
    pub append_failed: AtomicU64,
    /// Torn last lines cut at open.
    pub torn_tails_cut: AtomicU64,
    /// Opens that repaired a broken tail. (Chain restarts are counted process-wide, as
    /// `ledger_chain_restarts`, by [`crate::state`].)
    pub repaired: AtomicU64,
}

impl LedgerCounters {
    /// Name/value pairs for `confgate stats`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ledger_appended", self.appended.load(Ordering::Relaxed)),
            (
                "ledger_append_failed",
                self.append_failed.load(Ordering::Relaxed),
            ),
            (
                "ledger_torn_tails_cut",
                self.torn_tails_cut.load(Ordering::Relaxed),
            ),
            ("ledger_repaired", self.repaired.load(Ordering::Relaxed)),
        ]
    }
}

/// The writer of one ledger file.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: Flock<File>,
    /// Seq of the last record (0: empty).
    seq: u64,
    /// Hash of the last record ([`GENESIS_PREV`] when empty).
    prev: String,
    /// File length after the last durable append.
    len: u64,
    poisoned: bool,
    counters: Arc<LedgerCounters>,
    /// Called with each record appended (see [`Tap`]).
    tap: Option<Tap>,
}

impl Ledger {
    /// Opens (creating it, and its directory, if missing) the ledger at `path` for
    /// appending, starting a new chain after a broken tail ([`OnBrokenTail::Restart`]).
    /// See [`Ledger::open_with`].
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Self::open_with(path, LedgerOptions::default())
    }

    /// Opens the ledger at `path` for appending.
    ///
    /// A missing directory is created with mode 0750, a missing file with 0640. The file is
    /// locked (`flock`, exclusive) for the life of the `Ledger`. The head (seq, hash) comes
    /// from the last line; the last two records must chain (self-consistent hash, seq + 1,
    /// `prev` link; the first record links to 64 zeros), else `opts.on_broken_tail` says
    /// what happens ([`OnBrokenTail`]). A last line without a newline (a
    /// crash mid-append: such a record was never acknowledged) is cut off, logged, and a
    /// `ledger_recovered` record with the cut bytes' length, offset and SHA-256 appended.
    pub fn open_with(path: &Path, opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        create_dir(path)?;
        // A symbolic link, FIFO or directory put in the ledger's place is never followed,
        // read or written: it is moved aside like a broken tail.
        if let Some(problem) = crate::state::not_a_regular_file(path) {
            if opts.on_broken_tail == OnBrokenTail::Restart {
                return restart::restart_chain(path, None, &problem);
            }
            return Err(LedgerError::BrokenTail {
                path: path.to_owned(),
                detail: problem,
            });
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(crate::state::OPEN_FLAGS)
            .open(path)
            .map_err(io_err(path, "open"))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(LedgerError::Io {
                path: path.to_owned(),
                op: "open",
                source: std::io::Error::other("not a regular file"),
            });
        }
        if created {
            // The mode given to open(2) is filtered by the umask: set it exactly.
            file.set_permissions(Permissions::from_mode(0o640))
                .map_err(io_err(path, "chmod"))?;
            sync_parent(path)?;
        }
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LedgerError::Locked {
                    path: path.to_owned(),
                });
            }
            Err((_, errno)) => {
                return Err(LedgerError::Io {
                    path: path.to_owned(),
                    op: "flock",
                    source: errno.into(),
                });
            }
        };
        let len = file.metadata().map_err(io_err(path, "stat"))?.len();
        let tail = scan_tail(&file, len).map_err(io_err(path, "read"))?;

        let mut repaired: Option<Value> = None;
        let checked = match &tail.torn {
            // Bytes after the last newline that cannot be the start of a record were not
            // left by an interrupted append: the file was replaced or damaged. Cutting them
            // would destroy the evidence.
            Some(torn) if !plausibly_torn(torn) => Err(format!(
                "the file ends in {} bytes that are not the start of a record",
                torn.len()
            )),
            _ => check_tail(&tail),
        };
        let (seq, prev) = match checked {
            Ok(head) => head,
            Err(detail) if opts.on_broken_tail == OnBrokenTail::Restart => {
                return restart::restart_chain(path, Some(file), &detail);
            }
            Err(detail) if opts.on_broken_tail == OnBrokenTail::Repair => {
                let (seq, prev, linked_line) = last_parsable(path)?;
                tracing::warn!(path = %path.display(), %detail, seq, "repairing the ledger tail");
                repaired = Some(json!({
                    "problem": detail,
                    "linked_seq": seq,
                    "linked_hash": prev,
                    "linked_line": linked_line,
                }));
                (seq, prev)
            }
            Err(detail) => {
                return Err(LedgerError::BrokenTail {
                    path: path.to_owned(),
                    detail,
                });
            }
        };
        let counters = Arc::new(LedgerCounters::default());
        let mut ledger = Ledger {
            path: path.to_owned(),
            file,
            seq,
            prev,
            len: tail.complete_end,
            poisoned: false,
            counters,
            tap: None,
        };
        if let Some(torn) = &tail.torn {
            let cut_sha256 = canonical::sha256_hex(torn);
            tracing::warn!(
                path = %path.display(),
                offset = tail.complete_end,
                bytes = torn.len(),
                sha256 = %cut_sha256,
                "cutting the torn last line of the ledger (crash during an append)"
            );
            ledger
                .file
                .set_len(tail.complete_end)
                .map_err(io_err(path, "truncate"))?;
            ledger.file.sync_all().map_err(io_err(path, "fsync"))?;
            ledger
                .counters
                .torn_tails_cut
                .fetch_add(1, Ordering::Relaxed);
            ledger.append(
                "ledger_recovered",
                json!({
                    "cut_bytes": torn.len(),
                    "cut_offset": tail.complete_end,
                    "cut_sha256": cut_sha256,
                }),
            )?;
        }
        if let Some(body) = repaired {
            ledger.counters.repaired.fetch_add(1, Ordering::Relaxed);
            ledger.append("ledger_repaired", body)?;
        }
        Ok(ledger)
    }

    /// Appends a record and returns it once it is durable (written and `fdatasync`ed).
    ///
    /// `kind` must be 1..=64 characters from `[a-z0-9_]`; `body` must be a JSON object
    /// (its strings may hold anything: the line stays one line). On an I/O error the
    /// partial line is cut off again; if even that fails, the ledger refuses further
    /// appends ([`LedgerError::Poisoned`]) until reopened.
    pub fn append(&mut self, kind: &str, body: Value) -> Result<LedgerRecord, LedgerError> {
        let result = self.try_append(kind, body);
        match &result {
            Ok(record) => {
                if let Some(tap) = &self.tap {
                    tap.call(record);
                }
                self.counters.appended.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), kind, error = %e, "ledger append failed");
                self.counters.append_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    fn try_append(&mut self, kind: &str, body: Value) -> Result<LedgerRecord, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned {
                path: self.path.clone(),
            });
        }
        if kind.is_empty()
            || kind.len() > MAX_KIND_LEN
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(LedgerError::InvalidKind(kind.to_owned()));
        }
        if !body.is_object() {
            return Err(LedgerError::BodyNotObject);
        }
        let record = LedgerRecord::new(
            self.seq + 1,
            format_time(SystemTime::now()),
            kind.to_owned(),
            body,
            self.prev.clone(),
        );
        let mut line = record.to_line();
        line.push('\n');
        if line.len() > MAX_LINE_BYTES {
            return Err(LedgerError::TooLarge {
                size: line.len(),
                max: MAX_LINE_BYTES,
            });
        }
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Cut whatever part of the line reached the file so the next append chains on.
            let rollback = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = rollback {
                tracing::error!(path = %self.path.display(), error = %e, "cannot cut a failed append");
                self.poisoned = true;
            }
            return Err(LedgerError::Io {
                path: self.path.clone(),
                op: "append",
                source,
            });
        }
        self.seq = record.seq;
        self.prev.clone_from(&record.hash);
        self.len += line.len() as u64;
        Ok(record)
    }

    /// From now on `tap` is called with each record appended.
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    /// Seq and hash of the last record (0 and 64 zeros when empty).
    pub fn head(&self) -> (u64, &str) {
        (self.seq, &self.prev)
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters (appends, failures, recoveries) for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }
}

/// A cloneable, thread-safe handle on one [`Ledger`].
///
/// [`SharedLedger::append`] blocks (it waits for `fdatasync`): from async code use
/// [`SharedLedger::append_async`], which runs it on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct SharedLedger {
    inner: Arc<Mutex<Ledger>>,
    counters: Arc<LedgerCounters>,
}

impl SharedLedger {
    /// Wraps an open ledger.
    pub fn new(ledger: Ledger) -> Self {
        let counters = ledger.counters.clone();
        SharedLedger {
            inner: Arc::new(Mutex::new(ledger)),
            counters,
        }
    }

    /// [`Ledger::open`] and wrap.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ledger::open(path).map(Self::new)
    }

    /// [`Ledger::append`] under the lock (blocking).
    pub fn append(&self, kind: &str, body: Value) -> Result<LedgerRecord, LedgerError> {
        let mut ledger = self
            .inner
            .lock()
            .map_err(|_| LedgerError::Shared("a thread panicked while appending".into()))?;
        ledger.append(kind, body)
    }

    /// [`Ledger::set_tap`] on the shared ledger.
    pub fn set_tap(&self, tap: Tap) -> Result<(), LedgerError> {
        let mut ledger = self
            .inner
            .lock()
            .map_err(|_| LedgerError::Shared("a thread panicked while appending".into()))?;
        ledger.set_tap(tap);
        Ok(())
    }

    /// [`SharedLedger::append`] on tokio's blocking pool.
    pub async fn append_async(&self, kind: &str, body: Value) -> Result<LedgerRecord, LedgerError> {
        let this = self.clone();
        let kind = kind.to_owned();
        tokio::task::spawn_blocking(move || this.append(&kind, body))
            .await
            .map_err(|e| LedgerError::Shared(format!("append task failed: {e}")))?
    }

    /// Seq and hash of the last record.
    pub fn head(&self) -> Result<(u64, String), LedgerError> {
        let ledger = self
            .inner
            .lock()
            .map_err(|_| LedgerError::Shared("a thread panicked while appending".into()))?;
        let (seq, hash) = ledger.head();
        Ok((seq, hash.to_owned()))
    }

    /// Counters, read without taking the lock.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }
}

fn create_dir(path: &Path) -> Result<(), LedgerError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(io_err(dir, "mkdir"))?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o750)).map_err(io_err(dir, "chmod"))
}

fn sync_parent(path: &Path) -> Result<(), LedgerError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// The end of a ledger file, read backwards.
struct Tail {
    /// Offset just after the last newline (0 when there is none).
    complete_end: u64,
    /// Bytes after the last newline: a torn append.
    torn: Option<Vec<u8>>,
    /// The last and second-to-last complete lines (without newlines).
    last: Option<Vec<u8>>,
    before_last: Option<Vec<u8>>,
}

/// Reads backwards from `len` until the last two complete lines are found.
fn scan_tail(file: &File, len: u64) -> std::io::Result<Tail> {
    let mut chunk: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(chunk);
        let mut buf = vec![0u8; usize::try_from(len - start).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut buf, start)?;
        let newlines: Vec<usize> = buf
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| (b == b'\n').then_some(i))
            .collect();
        if start > 0 && newlines.len() < 3 {
            chunk = chunk.saturating_mul(2);
            continue;
        }
        let complete = newlines.last().map_or(0, |&i| i + 1);
        let torn = (complete < buf.len()).then(|| buf[complete..].to_vec());
        // Complete lines inside buf: line k spans (newlines[k-1] + 1 or 0) .. newlines[k].
        let line = |k: usize| -> Vec<u8> {
            let from = if k == 0 { 0 } else { newlines[k - 1] + 1 };
            buf[from..newlines[k]].to_vec()
        };
        let n = newlines.len();
        return Ok(Tail {
            complete_end: start + complete as u64,
            torn,
            last: (n >= 1).then(|| line(n - 1)),
            before_last: (n >= 2).then(|| line(n - 2)),
        });
    }
}

/// Whether `torn` (the bytes after the last newline) can be what an interrupted append
/// wrote: the beginning of a record line.
fn plausibly_torn(torn: &[u8]) -> bool {
    const START: &[u8] = b"{\"seq\":";
    let n = torn.len().min(START.len());
    torn.len() < MAX_LINE_BYTES
        && torn[..n] == START[..n]
        && !torn.contains(&0)
        && std::str::from_utf8(torn).map_or_else(|e| e.error_len().is_none(), |_| true)
}

/// Checks the tail chain; returns the head (seq, hash) or what is wrong.
fn check_tail(tail: &Tail) -> Result<(u64, String), String> {
    let Some(last) = &tail.last else {
        return Ok((0, GENESIS_PREV.to_owned()));
    };
    let a = LedgerRecord::parse_line(last)
        .map_err(|e| format!("the last line is not a valid record: {e}"))?;
    if a.computed_hash() != a.hash {
        return Err(format!(
            "the last record (seq {}) does not match its hash: its content was changed",
            a.seq
        ));
    }
    match &tail.before_last {
        None => {
            if a.seq != 1 || a.prev != GENESIS_PREV {
                return Err(format!(
                    "the only record has seq {} and does not start the chain",
                    a.seq
                ));
            }
        }
        Some(before) => {
            let b = LedgerRecord::parse_line(before)
                .map_err(|e| format!("the line before the last is not a valid record: {e}"))?;
            if a.seq != b.seq + 1 {
                return Err(format!(
                    "the last record has seq {} after seq {}",
                    a.seq, b.seq
                ));
            }
            if a.prev != b.hash {
                return Err(format!(
                    "the last record (seq {}) does not link to the record before it (seq {})",
                    a.seq, b.seq
                ));
            }
        }
    }
    Ok((a.seq, a.hash))
}

/// For repair: seq and stored hash of the last line that parses as a record, and its line
/// number; (0, zeros, 0) when none does.
fn last_parsable(path: &Path) -> Result<(u64, String, u64), LedgerError> {
    let outcome = read_lenient(path, None)?;
    Ok(match outcome.records.last() {
        Some((line, r)) => (r.seq, r.hash.clone(), *line),
        None => (0, GENESIS_PREV.to_owned(), 0),
    })
}
