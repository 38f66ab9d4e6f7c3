//! The HTTP listener of `[metrics] listen`: `GET /metrics` only, plaintext HTTP/1.1, a few
//! connections at once, each with a header timeout and a lifetime (a scraper reconnects).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Exporter;

/// Connections served at once; more are closed as soon as accepted.
const MAX_CONNECTIONS: usize = 16;
/// Longest time to receive a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen = \"{address}\": cannot listen: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// The running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct Endpoint {
    /// The bound address (port 0 resolved).
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` and serves `exporter` on it until the returned [`Endpoint`] is dropped.
pub async fn start(address: SocketAddr, exporter: Arc<Exporter>) -> Result<Endpoint, BindError> {
    let fail = |source| BindError { address, source };
    let listener = TcpListener::bind(address).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(address = %bound, "the metrics endpoint is reachable from other hosts (plaintext, no authentication: counters only)");
    }
    tracing::info!(address = %bound, "metrics endpoint listening (GET /metrics)");
    let task = tokio::spawn(accept_loop(listener, exporter));
    Ok(Endpoint {
        address: bound,
        task,
    })
}

/// Accepts until aborted; the connections are in `conns`, so aborting this task (dropping
/// the [`Endpoint`]) ends them too.
async fn accept_loop(listener: TcpListener, exporter: Arc<Exporter>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(peer = %peer, "metrics endpoint: too many connections, one refused");
            continue;
        };
        let exporter = Arc::clone(&exporter);
        conns.spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let exporter = Arc::clone(&exporter);
                async move { Ok::<_, Infallible>(answer(&exporter, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            // A connection past its lifetime is closed (the scraper reconnects).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(peer = %peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer(exporter: &Exporter, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let openmetrics = req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("application/openmetrics-text"))
    });
    match exporter.encode(openmetrics) {
        Ok(text) => {
            let mut res = Response::new(Full::new(Bytes::from(text)));
            let ct = if openmetrics { OPENMETRICS } else { TEXT };
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            res
        }
        Err(_) => {
            tracing::warn!("metrics endpoint: encoding the registry failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
