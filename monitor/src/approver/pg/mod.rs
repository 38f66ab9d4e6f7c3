//! The approval service's PostgreSQL backend (`store = "postgres://..."` in `approver.toml`),
//! for several replicas of the service on one database.
//!
//! Same calls and the same meaning as the embedded store ([`super::store::RedbStore`]),
//! behind [`super::backend::ApprovalStore`]:
//! - every state change is one transaction, committed (PostgreSQL's default
//!   `synchronous_commit = on`: on disk, or on the synchronous standby) before the call
//!   returns, so an acknowledged request or decision is never lost;
//! - request and grant ids come from database sequences, and a host's update sequence from a
//!   per-host counter row that the allocating transaction holds locked until it commits: two
//!   replicas never hand out the same id or seq, and a host's log has no holes;
//! - a request is resolved under `SELECT ... FOR UPDATE`: of two replicas deciding (or
//!   expiring) it at once, one wins and the other sees it no longer pending;
//! - every change is announced on the channel [`CHANNEL`] with `pg_notify` in its own
//!   transaction (PostgreSQL delivers it at commit, never for a rolled-back change):
//!   each replica `LISTEN`s ([`listen`]) and hands the others' decisions to its connected
//!   hosts' streams.
//!
//! The schema is created and migrated at start ([`schema`]); the calls are blocking, like
//! the embedded store's (async callers run them on the blocking pool): they run on a small
//! runtime of their own, so that they can be called from anywhere.
pub mod cluster;
mod listen;
mod ops;
pub mod schema;
#[cfg(test)]
mod tests;
pub mod tls;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::ClientConfig;

use crate::store::StoreError;

pub use listen::Fanout;

/// The `LISTEN`/`NOTIFY` channel of the service's changes.
pub const CHANNEL: &str = "confgate_approver";

/// Connections kept by one replica (each store call holds one for its transaction).
const POOL_SIZE: usize = 16;

/// Longest wait for a connection (new or from the pool) before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `store` names a PostgreSQL database rather than a redb file.
pub fn is_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// `url` with its password replaced by `***`, for logs and `check-config`.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// The client library's configuration and the TLS client configuration (`None`: plain
/// connections) for `url`, or why it cannot be used.
fn parse(url: &str) -> Result<(tokio_postgres::Config, Option<ClientConfig>), String> {
    let (rest, files) = tls::split(url)?;
    let config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host (give one, or host=/run/postgresql for the socket)".to_owned());
    }
    let tls = tls::client_config(&files)?;
    if tls.is_none() && config.get_ssl_mode() == SslMode::Require {
        return Err(
            "sslmode=require needs sslrootcert=/path/to/ca.pem: the server's certificate is \
             verified against it (and its name or address), never trusted blindly"
                .to_owned(),
        );
    }
    Ok((config, tls))
}

/// Why `url` cannot be used, or `None` (for the configuration check).
pub fn url_problem(url: &str) -> Option<String> {
    parse(url).err()
}

/// The service's state in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Runs the connections and the calls; shut down in the background when dropped
    /// (dropping a runtime may happen on an async thread).
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    /// TLS to the server (`sslrootcert` given), for the listening connection too.
    tls: Option<ClientConfig>,
    /// Tells this replica's own notifications from the others'.
    origin: u64,
    redacted: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.redacted)
            .finish_non_exhaustive()
    }
}

pub(crate) fn pg_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(format!("{what}: {e}"))
}

/// `e` and its causes, joined (the pool's and the client's messages alone leave out why a
/// connection failed).
pub(crate) fn chain_err(what: &str, e: &(dyn std::error::Error + 'static)) -> StoreError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    pg_err(what, text)
}

/// A database error with PostgreSQL's own message (the client's `Display` says only
/// "db error").
pub(crate) fn db_err(what: &str, e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => pg_err(what, format!("{} ({})", d.message(), d.code().code())),
        None => chain_err(what, &e),
    }
}

impl PgStore {
    /// Connects to `url`, applies the schema's migrations ([`schema::migrate`]) and keeps a
    /// pool of connections. Fails when the database cannot be reached or its schema is
    /// newer than this build knows.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let (mut config, tls) = parse(url).map_err(|e| pg_err(&redacted(url), e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("confgate-approver");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("confgate-pg")
            .enable_all()
            .build()
            .map_err(|e| pg_err("runtime", e))?;
        let handle = rt.handle().clone();
        let mc = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(c) => {
                Manager::from_config(config.clone(), MakeRustlsConnect::new(c.clone()), mc())
            }
            None => Manager::from_config(config.clone(), NoTls, mc()),
        };
        let pool = {
            let _guard = handle.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(CONNECT_TIMEOUT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| pg_err("pool", e))?
        };
        let store = PgStore {
            inner: Arc::new(Inner {
                rt: Some(rt),
                handle,
                pool,
                config,
                tls,
                origin: fastrand::u64(1..),
                redacted: redacted(url),
            }),
        };
        let pool = store.inner.pool.clone();
        let url = store.inner.redacted.clone();
        store
            .run(async move { schema::migrate(&pool).await })
            .map_err(|e| match e {
                StoreError::Postgres(m) => StoreError::Postgres(format!("{url}: {m}")),
                other => other,
            })?;
        Ok(store)
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.inner.redacted
    }

    /// Runs `fut` on the store's runtime and waits for it (from any thread).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(pg_err("call", "the database task ended without an answer")))
    }

    fn pool(&self) -> Pool {
        self.inner.pool.clone()
    }

    /// Starts listening for the changes every replica commits (this one's own included
    /// only with `own`); see [`listen`].
    pub fn listen(&self, own: bool) -> tokio::sync::mpsc::Receiver<Fanout> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let origin = if own { 0 } else { self.inner.origin };
        self.inner.handle.spawn(listen::run(
            self.inner.config.clone(),
            self.inner.tls.clone(),
            origin,
            tx,
            self.inner.redacted.clone(),
        ));
        rx
    }
}
