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
use super::decider::{self, Deciders, Refused};
use super::identity::{ApproverId, Authenticator};
use super::store::{
    ApprovalStore, GrantRec, Refusal, RequestRec, Resolution, Resolved, SUBMIT_SYNC_GRACE, Scope,
    State, UpdateKind, UpdateRec,
};
use super::wire::{self, MAX_NAME, MAX_PATH, MAX_TEXT, check_text, invalid};
use crate::clock::now_ms;
use crate::policy::grants::exact_glob;
use crate::store::StoreError;
use confgate_proto::v1 as pb;

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
}

impl Shared {
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
        }))
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

    /// Whether `who` may decide `req` as `r` asks at `now`, how it resolves, and how the
    /// decider was established (for the ledger): refusals are counted and logged here.
    fn check_decision(
        &self,
        who: &ApproverId,
        r: &pb::DecideRequest,
        req: &RequestRec,
        now: i64,
    ) -> Result<(Resolution, serde_json::Value), Status> {
        let id = req.id;
        let decider = match self.deciders.check(who, r, req, now) {
            Ok(v) => v,
            Err(refused) => {
                let (counter, what) = match &refused {
                    Refused::InSession(_) => (
                        &self.counters.refused_self_approval,
                        "decision from inside an agent session refused",
                    ),
                    Refused::Unattested(_) => (
                        &self.counters.refused_unattested,
                        "decision without a valid host attestation refused",
                    ),
                };
                bump(counter);
                let status = refused.status().clone();
                tracing::warn!(request = id, approver = %who.name, reason = status.message(), "{what}");
                return Err(status);
            }
        };
        if req.state != State::Pending {
            return Err(not_pending(id, req.state));
        }
        if req.deadline_unix_ms <= now {
            self.sweep.notify_one();
            return Err(Status::failed_precondition(format!(
                "request {id} is past its deadline; its failure verdict ({}) applies",
                req.context.fail_verdict
            )));
        }
        let how = if r.approve {
            Resolution::Approve {
                grant: Box::new(
                    grant_for(r, req, who, now, self.limits.max_ttl_ms)
                        .inspect_err(|e| self.refused("Decide", e))?,
                ),
                note: r.note.clone(),
            }
        } else {
            Resolution::Deny {
                by: who.name.clone(),
                note: r.note.clone(),
            }
        };
        Ok((how, decider))
    }

    /// Hands a committed host update to the `Updates` streams (none listening is fine: a
    /// host that connects later reads the log).
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

    /// A host reported that its daemon's crash let a held operation through: the request,
    /// if still pending, is closed as released (never expired or decided later as if the
    /// operation had waited). Failures are logged; the host's own ledger has the record.
    async fn release(self: &Arc<Self>, host: &str, record: &serde_json::Value) {
        let Some(host_request_id) = record.get("host_request_id").and_then(|v| v.as_u64()) else {
            return;
        };
        let h = host.to_owned();
        let found = self
            .db("release", move |s| s.by_host_request(&h, host_request_id))
            .await;
        let Ok(Some(id)) = found else {
            return;
        };
        let by = format!("host:{host}");
        let now = now_ms();
        if let Ok(Ok(r)) = self
            .db("release", move |s| {
                s.resolve(id, Resolution::Release { by }, now)
            })
            .await
        {
            self.resolved(&r, json!({})).await;
        }
    }

    /// After a committed resolution: pending set, ledger, wake streams, counters.
    async fn resolved(self: &Arc<Self>, r: &Resolved, extra: serde_json::Value) {
        let req = &r.request;
        self.pending_lock().remove(&(req.deadline_unix_ms, req.id));
        let (kind, counter) = match req.state {
            State::Approved => ("request_approved", &self.counters.approved),
            State::Denied => ("request_denied", &self.counters.denied),
            State::Released => ("request_released", &self.counters.released),
            _ => ("request_expired", &self.counters.expired),
        };
        bump(counter);
        let mut body = json!({
            "request_id": req.id,
            "host": req.context.host,
            "host_request_id": req.host_request_id,
            "session_id": req.context.session_id,
            "agent": req.context.agent,
            "path": req.context.path,
            "decision": req.decision,
            "update_seq": r.update_seq,
        });
        if let (Some(map), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
            map.extend(more);
        }
        // Streams first (the resolution is committed), then the ledger lines: the host's
        // decision does not wait for them; the RPC that resolved does.
        let update = req.decision.as_ref().map(|d| pb::HostUpdate {
            seq: r.update_seq,
            host_request_id: req.host_request_id,
            update: Some(pb::host_update::Update::Decision(wire::decision(
                req.id,
                d,
                r.grant.as_ref(),
            ))),
        });
        self.push_update(&req.context.host, update);
        let _ = self.requests.send(wire::request(req, r.grant.as_ref()));
        self.ledger(kind, body).await;
        if let Some(g) = &r.grant {
            self.ledger("grant_created", json!(g)).await;
        }
        tracing::info!(
            request = req.id,
            host = %req.context.host,
            state = req.state.as_str(),
            by = req.decision.as_ref().map_or("", |d| d.decided_by.as_str()),
            "request resolved"
        );
    }

    /// Resolves every pending request whose deadline has passed, until stopped.
    pub async fn sweeper(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            let now = now_ms();
            let next = self.pending_lock().first().copied();
            let wait = match next {
                Some((deadline, id)) if deadline <= now => {
                    match self
                        .db("expire", move |s| s.resolve(id, Resolution::Expire, now))
                        .await
                    {
                        Ok(Ok(r)) => self.resolved(&r, json!({})).await,
                        Ok(Err(_)) => {
                            // Decided meanwhile (or gone): nothing to expire.
                            self.pending_lock().remove(&(deadline, id));
                        }
                        // Logged and counted; retry after a pause.
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                    continue;
                }
                Some((deadline, _)) => {
                    // Capped so that a clock step cannot delay expiry by much.
                    Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0).min(1000))
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.sweep.notified() => {}
                _ = stopping.changed() => {}
            }
        }
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

#[tonic::async_trait]
impl pb::approver_server::Approver for ApproverService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = &self.shared;
        let host = s.identify_host(&request, "Submit")?;
        let new = wire::new_request(
            request.into_inner(),
            &host,
            now_ms(),
            s.limits.default_lifetime_ms,
        )
        .inspect_err(|e| s.refused("Submit", e))?;
        let (rec, created, unsynced) = s.db("submit", move |st| st.submit(new)).await?;
        let out = wire::request(&rec, None);
        // Acknowledged only once durable (a crash before would lose the request, and the
        // host resends only what was not acknowledged). The grace is waited here, not on a
        // blocking thread: a burst of requests must not park the blocking pool.
        let sync = async {
            tokio::time::sleep(SUBMIT_SYNC_GRACE).await;
            s.db("submit", move |st| st.sync(unsynced)).await
        };
        if created {
            bump(&s.counters.submitted);
            if rec.state == State::Pending {
                s.pending_lock().insert((rec.deadline_unix_ms, rec.id));
                s.sweep.notify_one();
            }
            tracing::info!(request = rec.id, host = %host, path = %rec.context.path, "request submitted");
            // Approvers see it now; it reaches the disk and the ledger meanwhile, and the
            // host's acknowledgement waits for both.
            let _ = s.requests.send(out.clone());
            let (synced, _) = tokio::join!(sync, s.ledger("request_submitted", json!(rec)));
            synced?;
        } else {
            sync.await?;
            bump(&s.counters.resubmitted);
            // The stored request, with its decision and grant if it has one by now.
            let me = Arc::clone(s);
            return Ok(Response::new(
                s.db("submit", move |_| me.request_pb(&rec)).await?,
            ));
        }
        Ok(Response::new(out))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let s = &self.shared;
        let host = s.identify_host(&request, "Report")?;
        let r = request.into_inner();
        let record = check_report(&r).inspect_err(|e| s.refused("Report", e))?;
        let (h, seq) = (host.clone(), r.host_seq);
        if !s
            .db("report", move |st| st.note_report(&h, seq, now_ms()))
            .await?
        {
            bump(&s.counters.reports_duplicate);
            return Ok(Response::new(pb::ReportResponse {}));
        }
        let body = json!({
            "host": host,
            "host_seq": r.host_seq,
            "kind": r.kind,
            "time_unix_ms": r.time_unix_ms,
            "record": record,
        });
        if !s.ledger("host_report", body).await {
            // Not in the ledger: let the host send it again.
            let h = host.clone();
            s.db("report", move |st| st.forget_report(&h, seq)).await?;
            return Err(Status::unavailable(
                "the service ledger cannot be written; send the report again later",
            ));
        }
        bump(&s.counters.reports);
        if r.kind == "released_by_crash" {
            s.release(&host, &record).await;
        }
        if r.kind == "session_ended"
            && let Some(session) = record.get("session").and_then(|v| v.as_u64())
        {
            let (h, now) = (host.clone(), now_ms());
            // Logged and counted by `db` when it fails; the host's ledger has the record.
            let _ = s
                .db("session_ended", move |st| {
                    st.note_session_ended(&h, session, now)
                })
                .await;
        }
        Ok(Response::new(pb::ReportResponse {}))
    }

    type UpdatesStream = BoxStream<pb::HostUpdate>;

    async fn updates(
        &self,
        request: Request<pb::UpdatesRequest>,
    ) -> Result<Response<Self::UpdatesStream>, Status> {
        let s = Arc::clone(&self.shared);
        let host = s.identify_host(&request, "Updates")?;
        s.deciders
            .set_host_key(&host, &request.get_ref().attestation_key)
            .inspect_err(|e| s.refused("Updates", e))?;
        let after = request.get_ref().after_seq;
        let h = host.clone();
        let last = s.db("updates", move |st| st.last_update_seq(&h)).await?;
        if after > last {
            // The host has applied updates this service never sent (its store was
            // replaced or reset): say so instead of waiting forever.
            tracing::warn!(host = %host, after, last, "host resumes beyond the update log");
            return Err(Status::out_of_range(format!(
                "after_seq {after} is beyond this service's update log for {host} (last seq {last}); \
                 the service's state was reset"
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        tracing::debug!(host = %host, after, "updates stream opened");
        tokio::spawn(updates_stream(s, host, after, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "ListRequests")?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => LIST_DEFAULT,
            n => usize::try_from(n).unwrap_or(LIST_MAX).min(LIST_MAX),
        };
        let me = Arc::clone(&s);
        let (requests, total) = s
            .db("list", move |st| {
                let list = st
                    .list_requests(r.all, limit)?
                    .iter()
                    .map(|q| me.request_pb(q))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((list, st.request_count(r.all)?))
            })
            .await?;
        let hidden = total.saturating_sub(requests.len() as u64);
        Ok(Response::new(pb::ListRequestsResponse { requests, hidden }))
    }

    type WatchRequestsStream = BoxStream<pb::ApprovalRequest>;

    async fn watch_requests(
        &self,
        request: Request<pb::WatchRequestsRequest>,
    ) -> Result<Response<Self::WatchRequestsStream>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "WatchRequests")?;
        // Subscribe before listing, so nothing falls between the list and the live feed.
        let live = s.requests.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tracing::debug!(approver = %who.name, "watch stream opened");
        tokio::spawn(watch_stream(s, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "GetRequest")?;
        let id = request.get_ref().id;
        let me = Arc::clone(&s);
        s.db("get", move |st| {
            st.request(id)?.map(|r| me.request_pb(&r)).transpose()
        })
        .await?
        .map(Response::new)
        .ok_or_else(|| Status::not_found(format!("no request {id}")))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "Decide")?;
        let r = request.into_inner();
        check_decide(&r).inspect_err(|e| s.refused("Decide", e))?;
        let id = r.id;
        // What the client says about itself: recorded, never used to authorize.
        let claims = json!({
            "decider_host": r.decider_host,
            "decider_session": r.decider_session,
        });
        // Read, checks and resolution in one call on the blocking pool (one hand-off).
        let me = Arc::clone(&s);
        let resolved = s
            .db("decide", move |st| {
                let Some(req) = st.request(id)? else {
                    return Ok(Err(Status::not_found(format!("no request {id}"))));
                };
                let now = now_ms();
                let (how, decider) = match me.check_decision(&who, &r, &req, now) {
                    Ok(v) => v,
                    Err(status) => return Ok(Err(status)),
                };
                Ok(match st.resolve(id, how, now)? {
                    Ok(res) => Ok((res, decider)),
                    Err(Refusal::NotPending(state)) => Err(not_pending(id, state)),
                    Err(_) => Err(Status::not_found(format!("no request {id}"))),
                })
            })
            .await??;
        let (resolved, decider) = resolved;
        let mut extra = claims;
        if let Some(m) = extra.as_object_mut() {
            m.insert("decider".to_owned(), decider);
        }
        s.resolved(&resolved, extra).await;
        Ok(Response::new(wire::request(
            &resolved.request,
            resolved.grant.as_ref(),
        )))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let s = Arc::clone(&self.shared);
        // Approvers see every grant; a host sees the grants that apply to it.
        let only_host = match s.auth.identify(&request) {
            Ok(super::identity::Principal::Host { host }) => Some(host),
            _ => {
                s.identify_approver(&request, "ListGrants")?;
                None
            }
        };
        let all = request.get_ref().all;
        let grants = s
            .db("grants", move |st| {
                let mut g = st.list_grants(all, now_ms())?;
                if let Some(h) = &only_host {
                    g.retain(|g| g.host == *h);
                }
                Ok(g)
            })
            .await?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(wire::grant).collect(),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "RevokeGrant")?;
        let r = request.into_inner();
        check_text("note", &r.note, MAX_TEXT).inspect_err(|e| s.refused("RevokeGrant", e))?;
        let (id, by) = (r.id, who.name.clone());
        let (grant, seq) = match s
            .db("revoke", move |st| st.revoke(id, &by, now_ms()))
            .await?
        {
            Ok(done) => done,
            Err(Refusal::GrantNotLive { revoked: true }) => {
                return Err(Status::failed_precondition(format!(
                    "grant {id} is already revoked"
                )));
            }
            Err(Refusal::GrantNotLive { revoked: false }) => {
                return Err(Status::failed_precondition(format!(
                    "grant {id} has already expired"
                )));
            }
            Err(_) => return Err(Status::not_found(format!("no grant {id}"))),
        };
        bump(&s.counters.revoked);
        s.push_update(&grant.host, None);
        tracing::info!(grant = id, host = %grant.host, by = %who.name, "grant revoked");
        s.ledger(
            "grant_revoked",
            json!({ "grant": grant, "note": r.note, "update_seq": seq }),
        )
        .await;
        Ok(Response::new(wire::grant(&grant)))
    }

    type AuditLogStream = BoxStream<pb::LedgerEntry>;

    async fn audit_log(
        &self,
        request: Request<pb::AuditLogRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "AuditLog")?;
        let since = request.get_ref().since_unix_ms;
        let me = Arc::clone(&s);
        let lines = tokio::task::spawn_blocking(move || me.audit.read(since))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                bump(&s.counters.ledger_errors);
                tracing::error!(error = %e, "cannot read the approver ledger");
                Status::internal(format!("ledger: {e}"))
            })?;
        let items = lines.into_iter().map(|json| Ok(pb::LedgerEntry { json }));
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        let s = &self.shared;
        let (name, role) = s
            .auth
            .identify(&request)
            .and_then(|p| s.auth.describe(&p))
            .inspect_err(|e| s.refused("WhoAmI", e))?;
        Ok(Response::new(pb::Identity {
            name,
            role: role.to_owned(),
        }))
    }
}

fn not_pending(id: u64, state: State) -> Status {
    Status::failed_precondition(format!("request {id} is already {}", state.as_str()))
}

fn check_report(r: &pb::ReportRequest) -> Result<serde_json::Value, Status> {
    if r.host_seq == 0 {
        return Err(invalid("host_seq", "must not be 0"));
    }
    if r.kind.is_empty()
        || r.kind.len() > 64
        || !r
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "kind",
            "must be 1-64 characters of a-z, 0-9 and `_`",
        ));
    }
    if r.json.len() > MAX_REPORT_JSON {
        return Err(invalid(
            "json",
            format!("larger than {MAX_REPORT_JSON} bytes"),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&r.json) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid("json", "must be a JSON object")),
        Err(e) => Err(invalid("json", format!("not JSON: {e}"))),
    }
}

fn check_decide(r: &pb::DecideRequest) -> Result<(), Status> {
    check_text("note", &r.note, MAX_TEXT)?;
    check_text("decider_host", &r.decider_host, MAX_NAME)?;
    check_text("path_glob", &r.path_glob, MAX_PATH)?;
    decider::check_fields(r)?;
    if pb::GrantScope::try_from(r.scope).is_err() {
        return Err(invalid("scope", format!("{} is not a GrantScope", r.scope)));
    }
    if !r.approve && (r.ttl_seconds != 0 || !r.path_glob.is_empty() || r.scope != 0) {
        return Err(invalid(
            "approve",
            "ttl_seconds, scope and path_glob apply to approvals only",
        ));
    }
    Ok(())
}

fn grant_for(
    r: &pb::DecideRequest,
    req: &RequestRec,
    who: &ApproverId,
    now: i64,
    max_ttl_ms: i64,
) -> Result<GrantRec, Status> {
    let max_secs = u64::try_from(max_ttl_ms / 1000).unwrap_or(0);
    let ttl = match r.ttl_seconds {
        0 => DEFAULT_TTL_SECS.min(max_secs),
        t if t > max_secs => {
            return Err(invalid(
                "ttl_seconds",
                format!("{t} is more than the service's max_ttl ({max_secs} s)"),
            ));
        }
        t => t,
    };
    let scope = match pb::GrantScope::try_from(r.scope) {
        Ok(pb::GrantScope::Agent) => {
            if req.context.agent.is_empty() {
                return Err(invalid(
                    "scope",
                    "the request names no agent, so an agent-wide grant is not possible",
                ));
            }
            Scope::Agent
        }
        _ => Scope::Session,
    };
    let path_glob = if r.path_glob.is_empty() {
        exact_glob(&req.context.path)
    } else {
        if !r.path_glob.starts_with('/') {
            return Err(invalid(
                "path_glob",
                "must match absolute paths (start with `/`)",
            ));
        }
        crate::config::build_glob(&r.path_glob, true)
            .map_err(|e| invalid("path_glob", format!("invalid glob: {e}")))?;
        r.path_glob.clone()
    };
    let ttl_ms = i64::try_from(ttl).unwrap_or(0).saturating_mul(1000);
    Ok(GrantRec {
        id: 0,
        request_id: req.id,
        host: req.context.host.clone(),
        scope,
        session_id: req.context.session_id,
        agent: req.context.agent.clone(),
        path_glob,
        operations: req.context.operations.clone(),
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(ttl_ms),
        granted_by: who.name.clone(),
        note: r.note.clone(),
        revoked_unix_ms: None,
        revoked_by: None,
        session_ended_unix_ms: None,
    })
}

/// Feeds one host's `Updates` stream: the log after `after`, then each new entry as it is
/// pushed; from the log again whenever a pushed entry is not the next one expected.
async fn updates_stream(
    s: Arc<Shared>,
    host: String,
    mut after: u64,
    tx: mpsc::Sender<Result<pb::HostUpdate, Status>>,
) {
    // Subscribed before the first read of the log: nothing falls between the two.
    let mut pushed = s.updates.subscribe();
    let mut stopping = s.stopping.subscribe();
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let (h, me) = (host.clone(), Arc::clone(&s));
        let batch = s
            .db("updates", move |st| {
                st.updates_after(&h, after, UPDATE_BATCH)?
                    .into_iter()
                    .map(|u| host_update(&me, u))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let full = batch.len() == UPDATE_BATCH;
        for u in batch {
            let seq = u.seq;
            if tx.send(Ok(u)).await.is_err() {
                return;
            }
            after = seq;
        }
        if full {
            continue;
        }
        // Live: forward pushed updates while they follow on; read the log on a gap.
        loop {
            tokio::select! {
                m = pushed.recv() => match m {
                    Ok(p) if p.host != host => {}
                    Ok(p) => match &p.update {
                        Some(u) if u.seq <= after => {}
                        Some(u) if u.seq == after + 1 => {
                            if tx.send(Ok(u.clone())).await.is_err() {
                                return;
                            }
                            after = u.seq;
                        }
                        _ => break,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = stopping.changed() => break,
            }
        }
    }
}

fn host_update(s: &Shared, u: UpdateRec) -> Result<pb::HostUpdate, StoreError> {
    use pb::host_update::Update;
    let update = match u.kind {
        UpdateKind::Decision { request_id } => s.store.request(request_id)?.and_then(|r| {
            let d = r.decision.clone()?;
            let g = match d.grant_id {
                Some(id) => s.store.grant(id).ok().flatten(),
                None => None,
            };
            Some(Update::Decision(wire::decision(request_id, &d, g.as_ref())))
        }),
        UpdateKind::Revoked { grant_id } => s
            .store
            .grant(grant_id)?
            .map(|g| Update::Revoked(wire::grant(&g))),
    };
    if update.is_none() {
        tracing::error!(seq = u.seq, "update log entry points at a missing record");
    }
    Ok(pb::HostUpdate {
        seq: u.seq,
        host_request_id: u.host_request_id,
        update,
    })
}

/// Feeds one `WatchRequests` stream: every pending request, then each change. A watcher
/// that falls behind gets the pending list again (the gap is counted and logged).
async fn watch_stream(
    s: Arc<Shared>,
    mut live: broadcast::Receiver<pb::ApprovalRequest>,
    tx: mpsc::Sender<Result<pb::ApprovalRequest, Status>>,
) {
    let mut stopping = s.stopping.subscribe();
    let mut resync = true;
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if resync {
            resync = false;
            let me = Arc::clone(&s);
            let pending = s
                .db("watch", move |st| {
                    let mut v = st.list_requests(false, usize::MAX)?;
                    v.reverse();
                    v.iter()
                        .map(|r| me.request_pb(r))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
            match pending {
                Ok(list) => {
                    for r in list {
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
        tokio::select! {
            r = live.recv() => match r {
                Ok(req) => if tx.send(Ok(req)).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    s.counters.watch_lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(skipped = n, "request watcher too slow; sending the pending list again");
                    resync = true;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
            _ = stopping.changed() => {}
        }
    }
}
