//! Checking a store file without changing it (`confgate store check`): the file is copied
//! while its lock is held (so no daemon is writing it), and the copy is opened, checked
//! page by page by redb, and every record of the named tables decoded.
use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use redb::{ReadableTable as _, TableDefinition, TableError};

use super::StoreError;
use super::recover::{guarded, is_damage, open_db};

/// Decides whether a record's bytes decode as the table's type.
pub type Decodes = fn(&[u8]) -> bool;

/// What [`check_file`] found.
#[derive(Debug, Default)]
pub struct StoreCheck {
    /// The file cannot be used at all: the daemon would move it aside at start.
    pub damaged: Option<String>,
    /// redb's integrity check had to repair the file.
    pub repaired: bool,
    /// Per table: name, records, keys of records that do not decode (skipped at start).
    pub tables: Vec<(String, u64, Vec<u64>)>,
}

impl StoreCheck {
    /// Whether nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.damaged.is_none() && !self.repaired && self.tables.iter().all(|t| t.2.is_empty())
    }
}

/// A private file in the temporary directory, removed when dropped.
struct TempCopy {
    path: std::path::PathBuf,
    file: File,
}

impl TempCopy {
    fn new() -> std::io::Result<TempCopy> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let nanos = crate::os::clock::now_ns();
        let path = std::env::temp_dir().join(format!(
            "confgate-store-check-{}-{nanos}.redb",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(TempCopy { path, file })
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks the store at `path`; `tables` names the record tables to decode.
pub fn check_file(path: &Path, tables: &[(&str, Decodes)]) -> Result<StoreCheck, StoreError> {
    let open_err = |source| StoreError::OpenFile {
        path: path.to_owned(),
        source,
    };
    if let Some(problem) = crate::state::not_a_regular_file(path) {
        return Ok(StoreCheck {
            damaged: Some(problem),
            ..StoreCheck::default()
        });
    }
    let file = File::open(path).map_err(open_err)?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(StoreError::Locked {
                path: path.to_owned(),
            });
        }
        Err((_, errno)) => return Err(open_err(errno.into())),
    };
    let copy = TempCopy::new().map_err(open_err)?;
    std::io::copy(&mut *locked, &mut &copy.file).map_err(open_err)?;
    drop(locked);

    let mut out = StoreCheck::default();
    let repairs_before = crate::state::counters()
        .store_integrity_repairs
        .load(std::sync::atomic::Ordering::Relaxed);
    let db = match open_db(&copy.path) {
        Ok(db) => db,
        Err(e) if is_damage(&e) => {
            out.damaged = Some(e.to_string());
            return Ok(out);
        }
        Err(e) => return Err(e),
    };
    out.repaired = crate::state::counters()
        .store_integrity_repairs
        .load(std::sync::atomic::Ordering::Relaxed)
        > repairs_before;
    for (name, decodes) in tables {
        let r = guarded("reading the store", || {
            let txn = db.begin_read()?;
            let t = match txn.open_table(TableDefinition::<u64, &[u8]>::new(name)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let (mut rows, mut bad) = (0u64, Vec::new());
            for row in t.iter()? {
                let (k, v) = row?;
                rows += 1;
                if !decodes(v.value()) {
                    bad.push(k.value());
                }
            }
            Ok(Some((rows, bad)))
        });
        match r {
            Ok(Some((rows, bad))) => out.tables.push(((*name).to_owned(), rows, bad)),
            Ok(None) => {}
            Err(e) => {
                out.damaged = Some(format!("table {name}: {e}"));
                break;
            }
        }
    }
    Ok(out)
}
