//! The service's ledger: every submit, decision, expiry, grant, revocation and host
//! report, hash-chained ([`crate::ledger`]).
use std::path::{Path, PathBuf};

use crate::ledger::{LedgerError, SharedLedger};
use crate::os::clock::from_unix_ms;

/// The service ledger at one path.
#[derive(Clone, Debug)]
pub struct Audit {
    ledger: SharedLedger,
    path: PathBuf,
}

impl Audit {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Audit, LedgerError> {
        Ok(Audit {
            ledger: SharedLedger::open(path)?,
            path: path.to_owned(),
        })
    }

    /// Appends one record, durably (blocking).
    pub fn append(&self, kind: &str, body: serde_json::Value) -> Result<(), String> {
        self.ledger
            .append(kind, body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Every record at or after `since_unix_ms` (0: all), oldest first, as JSON lines.
    pub fn read(&self, since_unix_ms: i64) -> Result<Vec<String>, String> {
        let since = from_unix_ms(since_unix_ms);
        crate::ledger::read(&self.path, since)
            .map(|records| records.iter().map(|r| r.to_line()).collect())
            .map_err(|e| e.to_string())
    }

    /// The ledger's counters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.ledger.counters()
    }
}
