//! Durable state of the approval service, in one redb file through [`crate::store::Store`]
//! (the embedded default; [`super::pg`] keeps the same in PostgreSQL, and
//! [`super::backend::ApprovalStore`] is the one the service uses). The record types here
//! are shared by both.
//!
//! Tables (every change is one transaction, fsync'd before the call returns):
//! - `approver_requests`: request id → [`RequestRec`] (JSON), decision included.
//! - `approver_host_requests`: (host, host_request_id) → request id, for idempotent Submit.
//! - `approver_pending`: request id → deadline (Unix ms) of every pending request.
//! - `approver_grants`: grant id → [`GrantRec`].
//! - `approver_updates`: (host, seq) → [`UpdateRec`]: the per-host update log `Updates`
//!   replays. seq counts 1, 2, 3, ... per host (sequence `approver_update.<host>`).
//! - `approver_reports`: (host, host_seq) → time, for idempotent Report.
//!
//! Notifications are written in the same transaction as the change they announce, by the
//! [`Announce`] set with [`RedbStore::with_outbox`] (the outbox, [`super::outbox`]).
//!
//! The calls are blocking (disk I/O); async callers run them on the blocking pool.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::{RecordTable, Store, StoreError, Unsynced, WriteTx};

const REQUESTS: RecordTable<RequestRec> = RecordTable::new("approver_requests");
const REQUESTS_RAW: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("approver_requests");
const GRANTS: RecordTable<GrantRec> = RecordTable::new("approver_grants");
const GRANTS_RAW: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("approver_grants");
const HOST_REQUESTS: TableDefinition<'static, (&'static str, u64), u64> =
    TableDefinition::new("approver_host_requests");
const PENDING: TableDefinition<'static, u64, i64> = TableDefinition::new("approver_pending");
const UPDATES: TableDefinition<'static, (&'static str, u64), &'static [u8]> =
    TableDefinition::new("approver_updates");
const REPORTS: TableDefinition<'static, (&'static str, u64), i64> =
    TableDefinition::new("approver_reports");

const REQUEST_IDS: &str = "approver_request";
const GRANT_IDS: &str = "approver_grant";

/// How long a new request's acknowledgement waits for another durable commit (its
/// decision's, when an approver answers at once) before it commits durably by itself.
pub const SUBMIT_SYNC_GRACE: Duration = Duration::from_millis(10);

/// A process in the writer's ancestry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRec {
    pub pid: u32,
    pub comm: String,
    pub argv: Vec<String>,
}

/// What the host said about the write (`RequestContext`), `host` set from its identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextRec {
    pub host: String,
    pub session_id: u64,
    pub agent: String,
    pub uid: u32,
    pub user: String,
    pub pid: u32,
    pub command: Vec<String>,
    pub ancestry: Vec<ProcessRec>,
    pub path: String,
    pub operations: Vec<String>,
    pub reason: String,
    pub content_sha256: String,
    pub rule: String,
    pub mode: String,
    pub fail_verdict: String,
    pub cwd: String,
    /// What the rule asks of approvers (`None`: one approval by any approver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumRec>,
    /// The login user of the session's first process, when the host knows it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub login_user: String,
    /// What a temporary name likely becomes (set by the service, see `approver::burst`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub likely_final: String,
    /// What the approver sees of the content (see `RequestContext.excerpt`): escaped,
    /// bounded, secrets masked by the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excerpt: String,
    /// `content` (the file now) or `diff` (the change); empty without an excerpt.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excerpt_kind: String,
}

/// A rule's quorum as the host sent it (see `approver::quorum`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumRec {
    /// Distinct approvals needed (at least 1).
    pub approvals: u32,
    /// Identity names and `group:<name>` entries; empty: every approver.
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub four_eyes: bool,
}

/// One approval recorded on a request that needs several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRec {
    pub by: String,
    pub unix_ms: i64,
    #[serde(default)]
    pub note: String,
    /// The person behind `by` (`approver::quorum`): a person counts once toward a quorum,
    /// whichever channel they approve through. Empty in records made before persons:
    /// `by` is the person then.
    #[serde(default)]
    pub person: String,
    /// What this approver approved: the grant made when the quorum completes is the
    /// intersection of every approval's terms.
    #[serde(default)]
    pub terms: Option<ApprovalTerms>,
}

impl ApprovalRec {
    /// Who counts: the person, or the identity for records without one.
    pub fn counted_as(&self) -> &str {
        if self.person.is_empty() {
            &self.by
        } else {
            &self.person
        }
    }
}

/// The grant one approver asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalTerms {
    pub ttl_ms: i64,
    pub scope: Scope,
    pub path_glob: String,
    pub operations: Vec<String>,
}

/// State of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Closed by the host without a decision: a held operation its daemon's crash let
    /// through, or a review superseded by a newer change or withdrawn (proto
    /// `REQUEST_STATE_RELEASED`).
    Released,
}

impl State {
    /// `pending`, `approved`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Released => "released",
        }
    }
}

/// How a request was resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRec {
    pub state: State,
    /// Identity that decided, `timeout` for expiry.
    pub decided_by: String,
    pub note: String,
    pub decided_unix_ms: i64,
    /// Expired: the failure verdict applied (`allow` / `deny`).
    pub verdict: String,
    /// Approved: the grant created.
    pub grant_id: Option<u64>,
}

/// One approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRec {
    pub id: u64,
    pub host_request_id: u64,
    pub context: ContextRec,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
    pub state: State,
    pub decision: Option<DecisionRec>,
    /// Approvals recorded so far (distinct identities, in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRec>,
    /// Where notifications of this request go (the rule's `notify`), for the outbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// Session-scoped glob suggestion and the paths it covers (see `approver::burst`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suggested_glob: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggested_from: Vec<String>,
}

/// Who a grant covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Session,
    Agent,
}

/// A grant made by an approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRec {
    pub id: u64,
    pub request_id: u64,
    pub host: String,
    pub scope: Scope,
    pub session_id: u64,
    pub agent: String,
    pub path_glob: String,
    pub operations: Vec<String>,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub granted_by: String,
    pub note: String,
    pub revoked_unix_ms: Option<i64>,
    pub revoked_by: Option<String>,
    /// Session scope: when the host reported the session ended.
    #[serde(default)]
    pub session_ended_unix_ms: Option<i64>,
}

impl GrantRec {
    /// Not revoked and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_unix_ms.is_none() && self.expires_unix_ms > now_ms
    }
}

/// One entry of a host's update log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRec {
    pub seq: u64,
    pub host_request_id: u64,
    pub kind: UpdateKind,
}

/// What an update is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    /// The request was decided or expired.
    Decision { request_id: u64 },
    /// The grant was revoked.
    Revoked { grant_id: u64 },
}

/// A new request as a host filed it (validated by the caller).
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub host_request_id: u64,
    pub context: ContextRec,
    /// The rule's `notify` entries.
    pub notify: Vec<String>,
    /// Session-scoped glob suggestion and its paths (filled by the service at Submit).
    pub suggested_glob: String,
    pub suggested_from: Vec<String>,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
}

/// How to resolve a pending request.
#[derive(Clone, Debug)]
pub enum Resolution {
    /// Approve, creating a grant from this template (`id`, `request_id`, `host` are filled in).
    Approve {
        grant: Box<GrantRec>,
        note: String,
    },
    Deny {
        by: String,
        note: String,
    },
    /// Deadline passed: the request's failure verdict applies.
    Expire,
    /// The host closed the request without a decision (a crash of its daemon released
    /// the held operation, or it superseded or withdrew a review); `by` names the host,
    /// `note` says why.
    Release {
        by: String,
        note: String,
    },
}

/// Why a resolution or revocation did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The request is no longer pending (its state), or the grant no longer live.
    NotPending(State),
    GrantNotLive {
        revoked: bool,
    },
}

/// A resolved request, its grant and the host update that announces it.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub request: RequestRec,
    pub grant: Option<GrantRec>,
    pub update_seq: u64,
}

/// A change that [`Announce`] is told about, inside its transaction.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// A new request was filed.
    Created(&'a RequestRec),
    /// A request was decided, expired or released (with its grant), at the time given.
    Resolved(&'a RequestRec, Option<&'a GrantRec>, i64),
    /// A grant was revoked at the time given.
    Revoked(&'a GrantRec, i64),
    /// `host` reported `kind` with `record` at `now_ms`.
    Reported {
        host: &'a str,
        kind: &'a str,
        record: &'a serde_json::Value,
        now_ms: i64,
    },
}

/// What announces changes: writes in the change's own transaction, so that a committed
/// change never lacks its notifications (the notification outbox).
pub trait Announce: Send + Sync + std::fmt::Debug {
    /// Writes what `change` needs in `tx`.
    fn announce(&self, tx: &WriteTx<'_>, change: Change<'_>) -> Result<(), StoreError>;
    /// After the commit of a transaction that announced something.
    fn committed(&self);
}

/// The service's tables on top of a [`Store`].
#[derive(Clone, Debug)]
pub struct RedbStore {
    store: Store,
    /// Who is told of changes (the outbox); `None`: nobody.
    announce: Option<Arc<dyn Announce>>,
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` (parent directories 0700, file 0600).
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        // The tables are opened in the store's first transaction: a file with one of them
        // of another type is damaged, and moved aside like any other.
        let store = Store::open_with(path, |tx| {
            let t = tx.raw();
            t.open_table(REQUESTS_RAW)?;
            t.open_table(GRANTS_RAW)?;
            t.open_table(HOST_REQUESTS)?;
            t.open_table(PENDING)?;
            t.open_table(UPDATES)?;
            t.open_table(REPORTS)?;
            Ok(())
        })?;
        // Requests are committed without waiting for the disk: an id a crash took with it
        // must not name another request (an approver may have seen it).
        store.skip_ids(&[REQUEST_IDS])?;
        Ok(RedbStore {
            store,
            announce: None,
        })
    }

    /// From now on, every change is announced to `a` in the change's own transaction.
    pub fn with_outbox(mut self, a: Arc<dyn Announce>) -> RedbStore {
        self.announce = Some(a);
        self
    }

    /// Tells the announcer about `change` in `tx` (nothing without one).
    fn announce(&self, tx: &WriteTx<'_>, change: Change<'_>) -> Result<(), StoreError> {
        match &self.announce {
            Some(a) => a.announce(tx, change),
            None => Ok(()),
        }
    }

    /// After a commit that announced something.
    fn announced(&self) {
        if let Some(a) = &self.announce {
            a.committed();
        }
    }

    /// Files `new` for `host`, or returns the request already filed under
    /// (host, host_request_id). The bool says whether it was created now.
    /// The commit does not wait for the disk: the caller syncs it ([`RedbStore::sync`])
    /// before acknowledging it.
    pub fn submit(&self, new: NewRequest) -> Result<(RequestRec, bool, Unsynced), StoreError> {
        let ((rec, created), unsynced) = self.store.write_deferred(|tx| {
            let host = new.context.host.as_str();
            let existing = tx
                .raw()
                .open_table(HOST_REQUESTS)?
                .get((host, new.host_request_id))?
                .map(|v| v.value());
            if let Some(id) = existing
                && let Some(r) = tx.get(REQUESTS, id)?
            {
                return Ok((r, false));
            }
            let id = tx.next_id(REQUEST_IDS)?;
            let rec = RequestRec {
                id,
                host_request_id: new.host_request_id,
                created_unix_ms: new.created_unix_ms,
                deadline_unix_ms: new.deadline_unix_ms,
                state: State::Pending,
                decision: None,
                context: new.context.clone(),
                approvals: Vec::new(),
                notify: new.notify.clone(),
                suggested_glob: new.suggested_glob.clone(),
                suggested_from: new.suggested_from.clone(),
            };
            tx.put(REQUESTS, id, &rec)?;
            tx.raw()
                .open_table(HOST_REQUESTS)?
                .insert((host, new.host_request_id), id)?;
            tx.raw()
                .open_table(PENDING)?
                .insert(id, new.deadline_unix_ms)?;
            self.announce(tx, Change::Created(&rec))?;
            Ok((rec, true))
        })?;
        if created {
            self.announced();
        }
        Ok((rec, created, unsynced))
    }

    /// The underlying store, for tables other modules keep in the same file (the web page's
    /// used action links).
    pub(crate) fn raw_store(&self) -> &Store {
        &self.store
    }

    /// Makes a [`RedbStore::submit`] durable: at once if a durable commit (a decision's)
    /// has covered it since, else by a commit of its own. Callers wait
    /// [`SUBMIT_SYNC_GRACE`] first, off the blocking pool, to give a decision that chance.
    pub fn sync(&self, u: Unsynced) -> Result<(), StoreError> {
        self.store.sync(u)
    }

    /// The service's id of the request `host` filed as `host_request_id`.
    pub fn by_host_request(
        &self,
        host: &str,
        host_request_id: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.store.read_raw(|txn| {
            let t = match txn.open_table(HOST_REQUESTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get((host, host_request_id))?.map(|v| v.value()))
        })
    }

    /// One request.
    pub fn request(&self, id: u64) -> Result<Option<RequestRec>, StoreError> {
        self.store.get(REQUESTS, id)
    }

    /// One grant.
    pub fn grant(&self, id: u64) -> Result<Option<GrantRec>, StoreError> {
        self.store.get(GRANTS, id)
    }

    /// Every pending request as (id, deadline).
    pub fn pending(&self) -> Result<Vec<(u64, i64)>, StoreError> {
        self.store.read_raw(|txn| {
            let t = txn.open_table(PENDING)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value()));
            }
            Ok(out)
        })
    }

    /// How many requests there are (pending ones only unless `all`).
    pub fn request_count(&self, all: bool) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        self.store.read_raw(|txn| {
            Ok(if all {
                txn.open_table(REQUESTS_RAW)?.len()?
            } else {
                txn.open_table(PENDING)?.len()?
            })
        })
    }

    /// Requests newest first, pending only unless `all`, at most `limit`.
    pub fn list_requests(&self, all: bool, limit: usize) -> Result<Vec<RequestRec>, StoreError> {
        self.store.read_raw(|txn| {
            let t = txn.open_table(REQUESTS_RAW)?;
            let mut out = Vec::new();
            for row in t.iter()?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row?;
                let rec: RequestRec = decode(REQUESTS.name(), k.value(), v.value())?;
                if all || rec.state == State::Pending {
                    out.push(rec);
                }
            }
            Ok(out)
        })
    }

    /// Grants by id; live ones at `now_ms` only unless `all`.
    pub fn list_grants(&self, all: bool, now_ms: i64) -> Result<Vec<GrantRec>, StoreError> {
        Ok(self
            .store
            .scan(GRANTS)?
            .into_iter()
            .map(|(_, g)| g)
            .filter(|g| all || g.is_live(now_ms))
            .collect())
    }

    /// Notes that `host`'s session `session` ended: its session-scoped grants say so from
    /// now on. Returns how many were marked.
    pub fn note_session_ended(
        &self,
        host: &str,
        session: u64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.store.write(|tx| {
            let mut marked = 0;
            for (id, mut g) in self.store.scan(GRANTS)? {
                if g.host == host
                    && g.scope == Scope::Session
                    && g.session_id == session
                    && g.session_ended_unix_ms.is_none()
                {
                    g.session_ended_unix_ms = Some(now_ms);
                    tx.put(GRANTS, id, &g)?;
                    marked += 1;
                }
            }
            Ok(marked)
        })
    }

    /// Resolves pending request `id` as `how` at `now_ms`, durably, with its host update.
    pub fn resolve(
        &self,
        id: u64,
        how: Resolution,
        now_ms: i64,
    ) -> Result<Result<Resolved, Refusal>, StoreError> {
        let done = self.store.write(|tx| {
            let Some(mut req) = tx.get(REQUESTS, id)? else {
                return Ok(Err(Refusal::NotFound));
            };
            if req.state != State::Pending {
                return Ok(Err(Refusal::NotPending(req.state)));
            }
            let grant = match &how {
                Resolution::Approve { grant, .. } => {
                    let mut grant = (**grant).clone();
                    grant.id = tx.next_id(GRANT_IDS)?;
                    grant.request_id = id;
                    grant.host = req.context.host.clone();
                    tx.put(GRANTS, grant.id, &grant)?;
                    Some(grant)
                }
                _ => None,
            };
            let decision = decision_for(how, &req, grant.as_ref(), now_ms);
            req.state = decision.state;
            req.decision = Some(decision);
            tx.put(REQUESTS, id, &req)?;
            tx.raw().open_table(PENDING)?.remove(id)?;
            let update_seq = append_update(
                tx,
                &req.context.host,
                req.host_request_id,
                UpdateKind::Decision { request_id: id },
            )?;
            self.announce(tx, Change::Resolved(&req, grant.as_ref(), now_ms))?;
            Ok(Ok(Resolved {
                request: req,
                grant,
                update_seq,
            }))
        })?;
        if done.is_ok() {
            self.announced();
        }
        Ok(done)
    }

    /// Records `approval` on pending request `id` (one per person: the same person
    /// through another channel counts once), durably. Returns the request as recorded
    /// now, or why not: not found, no longer pending, or (`Ok` with `false`) this person
    /// or identity had approved already.
    pub fn add_approval(
        &self,
        id: u64,
        approval: ApprovalRec,
    ) -> Result<Result<(RequestRec, bool), Refusal>, StoreError> {
        self.store.write(|tx| {
            let Some(mut req) = tx.get(REQUESTS, id)? else {
                return Ok(Err(Refusal::NotFound));
            };
            if req.state != State::Pending {
                return Ok(Err(Refusal::NotPending(req.state)));
            }
            if req
                .approvals
                .iter()
                .any(|a| a.by == approval.by || a.counted_as() == approval.counted_as())
            {
                return Ok(Ok((req, false)));
            }
            req.approvals.push(approval);
            tx.put(REQUESTS, id, &req)?;
            Ok(Ok((req, true)))
        })
    }

    /// Revokes live grant `id`, durably, with its host update. Returns the grant and the
    /// update's seq.
    pub fn revoke(
        &self,
        id: u64,
        by: &str,
        now_ms: i64,
    ) -> Result<Result<(GrantRec, u64), Refusal>, StoreError> {
        let done = self.store.write(|tx| {
            let Some(mut g) = tx.get(GRANTS, id)? else {
                return Ok(Err(Refusal::NotFound));
            };
            if !g.is_live(now_ms) {
                return Ok(Err(Refusal::GrantNotLive {
                    revoked: g.revoked_unix_ms.is_some(),
                }));
            }
            g.revoked_unix_ms = Some(now_ms);
            g.revoked_by = Some(by.to_owned());
            tx.put(GRANTS, id, &g)?;
            let host_request_id = tx
                .get(REQUESTS, g.request_id)?
                .map_or(0, |r| r.host_request_id);
            let seq = append_update(
                tx,
                &g.host,
                host_request_id,
                UpdateKind::Revoked { grant_id: id },
            )?;
            self.announce(tx, Change::Revoked(&g, now_ms))?;
            Ok(Ok((g, seq)))
        })?;
        if done.is_ok() {
            self.announced();
        }
        Ok(done)
    }

    /// Up to `limit` updates of `host` with seq > `after`, in order.
    pub fn updates_after(
        &self,
        host: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRec>, StoreError> {
        self.store.read_raw(|txn| {
            let t = txn.open_table(UPDATES)?;
            let Some(start) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in t.range((host, start)..=(host, u64::MAX))? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row?;
                let (_, seq) = k.value();
                out.push(decode("approver_updates", seq, v.value())?);
            }
            Ok(out)
        })
    }

    /// The last seq of `host`'s update log (0: none yet).
    pub fn last_update_seq(&self, host: &str) -> Result<u64, StoreError> {
        self.store.read_raw(|txn| {
            let t = txn.open_table(UPDATES)?;
            let last = t.range((host, 0)..=(host, u64::MAX))?.next_back();
            match last {
                Some(row) => Ok(row?.0.value().1),
                None => Ok(0),
            }
        })
    }

    /// Records that `host` reported `host_seq`; false if it already had (a resubmission).
    pub fn note_report(&self, host: &str, host_seq: u64, now_ms: i64) -> Result<bool, StoreError> {
        self.note_report_of(host, host_seq, now_ms, "", &serde_json::Value::Null)
    }

    /// [`RedbStore::note_report`] of a report of `kind` with `record`, announced in
    /// the same transaction (an empty `kind` announces nothing).
    pub fn note_report_of(
        &self,
        host: &str,
        host_seq: u64,
        now_ms: i64,
        kind: &str,
        record: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let new = self.store.write(|tx| {
            let mut t = tx.raw().open_table(REPORTS)?;
            if t.get((host, host_seq))?.is_some() {
                return Ok(false);
            }
            t.insert((host, host_seq), now_ms)?;
            drop(t);
            if !kind.is_empty() {
                let change = Change::Reported {
                    host,
                    kind,
                    record,
                    now_ms,
                };
                self.announce(tx, change)?;
            }
            Ok(true)
        })?;
        if new {
            self.announced();
        }
        Ok(new)
    }

    /// Forgets that `host` reported `host_seq` (its ledger record could not be written, so
    /// a resubmission must be accepted again).
    pub fn forget_report(&self, host: &str, host_seq: u64) -> Result<(), StoreError> {
        self.store.write(|tx| {
            tx.raw().open_table(REPORTS)?.remove((host, host_seq))?;
            Ok(())
        })
    }
}

/// The decision `how` records on `req` at `now_ms` (`grant`: the one an approval made).
pub(crate) fn decision_for(
    how: Resolution,
    req: &RequestRec,
    grant: Option<&GrantRec>,
    now_ms: i64,
) -> DecisionRec {
    match how {
        Resolution::Approve { note, grant: asked } => DecisionRec {
            state: State::Approved,
            decided_by: asked.granted_by,
            note,
            decided_unix_ms: now_ms,
            verdict: "allow".to_owned(),
            grant_id: grant.map(|g| g.id),
        },
        Resolution::Deny { by, note } => DecisionRec {
            state: State::Denied,
            decided_by: by,
            note,
            decided_unix_ms: now_ms,
            verdict: "deny".to_owned(),
            grant_id: None,
        },
        Resolution::Release { by, note } => DecisionRec {
            state: State::Released,
            decided_by: by,
            note,
            decided_unix_ms: now_ms,
            verdict: "allow".to_owned(),
            grant_id: None,
        },
        Resolution::Expire => DecisionRec {
            state: State::Expired,
            decided_by: "timeout".to_owned(),
            note: String::new(),
            decided_unix_ms: now_ms,
            verdict: req.context.fail_verdict.clone(),
            grant_id: None,
        },
    }
}

fn append_update(
    tx: &WriteTx<'_>,
    host: &str,
    host_request_id: u64,
    kind: UpdateKind,
) -> Result<u64, StoreError> {
    let seq = tx.next_id(&format!("approver_update.{host}"))?;
    let rec = UpdateRec {
        seq,
        host_request_id,
        kind,
    };
    let bytes = serde_json::to_vec(&rec).map_err(|source| StoreError::Codec {
        table: "approver_updates",
        key: seq,
        source,
    })?;
    tx.raw()
        .open_table(UPDATES)?
        .insert((host, seq), bytes.as_slice())?;
    Ok(seq)
}

fn decode<V: serde::de::DeserializeOwned>(
    table: &'static str,
    key: u64,
    bytes: &[u8],
) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec { table, key, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_request(host: &str, hid: u64, deadline: i64) -> NewRequest {
        NewRequest {
            host_request_id: hid,
            notify: Vec::new(),
            suggested_glob: String::new(),
            suggested_from: Vec::new(),
            context: ContextRec {
                host: host.into(),
                session_id: 7,
                agent: "codex".into(),
                path: "/etc/hosts".into(),
                operations: vec!["write".into()],
                fail_verdict: "deny".into(),
                ..ContextRec::default()
            },
            created_unix_ms: 1,
            deadline_unix_ms: deadline,
        }
    }

    fn grant_template() -> GrantRec {
        GrantRec {
            id: 0,
            request_id: 0,
            host: String::new(),
            scope: Scope::Session,
            session_id: 7,
            agent: "codex".into(),
            path_glob: "/etc/hosts".into(),
            operations: vec!["write".into()],
            created_unix_ms: 10,
            expires_unix_ms: 1000,
            granted_by: "cert:alice".into(),
            note: "ok".into(),
            revoked_unix_ms: None,
            revoked_by: None,
            session_ended_unix_ms: None,
        }
    }

    #[test]
    fn approvals_are_recorded_once_per_identity_and_only_while_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        let (r, _, _) = s.submit(new_request("h1", 1, i64::MAX / 2)).unwrap();
        let a = |by: &str| ApprovalRec {
            by: by.into(),
            unix_ms: 5,
            note: String::new(),
            person: String::new(),
            terms: None,
        };
        let (rec, added) = s.add_approval(r.id, a("token:alice")).unwrap().unwrap();
        assert!(added);
        assert_eq!(rec.approvals.len(), 1);
        let (rec, added) = s.add_approval(r.id, a("token:alice")).unwrap().unwrap();
        assert!(!added);
        assert_eq!(rec.approvals.len(), 1);
        // The same person through another channel counts once.
        let as_alice = |by: &str| ApprovalRec {
            person: "alice".into(),
            ..a(by)
        };
        let (rec, added) = s
            .add_approval(r.id, as_alice("oidc:a1b2"))
            .unwrap()
            .unwrap();
        assert!(added, "the first approval with a person");
        let (rec2, added) = s.add_approval(r.id, as_alice("slack:U1")).unwrap().unwrap();
        assert!(!added);
        assert_eq!(rec2, rec);
        let (rec, _) = s.add_approval(r.id, a("token:bob")).unwrap().unwrap();
        assert_eq!(s.request(r.id).unwrap().unwrap(), rec);
        assert_eq!(rec.approvals.len(), 3);
        let how = Resolution::Deny {
            by: "token:carol".into(),
            note: String::new(),
        };
        s.resolve(r.id, how, 9).unwrap().unwrap();
        assert_eq!(
            s.add_approval(r.id, a("token:dave")).unwrap(),
            Err(Refusal::NotPending(State::Denied))
        );
        assert_eq!(
            s.add_approval(999_999, a("x")).unwrap(),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn submit_is_idempotent_per_host_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            let (a, created, _) = s.submit(new_request("h1", 5, 100)).unwrap();
            assert!(created);
            let (b, created, _) = s.submit(new_request("h1", 5, 999)).unwrap();
            assert!(!created);
            assert_eq!(a, b);
            let (c, created, unsynced) = s.submit(new_request("h2", 5, 100)).unwrap();
            assert!(created);
            assert_ne!(a.id, c.id);
            assert_eq!(s.pending().unwrap(), [(a.id, 100), (c.id, 100)]);
            // Syncing the last one makes every earlier one durable too.
            s.sync(unsynced).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.pending().unwrap().len(), 2);
        let (again, created, _) = s.submit(new_request("h1", 5, 1)).unwrap();
        assert!(!created);
        assert_eq!(again.deadline_unix_ms, 100);
        // Ids a crash could have taken with an unsynced submit are skipped at open.
        let (next, _, _) = s.submit(new_request("h3", 1, 100)).unwrap();
        let first = 1 + crate::store::DEFERRED_ID_GAP;
        assert_eq!(next.id, first + 2 + crate::store::DEFERRED_ID_GAP);
        let listed = s.list_requests(false, 10).unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id).collect::<Vec<_>>(),
            [next.id, first + 1, first]
        );
        assert_eq!(s.list_requests(true, 1).unwrap().len(), 1);
    }

    #[test]
    fn a_session_end_marks_only_that_hosts_session_grants() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        let mut ids = Vec::new();
        for (host, hid) in [("h1", 1), ("h2", 2)] {
            let (r, _, _) = s.submit(new_request(host, hid, 100)).unwrap();
            let how = Resolution::Approve {
                grant: Box::new(grant_template()),
                note: String::new(),
            };
            ids.push(s.resolve(r.id, how, 50).unwrap().unwrap().grant.unwrap());
        }
        let session = ids[0].session_id;
        assert_eq!(s.note_session_ended("h1", session, 70).unwrap(), 1);
        assert_eq!(s.note_session_ended("h1", session, 80).unwrap(), 0);
        let all = s.list_grants(true, 60).unwrap();
        let by_host = |h: &str| all.iter().find(|g| g.host == h).unwrap().clone();
        assert_eq!(by_host("h1").session_ended_unix_ms, Some(70));
        assert_eq!(by_host("h2").session_ended_unix_ms, None);
    }

    #[test]
    fn a_request_released_by_a_host_crash_is_found_by_its_host_id_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        let (r1, _, _) = s.submit(new_request("h1", 7, 100)).unwrap();
        let _other = s.submit(new_request("h2", 7, 100)).unwrap();
        assert_eq!(s.by_host_request("h1", 7).unwrap(), Some(r1.id));
        assert_eq!(s.by_host_request("h1", 8).unwrap(), None);
        let by = Resolution::Release {
            by: "host:h1".into(),
            note: "released by a crash".into(),
        };
        let done = s.resolve(r1.id, by, 50).unwrap().unwrap();
        assert_eq!(done.request.state, State::Released);
        assert!(done.grant.is_none());
        assert!(!s.pending().unwrap().iter().any(|(id, _)| *id == r1.id));
        // A later expiry cannot record it as something it was not.
        assert_eq!(
            s.resolve(r1.id, Resolution::Expire, 200)
                .unwrap()
                .unwrap_err(),
            Refusal::NotPending(State::Released)
        );
    }

    #[test]
    fn resolve_once_and_log_updates_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        let (r1, _, _) = s.submit(new_request("h1", 1, 100)).unwrap();
        let (r2, _, _) = s.submit(new_request("h1", 2, 100)).unwrap();
        let (r3, _, _) = s.submit(new_request("h2", 1, 100)).unwrap();
        let done = s
            .resolve(
                r1.id,
                Resolution::Approve {
                    grant: Box::new(grant_template()),
                    note: "fine".into(),
                },
                50,
            )
            .unwrap()
            .unwrap();
        assert_eq!(done.request.state, State::Approved);
        let g = done.grant.unwrap();
        assert_eq!((g.request_id, g.host.as_str()), (r1.id, "h1"));
        assert_eq!(done.update_seq, 1);
        assert_eq!(
            s.resolve(r1.id, Resolution::Expire, 60)
                .unwrap()
                .unwrap_err(),
            Refusal::NotPending(State::Approved)
        );
        assert_eq!(
            s.resolve(99, Resolution::Expire, 60).unwrap().unwrap_err(),
            Refusal::NotFound
        );
        let exp = s.resolve(r2.id, Resolution::Expire, 70).unwrap().unwrap();
        assert_eq!(exp.update_seq, 2);
        let d = exp.request.decision.unwrap();
        assert_eq!(
            (d.verdict.as_str(), d.decided_by.as_str()),
            ("deny", "timeout")
        );
        let h2 = s
            .resolve(
                r3.id,
                Resolution::Deny {
                    by: "token:ops".into(),
                    note: "no".into(),
                },
                80,
            )
            .unwrap()
            .unwrap();
        assert_eq!(h2.update_seq, 1, "seq is per host");
        assert!(s.pending().unwrap().is_empty());

        let (revoked, seq) = s.revoke(g.id, "cert:bob", 90).unwrap().unwrap();
        assert_eq!(revoked.revoked_by.as_deref(), Some("cert:bob"));
        assert_eq!(seq, 3);
        assert_eq!(
            s.revoke(g.id, "cert:bob", 91).unwrap().unwrap_err(),
            Refusal::GrantNotLive { revoked: true }
        );
        let ups = s.updates_after("h1", 0, 100).unwrap();
        assert_eq!(ups.iter().map(|u| u.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(ups[2].kind, UpdateKind::Revoked { grant_id: g.id });
        assert_eq!(ups[2].host_request_id, 1);
        assert_eq!(s.updates_after("h1", 2, 100).unwrap().len(), 1);
        assert_eq!(s.updates_after("h1", 0, 2).unwrap().len(), 2);
        assert_eq!(s.updates_after("h1", u64::MAX, 2).unwrap().len(), 0);
        assert_eq!(s.updates_after("h", 0, 100).unwrap().len(), 0);
        assert_eq!(s.last_update_seq("h1").unwrap(), 3);
        assert_eq!(s.last_update_seq("h2").unwrap(), 1);
        assert_eq!(s.last_update_seq("h").unwrap(), 0);
        assert_eq!(s.list_grants(false, 95).unwrap().len(), 0);
        assert_eq!(s.list_grants(true, 95).unwrap().len(), 1);
    }

    #[test]
    fn reports_are_noted_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        assert!(s.note_report("h1", 1, 5).unwrap());
        assert!(!s.note_report("h1", 1, 6).unwrap());
        assert!(s.note_report("h2", 1, 6).unwrap());
        s.forget_report("h1", 1).unwrap();
        assert!(s.note_report("h1", 1, 7).unwrap());
    }
}
