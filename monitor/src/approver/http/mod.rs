//! The service's HTTP listener (`[http]` in `approver.toml`): the web approval page
//! ([`super::web`]), chat callbacks, and `GET /healthz`.
//!
//! [`router`] merges each feature's routes; [`start`] binds the listener (TLS from the
//! service's `[tls]` cert and key, or plaintext on loopback) and serves until the service
//! stops. Every response carries the security headers of [`security_headers`].
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::ApproverError;
use super::addr::Address;
use super::config::ServiceConfig;
use super::service::Shared;

pub mod config;
pub mod conn;
pub mod limits;
mod tls;

pub use conn::{LocalEnd, Peer};

/// Every route of the HTTP listener: `/healthz` and each feature's routes. Features add
/// theirs here (one `.merge(...)` line each).
pub fn router(shared: Arc<Shared>, cfg: &ServiceConfig) -> Result<Router, ApproverError> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(super::web::routes(Arc::clone(&shared), cfg)?)
        .merge(super::sinks::slack::interactive::routes(Arc::clone(
            &shared,
        )));
    Ok(router
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::Limits::default().max_body_bytes,
        ))
        .layer(axum::middleware::map_response(security_headers)))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Headers on every response: no framing, no sniffing, no referrer (action links carry
/// their token in the URL), nothing cached, and a Content-Security-Policy that allows
/// scripts and styles from this origin only (no inline script anywhere).
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    res
}

/// The running HTTP listener: its address and task (stopped with the service's stop).
pub struct HttpListener {
    pub address: SocketAddr,
    pub tls: bool,
}

/// Binds `[http] listen` of `cfg` (when set) and spawns its accept loop into `tasks`; it
/// ends when `stop` becomes true, closing its connections.
pub async fn start(
    cfg: &ServiceConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), ApproverError>>,
) -> Result<Option<HttpListener>, ApproverError> {
    let Some(listen) = &cfg.http.listen else {
        return Ok(None);
    };
    let addr = Address::parse(listen).map_err(|e| ApproverError::Config(e.0))?;
    let (sa, acceptor) = match &addr {
        Address::Plain(sa) => (*sa, None),
        Address::Tls { host, port } => {
            let ip = host.parse().map_err(|_| {
                ApproverError::Config(format!("http.listen: listen on an IP address, not {host}"))
            })?;
            (SocketAddr::new(ip, *port), Some(tls::acceptor(&cfg.tls)?))
        }
        Address::Unix(_) => {
            return Err(ApproverError::Config(
                "http.listen: the HTTP listener is TCP".to_owned(),
            ));
        }
    };
    let router = router(shared, cfg)?;
    let listener = TcpListener::bind(sa)
        .await
        .map_err(|source| ApproverError::Io {
            action: "bind",
            path: PathBuf::from(listen),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| ApproverError::Io {
        action: "inspect",
        path: PathBuf::from(listen),
        source,
    })?;
    let tls = acceptor.is_some();
    tracing::info!(address = %address, tls, "approval service HTTP listening");
    tasks.spawn(serve(
        listener,
        acceptor,
        router,
        stop,
        limits::Limits::default(),
    ));
    Ok(Some(HttpListener { address, tls }))
}

/// Accepts connections until `stop`; each is served by hyper (HTTP/1.1) in its own task,
/// all ended on stop (event streams never end by themselves). At most
/// `limits.max_connections` at once (more are closed when accepted); each has a header
/// read and an idle timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    limits: limits::Limits,
) -> Result<(), ApproverError> {
    let mut conns = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            _ = stop.wait_for(|s| *s) => None,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "approval HTTP: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Not a warning each: under a flood that would flood the log too.
            tracing::debug!(peer = %peer, max = limits.max_connections, "approval HTTP: too many connections, one refused");
            drop(tcp);
            continue;
        };
        let local = tcp.local_addr().unwrap_or(peer);
        let svc = router
            .clone()
            .layer(axum::Extension(Peer(peer)))
            .layer(axum::Extension(LocalEnd(local)));
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(32);
            let tcp = limits::Idle::new(tcp, limits.idle_timeout);
            let r = match acceptor {
                Some(a) => {
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, a.accept(tcp)).await {
                        Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %peer, error = %e, "approval HTTP: TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => builder.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "approval HTTP connection ended");
            }
        });
    }
    conns.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
