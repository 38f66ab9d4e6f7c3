//! The daemon's client of the approval service.
//!
//! [`Uplink::start`] returns an [`UplinkHandle`] (cloneable) and the receiver of
//! [`UplinkUpdate`]s. The handle's [`UplinkHandle::submit`] and [`UplinkHandle::report`]
//! write the message to a spool table of the daemon's store (durable, fsync'd) and return;
//! a background task sends it. Nothing waits on the network: while the service is
//! unreachable, calls return after the spool write, the spool grows, and the gate engine
//! applies each rule's failure verdict itself at its deadlines.
//!
//! The background task keeps one connection: exponential backoff with jitter between
//! attempts (100 ms .. 10 s, but at most 500 ms while a submitted request still awaits its
//! decision, so that an approval given meanwhile is not held up); on every (re)connection it first subscribes to
//! `Approver.Updates` from the last update it delivered (`after_seq`, kept in the store;
//! the subscription also presents the daemon's decider attestation key), so that decisions
//! made meanwhile arrive at once, then re-sends everything still spooled, oldest first (the
//! service is idempotent on `host_request_id` and `host_seq`), removing each entry once the
//! service acknowledged it.
//!
//! Delivery of updates is **at least once**: the cursor is stored after the update is in
//! the receiver's channel, so an update can be delivered again after a reconnection or a
//! restart (and the ones still in the channel when the daemon dies are lost from it but
//! not from the service: see below). The consumer must be idempotent: apply a decision for
//! a request it already resolved, or a revocation of a grant it no longer holds, as a
//! no-op. The channel holds at most [`UplinkOptions::updates_capacity`] updates, so at most
//! that many (plus the one being handled) can have their cursor stored before the consumer
//! applied them; a crash in that window loses them locally. With the default capacity of
//! 1 that is at most two updates; the service still has them (`ListGrants`, `GetRequest`).
//!
//! If the service refuses the cursor (`OUT_OF_RANGE`: its update log was reset and is
//! shorter than what this host applied), the cursor goes back to 0 (counted in
//! `cursor_resets`) and the whole new log is replayed.
//!
//! A message the service rejects as invalid (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
//! `NOT_FOUND`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `UNIMPLEMENTED`) is dropped from the
//! spool, counted (`rejected`) and logged, and a rejected request is handed to the
//! receiver as [`UplinkUpdate::Rejected`] (the gate ledgers it and applies its rule's
//! failure verdict at once); every other error is treated as a broken connection (counted
//! in `send_errors`) and the message is re-sent after reconnecting.
//!
//! A request whose context breaks the request contract (`approver::wire::check_context`,
//! the check the service runs) is refused by [`UplinkHandle::submit_now`] before it is
//! spooled (`UplinkError::Invalid`).
//!
//! The files: `handle.rs` spools what the daemon hands over, `task.rs` keeps the
//! connection (reconnecting with [`backoff`]), `send.rs` sends spooled entries and settles
//! their answers, `updates.rs` hands the service's decisions on, `status.rs` counts, and
//! [`spool`] is the store table it all goes through.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use confgate_proto::v1;

use crate::approver::client::ClientConfig;
use crate::store::{Store, StoreError};

pub mod backoff;
mod handle;
mod send;
pub mod spool;
mod status;
mod task;
mod updates;

pub use backoff::Backoff;
pub use handle::UplinkHandle;
use spool::Spool;
use status::Shared;
use task::Task;

/// An update from the approval service for this host.
#[derive(Clone, Debug, PartialEq)]
pub enum UplinkUpdate {
    /// A request of this host was decided (approved with a grant, denied, or expired).
    Decision {
        seq: u64,
        host_request_id: u64,
        decision: v1::Decision,
    },
    /// A grant of this host was revoked before its expiry.
    Revoked { seq: u64, grant: v1::Grant },
    /// The service refused request `host_request_id` (it will never be decided); `error`
    /// is its answer. Not part of the service's update log: `seq` is 0.
    Rejected { host_request_id: u64, error: String },
}

impl UplinkUpdate {
    /// The per-host sequence number of the update.
    pub fn seq(&self) -> u64 {
        match self {
            UplinkUpdate::Decision { seq, .. } | UplinkUpdate::Revoked { seq, .. } => *seq,
            UplinkUpdate::Rejected { .. } => 0,
        }
    }
}

/// Errors of [`UplinkHandle::submit`] and [`UplinkHandle::report`]: the message is not
/// spooled (so it will not be sent).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink spool: {0}")]
    Store(#[from] StoreError),
    #[error("uplink spool write did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("invalid uplink message: {0}")]
    Invalid(String),
}

/// Tuning of the background task (defaults are what the daemon uses).
#[derive(Clone, Debug)]
pub struct UplinkOptions {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for one `Submit`/`Report` acknowledgement before the connection is
    /// considered broken.
    pub rpc_timeout: Duration,
    /// Capacity of the update channel (see the module doc on at-least-once delivery).
    pub updates_capacity: usize,
    /// The daemon's decider attestation public key, presented to the service with every
    /// `Updates` subscription (over the host's own identity).
    pub attestation_key: Option<Vec<u8>>,
    /// Longest wait between reconnection attempts while a submitted request still awaits
    /// its decision (an approval given meanwhile arrives at the next attempt).
    pub awaiting_max_backoff: Duration,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            updates_capacity: 1,
            attestation_key: None,
            awaiting_max_backoff: Duration::from_millis(500),
        }
    }
}

/// Entry point: see the module documentation.
pub struct Uplink;

impl Uplink {
    /// Starts the background task (needs a tokio runtime) with the default options.
    /// `host` is this host's name, put into requests whose context has none (the service
    /// replaces it with the name its transport identity gives).
    pub fn start(
        cfg: ClientConfig,
        store: Store,
        host: String,
    ) -> (UplinkHandle, mpsc::Receiver<UplinkUpdate>) {
        Uplink::start_with(cfg, store, host, UplinkOptions::default())
    }

    /// [`Uplink::start`] with explicit options.
    pub fn start_with(
        cfg: ClientConfig,
        store: Store,
        host: String,
        options: UplinkOptions,
    ) -> (UplinkHandle, mpsc::Receiver<UplinkUpdate>) {
        let (updates_tx, updates_rx) = mpsc::channel(options.updates_capacity.max(1));
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let spool = Spool::new(store);
        let task = Task::new(
            cfg,
            spool.clone(),
            options,
            incoming_rx,
            updates_tx,
            Arc::clone(&shared),
        );
        let join = tokio::spawn(task.run());
        let handle = UplinkHandle::new(spool, incoming_tx, shared, Arc::from(host), join);
        (handle, updates_rx)
    }
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
