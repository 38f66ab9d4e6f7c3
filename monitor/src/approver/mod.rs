//! The approval service of confgate (`confgate approver serve`, or in-process in the daemon
//! in local mode) and its client transport.
//!
//! - [`addr`]: the address forms (`unix:/path`, `https://host:port`, loopback `http://`);
//!   they are written in configuration files, so the module is `config::addr`, re-exported
//!   here.
//! - [`client`]: [`client::connect`] with a [`client::ClientConfig`] (declared in
//!   `config::client`) for the daemon's uplink and the approvals CLI.
//! - [`config`]: the service's settings (`approver.toml`).
//! - [`identity`]: who is calling, from the transport only (certificate, token, peer
//!   credentials); [`tls`]: server TLS and client-certificate identities.
//! - [`store`]: requests, decisions, grants and per-host update logs in redb.
//! - [`service`]: the gRPC service, the deadline sweeper and the streams; [`wire`]: wire
//!   conversions and input checks; [`audit`]: the service ledger.
//! - [`ca`]: `confgate approver init-ca`.
//! - [`http`]: the HTTP listener (`[http]`: the web page, chat callbacks, `/healthz`);
//!   [`web`]: the web approval page, OpenID Connect sign-in, signed action links.
//!
//! [`Server::start`] / [`serve`] run the service on every configured listener.
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::api::RpcError;
use crate::config::ConfigError;
use crate::ledger::LedgerError;
use crate::store::StoreError;
use addr::Address;
use client::transport_message;
use confgate_proto::v1::approver_server::ApproverServer;
use config::ServiceConfig;
use service::{ApproverService, Limits, Shared};

pub use crate::config::addr;
pub mod attest;
pub mod audit;
pub mod backend;
pub mod burst;
pub mod ca;
pub mod client;
pub mod config;
pub mod decider;
pub mod http;
pub mod identity;
pub mod outbox;
pub mod pg;
pub mod quorum;
pub mod service;
pub mod session_set;
pub mod sinks;
pub mod store;
pub mod tls;
pub mod web;
pub mod wire;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

/// What a co-located service (the daemon's, in local mode) can learn about a Unix-socket
/// caller: its host and the agent session its process belongs to.
pub trait SessionOracle: Send + Sync + 'static {
    /// This host's name (as hosts are named in requests).
    fn host(&self) -> String;
    /// The agent session `pid` belongs to, 0 for none.
    fn session_of_pid(&self, pid: u32) -> u64;
    /// The public half of the daemon's decider attestation key, which its uplink presents
    /// to the approval service ([`attest`]); `None` when it has none.
    fn attestation_key(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Errors of starting and running the service, and of `init-ca`.
#[derive(Debug, thiserror::Error)]
pub enum ApproverError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    ConfigFile(#[from] ConfigError),
    #[error("approver store: {0}")]
    Store(#[from] StoreError),
    #[error("approver ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] RpcError),
    #[error("gRPC on {addr}: {message}")]
    Transport { addr: String, message: String },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("certificates: {0}")]
    Ca(String),
}

/// The running service: its listeners, sweeper and shared state.
pub struct Server {
    shared: Arc<Shared>,
    addresses: Vec<Address>,
    listeners: JoinSet<Result<(), ApproverError>>,
    sweeper: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// Unix sockets bound, with (dev, ino) to remove only our own on stop.
    sockets: Vec<(PathBuf, u64, u64)>,
    /// The HTTP listener (`[http]`), when configured.
    http: Option<http::HttpListener>,
    /// The Prometheus endpoint (`[metrics]`), when configured; stops when dropped.
    metrics: Option<crate::prom::server::Endpoint>,
}

impl Server {
    /// Opens the store and ledger, binds every listener of `cfg` and starts serving.
    /// `oracle` (local mode) tells the sessions of Unix-socket callers.
    pub async fn start(
        cfg: ServiceConfig,
        oracle: Option<Arc<dyn SessionOracle>>,
    ) -> Result<Server, ApproverError> {
        cfg.validate()?;
        let admin_gid = match &cfg.admin_group {
            None => None,
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .map_err(|e| ApproverError::Config(format!("admin group {name}: {e}")))?
                    .ok_or_else(|| {
                        ApproverError::Config(format!("admin group {name} does not exist"))
                    })?
                    .gid
                    .as_raw(),
            ),
        };
        // Notifications are written with the changes they announce (see `outbox`).
        let router = Arc::new(outbox::Router::new(cfg.notify.routes()));
        let store = backend::ApprovalStore::open_location(&cfg.store)?;
        if let Some(raw) = store.raw_store() {
            outbox::skip_ids(raw)?;
        }
        let store = store.with_outbox(Arc::clone(&router) as Arc<dyn store::Announce>);
        let audit = audit::Audit::open(&cfg.ledger)?;
        audit
            .publish_to_nats(&cfg.nats)
            .map_err(|e| ApproverError::Config(format!("[nats]: {e:#}")))?;
        // A damaged store was moved aside and replaced while opening: say so in the ledger.
        if let Some(dir) = cfg.store_file().and_then(|f| f.parent()) {
            crate::state::ledger_notes(dir, |kind, body| audit.append(kind, body));
        }
        let auth = identity::Authenticator::new(
            cfg.token_digests(),
            admin_gid,
            oracle,
            cfg.workstation_approvers.clone(),
        );
        let ms = |s: u64| i64::try_from(s).unwrap_or(i64::MAX / 1000) * 1000;
        let limits = Limits {
            max_ttl_ms: ms(cfg.max_ttl_secs),
            default_lifetime_ms: ms(cfg.default_lifetime_secs),
        };
        let shared = Shared::new(store, auth, audit, limits)?;
        shared.set_people(quorum::People::from_config(&cfg));
        outbox::sender::start(&shared, &cfg.notify, router, teams_links(&cfg)?)
            .map_err(|e| ApproverError::Config(format!("notify: {e}")))?;
        // Several replicas on PostgreSQL: the others' changes reach this one's streams.
        if let Some(rx) = shared.store.fanout() {
            tokio::spawn(Arc::clone(&shared).fanout(rx));
        }
        let (stop, _) = watch::channel(false);
        let mut server = Server {
            sweeper: tokio::spawn(Arc::clone(&shared).sweeper()),
            shared,
            addresses: Vec::new(),
            listeners: JoinSet::new(),
            stop,
            sockets: Vec::new(),
            http: None,
            metrics: None,
        };
        for l in &cfg.listen {
            let addr = Address::parse(l).map_err(|e| ApproverError::Config(e.0))?;
            if let Err(e) = server.listen(&cfg, addr).await {
                // Already failing: the stop's own problems are logged there.
                let _ = server.stop_now().await;
                return Err(e);
            }
        }
        let stop = server.stop.subscribe();
        match http::start(
            &cfg,
            Arc::clone(&server.shared),
            stop,
            &mut server.listeners,
        )
        .await
        {
            Ok(h) => server.http = h,
            Err(e) => {
                let _ = server.stop_now().await;
                return Err(e);
            }
        }
        if let Some(addr) = cfg.metrics.address() {
            let shared = Arc::clone(&server.shared);
            let exporter = crate::prom::Exporter::new(
                crate::prom::Service::Approver,
                Arc::new(move || {
                    shared
                        .stats()
                        .into_iter()
                        .map(|(n, v)| (n.to_owned(), v))
                        .collect()
                }),
            );
            match crate::prom::server::start(addr, Arc::new(exporter)).await {
                Ok(m) => server.metrics = Some(m),
                Err(e) => {
                    let _ = server.stop_now().await;
                    return Err(ApproverError::Config(e.to_string()));
                }
            }
        }
        Ok(server)
    }

    /// The Prometheus endpoint's bound address (port 0 resolved), when `[metrics]` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.address)
    }

    async fn listen(&mut self, cfg: &ServiceConfig, addr: Address) -> Result<(), ApproverError> {
        // Reflection in both protocol versions (grpcurl speaks v1, Python's grpc_reflection
        // v1alpha), listing only what is served here, for authenticated callers only.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(confgate_proto::FILE_DESCRIPTOR_SET)
                .with_service_name("confgate.v1.Approver")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let v1 = reflection()
            .build_v1()
            .map_err(|e| ApproverError::Reflection(e.to_string()))?;
        let v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ApproverError::Reflection(e.to_string()))?;
        let auth = |shared: Arc<Shared>| {
            move |req: tonic::Request<()>| {
                shared
                    .auth
                    .identify(&req)
                    .inspect_err(|e| shared.refused("Reflection", e))
                    .map(|_| req)
            }
        };
        let v1 = tonic::service::interceptor::InterceptedService::new(
            v1,
            auth(Arc::clone(&self.shared)),
        );
        let v1alpha = tonic::service::interceptor::InterceptedService::new(
            v1alpha,
            auth(Arc::clone(&self.shared)),
        );
        let svc = ApproverServer::new(ApproverService::new(Arc::clone(&self.shared)));
        // TLS is done here, not by tonic, so that a refused handshake is logged and counted.
        let acceptor = match addr {
            Address::Tls { .. } => Some(tls::acceptor(&cfg.tls)?),
            _ => None,
        };
        let router = tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(v1)
            .add_service(v1alpha);
        let mut stop = self.stop.subscribe();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let io = |action, path: PathBuf, source| ApproverError::Io {
            action,
            path,
            source,
        };
        let (bound, task): (Address, _) = match &addr {
            Address::Unix(path) => {
                crate::api::server::prepare_socket_path(path).await?;
                let listener = UnixListener::bind(path).map_err(|e| io("bind", path.clone(), e))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))
                    .map_err(|e| io("chmod", path.clone(), e))?;
                let meta =
                    std::fs::symlink_metadata(path).map_err(|e| io("stat", path.clone(), e))?;
                self.sockets.push((path.clone(), meta.dev(), meta.ino()));
                let name = addr.to_string();
                let fut = async move {
                    router
                        .serve_with_incoming_shutdown(
                            UnixListenerStream::new(listener)
                                .map(|c| c.map(crate::api::peer::Accepted::new)),
                            shutdown,
                        )
                        .await
                        .map_err(|e| ApproverError::Transport {
                            addr: name,
                            message: transport_message(&e),
                        })
                };
                (addr.clone(), Box::pin(fut) as ListenerFuture)
            }
            Address::Tls { .. } | Address::Plain(_) => {
                let sa = tcp_socket_addr(&addr)?;
                let listener = TcpListener::bind(sa)
                    .await
                    .map_err(|e| io("bind", PathBuf::from(addr.to_string()), e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| io("inspect", PathBuf::from(addr.to_string()), e))?;
                let bound = match &addr {
                    Address::Plain(_) => Address::Plain(local),
                    _ => Address::Tls {
                        host: local.ip().to_string(),
                        port: local.port(),
                    },
                };
                let name = bound.to_string();
                let transport = |e: tonic::transport::Error| ApproverError::Transport {
                    addr: name,
                    message: transport_message(&e),
                };
                let fut: ListenerFuture = match acceptor {
                    Some(acceptor) => {
                        let shared = Arc::clone(&self.shared);
                        let refused: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                            shared
                                .counters
                                .tls_handshakes_refused
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        });
                        let incoming = tls::incoming(listener, acceptor, refused);
                        Box::pin(async move {
                            router
                                .serve_with_incoming_shutdown(incoming, shutdown)
                                .await
                                .map_err(transport)
                        })
                    }
                    None => Box::pin(async move {
                        router
                            .serve_with_incoming_shutdown(
                                TcpListenerStream::new(listener),
                                shutdown,
                            )
                            .await
                            .map_err(transport)
                    }),
                };
                (bound, fut)
            }
        };
        tracing::info!(address = %bound, "approval service listening");
        self.listeners.spawn(task);
        self.addresses.push(bound);
        Ok(())
    }

    /// The addresses served, TCP ports as bound (port 0 resolved).
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The HTTP listener's bound address (port 0 resolved), when `[http]` is configured.
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.address)
    }

    /// The service's counters (`approver_*`), for `confgate stats`. Ledger failures are
    /// `approver_ledger_errors`; the ledger's own counters are left out so that they do
    /// not collide with the daemon's ledger.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.shared.stats()
    }

    /// Records `key` as `host`'s attestation key, as an `Updates` call of that host does.
    #[cfg(test)]
    pub(crate) fn register_host_key(&self, host: &str, key: &[u8]) {
        self.shared.register_host_key(host, key).unwrap();
    }

    /// Waits until a listener stops by itself (an error: listeners only stop when told).
    pub async fn failed(&mut self) -> ApproverError {
        match self.listeners.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => ApproverError::Config("a listener stopped".to_owned()),
            Some(Err(e)) => ApproverError::Config(format!("a listener task failed: {e}")),
            None => std::future::pending().await,
        }
    }

    /// Stops serving: ends the streams, lets calls in flight finish, removes the sockets.
    pub async fn stop(mut self) -> Result<(), ApproverError> {
        self.stop_now().await
    }

    async fn stop_now(&mut self) -> Result<(), ApproverError> {
        self.metrics = None;
        self.shared.stop();
        self.stop.send_replace(true);
        let mut first_err = None;
        while let Some(r) = self.listeners.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "approval listener ended with an error");
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = (&mut self.sweeper).await {
            tracing::warn!(error = %e, "approval sweeper task failed");
        }
        for (path, dev, ino) in self.sockets.drain(..) {
            if let Ok(now) = std::fs::symlink_metadata(&path)
                && (now.dev(), now.ino()) == (dev, ino)
                && let Err(e) = std::fs::remove_file(&path)
            {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove socket");
            }
        }
        tracing::info!("approval service stopped");
        first_err.map_or(Ok(()), Err)
    }
}

/// The signed action links of Teams cards, when Teams sinks and the web page are
/// configured.
fn teams_links(cfg: &ServiceConfig) -> Result<Option<sinks::teams::LinkMaker>, ApproverError> {
    if cfg.notify.teams.is_empty() {
        return Ok(None);
    }
    let Some((key, base)) = web::links::for_service(cfg)? else {
        return Ok(None);
    };
    let key = Arc::new(key);
    Ok(Some(sinks::teams::LinkMaker(Arc::new(
        move |id, who: &str, until| {
            key.url(&base, id, who, until, crate::os::clock::now_ms())
                .ok()
        },
    ))))
}

/// The IP socket address of a TCP listen address.
fn tcp_socket_addr(addr: &Address) -> Result<std::net::SocketAddr, ApproverError> {
    match addr {
        Address::Plain(sa) => Ok(*sa),
        Address::Tls { host, port } => host
            .parse()
            .map(|ip| std::net::SocketAddr::new(ip, *port))
            .map_err(|_| ApproverError::Config(format!("listen on an IP address, not {host}"))),
        Address::Unix(p) => Err(ApproverError::Config(format!(
            "{} is not a TCP address",
            p.display()
        ))),
    }
}

type ListenerFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(), ApproverError>> + Send + 'static>>;

/// Runs the service of `cfg` until `shutdown` completes (or a listener fails). The daemon
/// calls this in local mode with an `oracle`; `confgate approver serve` without one.
pub async fn serve(
    cfg: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send,
    oracle: Option<Arc<dyn SessionOracle>>,
) -> Result<(), ApproverError> {
    let mut server = Server::start(cfg, oracle).await?;
    let failure = tokio::select! {
        _ = shutdown => None,
        e = server.failed() => Some(e),
    };
    let stopped = server.stop().await;
    match failure {
        Some(e) => Err(e),
        None => stopped,
    }
}
