//! The `confgate.v1.Approver` gRPC service: authorization per call ([`Authenticator`]),
//! input checks ([`wire`]), durable state ([`ApprovalStore`]), the ledger ([`Audit`]), the
//! deadline sweeper, and the `Updates` / `WatchRequests` streams.
//!
//! Ordering guarantees: a decision, expiry or revocation is committed to the store (fsync)
//! before the RPC that made it returns and before any stream can see it: the committed
//! update is handed to the `Updates` streams from memory ([`Pushed`]); a stream that missed
//! one (a gap in its seqs, or a lagging receiver) reads the store's per-host log instead.
//! Ledger records are appended right after the commit, while the streams deliver it (they
//! are not on a decision's path to the host); the RPC returns once they are durable.
//!
//! A new request is committed without waiting for the disk and shown to approvers at once;
//! the host's `Submit` is acknowledged only once it is durable, usually by the commit of its
//! own decision (group commit, [`crate::store::Store::sync`]). Its id can be lost in a crash
//! before that, never reused ([`ApprovalStore::open`] skips request ids ahead).
//!
//! This module holds the shared state and its plumbing; the RPCs are in [`rpc`], decisions
//! and their effects (expiry sweeper, releases) in [`resolve`], the streams in [`streams`].
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::audit::Audit;
use super::backend::ApprovalStore;
use super::decider::{self, Deciders, Refused};
use super::identity::{ApproverId, Authenticator};
use super::store::{
    GrantRec, Refusal, RequestRec, Resolution, Resolved, SUBMIT_SYNC_GRACE, Scope, State,
    UpdateKind, UpdateRec,
};
use super::wire::{self, MAX_NAME, MAX_PATH, MAX_TEXT, check_text, invalid};
use crate::os::clock::now_ms;
use crate::policy::grants::exact_glob;
use crate::store::StoreError;
use confgate_proto::v1 as pb;

mod bursts;
mod fanout;
mod notify;
mod resolve;
mod rpc;
mod streams;
mod tally;

use resolve::*;
use streams::*;

/// Grant lifetime when an approval names none: one hour (or `max_ttl` if shorter).
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// Default and largest page of ListRequests.
const LIST_DEFAULT: usize = 100;

const LIST_MAX: usize = 1000;

/// Updates read from the store per batch of an `Updates` stream.
const UPDATE_BATCH: usize = 256;

/// Longest report body, in bytes.
const MAX_REPORT_JSON: usize = 64 * 1024;

/// Capacity of the broadcasts of request changes (WatchRequests) and host updates.
const WATCH_CAPACITY: usize = 1024;

/// A committed host update, handed to that host's `Updates` streams without a store read.
#[derive(Debug)]
struct Pushed {
    host: String,
    /// `None`: the streams read it from the store's log.
    update: Option<pb::HostUpdate>,
}

/// Counters of the service, for `confgate stats` and the logs.
#[derive(Debug, Default)]
pub struct Counters {
    pub submitted: AtomicU64,
    pub resubmitted: AtomicU64,
    pub approved: AtomicU64,
    pub denied: AtomicU64,
    pub expired: AtomicU64,
    pub released: AtomicU64,
    pub revoked: AtomicU64,
    pub reports: AtomicU64,
    pub reports_duplicate: AtomicU64,
    pub refused_permission: AtomicU64,
    pub refused_self_approval: AtomicU64,
    pub refused_unattested: AtomicU64,
    pub tls_handshakes_refused: AtomicU64,
    pub refused_unauthenticated: AtomicU64,
    pub invalid_argument: AtomicU64,
    pub store_errors: AtomicU64,
    pub ledger_errors: AtomicU64,
    pub watch_lagged: AtomicU64,
    /// Notifications delivered / given up / rescheduled after a failed attempt / waiting.
    pub notify_sent: AtomicU64,
    pub notify_failed: AtomicU64,
    pub notify_retried: AtomicU64,
    pub notify_pending: AtomicU64,
}

impl Counters {
    /// Every counter by name, in a stable order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("approver_submitted", c(&self.submitted)),
            ("approver_resubmitted", c(&self.resubmitted)),
            ("approver_approved", c(&self.approved)),
            ("approver_denied", c(&self.denied)),
            ("approver_expired", c(&self.expired)),
            ("approver_released_by_crash", c(&self.released)),
            ("approver_revoked", c(&self.revoked)),
            ("approver_reports", c(&self.reports)),
            ("approver_reports_duplicate", c(&self.reports_duplicate)),
            ("approver_refused_permission", c(&self.refused_permission)),
            (
                "approver_refused_self_approval",
                c(&self.refused_self_approval),
            ),
            ("approver_refused_unattested", c(&self.refused_unattested)),
            (
                "approver_tls_handshakes_refused",
                c(&self.tls_handshakes_refused),
            ),
            (
                "approver_refused_unauthenticated",
                c(&self.refused_unauthenticated),
            ),
            ("approver_invalid_argument", c(&self.invalid_argument)),
            ("approver_store_errors", c(&self.store_errors)),
            ("approver_ledger_errors", c(&self.ledger_errors)),
            ("approver_watch_lagged", c(&self.watch_lagged)),
            ("approver_notify_sent", c(&self.notify_sent)),
            ("approver_notify_failed", c(&self.notify_failed)),
            ("approver_notify_retried", c(&self.notify_retried)),
            ("approver_notify_pending", c(&self.notify_pending)),
        ]
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Limits from the configuration, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_ttl_ms: i64,
    pub default_lifetime_ms: i64,
}

/// State shared by the RPC handlers, the sweeper and the streams.
pub struct Shared {
    pub(crate) store: ApprovalStore,
    pub(crate) auth: Authenticator,
    pub(crate) audit: Audit,
    pub(crate) limits: Limits,
    pub(crate) counters: Counters,
    /// Hosts' attestation keys and used nonces: who may decide.
    deciders: Deciders,
    /// Every committed host update, for the `Updates` streams.
    updates: broadcast::Sender<Arc<Pushed>>,
    /// Every new request and state change, for `WatchRequests`.
    requests: broadcast::Sender<pb::ApprovalRequest>,
    /// Pending requests as (deadline, id), for the sweeper.
    pending: Mutex<BTreeSet<(i64, u64)>>,
    sweep: Notify,
    /// Becomes true when the service stops; streams end then.
    stopping: watch::Sender<bool>,
    /// Persons and groups of approver identities, for rules' quorums (see
    /// `approver::quorum`).
    people: std::sync::OnceLock<Arc<super::quorum::People>>,
    /// The notification sinks (Slack's interactive endpoint verifies with their secrets).
    sinks: std::sync::OnceLock<Arc<crate::approver::sinks::Sinks>>,
}

impl Shared {
    /// The service's counters and its gauge of pending requests, for `confgate stats`
    /// and the Prometheus endpoint.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.counters.snapshot();
        let pending = self.pending_lock().len();
        v.push(("approver_requests_pending", pending as u64));
        v.extend(self.audit.nats_counters());
        v
    }

    /// Builds the shared state; loads the pending requests from the store.
    pub fn new(
        store: ApprovalStore,
        auth: Authenticator,
        audit: Audit,
        limits: Limits,
    ) -> Result<Arc<Shared>, StoreError> {
        let pending = store
            .pending()?
            .into_iter()
            .map(|(id, deadline)| (deadline, id))
            .collect();
        Ok(Arc::new(Shared {
            store,
            auth,
            audit,
            limits,
            counters: Counters::default(),
            deciders: Deciders::default(),
            updates: broadcast::Sender::new(WATCH_CAPACITY),
            requests: broadcast::Sender::new(WATCH_CAPACITY),
            pending: Mutex::new(pending),
            sweep: Notify::new(),
            stopping: watch::Sender::new(false),
            people: std::sync::OnceLock::new(),
            sinks: std::sync::OnceLock::new(),
        }))
    }

    /// Sets the persons and groups of approver identities (once, at start; later calls
    /// are ignored).
    pub fn set_people(&self, people: super::quorum::People) {
        let _ = self.people.set(Arc::new(people));
    }

    /// Records `host`'s attestation key (see [`Deciders::set_host_key`]).
    #[cfg(test)]
    pub(crate) fn register_host_key(&self, host: &str, key: &[u8]) -> Result<(), Status> {
        self.deciders.set_host_key(host, key)
    }

    /// Ends the streams and the sweeper.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(i64, u64)>> {
        // A panic while holding this lock cannot leave the set inconsistent (single ops).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a store call on the blocking pool; errors become `INTERNAL` (counted, logged).
    async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&ApprovalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let me = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&me.store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                bump(&self.counters.store_errors);
                tracing::error!(error = %e, call = what, "approver store error");
                Err(Status::internal(format!("store: {e}")))
            }
            Err(e) => {
                bump(&self.counters.store_errors);
                tracing::error!(error = %e, call = what, "approver store task failed");
                Err(Status::internal("store task failed"))
            }
        }
    }

    /// Appends to the ledger on the blocking pool; a failure is counted and logged (the
    /// store already holds the fact) and returned for callers that must not ack without it.
    async fn ledger(self: &Arc<Self>, kind: &'static str, body: serde_json::Value) -> bool {
        let me = Arc::clone(self);
        let r = tokio::task::spawn_blocking(move || me.audit.append(kind, body)).await;
        let err = match r {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        bump(&self.counters.ledger_errors);
        tracing::error!(kind, error = %err, "cannot append to the approver ledger");
        false
    }

    /// Hands a committed host update to the `Updates` streams (none listening is fine: a
    /// host that connects later reads the log). An empty `host` with no update: every
    /// stream reads its host's log again.
    fn push_update(&self, host: &str, update: Option<pb::HostUpdate>) {
        let _ = self.updates.send(Arc::new(Pushed {
            host: host.to_owned(),
            update,
        }));
    }

    fn request_pb(&self, r: &RequestRec) -> Result<pb::ApprovalRequest, StoreError> {
        let grant = match r.decision.as_ref().and_then(|d| d.grant_id) {
            Some(id) => self.store.grant(id)?,
            None => None,
        };
        Ok(wire::request(r, grant.as_ref()))
    }

    fn count_refusal(&self, s: &Status) {
        match s.code() {
            tonic::Code::PermissionDenied => bump(&self.counters.refused_permission),
            tonic::Code::Unauthenticated => bump(&self.counters.refused_unauthenticated),
            tonic::Code::InvalidArgument => bump(&self.counters.invalid_argument),
            _ => {}
        }
    }

    fn identify_host<T>(&self, req: &Request<T>, call: &str) -> Result<String, Status> {
        self.auth
            .identify(req)
            .and_then(|p| self.auth.host(&p, call))
            .inspect_err(|s| self.refused(call, s))
    }

    fn identify_approver<T>(&self, req: &Request<T>, call: &str) -> Result<ApproverId, Status> {
        self.auth
            .identify(req)
            .and_then(|p| self.auth.approver(&p, call))
            .inspect_err(|s| self.refused(call, s))
    }

    pub(crate) fn refused(&self, call: &str, s: &Status) {
        self.count_refusal(s);
        tracing::info!(call, code = ?s.code(), reason = s.message(), "approver call refused");
    }
}

/// The tonic service.
pub struct ApproverService {
    shared: Arc<Shared>,
}

impl ApproverService {
    pub fn new(shared: Arc<Shared>) -> Self {
        ApproverService { shared }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
