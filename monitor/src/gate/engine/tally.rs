//! Per-session counts of the gate's ledger records, for the `session_end` record.
//!
//! Every record the engine ledgers passes through [`Tally::note`]; a record counts for the
//! session its body names (`session`), or the session of the request (`host_request_id`)
//! or grant (`grant`) it names, as the session report ties them. Kept in memory from the
//! session's start record ([`Tally::begin`]) to its end record ([`Tally::take`]): a
//! session that began before the daemon last started has counts marked incomplete.
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;

/// One session's gate records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounts {
    /// Requests filed (`request`).
    pub requests: u64,
    /// Requests approved (`grant`).
    pub approved: u64,
    /// Refusals: by an approver (`decision` denied), by a rule (`denied_by_policy`), by
    /// confgate's built-in protection (`denied_builtin`).
    pub denied: u64,
    /// Requests that expired undecided (`decision` expired).
    pub expired: u64,
    /// Writes refused outside the declared scope (`scope_denied`), and writes outside it
    /// that could only be observed (`out_of_scope`).
    pub scope_denied: u64,
    pub out_of_scope: u64,
    /// Changes flagged (`change_flagged`) and reverted (`reverted`, `review_reverted`).
    pub flagged: u64,
    pub reverted: u64,
    /// Whether the counts cover the whole session (false: it began before the daemon last
    /// started, whose counts are in memory only).
    pub complete: bool,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, SessionCounts>,
    requests: HashMap<u64, u64>,
    grants: HashMap<u64, u64>,
}

/// The counts of the live sessions.
#[derive(Default)]
pub struct Tally(Mutex<Inner>);

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Session `id` starts now: its counts are complete.
    pub fn begin(&self, id: u64) {
        self.lock().sessions.insert(
            id,
            SessionCounts {
                complete: true,
                ..SessionCounts::default()
            },
        );
    }

    /// Counts a ledger record `kind` with `body`.
    pub fn note(&self, kind: &str, body: &Value) {
        let mut g = self.lock();
        let request = body["host_request_id"].as_u64();
        let grant = body["grant"].as_u64();
        let session = body["session"]
            .as_u64()
            .filter(|&s| s != 0)
            .or_else(|| request.and_then(|r| g.requests.get(&r).copied()))
            .or_else(|| grant.and_then(|x| g.grants.get(&x).copied()));
        let Some(session) = session else {
            return;
        };
        if matches!(kind, "request" | "hold_resumed")
            && let Some(r) = request
        {
            g.requests.insert(r, session);
        }
        if kind == "grant"
            && let Some(x) = grant
        {
            g.grants.insert(x, session);
        }
        let c = g.sessions.entry(session).or_default();
        match kind {
            "request" => c.requests += 1,
            "grant" => c.approved += 1,
            "decision" if body["state"] == "denied" => c.denied += 1,
            "decision" if body["state"] == "expired" => c.expired += 1,
            "denied_by_policy" | "denied_builtin" => c.denied += 1,
            "scope_denied" => c.scope_denied += 1,
            "out_of_scope" => c.out_of_scope += 1,
            "change_flagged" => c.flagged += 1,
            "reverted" | "review_reverted" => c.reverted += 1,
            _ => {}
        }
    }

    /// Session `id`'s counts, forgotten here with its requests and grants (what is
    /// ledgered about them later, e.g. a revert at a grant's expiry, comes after its end
    /// record).
    pub fn take(&self, id: u64) -> SessionCounts {
        let mut g = self.lock();
        g.requests.retain(|_, s| *s != id);
        g.grants.retain(|_, s| *s != id);
        g.sessions.remove(&id).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_count_for_the_session_they_name_or_tie_to() {
        let t = Tally::default();
        t.begin(5);
        t.note("request", &json!({"host_request_id": 1, "session": 5}));
        t.note("request", &json!({"host_request_id": 2, "session": 6}));
        t.note("grant", &json!({"grant": 10, "host_request_id": 1}));
        t.note(
            "decision",
            &json!({"host_request_id": 2, "state": "denied"}),
        );
        t.note("reverted", &json!({"grant": 10}));
        t.note("change_flagged", &json!({"grant": 10, "session": 5}));
        t.note("scope_denied", &json!({"session": 5, "path": "/x"}));
        t.note("denied_by_policy", &json!({"session": 5}));
        t.note("session_start", &json!({"session": 0}));
        t.note(
            "decision",
            &json!({"host_request_id": 99, "state": "denied"}),
        );
        let c = t.take(5);
        assert_eq!(
            c,
            SessionCounts {
                requests: 1,
                approved: 1,
                denied: 1,
                scope_denied: 1,
                flagged: 1,
                reverted: 1,
                complete: true,
                ..SessionCounts::default()
            }
        );
        let other = t.take(6);
        assert_eq!(
            (other.requests, other.denied, other.complete),
            (1, 1, false)
        );
        // Forgotten: a later record of a taken session's grant counts nowhere.
        t.note("reverted", &json!({"grant": 10}));
        assert_eq!(t.take(5), SessionCounts::default());
    }
}
