//! Changes an agent proposes (`confgate propose`, the MCP server's `propose_change`): the
//! exact new content of one file, filed as an approval request through the same path as
//! the gate's requests (the uplink: the in-process service in local mode, the central
//! one in remote mode), with the unified diff against the file as it is now.
//!
//! - The proposal belongs to the caller's agent session as the kernel's session map says
//!   (the daemon socket's peer pid), so the service refuses a decision from that session
//!   as it refuses every decision from inside a session.
//! - The content is kept in the daemon's store until the proposal is decided (at most
//!   [`MAX_CONTENT`] bytes); approvers see the masked, bounded diff only.
//! - On approval the daemon writes it ([`apply`]) if the file is still what the proposal
//!   was made against (else `conflict`: nothing written), moves the baseline and ledgers
//!   who proposed and who approved. Deny, expiry or a refusal by the service change
//!   nothing.
//!
//! [`decide`] applies the service's answers; this file files proposals and answers the
//! API's questions about them.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use confgate_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::baseline::service::BaselineService;
use crate::event::escape::encode;
use crate::gate::Engine;
use crate::gate::context;
use crate::gate::preimage::hex;
use crate::gate::requests::REQUEST_IDS;
use crate::ledger::SharedLedger;
use crate::os::clock::now_ms;
use crate::policy::{GateQuery, OpSet, SessionRef, Verdict};
use crate::sessions::SessionRegistry;
use crate::store::{BlobTable, RecordTable, Store};
use crate::uplink::UplinkHandle;

pub mod apply;
mod decide;

pub use decide::route_updates;

/// Largest proposed content, in bytes.
pub const MAX_CONTENT: usize = 1024 * 1024;
/// Most undecided proposals of one proposer (an agent session; outside sessions: a uid).
pub const MAX_PENDING: usize = 32;
/// Bounds of a proposal's lifetime.
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most proposals `list_my_requests` returns.
pub const MAX_LISTED: usize = 200;
/// Decided proposals are forgotten this long after their decision (at start).
const KEEP_DECIDED_MS: i64 = 30 * 24 * 3600 * 1000;

/// Proposals by host request id.
pub const PROPOSALS: RecordTable<ProposalRecord> = RecordTable::new("proposals");
/// The proposed content while the proposal is undecided, by host request id.
pub const PROPOSAL_CONTENT: BlobTable = BlobTable::new("proposal_content");

/// What became of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Applied,
    Denied,
    Conflict,
    Expired,
    Rejected,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Applied => "applied",
            State::Denied => "denied",
            State::Conflict => "conflict",
            State::Expired => "expired",
            State::Rejected => "rejected",
            State::Failed => "failed",
        }
    }
}

/// One proposal, as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRecord {
    /// The service's request id (0 until acknowledged).
    pub request_id: u64,
    pub session: u64,
    pub agent: String,
    pub uid: u32,
    pub pid: u32,
    /// Raw path bytes.
    pub path: Vec<u8>,
    pub reason: String,
    /// SHA-256 of the file when proposed (`None`: no file).
    pub base: Option<String>,
    pub content_sha256: String,
    pub size: u64,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
    pub state: State,
    pub decided_by: String,
    pub note: String,
    pub decided_unix_ms: i64,
    pub detail: String,
    /// What approvers see (masked, bounded).
    pub diff: String,
}

impl ProposalRecord {
    pub fn to_pb(&self, id: u64) -> pb::Proposal {
        pb::Proposal {
            id,
            request_id: self.request_id,
            path: encode(&self.path),
            state: self.state.as_str().to_owned(),
            session_id: self.session,
            agent: self.agent.clone(),
            uid: self.uid,
            pid: self.pid,
            reason: self.reason.clone(),
            base_sha256: self.base.clone().unwrap_or_default(),
            content_sha256: self.content_sha256.clone(),
            size: self.size,
            created_unix_ms: self.created_unix_ms,
            deadline_unix_ms: self.deadline_unix_ms,
            decided_by: self.decided_by.clone(),
            note: self.note.clone(),
            decided_unix_ms: self.decided_unix_ms,
            detail: self.detail.clone(),
            diff: self.diff.clone(),
        }
    }

    /// Whether the proposal is `who`'s own: the same agent session, or outside every
    /// session the same uid's proposals made outside sessions.
    fn belongs_to(&self, who: &Proposer) -> bool {
        if who.session != 0 {
            self.session == who.session
        } else {
            self.session == 0 && self.uid == who.uid
        }
    }
}

/// Who proposes, as the kernel says (peer credentials and the session map).
#[derive(Clone, Copy, Debug)]
pub struct Proposer {
    pub pid: u32,
    pub uid: u32,
    /// Agent session (0: none).
    pub session: u64,
    /// Root or the admin group (sees every proposal when outside sessions).
    pub admin: bool,
}

/// Why a proposal is not filed or not shown.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Counters (`confgate stats`).
#[derive(Debug, Default)]
pub struct Counters {
    pub filed: AtomicU64,
    pub refused: AtomicU64,
    pub applied: AtomicU64,
    pub denied: AtomicU64,
    pub conflicts: AtomicU64,
    pub expired: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub decisions_ignored: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The daemon's proposals.
pub struct Proposals {
    store: Store,
    ledger: SharedLedger,
    uplink: UplinkHandle,
    baseline: Arc<BaselineService>,
    sessions: SessionRegistry,
    /// The gate's engine (its policy follows reloads); set once it runs.
    engine: OnceLock<Arc<Engine>>,
    /// Every proposal kept, by host request id.
    known: Mutex<HashMap<u64, ProposalRecord>>,
    /// Proposals whose answer is being applied.
    deciding: Mutex<std::collections::HashSet<u64>>,
    /// Held while a proposal's record is written (see [`Proposals::persist`]).
    persisting: Mutex<()>,
    /// Bumped at every change of a proposal (waiters look again).
    changed: tokio::sync::watch::Sender<u64>,
    pub counters: Counters,
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProposeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProposeError::Internal(format!("proposal task failed: {e}")))
}

impl Proposals {
    /// Loads the kept proposals (decided ones older than 30 days are forgotten).
    pub fn open(
        store: Store,
        ledger: SharedLedger,
        uplink: UplinkHandle,
        baseline: Arc<BaselineService>,
        sessions: SessionRegistry,
    ) -> Result<Arc<Proposals>, crate::store::StoreError> {
        let now = now_ms();
        let mut known = HashMap::new();
        let mut old = Vec::new();
        for (id, r) in store.scan(PROPOSALS)? {
            if r.state != State::Pending && now - r.decided_unix_ms > KEEP_DECIDED_MS {
                old.push(id);
            } else {
                known.insert(id, r);
            }
        }
        if !old.is_empty() {
            store.write(|tx| {
                for id in &old {
                    tx.remove(PROPOSALS, *id)?;
                    tx.remove_blob(PROPOSAL_CONTENT, *id)?;
                }
                Ok(())
            })?;
        }
        let me = Arc::new(Proposals {
            store,
            ledger,
            uplink,
            baseline,
            sessions,
            engine: OnceLock::new(),
            known: Mutex::new(known),
            deciding: Mutex::default(),
            persisting: Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            counters: Counters::default(),
        });
        tokio::spawn(Arc::clone(&me).accepted_loop());
        tokio::spawn(Arc::clone(&me).expiry_loop());
        Ok(me)
    }

    /// The gate's engine, for the policy in force.
    pub fn attach(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Whether `id` is a proposal (its service updates are handled here).
    pub fn owns(&self, id: u64) -> bool {
        lock(&self.known).contains_key(&id)
    }

    fn touched(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Counters for `confgate stats`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let pending = lock(&self.known)
            .values()
            .filter(|r| r.state == State::Pending)
            .count() as u64;
        vec![
            ("proposals_filed", c.filed.load(Ordering::Relaxed)),
            ("proposals_refused", c.refused.load(Ordering::Relaxed)),
            ("proposals_applied", c.applied.load(Ordering::Relaxed)),
            ("proposals_denied", c.denied.load(Ordering::Relaxed)),
            ("proposals_conflicts", c.conflicts.load(Ordering::Relaxed)),
            ("proposals_expired", c.expired.load(Ordering::Relaxed)),
            ("proposals_rejected", c.rejected.load(Ordering::Relaxed)),
            ("proposals_failed", c.failed.load(Ordering::Relaxed)),
            (
                "proposals_decisions_ignored",
                c.decisions_ignored.load(Ordering::Relaxed),
            ),
            ("proposals_pending", pending),
        ]
    }

    async fn audit(&self, kind: &'static str, body: serde_json::Value) {
        if let Err(e) = self.uplink.report(kind, body.clone()).await {
            warn!(kind, error = %e, "cannot spool a report for the approval service");
        }
        if let Err(e) = self.ledger.append_async(kind, body).await {
            warn!(kind, error = %e, "cannot append to the ledger");
        }
    }

    /// Files `content` as the new content of `path` for `who`, with `reason`, open for
    /// `ttl` (`None`: `gate.request_ttl`). Returns the proposal once filed (with the
    /// service's request id when it acknowledged it within 2 s).
    pub async fn propose(
        self: &Arc<Self>,
        who: Proposer,
        path: Vec<u8>,
        content: Vec<u8>,
        reason: String,
        ttl: Option<Duration>,
    ) -> Result<pb::Proposal, ProposeError> {
        let filed = self.file(who, path, content, reason, ttl).await;
        let (id, rec) = match filed {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, ProposeError::Refused(_) | ProposeError::TooMany(_)) {
                    bump(&self.counters.refused);
                    warn!(pid = who.pid, uid = who.uid, session = who.session, error = %e, "proposal refused");
                }
                return Err(e);
            }
        };
        bump(&self.counters.filed);
        info!(proposal = id, path = %encode(&rec.path), session = rec.session, agent = %rec.agent, pid = rec.pid, "change proposed");
        self.audit(
            "proposal_filed",
            json!({"proposal": id, "path": encode(&rec.path), "session": rec.session,
                   "agent": rec.agent, "uid": rec.uid, "pid": rec.pid, "reason": rec.reason,
                   "base_sha256": rec.base, "content_sha256": rec.content_sha256,
                   "size": rec.size, "deadline_unix_ms": rec.deadline_unix_ms,
                   "diff": rec.diff}),
        )
        .await;
        // The service's id, for the approve command the caller prints.
        let mut rx = self.changed.subscribe();
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(r) = lock(&self.known).get(&id)
                && (r.request_id != 0 || r.state != State::Pending)
            {
                return Ok(r.to_pb(id));
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                break;
            }
        }
        Ok(rec.to_pb(id))
    }

    async fn file(
        self: &Arc<Self>,
        who: Proposer,
        path: Vec<u8>,
        content: Vec<u8>,
        reason: String,
        ttl: Option<Duration>,
    ) -> Result<(u64, ProposalRecord), ProposeError> {
        if content.len() > MAX_CONTENT {
            return Err(ProposeError::Invalid(format!(
                "the proposed content is {} bytes; at most {MAX_CONTENT} bytes (1 MiB) can be proposed",
                content.len()
            )));
        }
        let reason = reason.trim().to_owned();
        if reason.is_empty() {
            return Err(ProposeError::Invalid(
                "say why (--reason): approvers see it".into(),
            ));
        }
        crate::sessions::validate_reason(&reason)
            .map_err(|e| ProposeError::Invalid(e.to_string()))?;
        let ttl = ttl.unwrap_or_else(|| self.policy_ttl());
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(ProposeError::Invalid(format!(
                "the lifetime must be between {} s and {} days",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs() / 86400
            )));
        }
        let Some(engine) = self.engine.get().cloned() else {
            return Err(ProposeError::Unavailable(
                "the gate is not running yet".into(),
            ));
        };
        let pending = lock(&self.known)
            .values()
            .filter(|r| r.state == State::Pending && r.belongs_to(&who))
            .count();
        if pending >= MAX_PENDING {
            return Err(ProposeError::TooMany(format!(
                "{pending} proposals of this {} are undecided (at most {MAX_PENDING}): wait for their decisions",
                if who.session != 0 { "session" } else { "user" }
            )));
        }
        let me = Arc::clone(self);
        blocking(move || me.file_blocking(&engine, who, path, content, reason, ttl)).await?
    }

    fn policy_ttl(&self) -> Duration {
        self.engine
            .get()
            .map_or(Duration::from_secs(3600), |e| e.policy().request_ttl())
    }

    fn file_blocking(
        &self,
        engine: &Engine,
        who: Proposer,
        path: Vec<u8>,
        content: Vec<u8>,
        reason: String,
        ttl: Duration,
    ) -> Result<(u64, ProposalRecord), ProposeError> {
        let shown = encode(&path);
        let now = apply::current(&path).map_err(|e| match e {
            apply::ApplyError::BadPath(m) => ProposeError::Invalid(m),
            apply::ApplyError::Refused(m) | apply::ApplyError::Conflict(m) => {
                ProposeError::Refused(m)
            }
            e @ apply::ApplyError::Io { .. } => ProposeError::Internal(format!("{shown}: {e}")),
        })?;
        if !self.baseline.baseline.in_scope(&path) {
            return Err(ProposeError::Refused(format!(
                "{shown} is not under the watched or gated trees (the baseline's): only configuration confgate keeps can be proposed"
            )));
        }
        let policy = engine.policy();
        if policy.is_protected(&path) {
            return Err(ProposeError::Refused(format!(
                "{shown} is one of confgate's own files: it cannot be changed by a proposal"
            )));
        }
        let session = (who.session != 0)
            .then(|| self.sessions.get(who.session))
            .flatten();
        let ops = match now {
            apply::Current::Absent => OpSet::CREATE | OpSet::WRITE,
            apply::Current::File { .. } => OpSet::WRITE,
        };
        let q = GateQuery {
            path: &path,
            session: session.as_ref().map(|s| SessionRef {
                id: s.id,
                agent: &s.agent,
                within_scope: engine.within_scope(s.id, &path),
            }),
            ops,
            write: true,
        };
        let rule = policy.evaluate(&q);
        if let Some(m) = &rule
            && m.rule.verdict == Verdict::Deny
        {
            return Err(ProposeError::Refused(format!(
                "{shown}: rule {:?} denies writes there; a proposal does not override a deny rule",
                m.rule.name
            )));
        }
        let content_sha256 = hex(&Sha256::digest(&content).into());
        if now.sha256() == Some(content_sha256.as_str()) {
            return Err(ProposeError::Invalid(format!(
                "{shown} already holds exactly this content: nothing to propose"
            )));
        }
        let masker = policy.masker();
        let before: &[u8] = match &now {
            apply::Current::File {
                content: Some(c), ..
            } => c,
            _ => &[],
        };
        let diff = match &now {
            apply::Current::File { content: None, .. } => None,
            _ => masker.diff(&path, before, &content),
        }
        .filter(|e| !e.text.is_empty());
        let writer = context::writer(who.pid, session.as_ref().map_or(0, |s| s.root_pid));
        let rule_name = rule
            .as_ref()
            .map_or("propose".to_owned(), |m| m.rule.name.clone());
        let quorum = rule
            .as_ref()
            .and_then(|m| m.rule.quorum.as_ref())
            .map(|q| pb::Quorum {
                approvals: q.approvals,
                approvers: q.approvers.clone(),
                four_eyes: q.four_eyes,
                notify: q.notify.clone(),
            });
        let diff_text = diff.as_ref().map(|d| d.text.clone()).unwrap_or_default();
        let mut ctx = context::request_context(context::ContextInput {
            host: "",
            session: session.as_ref(),
            writer: &writer,
            path: &path,
            operations: ops.to_strings(),
            content_sha256: now.sha256().unwrap_or_default().to_owned(),
            excerpt: diff.map(|d| (d, "diff")),
            rule: &rule_name,
            mode: "propose",
            fail_verdict: "deny",
            quorum,
            masker,
        });
        ctx.reason = masker.mask_words(&reason).into_owned();
        ctx.uid = who.uid;
        ctx.user = crate::sessions::user_name(who.uid);
        let created = now_ms();
        let deadline = created.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let rec = ProposalRecord {
            request_id: 0,
            session: who.session,
            agent: session
                .as_ref()
                .map(|s| s.agent.clone())
                .unwrap_or_default(),
            uid: who.uid,
            pid: who.pid,
            path,
            reason,
            base: now.sha256().map(str::to_owned),
            content_sha256,
            size: content.len() as u64,
            created_unix_ms: created,
            deadline_unix_ms: deadline,
            state: State::Pending,
            decided_by: String::new(),
            note: String::new(),
            decided_unix_ms: 0,
            detail: String::new(),
            diff: diff_text,
        };
        let saved = rec.clone();
        let known = &self.known;
        let inserted = &std::cell::Cell::new(None);
        let (id, unsynced) = self
            .uplink
            .submit_now(move |tx| {
                let id = tx.next_id(REQUEST_IDS)?;
                tx.put(PROPOSALS, id, &saved)?;
                tx.put_blob(PROPOSAL_CONTENT, id, &content)?;
                // Known before the request leaves: the service's acknowledgement (its id
                // for the request) may come back at once. Removed again if this fails.
                lock(known).insert(id, saved);
                inserted.set(Some(id));
                Ok(pb::SubmitRequest {
                    host_request_id: id,
                    context: Some(ctx),
                    created_unix_ms: created,
                    deadline_unix_ms: deadline,
                })
            })
            .map_err(|e| {
                if let Some(id) = inserted.get() {
                    lock(known).remove(&id);
                }
                ProposeError::Internal(format!("cannot file the proposal: {e}"))
            })?;
        self.uplink
            .sync_blocking(unsynced)
            .map_err(|e| ProposeError::Internal(format!("cannot store the proposal: {e}")))?;
        Ok((id, rec))
    }

    /// Proposal `id` for `who`, waiting at most `wait` for its decision.
    pub async fn get(
        &self,
        who: Proposer,
        id: u64,
        wait: Duration,
    ) -> Result<pb::Proposal, ProposeError> {
        let until = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        let mut rx = self.changed.subscribe();
        loop {
            let found = lock(&self.known).get(&id).cloned();
            let Some(r) = found.filter(|r| r.belongs_to(&who) || (who.admin && who.session == 0))
            else {
                return Err(ProposeError::NotFound(format!(
                    "no proposal {id} of this caller (a session sees its own proposals only)"
                )));
            };
            if r.state != State::Pending {
                return Ok(r.to_pb(id));
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return Ok(r.to_pb(id));
            }
        }
    }

    /// `who`'s own proposals, newest first.
    pub fn list(&self, who: Proposer) -> Vec<pb::Proposal> {
        let known = lock(&self.known);
        let mut out: Vec<pb::Proposal> = known
            .iter()
            .filter(|(_, r)| r.belongs_to(&who))
            .map(|(id, r)| r.to_pb(*id))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.id));
        out.truncate(MAX_LISTED);
        out
    }

    /// Writes proposal `id` as it is in memory now (durably, with its content removed once
    /// decided, or lazily). One writer at a time, each writing the latest state, so an
    /// older state never lands after a newer one.
    async fn persist(self: &Arc<Self>, id: u64, durable: bool) -> Result<(), ProposeError> {
        let me = Arc::clone(self);
        blocking(move || {
            let _one = lock(&me.persisting);
            let Some(rec) = lock(&me.known).get(&id).cloned() else {
                return Ok(());
            };
            let put = |tx: &crate::store::WriteTx<'_>| {
                tx.put(PROPOSALS, id, &rec)?;
                if rec.state != State::Pending {
                    tx.remove_blob(PROPOSAL_CONTENT, id)?;
                }
                Ok(())
            };
            if durable {
                me.store.write(put)
            } else {
                me.store.write_lazy(put)
            }
        })
        .await?
        .map_err(|e| ProposeError::Internal(e.to_string()))
    }

    /// Records the service's id of each proposal it acknowledges.
    async fn accepted_loop(self: Arc<Self>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut rx = self.uplink.accepted();
        loop {
            let (host_id, service_id) = match rx.recv().await {
                Ok(v) => v,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let new = {
                let mut known = lock(&self.known);
                match known.get_mut(&host_id) {
                    Some(r) if r.request_id != service_id => {
                        r.request_id = service_id;
                        true
                    }
                    _ => false,
                }
            };
            if !new {
                continue;
            }
            self.touched();
            // Bookkeeping: the service answers the same id for a resubmission.
            if let Err(e) = self.persist(host_id, false).await {
                warn!(proposal = host_id, error = %e, "cannot record the service's id of a proposal");
            }
        }
    }
}
