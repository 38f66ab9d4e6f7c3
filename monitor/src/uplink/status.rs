//! The uplink's counters and connection state, shared by the handle and the task, and
//! what `confgate stats` shows of them.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of the uplink (all monotonic except `spool_pending`, a gauge).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Messages written to the spool.
    pub(super) spooled: AtomicU64,
    /// Submit requests acknowledged on their first send.
    pub(super) submitted: AtomicU64,
    /// Messages sent again: after a failed send, or left in the spool by an earlier run.
    pub(super) resubmitted: AtomicU64,
    /// Reports acknowledged.
    pub(super) reports_sent: AtomicU64,
    /// Sends that failed for a transport reason (the message stays spooled).
    pub(super) send_errors: AtomicU64,
    /// Messages the service refused as invalid, dropped from the spool.
    pub(super) rejected: AtomicU64,
    /// Spooled submit requests whose stored bytes could not be decoded, dropped.
    pub(super) damaged: AtomicU64,
    /// Failed connection attempts.
    pub(super) connect_failures: AtomicU64,
    /// Connections established after the first.
    pub(super) reconnects: AtomicU64,
    /// Moves to the next of several endpoints after the current one failed.
    pub(super) failovers: AtomicU64,
    /// Updates handed to the receiver.
    pub(super) updates_applied: AtomicU64,
    /// Updates without content, or not newer than the cursor, skipped.
    pub(super) updates_skipped: AtomicU64,
    /// Subscriptions refused because the service's update log was reset (the cursor
    /// was set back to 0).
    pub(super) cursor_resets: AtomicU64,
    /// Failed store writes of the task (spool removal, cursor).
    pub(super) store_errors: AtomicU64,
    /// Entries in the spool now.
    pub(super) spool_pending: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) counters: Counters,
    pub(super) connected: AtomicBool,
    /// Requests the service acknowledged: (host request id, service request id).
    pub(super) accepted: Accepted,
}

/// Where the task announces acknowledged requests (a receiver that lags loses the
/// oldest; nobody listening costs nothing).
#[derive(Debug)]
pub(super) struct Accepted(pub(super) tokio::sync::broadcast::Sender<(u64, u64)>);

impl Default for Accepted {
    fn default() -> Self {
        Accepted(tokio::sync::broadcast::Sender::new(1024))
    }
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    /// Whether a connection to the service is up (connected and subscribed to updates).
    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The counters, by their `confgate stats` names.
    pub(super) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("uplink_spooled", v(&c.spooled)),
            ("uplink_submitted", v(&c.submitted)),
            ("uplink_resubmitted", v(&c.resubmitted)),
            ("uplink_reports_sent", v(&c.reports_sent)),
            ("uplink_send_errors", v(&c.send_errors)),
            ("uplink_rejected", v(&c.rejected)),
            ("uplink_damaged", v(&c.damaged)),
            ("uplink_connect_failures", v(&c.connect_failures)),
            ("uplink_reconnects", v(&c.reconnects)),
            ("uplink_failovers", v(&c.failovers)),
            ("uplink_updates_applied", v(&c.updates_applied)),
            ("uplink_updates_skipped", v(&c.updates_skipped)),
            ("uplink_cursor_resets", v(&c.cursor_resets)),
            ("uplink_store_errors", v(&c.store_errors)),
            ("uplink_spool_pending", v(&c.spool_pending)),
            ("uplink_connected", u64::from(self.connected())),
        ]
    }
}
