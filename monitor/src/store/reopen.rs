//! Living with I/O errors: redb refuses all work on a database after one (a full disk), so
//! the store closes and reopens it before its next use, counting and logging each failure,
//! and fails the syncs of deferred commits that the failed database took with it.
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use redb::Database;

use super::{Store, StoreError, Unsynced, recover};
use crate::state;

/// How long a reopen waits for transactions still running on the failed database.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

impl Store {
    /// The database to run a transaction on, reopened first if an I/O error broke it.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let broken = self
            .inner
            .broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if broken {
            self.reopen()?;
        }
        let slot = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(db) => Ok(db.clone()),
            // A concurrent reopen failed just now; the next use tries again.
            None => Err(StoreError::Unavailable {
                path: self.inner.path.clone(),
                reason: "an earlier I/O error".into(),
                reopen: "in progress or failed".into(),
            }),
        }
    }

    /// Closes the broken database (once the transactions still running on it are done) and
    /// opens the file again; redb repairs what the failed commit left.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reason) = self
            .inner
            .broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Ok(()); // another thread reopened it meanwhile
        };
        let path = &self.inner.path;
        let fail = |reopen: String| {
            state::inc(&state::counters().store_reopen_failures);
            tracing::error!(path = %path.display(), %reason, error = %reopen, "cannot reopen the store; retrying at its next use");
            StoreError::Unavailable {
                path: path.clone(),
                reason: reason.clone(),
                reopen,
            }
        };
        if let Some(mut old) = slot.take() {
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        // Dropping a database after an I/O error only fails to write its
                        // allocator state, which the reopen repairs.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db)));
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(fail(
                            "transactions on the failed database did not finish".into(),
                        ));
                    }
                }
            }
        }
        match recover::open_db(path) {
            Ok(db) => {
                // Deferred commits since the last durable one were only in the old
                // database's memory: their syncs must fail, not be covered by later commits.
                let (from, to) = (
                    self.inner.durable.load(Ordering::SeqCst),
                    self.inner.lazy.load(Ordering::SeqCst),
                );
                if to > from {
                    self.inner
                        .lost
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((from, to));
                    tracing::error!(path = %path.display(), commits = to - from, "deferred store commits were lost with the I/O error");
                }
                *slot = Some(Arc::new(db));
                *self
                    .inner
                    .broken
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                state::inc(&state::counters().store_reopens);
                tracing::warn!(path = %path.display(), %reason, "store reopened after an I/O error");
                Ok(())
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Notes an error of a transaction: a failed write is counted and logged, and an I/O
    /// error makes the next use reopen the database.
    pub(super) fn noted<T>(&self, r: Result<T, StoreError>, write: bool) -> Result<T, StoreError> {
        let Err(e) = &r else { return r };
        let poisons = recover::poisons(e);
        if write && matches!(e, StoreError::Db(_) | StoreError::Unavailable { .. }) {
            state::inc(&state::counters().store_commit_failures);
            tracing::error!(path = %self.inner.path.display(), error = %e, "store write failed");
        }
        if poisons {
            let mut broken = self
                .inner
                .broken
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Keep the first error: "previous I/O error" says nothing about the cause.
            let previous = matches!(e, StoreError::Db(b) if matches!(**b, redb::Error::PreviousIo));
            if broken.is_none() || !previous {
                *broken = Some(e.to_string());
            }
        }
        r
    }

    pub(super) fn check_not_lost(&self, u: Unsynced) -> Result<(), StoreError> {
        let lost = self
            .inner
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|&(from, to)| u.0 > from && u.0 <= to);
        if lost {
            return Err(StoreError::Lost {
                path: self.inner.path.clone(),
            });
        }
        Ok(())
    }
}
