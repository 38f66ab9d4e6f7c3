//! The approved baseline: what every regular file and symlink under the watched and gated
//! trees was when it was last approved.
//!
//! Taken once, at the daemon's first start (every file under the roots), and moved forward
//! only by approved changes: a grant's change at its close-write (grants whose rule keeps
//! the change: `on_expiry = "flag"`), and `confgate baseline accept`. Each move is recorded
//! in the ledger by the caller (`baseline_taken`, `baseline_moved`).
//!
//! Content is kept content-addressed (SHA-256), deduplicated and deflate-compressed under
//! `<state_dir>/baseline/objects/`; the index (path -> [`Entry`]) is a redb table in
//! `<state_dir>/baseline/index.redb`. Files larger than `baseline.max_file_bytes`, and
//! every file once `baseline.max_total_bytes` of content is kept, are kept by hash, mode
//! and owner only (counted): they show in `drift` but cannot be reverted.
//!
//! [`drift`] compares the live tree with it; [`restore`] puts a path back.
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableTable as _, ReadableTableMetadata as _, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::event::escape::encode;
use crate::ledger::canonical::hex;

pub mod attribute;
pub mod drift;
pub mod restore;
pub mod revert_to;
pub mod service;
#[cfg(test)]
mod tests;

/// Directory of the baseline in the state directory.
pub const DIR: &str = "baseline";
const INDEX_FILE: &str = "index.redb";
const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Unix ms of the initial baseline (absent: not taken yet).
const META_TAKEN: &str = "taken_unix_ms";
/// Uncompressed bytes of the objects kept.
const META_STORED: &str = "stored_bytes";
/// Deepest directory level walked below a root.
const MAX_DEPTH: usize = 256;
/// Files between two progress lines of the initial baseline.
const PROGRESS_EVERY: u64 = 2000;

/// Size limits (`[baseline]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

/// Errors of the baseline.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline index: {0}")]
    Index(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not in the baseline (outside the watched and gated trees)")]
    NotInScope(String),
    #[error(
        "{0}: its content is not in the baseline (larger than the size limits): only its hash is kept"
    )]
    NoContent(String),
    #[error("baseline object {0}: missing or damaged")]
    Object(String),
    /// `revert --to SEQ`: the ledger record does not say what the path was, or its content
    /// is not kept (see [`revert_to`]).
    #[error("{0}")]
    NotRecorded(String),
}

fn index_err(e: impl std::fmt::Display) -> BaselineError {
    BaselineError::Index(e.to_string())
}

fn io_err(path: &[u8]) -> impl FnOnce(std::io::Error) -> BaselineError + '_ {
    move |source| BaselineError::Io {
        path: encode(path),
        source,
    }
}

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Symlink,
}

/// One path of the baseline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub kind: FileKind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Hex SHA-256 of the content (a symlink: of its target).
    pub sha256: String,
    /// Whether the content is in the object store (false: past the size limits).
    pub stored: bool,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    /// Modification time when it was taken.
    pub mtime_ms: i64,
    /// When this entry became the approved state.
    pub since_ms: i64,
    /// What made it the approved state: `initial`, `grant <id>`, `accept`.
    pub source: String,
}

/// A file as it is now, read for the baseline or compared with it.
pub struct Live {
    pub entry: Entry,
    /// The content (regular files up to the size asked for).
    pub content: Option<Vec<u8>>,
}

/// Counters of the baseline (`confgate stats`).
#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub skipped_too_large: AtomicU64,
    pub skipped_total_limit: AtomicU64,
    pub unreadable: AtomicU64,
    pub moves: AtomicU64,
    pub reverts: AtomicU64,
    pub revert_errors: AtomicU64,
    pub drift_checks: AtomicU64,
    pub drift_detected: AtomicU64,
}

/// What the initial baseline took.
#[derive(Clone, Debug, Serialize)]
pub struct Taken {
    pub files: u64,
    pub bytes_stored: u64,
    pub skipped_too_large: u64,
    pub skipped_total_limit: u64,
    pub unreadable: u64,
    pub millis: u64,
}

/// The approved baseline.
pub struct Baseline {
    dir: PathBuf,
    db: redb::Database,
    roots: Vec<PathBuf>,
    /// Never walked (confgate's own state).
    skip: Vec<PathBuf>,
    limits: Limits,
    pub counters: Counters,
    /// Serialises writers (object store and index).
    write: Mutex<()>,
}

fn now_ms() -> i64 {
    crate::os::clock::now_ms()
}

impl Baseline {
    /// Opens (creating) the baseline under `state_dir`, for `roots`. A damaged index is
    /// moved aside (`index.redb.damaged-<ms>`, logged) and a new one started: a new
    /// initial baseline is then taken (of the tree as it is at that start).
    pub fn open(
        state_dir: &Path,
        roots: Vec<PathBuf>,
        limits: Limits,
    ) -> Result<Baseline, BaselineError> {
        let dir = state_dir.join(DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("objects"))
            .map_err(io_err(dir.as_os_str().as_bytes()))?;
        let index = dir.join(INDEX_FILE);
        let db = match redb::Database::create(&index) {
            Ok(db) => db,
            Err(e) => {
                let aside = dir.join(format!("{INDEX_FILE}.damaged-{}", now_ms()));
                tracing::error!(index = %index.display(), error = %e, moved_to = %aside.display(), "baseline index damaged: moved aside, a new baseline is taken");
                std::fs::rename(&index, &aside).map_err(io_err(index.as_os_str().as_bytes()))?;
                redb::Database::create(&index).map_err(index_err)?
            }
        };
        let b = Baseline {
            dir,
            db,
            roots,
            skip: vec![state_dir.to_path_buf()],
            limits,
            counters: Counters::default(),
            write: Mutex::new(()),
        };
        let tx = b.db.begin_write().map_err(index_err)?;
        {
            tx.open_table(FILES).map_err(index_err)?;
            let meta = tx.open_table(META).map_err(index_err)?;
            let stored = meta.get(META_STORED).map_err(index_err)?.map(|v| v.value());
            b.counters
                .stored_bytes
                .store(stored.unwrap_or(0), Ordering::Relaxed);
        }
        tx.commit().map_err(index_err)?;
        let files = b.len()?;
        b.counters.files.store(files, Ordering::Relaxed);
        Ok(b)
    }

    /// The roots it covers.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether `path` is under one of the roots (so it belongs in the baseline).
    pub fn in_scope(&self, path: &[u8]) -> bool {
        let p = Path::new(std::ffi::OsStr::from_bytes(path));
        p.is_absolute()
            && !p
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            && self.roots.iter().any(|r| p.starts_with(r))
            && !self.skip.iter().any(|s| p.starts_with(s))
    }

    /// When the initial baseline was taken (`None`: not yet).
    pub fn taken_ms(&self) -> Result<Option<u64>, BaselineError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let meta = tx.open_table(META).map_err(index_err)?;
        Ok(meta.get(META_TAKEN).map_err(index_err)?.map(|v| v.value()))
    }

    fn len(&self) -> Result<u64, BaselineError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let t = tx.open_table(FILES).map_err(index_err)?;
        t.len().map_err(index_err)
    }

    /// The entry of `path`.
    pub fn get(&self, path: &[u8]) -> Result<Option<Entry>, BaselineError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let t = tx.open_table(FILES).map_err(index_err)?;
        let Some(v) = t.get(path).map_err(index_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| index_err(format!("entry of {}: {e}", encode(path))))
    }

    /// Every entry at or below `prefix` (all of them for an empty prefix).
    pub fn entries_under(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Entry)>, BaselineError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let t = tx.open_table(FILES).map_err(index_err)?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if !below(k, prefix) {
                continue;
            }
            let e: Entry = serde_json::from_slice(v.value())
                .map_err(|e| index_err(format!("entry of {}: {e}", encode(k))))?;
            out.push((k.to_vec(), e));
        }
        Ok(out)
    }

    /// The kept content of `e` (`None` for a symlink).
    pub fn content(&self, path: &[u8], e: &Entry) -> Result<Option<Vec<u8>>, BaselineError> {
        if e.kind != FileKind::File {
            return Ok(None);
        }
        if !e.stored {
            return Err(BaselineError::NoContent(encode(path)));
        }
        let f = self.object_path(&e.sha256);
        let raw = std::fs::read(&f).map_err(|_| BaselineError::Object(e.sha256.clone()))?;
        let limit = usize::try_from(e.size).unwrap_or(usize::MAX);
        let data = miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, limit.max(1))
            .map_err(|_| BaselineError::Object(e.sha256.clone()))?;
        if hex(&Sha256::digest(&data)) != e.sha256 {
            return Err(BaselineError::Object(e.sha256.clone()));
        }
        Ok(Some(data))
    }

    fn object_path(&self, sha: &str) -> PathBuf {
        let (a, b) = sha.split_at(sha.len().min(2));
        self.dir.join("objects").join(a).join(b)
    }

    /// Keeps `content` as an object (once per hash). Returns whether it is kept now.
    fn put_object(&self, sha: &str, content: &[u8]) -> Result<bool, BaselineError> {
        let f = self.object_path(sha);
        if f.exists() {
            return Ok(true);
        }
        let size = content.len() as u64;
        let stored = self.counters.stored_bytes.load(Ordering::Relaxed);
        if stored.saturating_add(size) > self.limits.max_total_bytes {
            self.counters
                .skipped_total_limit
                .fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let err = io_err(f.as_os_str().as_bytes());
        if let Some(parent) = f.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err(parent.as_os_str().as_bytes()))?;
        }
        let tmp = f.with_extension(format!("tmp-{}", std::process::id()));
        let packed = miniz_oxide::deflate::compress_to_vec(content, 6);
        let res = (|| {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&packed)?;
            std::fs::rename(&tmp, &f)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        self.counters
            .stored_bytes
            .fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// Makes the objects written so far durable (one `syncfs` of their filesystem).
    fn sync_objects(&self) -> Result<(), BaselineError> {
        let d = self.dir.join("objects");
        let f = std::fs::File::open(&d).map_err(io_err(d.as_os_str().as_bytes()))?;
        // SAFETY: syncfs takes a valid open descriptor, borrowed for the call.
        let r = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        if r != 0 {
            return Err(io_err(d.as_os_str().as_bytes())(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Reads `path` as it is now and keeps its content as an object (within the limits).
    fn capture(&self, path: &[u8], source: &str) -> Result<Option<Entry>, BaselineError> {
        let Some(live) = read_live(path, self.limits.max_file_bytes)? else {
            return Ok(None);
        };
        let mut e = live.entry;
        e.source = source.to_owned();
        e.since_ms = now_ms();
        if e.kind == FileKind::File {
            match live.content {
                Some(c) => e.stored = self.put_object(&e.sha256, &c)?,
                None => {
                    self.counters
                        .skipped_too_large
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Some(e))
    }

    fn write_entries(&self, put: &[(Vec<u8>, Option<Entry>)]) -> Result<(), BaselineError> {
        let tx = self.db.begin_write().map_err(index_err)?;
        {
            let mut t = tx.open_table(FILES).map_err(index_err)?;
            for (p, e) in put {
                match e {
                    Some(e) => {
                        let v = serde_json::to_vec(e).map_err(index_err)?;
                        t.insert(p.as_slice(), v.as_slice()).map_err(index_err)?;
                    }
                    None => {
                        t.remove(p.as_slice()).map_err(index_err)?;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(index_err)?;
            meta.insert(
                META_STORED,
                self.counters.stored_bytes.load(Ordering::Relaxed),
            )
            .map_err(index_err)?;
        }
        tx.commit().map_err(index_err)?;
        self.counters
            .files
            .store(self.len().unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Takes the initial baseline (every file under the roots) unless it was taken
    /// already. Logs progress. `None`: it existed.
    pub fn take_initial(&self) -> Result<Option<Taken>, BaselineError> {
        if self.taken_ms()?.is_some() {
            return Ok(None);
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let started = std::time::Instant::now();
        tracing::info!(roots = ?self.roots, "taking the initial baseline");
        let mut batch = Vec::new();
        let mut seen = 0u64;
        for root in &self.roots {
            self.walk(root, 0, &mut |p| {
                match self.capture(p, "initial") {
                    Ok(Some(e)) => batch.push((p.to_vec(), Some(e))),
                    Ok(None) => {}
                    Err(e) => {
                        self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(path = %encode(p), error = %e, "baseline: file not kept");
                    }
                }
                seen += 1;
                if seen.is_multiple_of(PROGRESS_EVERY) {
                    tracing::info!(
                        files = seen,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "taking the initial baseline"
                    );
                }
            });
        }
        self.sync_objects()?;
        self.write_entries(&batch)?;
        let tx = self.db.begin_write().map_err(index_err)?;
        {
            let mut meta = tx.open_table(META).map_err(index_err)?;
            meta.insert(META_TAKEN, now_ms().max(0) as u64)
                .map_err(index_err)?;
        }
        tx.commit().map_err(index_err)?;
        let c = &self.counters;
        let taken = Taken {
            files: batch.len() as u64,
            bytes_stored: c.stored_bytes.load(Ordering::Relaxed),
            skipped_too_large: c.skipped_too_large.load(Ordering::Relaxed),
            skipped_total_limit: c.skipped_total_limit.load(Ordering::Relaxed),
            unreadable: c.unreadable.load(Ordering::Relaxed),
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            files = taken.files,
            bytes_stored = taken.bytes_stored,
            skipped_too_large = taken.skipped_too_large,
            skipped_total_limit = taken.skipped_total_limit,
            millis = taken.millis,
            "initial baseline taken"
        );
        Ok(Some(taken))
    }

    /// Moves the baseline of each path (a directory: everything below it) to what is
    /// there now: a file that is gone leaves the baseline. Returns what changed, as
    /// `(path, before, after)`.
    #[allow(clippy::type_complexity)]
    pub fn accept(
        &self,
        paths: &[Vec<u8>],
        source: &str,
    ) -> Result<Vec<(Vec<u8>, Option<Entry>, Option<Entry>)>, BaselineError> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for path in paths {
            if !self.in_scope(path) {
                return Err(BaselineError::NotInScope(encode(path)));
            }
            let mut live_paths = Vec::new();
            let p = Path::new(std::ffi::OsStr::from_bytes(path));
            let is_dir = std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
            if is_dir {
                self.walk(p, 0, &mut |f| live_paths.push(f.to_vec()));
            } else {
                live_paths.push(path.clone());
            }
            let mut known: std::collections::HashMap<Vec<u8>, Entry> = if is_dir {
                self.entries_under(path)?.into_iter().collect()
            } else {
                self.get(path)?
                    .map(|e| (path.clone(), e))
                    .into_iter()
                    .collect()
            };
            for f in live_paths {
                let before = known.remove(&f);
                let after = self.capture(&f, source)?;
                if same_state(before.as_ref(), after.as_ref()) {
                    continue;
                }
                out.push((f, before, after));
            }
            for (f, before) in known {
                if std::fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(&f))).is_err() {
                    out.push((f, Some(before), None));
                }
            }
        }
        self.sync_objects()?;
        let put: Vec<(Vec<u8>, Option<Entry>)> =
            out.iter().map(|(p, _, a)| (p.clone(), a.clone())).collect();
        self.write_entries(&put)?;
        self.counters
            .moves
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Calls `f` with every regular file and symlink below `dir` (or `dir` itself when it
    /// is one), not following symlinks, not below confgate's own state.
    fn walk(&self, dir: &Path, depth: usize, f: &mut dyn FnMut(&[u8])) {
        if self.skip.iter().any(|s| dir.starts_with(s)) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return;
        };
        let ft = meta.file_type();
        if ft.is_file() || ft.is_symlink() {
            f(dir.as_os_str().as_bytes());
            return;
        }
        if !ft.is_dir() || depth > MAX_DEPTH {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut names: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        names.sort();
        for p in names {
            self.walk(&p, depth + 1, f);
        }
    }

    /// Every regular file and symlink under `dir` now.
    pub fn live_paths(&self, dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.walk(dir, 0, &mut |p| out.push(p.to_vec()));
        out
    }

    /// Counters for `confgate stats`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("baseline_files", l(&c.files)),
            ("baseline_stored_bytes", l(&c.stored_bytes)),
            ("baseline_skipped_too_large", l(&c.skipped_too_large)),
            ("baseline_skipped_total_limit", l(&c.skipped_total_limit)),
            ("baseline_unreadable", l(&c.unreadable)),
            ("baseline_moves", l(&c.moves)),
            ("baseline_reverts", l(&c.reverts)),
            ("baseline_revert_errors", l(&c.revert_errors)),
            ("drift_checks", l(&c.drift_checks)),
            ("drift_detected", l(&c.drift_detected)),
        ]
    }
}

/// Whether `k` is `prefix` itself or a path below it.
fn below(k: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || k.len() == prefix.len()
        || prefix.ends_with(b"/")
        || k.get(prefix.len()) == Some(&b'/')
}

/// Whether two states of a path are the same approved state (content, kind, mode, owner).
pub fn same_state(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && a.sha256 == b.sha256
                && a.mode == b.mode
                && a.uid == b.uid
                && a.gid == b.gid
        }
        _ => false,
    }
}

/// Reads `path` as it is now (not following a final symlink): `None` when it is missing
/// or neither a regular file nor a symlink. Content is returned up to `max_bytes` (the
/// whole file is hashed regardless).
pub fn read_live(path: &[u8], max_bytes: u64) -> Result<Option<Live>, BaselineError> {
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mtime_ms = meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000;
    let mut entry = Entry {
        kind: FileKind::File,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        sha256: String::new(),
        stored: false,
        target: None,
        mtime_ms,
        since_ms: 0,
        source: String::new(),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(p).map_err(io_err(path))?;
        let t = t.as_os_str().as_bytes().to_vec();
        entry.kind = FileKind::Symlink;
        entry.sha256 = hex(&Sha256::digest(&t));
        entry.size = t.len() as u64;
        entry.target = Some(t);
        return Ok(Some(Live {
            entry,
            content: None,
        }));
    }
    if !ft.is_file() {
        return Ok(None);
    }
    // O_NOFOLLOW | O_NONBLOCK: a symlink or FIFO swapped in since the stat is not
    // followed or waited on.
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut hasher = Sha256::new();
    let mut content = Some(Vec::with_capacity(meta.size().min(max_bytes) as usize));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        if total > max_bytes {
            content = None;
        } else if let Some(c) = content.as_mut() {
            c.extend_from_slice(&buf[..n]);
        }
    }
    entry.size = total;
    entry.sha256 = hex(&hasher.finalize());
    Ok(Some(Live { entry, content }))
}
