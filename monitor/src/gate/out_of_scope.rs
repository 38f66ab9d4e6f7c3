//! Writes of a session outside its declared scope that the gate could not refuse (an
//! unconfined, detected session writing where no mark holds it): recorded, not silent.
//!
//! Each successful write event of a session with a scope whose path (or rename/link
//! target) is outside it is ledgered once per session and path as `out_of_scope` (the
//! events file has every one); past [`MAX_PATHS`] distinct paths of one session only the
//! counter `gate_out_of_scope_unledgered` goes on. A path the gate refused outside the
//! scope (`scope_denied`) is marked seen when refused, so the event of the file the
//! refused open created (and the gate removed) is not recorded again.
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// Most distinct paths ledgered per session.
pub const MAX_PATHS: usize = 1024;

/// What was ledgered per live session.
#[derive(Default)]
pub struct Seen(Mutex<HashMap<u64, HashSet<Vec<u8>>>>);

/// What to do with one path outside a session's scope.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// Ledger it (first time for this session).
    Ledger,
    /// Ledgered before.
    Again,
    /// Past the session's limit: count only.
    OverLimit,
}

impl Seen {
    pub fn first(&self, session: u64, path: &[u8]) -> First {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let set = g.entry(session).or_default();
        if set.contains(path) {
            First::Again
        } else if set.len() >= MAX_PATHS {
            First::OverLimit
        } else {
            set.insert(path.to_vec());
            First::Ledger
        }
    }

    /// Session `id` ended.
    pub fn forget(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_session_and_path_then_bounded() {
        let s = Seen::default();
        assert_eq!(s.first(1, b"/a"), First::Ledger);
        assert_eq!(s.first(1, b"/a"), First::Again);
        assert_eq!(s.first(2, b"/a"), First::Ledger);
        for i in 1..MAX_PATHS {
            assert_eq!(s.first(1, format!("/p{i}").as_bytes()), First::Ledger);
        }
        assert_eq!(s.first(1, b"/one-more"), First::OverLimit);
        s.forget(1);
        assert_eq!(s.first(1, b"/a"), First::Ledger);
    }
}
