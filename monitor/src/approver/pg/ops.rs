//! The store calls on PostgreSQL: the same signatures and meaning as the embedded store's
//! ([`crate::approver::store::RedbStore`]), each one transaction.
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Transaction;

use super::listen::{Fanout, Payload};
use super::{CHANNEL, PgStore, chain_err, db_err, pg_err};
use crate::approver::store::{
    ApprovalRec, GrantRec, NewRequest, Refusal, RequestRec, Resolution, Resolved, Scope, State,
    UpdateKind, UpdateRec, decision_for,
};
use crate::store::StoreError;

/// A host-given 64-bit number as the `bigint` with the same bits (and back).
fn bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// An id from a sequence (positive) as u64.
fn id_of(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| pg_err("id", format!("{v} is negative")))
}

fn encode<T: Serialize>(table: &'static str, key: u64, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Codec { table, key, source })
}

fn decode<T: DeserializeOwned>(table: &'static str, key: u64, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|source| StoreError::Codec { table, key, source })
}

async fn announce(tx: &Transaction<'_>, origin: u64, change: Fanout) -> Result<(), StoreError> {
    let payload =
        serde_json::to_string(&Payload { origin, change }).map_err(|e| pg_err("notify", e))?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(|e| db_err("notify", e))?;
    Ok(())
}

/// Appends to `host`'s update log in `tx`: the next seq of its counter row, which `tx`
/// holds locked until it ends (no other transaction takes a seq of this host meanwhile).
async fn append_update(
    tx: &Transaction<'_>,
    host: &str,
    host_request_id: u64,
    kind: UpdateKind,
) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO approver_host_seqs (host, last_seq) VALUES ($1, 1)
             ON CONFLICT (host) DO UPDATE SET last_seq = approver_host_seqs.last_seq + 1
             RETURNING last_seq",
            &[&host],
        )
        .await
        .map_err(|e| db_err("update seq", e))?;
    let seq = id_of(row.get(0))?;
    let rec = UpdateRec {
        seq,
        host_request_id,
        kind,
    };
    let bytes = encode("approver_updates", seq, &rec)?;
    tx.execute(
        "INSERT INTO approver_updates (host, seq, rec) VALUES ($1, $2, $3)",
        &[&host, &bits(seq), &bytes],
    )
    .await
    .map_err(|e| db_err("update log", e))?;
    Ok(seq)
}

async fn request_in(
    tx: &Transaction<'_>,
    id: u64,
    lock: bool,
) -> Result<Option<RequestRec>, StoreError> {
    let sql = if lock {
        "SELECT rec FROM approver_requests WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT rec FROM approver_requests WHERE id = $1"
    };
    let row = tx
        .query_opt(sql, &[&bits(id)])
        .await
        .map_err(|e| db_err("request", e))?;
    row.map(|r| decode("approver_requests", id, r.get::<_, &[u8]>(0)))
        .transpose()
}

async fn put_request(tx: &Transaction<'_>, r: &RequestRec) -> Result<(), StoreError> {
    let bytes = encode("approver_requests", r.id, r)?;
    tx.execute(
        "UPDATE approver_requests SET state = $2, rec = $3 WHERE id = $1",
        &[&bits(r.id), &r.state.as_str(), &bytes],
    )
    .await
    .map_err(|e| db_err("request update", e))?;
    Ok(())
}

async fn put_grant(tx: &Transaction<'_>, g: &GrantRec, new: bool) -> Result<(), StoreError> {
    let bytes = encode("approver_grants", g.id, g)?;
    let sql = if new {
        "INSERT INTO approver_grants (id, request_id, host, session_id, rec)
         VALUES ($1, $2, $3, $4, $5)"
    } else {
        "UPDATE approver_grants SET rec = $5
         WHERE id = $1 AND request_id = $2 AND host = $3 AND session_id = $4"
    };
    tx.execute(
        sql,
        &[
            &bits(g.id),
            &bits(g.request_id),
            &g.host,
            &bits(g.session_id),
            &bytes,
        ],
    )
    .await
    .map_err(|e| db_err("grant", e))?;
    Ok(())
}

/// A transaction on a pooled connection: `$body` runs with `tx` in scope; committed when it
/// returns `Ok`, rolled back otherwise (dropped uncommitted).
macro_rules! in_tx {
    ($store:expr, $what:expr, |$tx:ident| $body:block) => {{
        let pool = $store.pool();
        $store.run(async move {
            let mut client = pool.get().await.map_err(|e| chain_err("connect", &e))?;
            let $tx = client.transaction().await.map_err(|e| db_err($what, e))?;
            let out = $body;
            $tx.commit().await.map_err(|e| db_err($what, e))?;
            Ok(out)
        })
    }};
}

/// One statement outside a transaction, on a pooled connection.
macro_rules! on_conn {
    ($store:expr, |$c:ident| $body:block) => {{
        let pool = $store.pool();
        $store.run(async move {
            let $c = pool.get().await.map_err(|e| chain_err("connect", &e))?;
            $body
        })
    }};
}

impl PgStore {
    /// See `RedbStore::submit`; committed when it returns.
    pub fn submit(&self, new: NewRequest) -> Result<(RequestRec, bool), StoreError> {
        let origin = self.inner.origin;
        in_tx!(self, "submit", |tx| {
            let host = new.context.host.clone();
            let hid = bits(new.host_request_id);
            let existing = tx
                .query_opt(
                    "SELECT id, rec FROM approver_requests WHERE host = $1 AND host_request_id = $2",
                    &[&host, &hid],
                )
                .await
                .map_err(|e| db_err("submit", e))?;
            if let Some(row) = existing {
                let id = id_of(row.get(0))?;
                (
                    decode("approver_requests", id, row.get::<_, &[u8]>(1))?,
                    false,
                )
            } else {
                let row = tx
                    .query_one("SELECT nextval('approver_request_ids')", &[])
                    .await
                    .map_err(|e| db_err("request id", e))?;
                let id = id_of(row.get(0))?;
                let rec = RequestRec {
                    id,
                    host_request_id: new.host_request_id,
                    created_unix_ms: new.created_unix_ms,
                    deadline_unix_ms: new.deadline_unix_ms,
                    state: State::Pending,
                    decision: None,
                    context: new.context,
                    approvals: Vec::new(),
                    notify: new.notify,
                    suggested_glob: new.suggested_glob,
                    suggested_from: new.suggested_from,
                };
                let bytes = encode("approver_requests", id, &rec)?;
                // Another replica may file the same (host, host_request_id) at the same
                // time (a host that failed over resends): the second insert waits for
                // the first and then does nothing; its transaction returns the first's.
                let n = tx
                    .execute(
                        "INSERT INTO approver_requests
                           (id, host, host_request_id, session_id, state, deadline_unix_ms, rec)
                         VALUES ($1, $2, $3, $4, 'pending', $5, $6)
                         ON CONFLICT (host, host_request_id) DO NOTHING",
                        &[
                            &bits(id),
                            &host,
                            &hid,
                            &bits(rec.context.session_id),
                            &rec.deadline_unix_ms,
                            &bytes,
                        ],
                    )
                    .await
                    .map_err(|e| db_err("submit", e))?;
                if n == 0 {
                    let row = tx
                        .query_one(
                            "SELECT id, rec FROM approver_requests
                             WHERE host = $1 AND host_request_id = $2",
                            &[&host, &hid],
                        )
                        .await
                        .map_err(|e| db_err("submit", e))?;
                    let id = id_of(row.get(0))?;
                    (
                        decode("approver_requests", id, row.get::<_, &[u8]>(1))?,
                        false,
                    )
                } else {
                    let change = Fanout::Created {
                        id,
                        deadline: rec.deadline_unix_ms,
                    };
                    announce(&tx, origin, change).await?;
                    (rec, true)
                }
            }
        })
    }

    pub fn by_host_request(
        &self,
        host: &str,
        host_request_id: u64,
    ) -> Result<Option<u64>, StoreError> {
        let host = host.to_owned();
        on_conn!(self, |c| {
            let row = c
                .query_opt(
                    "SELECT id FROM approver_requests WHERE host = $1 AND host_request_id = $2",
                    &[&host, &bits(host_request_id)],
                )
                .await
                .map_err(|e| db_err("request by host id", e))?;
            row.map(|r| id_of(r.get(0))).transpose()
        })
    }

    pub fn request(&self, id: u64) -> Result<Option<RequestRec>, StoreError> {
        on_conn!(self, |c| {
            let row = c
                .query_opt(
                    "SELECT rec FROM approver_requests WHERE id = $1",
                    &[&bits(id)],
                )
                .await
                .map_err(|e| db_err("request", e))?;
            row.map(|r| decode("approver_requests", id, r.get::<_, &[u8]>(0)))
                .transpose()
        })
    }

    pub fn grant(&self, id: u64) -> Result<Option<GrantRec>, StoreError> {
        on_conn!(self, |c| {
            let row = c
                .query_opt(
                    "SELECT rec FROM approver_grants WHERE id = $1",
                    &[&bits(id)],
                )
                .await
                .map_err(|e| db_err("grant", e))?;
            row.map(|r| decode("approver_grants", id, r.get::<_, &[u8]>(0)))
                .transpose()
        })
    }

    pub fn pending(&self) -> Result<Vec<(u64, i64)>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT id, deadline_unix_ms FROM approver_requests
                     WHERE state = 'pending' ORDER BY id",
                    &[],
                )
                .await
                .map_err(|e| db_err("pending", e))?;
            rows.iter()
                .map(|r| Ok((id_of(r.get(0))?, r.get(1))))
                .collect()
        })
    }

    pub fn request_count(&self, all: bool) -> Result<u64, StoreError> {
        on_conn!(self, |c| {
            let sql = if all {
                "SELECT COUNT(*) FROM approver_requests"
            } else {
                "SELECT COUNT(*) FROM approver_requests WHERE state = 'pending'"
            };
            let row = c
                .query_one(sql, &[])
                .await
                .map_err(|e| db_err("count", e))?;
            id_of(row.get(0))
        })
    }

    pub fn list_requests(&self, all: bool, limit: usize) -> Result<Vec<RequestRec>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_conn!(self, |c| {
            let sql = if all {
                "SELECT id, rec FROM approver_requests ORDER BY id DESC LIMIT $1"
            } else {
                "SELECT id, rec FROM approver_requests WHERE state = 'pending'
                 ORDER BY id DESC LIMIT $1"
            };
            let rows = c
                .query(sql, &[&limit])
                .await
                .map_err(|e| db_err("list", e))?;
            rows.iter()
                .map(|r| decode("approver_requests", id_of(r.get(0))?, r.get::<_, &[u8]>(1)))
                .collect()
        })
    }

    pub fn list_grants(&self, all: bool, now_ms: i64) -> Result<Vec<GrantRec>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query("SELECT id, rec FROM approver_grants ORDER BY id", &[])
                .await
                .map_err(|e| db_err("grants", e))?;
            let mut out = Vec::new();
            for r in &rows {
                let g: GrantRec = decode("approver_grants", id_of(r.get(0))?, r.get(1))?;
                if all || g.is_live(now_ms) {
                    out.push(g);
                }
            }
            Ok(out)
        })
    }

    pub fn note_session_ended(
        &self,
        host: &str,
        session: u64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let host = host.to_owned();
        in_tx!(self, "session end", |tx| {
            let rows = tx
                .query(
                    "SELECT id, rec FROM approver_grants WHERE host = $1 AND session_id = $2
                     FOR UPDATE",
                    &[&host, &bits(session)],
                )
                .await
                .map_err(|e| db_err("session end", e))?;
            let mut marked = 0;
            for r in &rows {
                let mut g: GrantRec = decode("approver_grants", id_of(r.get(0))?, r.get(1))?;
                if g.scope == Scope::Session && g.session_ended_unix_ms.is_none() {
                    g.session_ended_unix_ms = Some(now_ms);
                    put_grant(&tx, &g, false).await?;
                    marked += 1;
                }
            }
            marked
        })
    }

    pub fn resolve(
        &self,
        id: u64,
        how: Resolution,
        now_ms: i64,
    ) -> Result<Result<Resolved, Refusal>, StoreError> {
        let origin = self.inner.origin;
        in_tx!(self, "resolve", |tx| {
            match request_in(&tx, id, true).await? {
                None => Err(Refusal::NotFound),
                Some(req) if req.state != State::Pending => Err(Refusal::NotPending(req.state)),
                Some(mut req) => {
                    let grant = match &how {
                        Resolution::Approve { grant, .. } => {
                            let row = tx
                                .query_one("SELECT nextval('approver_grant_ids')", &[])
                                .await
                                .map_err(|e| db_err("grant id", e))?;
                            let mut g = (**grant).clone();
                            g.id = id_of(row.get(0))?;
                            g.request_id = id;
                            g.host = req.context.host.clone();
                            put_grant(&tx, &g, true).await?;
                            Some(g)
                        }
                        _ => None,
                    };
                    let decision = decision_for(how, &req, grant.as_ref(), now_ms);
                    req.state = decision.state;
                    req.decision = Some(decision);
                    put_request(&tx, &req).await?;
                    let host = req.context.host.clone();
                    let kind = UpdateKind::Decision { request_id: id };
                    let seq = append_update(&tx, &host, req.host_request_id, kind).await?;
                    let change = Fanout::Resolved { id, host, seq };
                    announce(&tx, origin, change).await?;
                    Ok(Resolved {
                        request: req,
                        grant,
                        update_seq: seq,
                    })
                }
            }
        })
    }

    pub fn add_approval(
        &self,
        id: u64,
        approval: ApprovalRec,
    ) -> Result<Result<(RequestRec, bool), Refusal>, StoreError> {
        in_tx!(self, "approval", |tx| {
            match request_in(&tx, id, true).await? {
                None => Err(Refusal::NotFound),
                Some(req) if req.state != State::Pending => Err(Refusal::NotPending(req.state)),
                Some(req)
                    if req.approvals.iter().any(|a| {
                        a.by == approval.by || a.counted_as() == approval.counted_as()
                    }) =>
                {
                    Ok((req, false))
                }
                Some(mut req) => {
                    req.approvals.push(approval);
                    put_request(&tx, &req).await?;
                    Ok((req, true))
                }
            }
        })
    }

    pub fn revoke(
        &self,
        id: u64,
        by: &str,
        now_ms: i64,
    ) -> Result<Result<(GrantRec, u64), Refusal>, StoreError> {
        let (origin, by) = (self.inner.origin, by.to_owned());
        in_tx!(self, "revoke", |tx| {
            let row = tx
                .query_opt(
                    "SELECT rec FROM approver_grants WHERE id = $1 FOR UPDATE",
                    &[&bits(id)],
                )
                .await
                .map_err(|e| db_err("revoke", e))?;
            let found: Option<GrantRec> = row
                .map(|r| decode("approver_grants", id, r.get::<_, &[u8]>(0)))
                .transpose()?;
            match found {
                None => Err(Refusal::NotFound),
                Some(g) if !g.is_live(now_ms) => Err(Refusal::GrantNotLive {
                    revoked: g.revoked_unix_ms.is_some(),
                }),
                Some(mut g) => {
                    g.revoked_unix_ms = Some(now_ms);
                    g.revoked_by = Some(by);
                    put_grant(&tx, &g, false).await?;
                    let hid = request_in(&tx, g.request_id, false)
                        .await?
                        .map_or(0, |r| r.host_request_id);
                    let kind = UpdateKind::Revoked { grant_id: id };
                    let seq = append_update(&tx, &g.host, hid, kind).await?;
                    let change = Fanout::Revoked {
                        host: g.host.clone(),
                        seq,
                    };
                    announce(&tx, origin, change).await?;
                    Ok((g, seq))
                }
            }
        })
    }

    pub fn updates_after(
        &self,
        host: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRec>, StoreError> {
        // Seqs are positive bigints: nothing follows one beyond their range.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let host = host.to_owned();
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT seq, rec FROM approver_updates WHERE host = $1 AND seq > $2
                     ORDER BY seq LIMIT $3",
                    &[&host, &after, &limit],
                )
                .await
                .map_err(|e| db_err("updates", e))?;
            rows.iter()
                .map(|r| decode("approver_updates", id_of(r.get(0))?, r.get::<_, &[u8]>(1)))
                .collect()
        })
    }

    pub fn last_update_seq(&self, host: &str) -> Result<u64, StoreError> {
        let host = host.to_owned();
        on_conn!(self, |c| {
            let row = c
                .query_opt(
                    "SELECT last_seq FROM approver_host_seqs WHERE host = $1",
                    &[&host],
                )
                .await
                .map_err(|e| db_err("last seq", e))?;
            row.map_or(Ok(0), |r| id_of(r.get(0)))
        })
    }

    /// See `RedbStore::note_report`.
    pub fn note_report(&self, host: &str, host_seq: u64, now_ms: i64) -> Result<bool, StoreError> {
        let host = host.to_owned();
        on_conn!(self, |c| {
            let n = c
                .execute(
                    "INSERT INTO approver_reports (host, host_seq, unix_ms) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&host, &bits(host_seq), &now_ms],
                )
                .await
                .map_err(|e| db_err("report", e))?;
            Ok(n == 1)
        })
    }

    pub fn forget_report(&self, host: &str, host_seq: u64) -> Result<(), StoreError> {
        let host = host.to_owned();
        on_conn!(self, |c| {
            c.execute(
                "DELETE FROM approver_reports WHERE host = $1 AND host_seq = $2",
                &[&host, &bits(host_seq)],
            )
            .await
            .map_err(|e| db_err("report", e))?;
            Ok(())
        })
    }

    /// Records `key` as `host`'s attestation key (what its `Updates` subscription presented
    /// to one replica), for every replica.
    pub fn set_host_key(&self, host: &str, key: &[u8]) -> Result<(), StoreError> {
        let (host, key) = (host.to_owned(), key.to_vec());
        let now = crate::os::clock::now_ms();
        on_conn!(self, |c| {
            c.execute(
                "INSERT INTO approver_host_keys (host, key, updated_unix_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (host) DO UPDATE SET key = $2, updated_unix_ms = $3
                 WHERE approver_host_keys.key <> $2",
                &[&host, &key, &now],
            )
            .await
            .map_err(|e| db_err("host key", e))?;
            Ok(())
        })
    }

    /// Records that `host`'s attestation `nonce` (valid until `expires_unix_ms`) was used;
    /// false when some replica recorded it before (a replay). Expired nonces are removed
    /// first (their attestations fail verification anyway).
    pub fn claim_nonce(
        &self,
        host: &str,
        nonce: &str,
        expires_unix_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (host, nonce) = (host.to_owned(), nonce.to_owned());
        on_conn!(self, |c| {
            c.execute(
                "DELETE FROM approver_attestation_nonces WHERE expires_unix_ms <= $1",
                &[&now_ms],
            )
            .await
            .map_err(|e| db_err("attestation nonces", e))?;
            let n = c
                .execute(
                    "INSERT INTO approver_attestation_nonces (host, nonce, expires_unix_ms)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&host, &nonce, &expires_unix_ms],
                )
                .await
                .map_err(|e| db_err("attestation nonces", e))?;
            Ok(n == 1)
        })
    }

    /// `host`'s attestation key, as the replica it last subscribed to recorded it.
    pub fn host_key(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let host = host.to_owned();
        on_conn!(self, |c| {
            let row = c
                .query_opt(
                    "SELECT key FROM approver_host_keys WHERE host = $1",
                    &[&host],
                )
                .await
                .map_err(|e| db_err("host key", e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Every host that has an update log with its last seq (for tests and checks).
    pub fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT host, last_seq FROM approver_host_seqs ORDER BY host",
                    &[],
                )
                .await
                .map_err(|e| db_err("hosts", e))?;
            rows.iter()
                .map(|r| Ok((r.get::<_, String>(0), id_of(r.get(1))?)))
                .collect()
        })
    }
}
