//! Gate outcomes as events: every record of the host's audit ledger (a request, a
//! decision, a grant and its end, a flagged or reverted change, an unapproved rename, a
//! drift found, a policy deny, ...) is also an event of class `audit` in the event stream,
//! once it is durable in the ledger. One path for all of them: whatever appends to the
//! ledger through a [`crate::ledger::SharedLedger`] with a tap set reaches the outputs,
//! new record kinds included.
//!
//! The ledger's tap runs under the ledger's lock: it only queues the record (bounded, see
//! [`AuditQueue`]); a full queue drops the event (the ledger record stays), counted and
//! logged.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::SCHEMA_VERSION;
use super::origin::origin;
use crate::ledger::{LedgerRecord, Tap};

/// Audit events waiting for the event loop.
pub const QUEUE: usize = 4096;

/// One ledger record as an event (`class: "audit"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    pub v: u32,
    pub class: &'static str,
    /// The record's time (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// `ledger-<seq>-<first 16 hex digits of the record's hash>`.
    pub id: String,
    pub host: &'static str,
    pub boot_id: &'static str,
    /// The record's kind (`request`, `decision`, `grant`, `drift_detected`, ...).
    pub kind: String,
    /// Where the record is in the ledger (`confgate audit verify` checks it).
    pub ledger: LedgerRef,
    /// The record's body, as in the ledger.
    pub body: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerRef {
    pub seq: u64,
    pub hash: String,
}

impl AuditEvent {
    pub fn from_record(r: &LedgerRecord) -> AuditEvent {
        let o = origin();
        AuditEvent {
            v: SCHEMA_VERSION,
            class: "audit",
            time: r.time.clone(),
            id: format!("ledger-{}-{}", r.seq, r.hash.get(..16).unwrap_or(&r.hash)),
            host: &o.host,
            boot_id: &o.boot_id,
            kind: r.kind.clone(),
            ledger: LedgerRef {
                seq: r.seq,
                hash: r.hash.clone(),
            },
            body: r.body.clone(),
        }
    }

    /// The record body's `path` (encoded like every path), when it has one.
    pub fn path(&self) -> Option<&str> {
        self.body.get("path").and_then(Value::as_str)
    }

    /// The record body's session id, when it names one (`session`: an id, or an object
    /// with `id`).
    pub fn session(&self) -> Option<u64> {
        let s = self.body.get("session")?;
        s.as_u64().or_else(|| s.get("id").and_then(Value::as_u64))
    }
}

/// The queue from the ledger's tap to the event loop, and its counters.
#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    counters: Arc<AuditCounters>,
}

/// How many audit events were queued and dropped (the queue was full, or the event loop
/// gone).
#[derive(Debug, Default)]
pub struct AuditCounters {
    pub queued: AtomicU64,
    pub dropped: AtomicU64,
}

impl AuditQueue {
    /// A queue of `capacity` events, and its receiving end.
    pub fn new(capacity: usize) -> (AuditQueue, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            AuditQueue {
                tx,
                counters: Arc::default(),
            },
            rx,
        )
    }

    pub fn counters(&self) -> Arc<AuditCounters> {
        self.counters.clone()
    }

    /// Queues the event of `record` (never blocks).
    pub fn offer(&self, record: &LedgerRecord) {
        match self.tx.try_send(AuditEvent::from_record(record)) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and then one line per 1000: a stuck loop must not flood
                // the log from under the ledger's lock.
                if n == 1 || n.is_multiple_of(1000) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "the queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the event loop is gone",
                    };
                    tracing::warn!(
                        dropped = n,
                        seq = record.seq,
                        kind = %record.kind,
                        why,
                        "a ledger record did not become an audit event (it is in the ledger)"
                    );
                }
            }
        }
    }

    /// The ledger tap that queues each appended record here.
    pub fn tap(&self) -> Tap {
        let me = self.clone();
        Tap::new(move |r| me.offer(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_become_audit_events_and_overflow_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = crate::ledger::SharedLedger::open(&dir.path().join("l.jsonl")).expect("open");
        let (q, mut rx) = AuditQueue::new(2);
        ledger.set_tap(q.tap()).expect("tap");
        let body = serde_json::json!({"path": "/etc/a\nb", "session": 7, "verdict": "allow"});
        let rec = ledger.append("decision", body.clone()).expect("append");
        ledger
            .append("grant", serde_json::json!({}))
            .expect("append");
        ledger
            .append("drift_detected", serde_json::json!({}))
            .expect("append");
        let e = rx.try_recv().expect("first event");
        assert_eq!(e.kind, "decision");
        assert_eq!(e.class, "audit");
        assert_eq!(e.v, SCHEMA_VERSION);
        assert_eq!(e.body, body);
        assert_eq!(e.ledger.seq, rec.seq);
        assert_eq!(e.ledger.hash, rec.hash);
        assert_eq!(e.time, rec.time);
        assert_eq!(e.path(), Some("/etc/a\nb"));
        assert_eq!(e.session(), Some(7));
        assert_eq!(e.host, origin().host);
        assert_eq!(rx.try_recv().expect("second").kind, "grant");
        assert!(rx.try_recv().is_err(), "the third did not fit");
        let c = q.counters();
        assert_eq!(c.queued.load(Ordering::Relaxed), 2);
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
        let line = serde_json::to_value(&e).expect("json");
        for k in [
            "v", "class", "time", "id", "host", "boot_id", "kind", "ledger", "body",
        ] {
            assert!(line.get(k).is_some(), "{k} in {line}");
        }
    }
}
