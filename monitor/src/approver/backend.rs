//! The approval service's store: the embedded redb file ([`RedbStore`], the default) or a
//! PostgreSQL database shared by several replicas ([`PgStore`], `store = "postgres://..."`).
//! Both answer the same calls with the same meaning; the service above does not tell them
//! apart, except that the notification outbox and the web page's used links live in the
//! redb file only ([`ApprovalStore::raw_store`]).
use std::path::Path;
use std::sync::Arc;

use super::pg::{self, Fanout, PgStore};
use super::store::{
    Announce, ApprovalRec, GrantRec, NewRequest, RedbStore, Refusal, RequestRec, Resolution,
    Resolved, UpdateRec,
};
use crate::store::{Store, StoreError, Unsynced};

/// The store the service runs on.
#[derive(Clone, Debug)]
pub enum ApprovalStore {
    Redb(RedbStore),
    Postgres(PgStore),
}

/// What makes a new request durable before its host is told (see [`ApprovalStore::sync`]).
#[derive(Clone, Copy, Debug)]
#[must_use = "a new request is not acknowledged before it is durable"]
pub enum Durable {
    /// A deferred redb commit.
    Redb(Unsynced),
    /// Already committed (PostgreSQL).
    Committed,
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            ApprovalStore::Redb($s) => $e,
            ApprovalStore::Postgres($s) => $e,
        }
    };
}

impl ApprovalStore {
    /// The store `location` names: a `postgres://` URL or a redb file path.
    pub fn open_location(location: &Path) -> Result<ApprovalStore, StoreError> {
        match location.to_str() {
            Some(url) if pg::is_url(url) => Ok(ApprovalStore::Postgres(PgStore::open(url)?)),
            _ => Ok(ApprovalStore::Redb(RedbStore::open(location)?)),
        }
    }

    /// Opens (or creates) a redb store file.
    pub fn open(path: &Path) -> Result<ApprovalStore, StoreError> {
        Ok(ApprovalStore::Redb(RedbStore::open(path)?))
    }

    /// See [`RedbStore::with_outbox`]; PostgreSQL has no outbox (its configuration refuses
    /// `[notify]` routes), so nothing is announced there.
    pub fn with_outbox(self, a: Arc<dyn Announce>) -> ApprovalStore {
        match self {
            ApprovalStore::Redb(s) => ApprovalStore::Redb(s.with_outbox(a)),
            pg => pg,
        }
    }

    /// The redb file of the embedded store (the outbox's and the web links' tables);
    /// `None` on PostgreSQL.
    pub(crate) fn raw_store(&self) -> Option<&Store> {
        match self {
            ApprovalStore::Redb(s) => Some(s.raw_store()),
            ApprovalStore::Postgres(_) => None,
        }
    }

    /// The changes other replicas commit, when on PostgreSQL.
    pub fn fanout(&self) -> Option<tokio::sync::mpsc::Receiver<Fanout>> {
        match self {
            ApprovalStore::Redb(_) => None,
            ApprovalStore::Postgres(p) => Some(p.listen(false)),
        }
    }

    pub fn submit(&self, new: NewRequest) -> Result<(RequestRec, bool, Durable), StoreError> {
        match self {
            ApprovalStore::Redb(s) => {
                let (r, created, u) = s.submit(new)?;
                Ok((r, created, Durable::Redb(u)))
            }
            ApprovalStore::Postgres(s) => {
                let (r, created) = s.submit(new)?;
                Ok((r, created, Durable::Committed))
            }
        }
    }

    pub fn sync(&self, d: Durable) -> Result<(), StoreError> {
        match (self, d) {
            (ApprovalStore::Redb(s), Durable::Redb(u)) => s.sync(u),
            _ => Ok(()),
        }
    }

    pub fn by_host_request(
        &self,
        host: &str,
        host_request_id: u64,
    ) -> Result<Option<u64>, StoreError> {
        both!(self, s => s.by_host_request(host, host_request_id))
    }

    pub fn request(&self, id: u64) -> Result<Option<RequestRec>, StoreError> {
        both!(self, s => s.request(id))
    }

    pub fn grant(&self, id: u64) -> Result<Option<GrantRec>, StoreError> {
        both!(self, s => s.grant(id))
    }

    pub fn pending(&self) -> Result<Vec<(u64, i64)>, StoreError> {
        both!(self, s => s.pending())
    }

    pub fn request_count(&self, all: bool) -> Result<u64, StoreError> {
        both!(self, s => s.request_count(all))
    }

    pub fn list_requests(&self, all: bool, limit: usize) -> Result<Vec<RequestRec>, StoreError> {
        both!(self, s => s.list_requests(all, limit))
    }

    pub fn list_grants(&self, all: bool, now_ms: i64) -> Result<Vec<GrantRec>, StoreError> {
        both!(self, s => s.list_grants(all, now_ms))
    }

    pub fn note_session_ended(
        &self,
        host: &str,
        session: u64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        both!(self, s => s.note_session_ended(host, session, now_ms))
    }

    pub fn resolve(
        &self,
        id: u64,
        how: Resolution,
        now_ms: i64,
    ) -> Result<Result<Resolved, Refusal>, StoreError> {
        both!(self, s => s.resolve(id, how, now_ms))
    }

    pub fn add_approval(
        &self,
        id: u64,
        approval: ApprovalRec,
    ) -> Result<Result<(RequestRec, bool), Refusal>, StoreError> {
        both!(self, s => s.add_approval(id, approval))
    }

    pub fn revoke(
        &self,
        id: u64,
        by: &str,
        now_ms: i64,
    ) -> Result<Result<(GrantRec, u64), Refusal>, StoreError> {
        both!(self, s => s.revoke(id, by, now_ms))
    }

    pub fn updates_after(
        &self,
        host: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRec>, StoreError> {
        both!(self, s => s.updates_after(host, after, limit))
    }

    pub fn last_update_seq(&self, host: &str) -> Result<u64, StoreError> {
        both!(self, s => s.last_update_seq(host))
    }

    pub fn note_report(&self, host: &str, host_seq: u64, now_ms: i64) -> Result<bool, StoreError> {
        both!(self, s => s.note_report(host, host_seq, now_ms))
    }

    /// See [`RedbStore::note_report_of`]; on PostgreSQL the report is noted (there is no
    /// outbox to announce it to).
    pub fn note_report_of(
        &self,
        host: &str,
        host_seq: u64,
        now_ms: i64,
        kind: &str,
        record: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        match self {
            ApprovalStore::Redb(s) => s.note_report_of(host, host_seq, now_ms, kind, record),
            ApprovalStore::Postgres(s) => s.note_report(host, host_seq, now_ms),
        }
    }

    /// Shares `host`'s attestation key with the other replicas (PostgreSQL; the embedded
    /// store has no others, and keeps none).
    pub fn set_host_key(&self, host: &str, key: &[u8]) -> Result<(), StoreError> {
        match self {
            ApprovalStore::Redb(_) => Ok(()),
            ApprovalStore::Postgres(s) => s.set_host_key(host, key),
        }
    }

    /// `host`'s attestation key as another replica recorded it (`None` on redb).
    pub fn host_key(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            ApprovalStore::Redb(_) => Ok(None),
            ApprovalStore::Postgres(s) => s.host_key(host),
        }
    }

    /// Records a used attestation nonce where every replica sees it; false when it was
    /// used before (PostgreSQL). The embedded store has one process, whose own cache
    /// ([`super::decider::Deciders`]) is the record: always true.
    pub fn claim_nonce(
        &self,
        host: &str,
        nonce: &str,
        expires_unix_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            ApprovalStore::Redb(_) => Ok(true),
            ApprovalStore::Postgres(s) => s.claim_nonce(host, nonce, expires_unix_ms, now_ms),
        }
    }

    /// Whether several replicas may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, ApprovalStore::Postgres(_))
    }

    pub fn forget_report(&self, host: &str, host_seq: u64) -> Result<(), StoreError> {
        both!(self, s => s.forget_report(host, host_seq))
    }
}
