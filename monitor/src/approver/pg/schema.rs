//! The PostgreSQL schema and its migrations: applied at start, in order, each once, in one
//! transaction that holds an advisory lock (two replicas starting together migrate once);
//! `confgate_migrations` records which versions are applied.
//!
//! Records are kept as they are in the embedded store (the JSON of `RequestRec`,
//! `GrantRec`, `UpdateRec`, in `bytea`: hosts' text may hold what `jsonb` refuses, such as
//! `\u0000`), beside the columns the queries need. Host-given 64-bit numbers
//! (`host_request_id`, `session_id`) are stored as the `bigint` with the same bits.
use deadpool_postgres::Pool;

use super::{chain_err, db_err, pg_err};
use crate::os::clock::now_ms;
use crate::store::StoreError;

/// Key of the advisory lock held while migrating ("confgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6e66_6761_7465;

/// One migration: its version (1, 2, ...), what it does, and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Append only: an applied one is never changed.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "requests, grants, per-host update logs, reports",
        sql: "
CREATE TABLE approver_requests (
    id BIGINT PRIMARY KEY,
    host TEXT NOT NULL,
    host_request_id BIGINT NOT NULL,
    session_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    deadline_unix_ms BIGINT NOT NULL,
    rec BYTEA NOT NULL,
    UNIQUE (host, host_request_id)
);
CREATE INDEX approver_requests_pending ON approver_requests (id) WHERE state = 'pending';
CREATE SEQUENCE approver_request_ids;
CREATE TABLE approver_grants (
    id BIGINT PRIMARY KEY,
    request_id BIGINT NOT NULL,
    host TEXT NOT NULL,
    session_id BIGINT NOT NULL,
    rec BYTEA NOT NULL
);
CREATE INDEX approver_grants_session ON approver_grants (host, session_id);
CREATE SEQUENCE approver_grant_ids;
CREATE TABLE approver_host_seqs (
    host TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE approver_updates (
    host TEXT NOT NULL,
    seq BIGINT NOT NULL,
    rec BYTEA NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE TABLE approver_reports (
    host TEXT NOT NULL,
    host_seq BIGINT NOT NULL,
    unix_ms BIGINT NOT NULL,
    PRIMARY KEY (host, host_seq)
);
",
    },
    Migration {
        version: 2,
        name: "hosts' attestation keys, shared by the replicas",
        sql: "
CREATE TABLE approver_host_keys (
    host TEXT PRIMARY KEY,
    key BYTEA NOT NULL,
    updated_unix_ms BIGINT NOT NULL
);
",
    },
    Migration {
        version: 3,
        name: "attestation nonces used, shared by the replicas (an attestation is used once)",
        sql: "
CREATE TABLE approver_attestation_nonces (
    host TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (host, nonce)
);
",
    },
];

/// The newest schema version this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations `pool`'s database lacks; refuses a database whose schema is
/// newer than this build (a newer replica migrated it: run the same version everywhere).
pub async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(|e| chain_err("connect", &e))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_err("migrate", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db_err("migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS confgate_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_unix_ms BIGINT NOT NULL
        )",
    )
    .await
    .map_err(|e| db_err("migrations table", e))?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM confgate_migrations",
            &[],
        )
        .await
        .map_err(|e| db_err("schema version", e))?;
    let applied: i32 = row.get(0);
    if applied > latest() {
        return Err(pg_err(
            "schema",
            format!(
                "the database has schema version {applied}, this confgate understands up to {}; \
                 run the same confgate version on every replica",
                latest()
            ),
        ));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| db_err(&format!("migration {}", m.version), e))?;
        tx.execute(
            "INSERT INTO confgate_migrations (version, name, applied_unix_ms) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &now_ms()],
        )
        .await
        .map_err(|e| db_err("migration record", e))?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "approver store: migration applied"
        );
    }
    tx.commit().await.map_err(|e| db_err("migration commit", e))
}
