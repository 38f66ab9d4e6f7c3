//! `drift_detected` in the event stream: each drift the periodic check finds for the first
//! time is also an event (events file, stdout, `confgate events`, `SubscribeEvents`), not
//! only a ledger record. The check runs on a blocking thread; the event output belongs to
//! the pipeline's thread, which takes these lines from a bounded channel at each of its
//! flushes (at least once a second) and writes them like its own events.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde_json::{Value, json};

use super::drift::Item;
use crate::os::clock::rfc3339_ns;

/// Drift events waiting for the pipeline's next flush, at most.
pub const QUEUE: usize = 4096;

/// One event the daemon made itself: its NDJSON line and its human-readable line.
#[derive(Clone, Debug)]
pub struct DaemonEvent {
    pub json: String,
    pub human: String,
}

/// The sending side (the drift check's).
pub struct DriftEvents {
    tx: SyncSender<DaemonEvent>,
    seq: AtomicU64,
    /// Events not delivered (the queue full or the pipeline gone): `drift_events_dropped`.
    pub dropped: AtomicU64,
}

/// A channel for drift events: the check's side and the pipeline's.
pub fn channel() -> (DriftEvents, Receiver<DaemonEvent>) {
    let (tx, rx) = sync_channel(QUEUE);
    (
        DriftEvents {
            tx,
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        },
        rx,
    )
}

impl DriftEvents {
    /// Queues the event of `it` (never blocks; a full queue is counted and logged).
    pub fn send(&self, it: &Item, now_ns: i128) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let ev = event(it, now_ns, n);
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %it.path, "a drift_detected event could not be queued for the event stream (it is in the ledger)");
            }
        }
    }
}

/// The event of a drift: the event schema's fields (no process: `pid` 0, `source`
/// `"drift"`), `session` from the attribution when a session made the change, and the
/// drift itself under `drift` (as `confgate drift --json` shows it).
pub fn event(it: &Item, now_ns: i128, n: u64) -> DaemonEvent {
    let a = &it.attribution;
    let session = match (a.by.as_str(), a.session) {
        ("session", Some(id)) => {
            json!({"id": id, "agent": a.agent, "reason": null, "root_pid": 0})
        }
        _ => Value::Null,
    };
    let time = rfc3339_ns(now_ns);
    let v = json!({
        "v": 1,
        "time": time,
        "id": format!("drift-{:x}-{n}", now_ns),
        "kind": "drift_detected",
        "path": it.path,
        "target": it.from,
        "result": null,
        "pid": a.pid.unwrap_or(0),
        "tid": 0,
        "ppid": null,
        "uid": a.uid,
        "comm": "",
        "exe": null,
        "argv": [],
        "cwd": null,
        "ancestors": [],
        "session": session,
        "source": "drift",
        "drift": it,
    });
    let human = format!(
        "{time} drift_detected {} {} ({}) by {}",
        crate::event::escape::for_terminal(it.path.as_bytes()),
        it.change,
        it.what.join(","),
        crate::event::escape::for_terminal(a.by.as_bytes()),
    );
    DaemonEvent {
        json: v.to_string(),
        human,
    }
}
