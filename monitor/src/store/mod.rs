//! Embedded store: one redb file (`<state_dir>/confgate.redb`) holding the daemon's durable state.
//!
//! The store is deliberately generic. Records live in [`RecordTable`]s: `u64` key -> JSON bytes
//! of one serde type. Adding a table (approval requests, grants, an audit ledger, ...) is one
//! `pub const` in the module that owns the record type (the sessions table is
//! [`crate::sessions::SESSIONS`]); nothing else here changes. Monotonic ids come from named
//! sequences in the `meta` table ([`WriteTx::next_id`]).
//!
//! Every write goes through [`Store::write`]: one redb transaction, committed with
//! `Durability::Immediate` (fsync'd) before the call returns. Several tables can be updated
//! atomically in the same closure. Reads see the last committed state. Bookkeeping whose
//! loss only causes a harmless repeat goes through [`Store::write_lazy`] (no fsync; made
//! durable by the next [`Store::write`]). Records that must reach the disk soon but need not
//! hold up their caller go through [`Store::write_deferred`] + [`Store::sync`]: group commit,
//! where the caller's later sync is usually served by a durable commit someone else made.
//! Sequences handed out by deferred commits are skipped ahead at start-up
//! ([`Store::skip_ids`]), so that an id lost with an unsynced commit is never handed out twice.
//!
//! redb takes an exclusive lock on the file, so a second daemon on the same state directory
//! fails with [`StoreError::Locked`] instead of corrupting it.
//!
//! Damage never keeps the daemon down: a file that cannot be opened (redb errors, panics
//! and integrity failures alike, see [`recover`]) is moved aside to
//! `<name>.damaged-<unix ms>` and a new store is started ([`crate::state`] counts, logs and
//! notes it for the ledger); a record that cannot be decoded is skipped by [`Store::scan`]
//! (counted and logged). After an I/O error (a full disk) redb refuses every later
//! transaction, so the store reopens the database before its next use.
mod check;
mod recover;
mod reopen;

pub use check::{Decodes, StoreCheck, check_file};

use std::fs::DirBuilder;
use std::marker::PhantomData;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state;

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "confgate.redb";

/// Layout version written into `meta`. Bump it (and migrate in [`Store::open`]) when a table's
/// key or value format changes incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

/// Name of the agent sessions table ([`crate::sessions::SESSIONS`]), created when the
/// store is opened so that readers never see it missing. The table itself is declared
/// next to its record type, so the store does not depend on the session registry.
pub const SESSIONS_TABLE: &str = "sessions";

/// `meta`: small named `u64` values (schema version, id sequences).
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
const META_SCHEMA: &str = "schema_version";
const META_SEQ_PREFIX: &str = "next_id.";
/// Where sequences not in `meta` start (1 when absent). A store that replaces a damaged one
/// starts them far above any id the lost store handed out, so that no new request, grant
/// or session ever takes an id that the ledger, the approval service or a person already
/// knows for another.
const META_ID_FLOOR: &str = "id_floor";

/// Deferred commits allowed in a row before the next one is made durable itself: bounds the
/// ids a crash can take with it to fewer than [`DEFERRED_ID_GAP`].
const DEFERRED_MAX: u64 = 256;

/// How far [`Store::skip_ids`] moves a sequence at start-up (> [`DEFERRED_MAX`] + 1).
pub const DEFERRED_ID_GAP: u64 = 1024;

/// Errors of the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store {path}: {source}")]
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path} is in use by another process (is another confgate daemon running?)")]
    Locked { path: PathBuf },
    #[error("store {path} has schema version {found}, this confgate understands up to {supported}")]
    SchemaTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("store: {0}")]
    Db(Box<redb::Error>),
    /// The approval service's PostgreSQL backend failed (connection, query or commit):
    /// nothing of the call was committed unless the message says otherwise.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("store table {table}, key {key}: cannot encode/decode record: {source}")]
    Codec {
        table: &'static str,
        key: u64,
        source: serde_json::Error,
    },
    #[error("store sequence {0} is exhausted")]
    SequenceExhausted(String),
    /// The transaction's closure found its input invalid; nothing was written.
    #[error("transaction abandoned: {0}")]
    Abandoned(String),
    /// The file's content is damaged (redb panicked on it, or its check failed).
    #[error("store file is damaged: {0}")]
    Damaged(String),
    /// A deferred commit did not reach the disk before an I/O error; the reopened store
    /// does not have it.
    #[error("store {path}: a deferred commit was lost with an I/O error (the store was reopened)")]
    Lost { path: PathBuf },
    /// An earlier I/O error made the database unusable and reopening it failed.
    #[error(
        "store {path} is unavailable after an I/O error ({reason}); reopening failed: {reopen}"
    )]
    Unavailable {
        path: PathBuf,
        reason: String,
        reopen: String,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A table of JSON-encoded records of type `V`, keyed by `u64`. Declare one as a `const`.
pub struct RecordTable<V> {
    name: &'static str,
    _record: PhantomData<fn() -> V>,
}

impl<V> RecordTable<V> {
    pub const fn new(name: &'static str) -> Self {
        RecordTable {
            name,
            _record: PhantomData,
        }
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }

    const fn def(&self) -> TableDefinition<'static, u64, &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

/// A table of raw byte values by `u64` key (file contents: pre-images), not JSON-encoded.
#[derive(Clone, Copy, Debug)]
pub struct BlobTable {
    name: &'static str,
}

impl BlobTable {
    pub const fn new(name: &'static str) -> Self {
        BlobTable { name }
    }

    const fn def(&self) -> TableDefinition<'static, u64, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<V> Clone for RecordTable<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for RecordTable<V> {}

/// Handle to the store. Cheap to clone; all clones share one open database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; `None` only between a failed reopen and the next attempt.
    db: Mutex<Option<Arc<Database>>>,
    /// The I/O error after which the database must be reopened before its next use.
    broken: Mutex<Option<String>>,
    path: PathBuf,
    /// Lazy and deferred commits so far; each takes the next number inside its transaction.
    lazy: AtomicU64,
    /// The highest of those numbers that a durable commit has since covered.
    durable: AtomicU64,
    /// Durable commits made (tests see whether a sync needed one of its own).
    durable_commits: AtomicU64,
    /// Ranges `(from, to]` of deferred-commit numbers lost by reopens after I/O errors.
    lost: Mutex<Vec<(u64, u64)>>,
}

/// A deferred commit, to wait for with [`Store::sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a deferred commit is not durable until synced"]
pub struct Unsynced(u64);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`. Missing parent directories are created with mode
    /// 0700 and a new file with mode 0600: the store holds command lines and reasons, which
    /// may be sensitive. Existing directories and files keep their modes.
    ///
    /// A damaged file is moved aside (`<name>.damaged-<unix ms>`), recorded with
    /// [`state::record_damage`], and a new store is created in its place. Errors that are not
    /// the file's fault (another daemon holds it, permissions, a full disk, a newer schema)
    /// are returned and the file is left alone.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, |_| Ok(()))
    }

    /// [`Store::open`], also running `tables` in the first write transaction: open there
    /// every table the caller will use, so that a file holding one of them with another
    /// type counts as damaged at open (and is moved aside) instead of failing later.
    pub fn open_with(
        path: &Path,
        tables: impl Fn(&WriteTx<'_>) -> Result<(), StoreError>,
    ) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| StoreError::CreateDir {
                    path: parent.to_owned(),
                    source,
                })?;
        }
        match Self::open_once(path, &tables) {
            Err(e) if recover::is_damage(&e) => {
                let moved_to = state::move_aside(path).map_err(|source| StoreError::OpenFile {
                    path: path.to_owned(),
                    source,
                })?;
                state::record_damage(state::Damage {
                    file: path.to_owned(),
                    moved_to,
                    problem: e.to_string(),
                });
                let store = Self::open_once(path, &tables)?;
                // Milliseconds since the epoch × 1000: above any id a store could reach by
                // counting, and above the floor of an earlier replacement.
                let floor = u64::try_from(crate::os::clock::now_ms())
                    .unwrap_or(0)
                    .max(1)
                    .saturating_mul(1000);
                store.write(|tx| {
                    tx.txn.open_table(META)?.insert(META_ID_FLOOR, floor)?;
                    Ok(())
                })?;
                Ok(store)
            }
            other => other,
        }
    }

    fn open_once(
        path: &Path,
        tables: &dyn Fn(&WriteTx<'_>) -> Result<(), StoreError>,
    ) -> Result<Store, StoreError> {
        let db = recover::open_db(path)?;
        let store = Store {
            inner: Arc::new(Inner {
                db: Mutex::new(Some(Arc::new(db))),
                broken: Mutex::new(None),
                path: path.to_owned(),
                lazy: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                durable_commits: AtomicU64::new(0),
                lost: Mutex::new(Vec::new()),
            }),
        };
        recover::guarded("initialising the store", || store.init(tables))?;
        Ok(store)
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn init(
        &self,
        tables: &dyn Fn(&WriteTx<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let path = self.inner.path.clone();
        self.write(|tx| {
            let mut meta = tx.txn.open_table(META)?;
            let found = meta.get(META_SCHEMA)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        path,
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                }
            }
            drop(meta);
            // Create the known record tables so that readers never see them missing.
            tx.txn
                .open_table(TableDefinition::<u64, &[u8]>::new(SESSIONS_TABLE))?;
            tables(tx)
        })
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) before returning.
    /// If `f` fails, nothing it wrote is kept.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.commit(Durability::Immediate, f)
    }

    /// Like [`Store::write`], but without waiting for the disk (`Durability::None`): the
    /// change is visible at once and reaches the disk with the next durable commit. A crash
    /// before that loses it, so use this only for bookkeeping whose loss is harmless by
    /// design (an uplink cursor or an acknowledged spool entry: both make a message be sent
    /// or applied again, which every consumer of them tolerates). It keeps the fsync of
    /// bookkeeping off the write lock that the gate's durable commits wait for.
    pub fn write_lazy<T>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.commit(Durability::None, f)
    }

    /// Like [`Store::write_lazy`], for records that must be durable soon but whose caller
    /// should not wait for the disk now (an approval request on its way to the service): the
    /// caller later waits for [`Store::sync`], which a durable commit made meanwhile by
    /// anyone (the decision's) satisfies without a disk wait of its own. Sequences allocated
    /// here must be moved on by [`Store::skip_ids`] when the store is opened.
    pub fn write_deferred<T>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<(T, Unsynced), StoreError> {
        let mut mark = 0;
        let out = self.commit_marked(Durability::None, &mut mark, f)?;
        Ok((out, Unsynced(mark)))
    }

    /// Makes the deferred commit `u` durable: at once if a durable commit made since
    /// (anyone's) covered it, else by committing durably itself (which covers every commit
    /// before it). Callers that want to give another commit the chance wait before calling.
    pub fn sync(&self, u: Unsynced) -> Result<(), StoreError> {
        // Checked before and after: a reopen may come while this sync commits.
        self.check_not_lost(u)?;
        let r = self.sync_inner(u);
        self.check_not_lost(u)?;
        r
    }

    fn sync_inner(&self, u: Unsynced) -> Result<(), StoreError> {
        if self.inner.durable.load(Ordering::SeqCst) >= u.0 {
            return Ok(());
        }
        let r = (|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            if self.inner.durable.load(Ordering::SeqCst) >= u.0 {
                // A durable commit landed while this one waited for the write lock.
                txn.abort()?;
                return Ok(());
            }
            let mut mark = 0;
            self.finish(txn, Durability::Immediate, &mut mark)
        })();
        self.noted(r, true)
    }

    /// Moves each named sequence on by [`DEFERRED_ID_GAP`] (one with no value yet: from
    /// its start), durably: ids that
    /// deferred commits handed out before a crash (and that did not reach the disk) are
    /// then never handed out again. Call once when the store is opened.
    pub fn skip_ids(&self, sequences: &[&str]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut meta = tx.txn.open_table(META)?;
            for seq in sequences {
                let key = format!("{META_SEQ_PREFIX}{seq}");
                // A sequence with no durable value yet may still have lost ids: its first
                // ids, taken by a commit a crash did not let reach the disk.
                let next = match meta.get(key.as_str())?.map(|v| v.value()) {
                    Some(next) => next,
                    None => meta.get(META_ID_FLOOR)?.map_or(1, |v| v.value()),
                };
                let moved = next
                    .checked_add(DEFERRED_ID_GAP)
                    .ok_or_else(|| StoreError::SequenceExhausted((*seq).to_owned()))?;
                meta.insert(key.as_str(), moved)?;
            }
            Ok(())
        })
    }

    fn commit<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.commit_marked(durability, &mut 0, f)
    }

    /// Runs `f` in a write transaction and commits it; `mark` receives the commit's number
    /// (lazy commits) or the number it covers (durable ones).
    fn commit_marked<T>(
        &self,
        durability: Durability,
        mark: &mut u64,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = (|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            let out = f(&WriteTx { txn: &txn })?;
            self.finish(txn, durability, mark)?;
            Ok(out)
        })();
        self.noted(r, true)
    }

    /// Commits `txn`, keeping the lazy/durable bookkeeping that [`Store::sync`] reads. The
    /// write lock is held throughout, so a durable commit covers every lazy commit numbered
    /// before it, and a lazy one too many in a row is made durable.
    fn finish(
        &self,
        mut txn: redb::WriteTransaction,
        durability: Durability,
        mark: &mut u64,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let lazy_so_far = inner.lazy.load(Ordering::SeqCst);
        let lazy = matches!(durability, Durability::None)
            && lazy_so_far.saturating_sub(inner.durable.load(Ordering::SeqCst)) < DEFERRED_MAX;
        if lazy {
            txn.set_durability(Durability::None);
            *mark = inner.lazy.fetch_add(1, Ordering::SeqCst) + 1;
            txn.commit()?;
            return Ok(());
        }
        txn.set_durability(Durability::Immediate);
        *mark = lazy_so_far;
        txn.commit()?;
        inner.durable_commits.fetch_add(1, Ordering::Relaxed);
        inner.durable.fetch_max(lazy_so_far, Ordering::SeqCst);
        Ok(())
    }

    /// Stores one record (one durable transaction).
    pub fn put<V: Serialize>(
        &self,
        table: RecordTable<V>,
        key: u64,
        value: &V,
    ) -> Result<(), StoreError> {
        self.write(|tx| tx.put(table, key, value))
    }

    /// Runs `f` on a read transaction (the last committed state), for tables that are not
    /// [`RecordTable`]s or for reads that need more than [`Store::get`] / [`Store::scan`].
    pub fn read_raw<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = (|| {
            let txn = self.db()?.begin_read()?;
            f(&txn)
        })();
        self.noted(r, false)
    }

    /// Reads one record.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: RecordTable<V>,
        key: u64,
    ) -> Result<Option<V>, StoreError> {
        self.read_raw(|txn| {
            let t = match txn.open_table(table.def()) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let Some(bytes) = t.get(key)? else {
                return Ok(None);
            };
            decode(table, key, bytes.value()).map(Some)
        })
    }

    /// The first `limit` decodable records of `table` in key order, and how many rows the
    /// table holds in all (a bounded read of a table that may grow large, such as an
    /// outbox whose sink is down). Undecodable records are skipped and counted as in
    /// [`Store::scan`].
    pub fn scan_first<V: DeserializeOwned>(
        &self,
        table: RecordTable<V>,
        limit: usize,
    ) -> Result<(Vec<(u64, V)>, u64), StoreError> {
        self.read_raw(|txn| {
            let t = match txn.open_table(table.def()) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), 0)),
                Err(e) => return Err(e.into()),
            };
            let total = t.len()?;
            let mut out = Vec::new();
            for row in t.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row?;
                let key = k.value();
                match decode(table, key, v.value()) {
                    Ok(rec) => out.push((key, rec)),
                    Err(e) => {
                        state::inc(&state::counters().records_skipped);
                        tracing::error!(path = %self.inner.path.display(), error = %e, "skipping an undecodable store record");
                    }
                }
            }
            Ok((out, total))
        })
    }

    /// The keys of `table`, in key order, whether or not their values decode (to find the
    /// records [`Store::scan`] had to skip).
    pub fn keys<V>(&self, table: RecordTable<V>) -> Result<Vec<u64>, StoreError> {
        self.read_raw(|txn| {
            let t = match txn.open_table(table.def()) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                out.push(row?.0.value());
            }
            Ok(out)
        })
    }

    /// Reads every record of `table`, in key order. A record that cannot be decoded (a
    /// damaged or foreign value) is skipped, counted (`store_records_skipped`) and logged:
    /// one bad record must not keep the rest, or the daemon, from loading.
    pub fn scan<V: DeserializeOwned>(
        &self,
        table: RecordTable<V>,
    ) -> Result<Vec<(u64, V)>, StoreError> {
        Ok(self.scan_first(table, usize::MAX)?.0)
    }
}

impl Store {
    /// Reads one blob.
    pub fn get_blob(&self, table: BlobTable, key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_raw(|txn| {
            let t = match txn.open_table(table.def()) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }
}

/// An open write transaction, handed to the closure of [`Store::write`].
pub struct WriteTx<'a> {
    txn: &'a redb::WriteTransaction,
}

impl WriteTx<'_> {
    /// Creates `table` if missing; fails if the file holds a table of that name with
    /// another type. For [`Store::open_with`].
    pub fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.txn
            .open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        Ok(())
    }

    /// Inserts or replaces a record.
    pub fn put<V: Serialize>(
        &self,
        table: RecordTable<V>,
        key: u64,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            table: table.name,
            key,
            source,
        })?;
        self.txn
            .open_table(table.def())?
            .insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Reads a record, including this transaction's uncommitted writes.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: RecordTable<V>,
        key: u64,
    ) -> Result<Option<V>, StoreError> {
        let t = self.txn.open_table(table.def())?;
        let Some(bytes) = t.get(key)? else {
            return Ok(None);
        };
        decode(table, key, bytes.value()).map(Some)
    }

    /// Inserts or replaces a blob.
    pub fn put_blob(&self, table: BlobTable, key: u64, value: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(table.def())?.insert(key, value)?;
        Ok(())
    }

    /// Removes a blob; returns whether it existed.
    pub fn remove_blob(&self, table: BlobTable, key: u64) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(table.def())?.remove(key)?.is_some())
    }

    /// Removes a record; returns whether it existed.
    pub fn remove<V>(&self, table: RecordTable<V>, key: u64) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(table.def())?.remove(key)?.is_some())
    }

    /// Allocates the next id of the named sequence (1, 2, 3, ...). Ids are never reused: the
    /// counter is part of this transaction, so it commits together with the record using it.
    pub fn next_id(&self, sequence: &str) -> Result<u64, StoreError> {
        let key = format!("{META_SEQ_PREFIX}{sequence}");
        let mut meta = self.txn.open_table(META)?;
        let id = match meta.get(key.as_str())?.map(|v| v.value()) {
            Some(id) => id,
            None => meta.get(META_ID_FLOOR)?.map_or(1, |v| v.value()),
        };
        let next = id
            .checked_add(1)
            .ok_or_else(|| StoreError::SequenceExhausted(sequence.to_owned()))?;
        meta.insert(key.as_str(), next)?;
        Ok(id)
    }

    /// The underlying redb transaction, for tables that are not [`RecordTable`]s (e.g. an
    /// append-only ledger with its own key type).
    pub fn raw(&self) -> &redb::WriteTransaction {
        self.txn
    }
}

fn decode<V: DeserializeOwned>(
    table: RecordTable<V>,
    key: u64,
    bytes: &[u8],
) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec {
        table: table.name,
        key,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// The sessions table, read as raw JSON values (the store does not know its type).
    const SESSIONS: RecordTable<serde_json::Value> = RecordTable::new(SESSIONS_TABLE);
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        n: u64,
    }
    const RECS: RecordTable<Rec> = RecordTable::new("test_recs");

    fn rec(name: &str, n: u64) -> Rec {
        Rec {
            name: name.into(),
            n,
        }
    }

    #[test]
    fn creates_private_dirs_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/confgate.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), path);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let store = Store::open(&path).unwrap();
            store.put(RECS, 7, &rec("seven", 7)).unwrap();
            store.put(RECS, 3, &rec("three", 3)).unwrap();
            store.put(RECS, 7, &rec("seven again", 77)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get(RECS, 7).unwrap(), Some(rec("seven again", 77)));
        assert_eq!(store.get(RECS, 8).unwrap(), None);
        let all = store.scan(RECS).unwrap();
        assert_eq!(all, vec![(3, rec("three", 3)), (7, rec("seven again", 77))]);
    }

    #[test]
    fn missing_table_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        assert_eq!(store.get(RECS, 1).unwrap(), None);
        assert!(store.scan(RECS).unwrap().is_empty());
        assert!(store.scan(SESSIONS).unwrap().is_empty());
    }

    #[test]
    fn lazy_writes_are_visible_at_once_and_kept_by_the_next_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        const T: RecordTable<u64> = RecordTable::new("test_lazy");
        {
            let store = Store::open(&path).unwrap();
            store.write_lazy(|tx| tx.put(T, 1, &7)).unwrap();
            assert_eq!(store.get(T, 1).unwrap(), Some(7));
            store.put(T, 2, &8).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get(T, 1).unwrap(), Some(7));
        assert_eq!(store.get(T, 2).unwrap(), Some(8));
    }

    #[test]
    fn deferred_commit_is_synced_by_a_later_durable_commit_or_by_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        const T: RecordTable<u64> = RecordTable::new("test_deferred");
        let commits = |s: &Store| s.inner.durable_commits.load(Ordering::Relaxed);
        {
            let store = Store::open(&path).unwrap();
            let ((), first) = store.write_deferred(|tx| tx.put(T, 1, &7)).unwrap();
            assert_eq!(store.get(T, 1).unwrap(), Some(7), "visible at once");
            // Someone else's durable commit covers it: the sync needs no commit of its own.
            store.put(T, 2, &8).unwrap();
            let before = commits(&store);
            store.sync(first).unwrap();
            assert_eq!(commits(&store), before);
            // Nobody else committed: the sync commits durably itself.
            let ((), second) = store.write_deferred(|tx| tx.put(T, 3, &9)).unwrap();
            store.sync(second).unwrap();
            assert_eq!(commits(&store), before + 1);
        }
        let store = Store::open(&path).unwrap();
        for (k, v) in [(1, 7), (2, 8), (3, 9)] {
            assert_eq!(store.get(T, k).unwrap(), Some(v));
        }
    }

    #[test]
    fn a_reopen_after_an_io_error_fails_the_syncs_of_deferred_commits_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        const T: RecordTable<u64> = RecordTable::new("test_lost");
        let ((), before) = store.write_deferred(|tx| tx.put(T, 1, &1)).unwrap();
        store.sync(before).unwrap();
        let ((), lost) = store.write_deferred(|tx| tx.put(T, 2, &2)).unwrap();
        let reopens = state::counters().store_reopens.load(Ordering::Relaxed);
        // What an I/O error leaves behind: the next use reopens the database.
        *store.inner.broken.lock().unwrap() = Some("I/O error: test".into());
        assert_eq!(store.get(T, 1).unwrap(), Some(1));
        assert!(state::counters().store_reopens.load(Ordering::Relaxed) > reopens);
        // A later durable commit must not cover the lost one.
        store.put(T, 3, &3).unwrap();
        assert!(matches!(store.sync(lost), Err(StoreError::Lost { .. })));
        store.sync(before).unwrap();
        let ((), after) = store.write_deferred(|tx| tx.put(T, 4, &4)).unwrap();
        store.sync(after).unwrap();
    }

    #[test]
    fn too_many_deferred_commits_in_a_row_make_the_next_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        let before = store.inner.durable_commits.load(Ordering::Relaxed);
        let mut last = None;
        for _ in 0..=DEFERRED_MAX {
            last = Some(store.write_deferred(|tx| tx.next_id("x")).unwrap());
        }
        assert_eq!(
            store.inner.durable_commits.load(Ordering::Relaxed),
            before + 1
        );
        let (id, u) = last.unwrap();
        assert_eq!(id, DEFERRED_MAX + 1);
        store.sync(u).unwrap();
        assert_eq!(
            store.inner.durable_commits.load(Ordering::Relaxed),
            before + 1,
            "already durable"
        );
    }

    #[test]
    fn skip_ids_moves_existing_sequences_past_what_a_crash_could_lose() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        assert_eq!(store.write(|tx| tx.next_id("a")).unwrap(), 1);
        store.skip_ids(&["a", "never_used"]).unwrap();
        assert_eq!(
            store.write(|tx| tx.next_id("a")).unwrap(),
            2 + DEFERRED_ID_GAP
        );
        // A sequence never durably used may have lost its first ids too.
        assert_eq!(
            store.write(|tx| tx.next_id("never_used")).unwrap(),
            1 + DEFERRED_ID_GAP
        );
    }

    #[test]
    fn sequences_are_monotonic_independent_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.write(|tx| tx.next_id("a")).unwrap(), 1);
            assert_eq!(store.write(|tx| tx.next_id("a")).unwrap(), 2);
            assert_eq!(store.write(|tx| tx.next_id("b")).unwrap(), 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.write(|tx| tx.next_id("a")).unwrap(), 3);
    }

    #[test]
    fn failed_transaction_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        let r: Result<(), StoreError> = store.write(|tx| {
            let id = tx.next_id("a")?;
            tx.put(RECS, id, &rec("doomed", id))?;
            assert_eq!(tx.get(RECS, id)?, Some(rec("doomed", id)));
            Err(StoreError::SequenceExhausted("test".into()))
        });
        assert!(r.is_err());
        assert_eq!(store.get(RECS, 1).unwrap(), None);
        assert_eq!(store.write(|tx| tx.next_id("a")).unwrap(), 1);
    }

    #[test]
    fn blobs_round_trip_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        const B: BlobTable = BlobTable::new("blobs");
        assert_eq!(store.get_blob(B, 1).unwrap(), None);
        let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        store.write(|tx| tx.put_blob(B, 1, &data)).unwrap();
        assert_eq!(store.get_blob(B, 1).unwrap().as_deref(), Some(&data[..]));
        assert!(store.write(|tx| tx.remove_blob(B, 1)).unwrap());
        assert_eq!(store.get_blob(B, 1).unwrap(), None);
    }

    #[test]
    fn scan_first_reads_the_oldest_and_counts_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        assert_eq!(store.scan_first(RECS, 2).unwrap(), (Vec::new(), 0));
        for k in [5u64, 1, 3, 2, 4] {
            store.put(RECS, k, &rec("x", k)).unwrap();
        }
        let (first, total) = store.scan_first(RECS, 2).unwrap();
        assert_eq!(total, 5);
        assert_eq!(
            first.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn remove_reports_existence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        store.put(RECS, 1, &rec("x", 1)).unwrap();
        assert!(store.write(|tx| tx.remove(RECS, 1)).unwrap());
        assert!(!store.write(|tx| tx.remove(RECS, 1)).unwrap());
        assert_eq!(store.get(RECS, 1).unwrap(), None);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let _first = Store::open(&path).unwrap();
        match Store::open(&path) {
            Err(StoreError::Locked { path: p }) => assert_eq!(p, path),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|tx| {
                    tx.raw()
                        .open_table(META)?
                        .insert(META_SCHEMA, SCHEMA_VERSION + 1)?;
                    Ok(())
                })
                .unwrap();
        }
        assert!(
            matches!(Store::open(&path), Err(StoreError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1)
        );
    }

    #[test]
    fn undecodable_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        store
            .write(|tx| {
                tx.raw()
                    .open_table(RECS.def())?
                    .insert(5, b"not json".as_slice())?;
                Ok(())
            })
            .unwrap();
        store.put(RECS, 6, &rec("six", 6)).unwrap();
        assert!(matches!(
            store.get(RECS, 5),
            Err(StoreError::Codec { key: 5, .. })
        ));
        let skipped = state::counters().records_skipped.load(Ordering::Relaxed);
        assert_eq!(store.scan(RECS).unwrap(), vec![(6, rec("six", 6))]);
        assert!(state::counters().records_skipped.load(Ordering::Relaxed) > skipped);
    }
}
