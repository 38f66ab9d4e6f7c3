//! The daemon side of the gRPC API: [`DaemonApi`] (implemented by the daemon) and [`serve`].
//!
//! Identity comes only from the kernel: every call's [`Caller`] is the peer credential
//! (SO_PEERCRED) of its connection, taken when the client connected. Authorization:
//!
//! | call              | who                                                         |
//! |-------------------|-------------------------------------------------------------|
//! | `RegisterSession` | anyone (it puts the caller itself into a session)           |
//! | `ReportSessionExit` | anyone holding the session's exit report key              |
//! | `ListSessions`, `GetStats`, `SubscribeEvents` | [`DaemonApi::is_admin`] callers |
//! | `CallerSession`   | anyone (it describes the caller)                            |
//! | `Attest`          | anyone outside every agent session (kernel session map)     |
//! | `Reload`          | [`DaemonApi::is_admin`] callers outside every agent session |
//! | `Propose`, `GetProposal`, `ListProposals` | anyone (their own proposals)      |
//!
//! The socket's file mode is a second fence, not the authorization.
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{RpcError, pb};
use crate::sessions::{SessionError, SessionInfo, validate_agent, validate_reason};

/// The process at the other end of a connection, as the kernel reported it when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    /// Effective uid of the caller at connect time.
    pub uid: u32,
    /// Effective gid of the caller at connect time.
    pub gid: u32,
    /// When the connection was accepted, in clock ticks since boot (see [`super::peer`]).
    pub accepted_ticks: Option<u64>,
}

/// Errors the daemon returns from [`DaemonApi`] calls; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `INVALID_ARGUMENT`: bad agent name, reason, ...
    #[error("{0}")]
    InvalidArgument(String),
    /// `ALREADY_EXISTS`: the caller is already inside an agent session and may not relabel itself.
    #[error("process {pid} is already in agent session {session}")]
    AlreadyInSession { pid: u32, session: u64 },
    /// `PERMISSION_DENIED`
    #[error("{0}")]
    PermissionDenied(String),
    /// `FAILED_PRECONDITION`: e.g. the caller exited before it could be registered.
    #[error("{0}")]
    FailedPrecondition(String),
    /// `UNAVAILABLE`: e.g. the daemon is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// `INTERNAL`
    #[error("{0}")]
    Internal(String),
    /// `NOT_FOUND`
    #[error("{0}")]
    NotFound(String),
    /// `RESOURCE_EXHAUSTED`: e.g. too many undecided proposals.
    #[error("{0}")]
    ResourceExhausted(String),
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Invalid(m) => ApiError::InvalidArgument(m),
            e @ (SessionError::NotFound(_) | SessionError::Store(_)) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::AlreadyInSession { .. } => Status::already_exists(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::Internal(_) => Status::internal(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),
        }
    }
}

/// What the daemon provides to the API. The RPC layer authenticates callers, enforces the
/// admin check and validates input shape; the daemon enforces everything that needs its
/// state (e.g. refusing a caller that is already in a session with
/// [`ApiError::AlreadyInSession`]).
/// What a registering caller says of its confinement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// It is about to confine itself (`confgate run` without `--no-confine`).
    pub confine: bool,
    /// Its declared scope (`--scope`); empty: none.
    pub scope: Vec<String>,
    /// The key its launcher will report the root process's exit status with
    /// (validated: empty or 16-64 bytes).
    pub exit_report_key: Vec<u8>,
}

#[tonic::async_trait]
pub trait DaemonApi: Send + Sync + 'static {
    /// Puts `caller.pid` into a new wrapper session. `agent` and `reason` have passed
    /// [`validate_agent`] / [`validate_reason`]; `reason` is `None` when empty. `command`
    /// and `cwd` are the caller's claims, informational only; `confine`: the caller is
    /// about to confine itself (see [`crate::sessions::CONFINE_GRACE`]), with its declared
    /// scope.
    async fn register_session(
        &self,
        caller: Caller,
        agent: String,
        reason: Option<String>,
        command: Vec<String>,
        cwd: String,
        confine: Confinement,
    ) -> Result<SessionInfo, ApiError>;
    /// The launcher holding `key` reports how its session's root process ended
    /// (validated): the session id, [`ApiError::NotFound`] when no session awaits `key`.
    async fn report_session_exit(
        &self,
        _key: Vec<u8>,
        _status: crate::sessions::exit::ExitStatus,
    ) -> Result<u64, ApiError> {
        Err(ApiError::Unavailable(
            "this daemon takes no exit reports".into(),
        ))
    }
    /// Sessions by id; ended ones only if `include_ended`.
    fn sessions(&self, include_ended: bool) -> Vec<SessionInfo>;
    /// Named counters, in a stable order.
    fn stats(&self) -> Vec<(String, u64)>;
    /// A new receiver of NDJSON event lines (one event each, no newline).
    fn subscribe(&self) -> broadcast::Receiver<Arc<str>>;
    /// Whether `caller` may read sessions, stats and events (root or the admin group).
    fn is_admin(&self, caller: &Caller) -> bool;
    /// This host's name and the agent session `caller.pid` belongs to (0 = none).
    fn caller_session(&self, caller: &Caller) -> (String, u64);
    /// A signed statement that `caller` (in no agent session, else
    /// [`ApiError::PermissionDenied`]) decides `request_id` as `approve`:
    /// (statement, signature, host). See [`crate::approver::attest`].
    fn attest(
        &self,
        _caller: &Caller,
        _request_id: u64,
        _approve: bool,
    ) -> Result<(Vec<u8>, Vec<u8>, String), ApiError> {
        Err(ApiError::Unavailable(
            "this daemon makes no attestations".into(),
        ))
    }
    /// The approved baseline: `op` is `drift`, `revert` or `accept` (authorized by the
    /// RPC layer as the proto says), `to_seq` a revert's ledger record (0: the baseline);
    /// the answer is JSON.
    async fn baseline(
        &self,
        _caller: Caller,
        _op: String,
        _paths: Vec<Vec<u8>>,
        _note: String,
        _to_seq: u64,
    ) -> Result<String, ApiError> {
        Err(ApiError::Unavailable(
            "this daemon keeps no baseline".into(),
        ))
    }

    /// Re-reads the configuration for `caller` (an admin; refused inside an agent
    /// session): see `daemon::reload`. A refused file is
    /// [`ApiError::FailedPrecondition`] with the loader's line:column message.
    async fn reload(&self, _caller: Caller) -> Result<pb::ReloadResponse, ApiError> {
        Err(ApiError::Unavailable("this daemon cannot reload".into()))
    }

    /// Files a proposed change for `caller` (see `crate::propose`).
    async fn propose(
        &self,
        _caller: Caller,
        _r: pb::ProposeRequest,
    ) -> Result<pb::Proposal, ApiError> {
        Err(ApiError::Unavailable(
            "this daemon takes no proposals".into(),
        ))
    }

    /// One of `caller`'s proposals, waiting at most `wait_ms` for its decision.
    async fn get_proposal(
        &self,
        _caller: Caller,
        _id: u64,
        _wait_ms: u64,
    ) -> Result<pb::Proposal, ApiError> {
        Err(ApiError::Unavailable(
            "this daemon takes no proposals".into(),
        ))
    }

    /// `caller`'s own proposals, newest first.
    async fn list_proposals(&self, _caller: Caller) -> Result<Vec<pb::Proposal>, ApiError> {
        Err(ApiError::Unavailable(
            "this daemon takes no proposals".into(),
        ))
    }
}

/// Events that `SubscribeEvents` streams skipped because their subscriber fell behind, since
/// the process started (all subscribers). For the daemon's stats.
pub fn subscriber_lagged_total() -> u64 {
    SUBSCRIBER_LAGGED.load(Ordering::Relaxed)
}

static SUBSCRIBER_LAGGED: AtomicU64 = AtomicU64::new(0);

/// Serves the API on the Unix socket `socket` until `shutdown` completes.
///
/// Creates the socket's parent directory (mode 0755) if missing. A stale socket file (nobody
/// accepting) is replaced; a live one makes this fail with [`RpcError::SocketInUse`], and a
/// non-socket file with [`RpcError::NotASocket`]. The socket is chmod'ed to `mode` (e.g.
/// 0o666 so every user can register sessions; the per-call checks do the authorization) and
/// removed again on shutdown.
pub async fn serve(
    socket: &Path,
    mode: u32,
    api: Arc<dyn DaemonApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RpcError> {
    bind(socket, mode).await?.serve(api, shutdown).await
}

/// The API's socket, bound and listening (connections queue until [`Bound::serve`]).
pub struct Bound {
    listener: UnixListener,
    socket: std::path::PathBuf,
    bound: std::fs::Metadata,
}

/// Binds the API's socket as [`serve`] does, so that a caller can tell others (systemd's
/// `READY=1`) that it accepts connections before serving them.
pub async fn bind(socket: &Path, mode: u32) -> Result<Bound, RpcError> {
    prepare_socket_path(socket).await?;
    let io = |action, source| RpcError::Io {
        action,
        path: socket.to_owned(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", e))?;
    let bound = std::fs::symlink_metadata(socket).map_err(|e| io("stat", e))?;
    tracing::info!(socket = %socket.display(), mode = format_args!("{mode:o}"), "API listening");
    Ok(Bound {
        listener,
        socket: socket.to_owned(),
        bound,
    })
}

impl Bound {
    /// Serves the API until `shutdown` completes, then removes the socket (if it is still
    /// the one bound).
    pub async fn serve(
        self,
        api: Arc<dyn DaemonApi>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RpcError> {
        let Bound {
            listener,
            socket,
            bound,
        } = self;
        let socket = socket.as_path();

        // Both reflection versions, listing only what this socket serves.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(confgate_proto::FILE_DESCRIPTOR_SET)
                .with_service_name("confgate.v1.Daemon")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        };
        let v1 = reflection()
            .build_v1()
            .map_err(|e| RpcError::Reflection(e.to_string()))?;
        let v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| RpcError::Reflection(e.to_string()))?;
        let result = tonic::transport::Server::builder()
            .add_service(pb::daemon_server::DaemonServer::new(DaemonService { api }))
            .add_service(v1)
            .add_service(v1alpha)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener).map(|c| c.map(super::peer::Accepted::new)),
                shutdown,
            )
            .await;

        // Remove the socket only if it is still the one we bound.
        if let Ok(now) = std::fs::symlink_metadata(socket)
            && (now.dev(), now.ino()) == (bound.dev(), bound.ino())
            && let Err(e) = std::fs::remove_file(socket)
        {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot remove socket");
        }
        result.map_err(RpcError::from)
    }
}

/// Makes `socket` bindable: creates its parent directory (0755), removes a stale socket,
/// refuses a live one or a non-socket file.
pub(crate) async fn prepare_socket_path(socket: &Path) -> Result<(), RpcError> {
    let io = |action, path: &Path, source| RpcError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| io("create directory", parent, e))?;
    }
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("stat", socket, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(RpcError::NotASocket {
            socket: socket.to_owned(),
        });
    }
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => Err(RpcError::SocketInUse {
            socket: socket.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "removing stale socket");
            std::fs::remove_file(socket).map_err(|e| io("remove stale socket", socket, e))
        }
        Err(e) => Err(io("probe existing socket", socket, e)),
    }
}

/// The caller of a request, from the connection's peer credentials.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let info = req.extensions().get::<super::peer::PeerInfo>();
    let cred = info
        .and_then(|info| info.uds.peer_cred)
        .ok_or_else(|| Status::unauthenticated("no peer credentials on this connection"))?;
    // pid 0: the caller is in a pid namespace where the daemon cannot name it.
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::unauthenticated("the caller's pid is not visible to the daemon"))?;
    Ok(Caller {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        accepted_ticks: info.and_then(|i| i.accepted_ticks),
    })
}

struct DaemonService {
    api: Arc<dyn DaemonApi>,
}

impl DaemonService {
    fn admin<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = caller(req)?;
        if self.api.is_admin(&caller) {
            Ok(caller)
        } else {
            tracing::info!(
                pid = caller.pid,
                uid = caller.uid,
                call = what,
                "permission denied"
            );
            Err(Status::permission_denied(format!(
                "{what} needs root or membership in confgate's admin group (uid {} is neither)",
                caller.uid
            )))
        }
    }
}

/// Most paths in one `Baseline` call.
const MAX_BASELINE_PATHS: usize = 4096;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::EventRecord, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::daemon_server::Daemon for DaemonService {
    async fn register_session(
        &self,
        request: Request<pb::RegisterSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        validate_agent(&r.agent).map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate_reason(&r.reason).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reason = (!r.reason.is_empty()).then_some(r.reason);
        tracing::debug!(pid = caller.pid, uid = caller.uid, agent = %r.agent, "RegisterSession");
        let info = self
            .api
            .register_session(
                caller,
                r.agent,
                reason,
                r.command,
                r.cwd,
                Confinement {
                    confine: r.confine,
                    scope: r.scope,
                    exit_report_key: r.exit_report_key,
                },
            )
            .await?;
        Ok(Response::new(pb::SessionInfo::from(&info)))
    }

    async fn report_session_exit(
        &self,
        request: Request<pb::ReportSessionExitRequest>,
    ) -> Result<Response<pb::ReportSessionExitResponse>, Status> {
        use crate::sessions::exit::{ExitStatus, MAX_KEY, MIN_KEY};
        use pb::report_session_exit_request::Status as S;
        let r = request.into_inner();
        if !(MIN_KEY..=MAX_KEY).contains(&r.exit_report_key.len()) {
            return Err(Status::invalid_argument(format!(
                "exit_report_key must be {MIN_KEY} to {MAX_KEY} bytes"
            )));
        }
        let status = match r.status {
            Some(S::ExitCode(c)) => ExitStatus::Code(c),
            Some(S::Signal(signal)) => ExitStatus::Signal {
                signal,
                core_dumped: r.core_dumped,
            },
            None => {
                return Err(Status::invalid_argument(
                    "one of exit_code and signal is needed",
                ));
            }
        }
        .validate()
        .map_err(Status::invalid_argument)?;
        let session_id = self
            .api
            .report_session_exit(r.exit_report_key, status)
            .await?;
        Ok(Response::new(pb::ReportSessionExitResponse { session_id }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.admin(&request, "ListSessions")?;
        let sessions = self.api.sessions(request.get_ref().include_ended);
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(pb::SessionInfo::from).collect(),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        self.admin(&request, "GetStats")?;
        let counters = self
            .api
            .stats()
            .into_iter()
            .map(|(name, value)| pb::Counter { name, value })
            .collect();
        Ok(Response::new(pb::Stats { counters }))
    }

    async fn caller_session(
        &self,
        request: Request<pb::CallerSessionRequest>,
    ) -> Result<Response<pb::CallerSessionResponse>, Status> {
        let caller = caller(&request)?;
        let (host, session_id) = self.api.caller_session(&caller);
        Ok(Response::new(pb::CallerSessionResponse {
            host,
            session_id,
        }))
    }

    async fn attest(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (statement, signature, host) = self.api.attest(&caller, r.request_id, r.approve)?;
        Ok(Response::new(pb::AttestResponse {
            statement,
            signature,
            host,
        }))
    }

    async fn baseline(
        &self,
        request: Request<pb::BaselineRequest>,
    ) -> Result<Response<pb::BaselineResponse>, Status> {
        let op = request.get_ref().op.clone();
        let caller = match op.as_str() {
            "drift" => self.admin(&request, "Baseline drift")?,
            "revert" | "accept" => {
                let c = caller(&request)?;
                if c.uid != 0 {
                    return Err(Status::permission_denied(format!(
                        "baseline {op} needs root (uid {} is not)",
                        c.uid
                    )));
                }
                c
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown baseline operation {:?}",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let r = request.into_inner();
        if r.paths.len() > MAX_BASELINE_PATHS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BASELINE_PATHS} paths per call"
            )));
        }
        for p in &r.paths {
            if p.is_empty() || p.len() > 4096 || p.contains(&0) || p[0] != b'/' {
                return Err(Status::invalid_argument(
                    "paths must be absolute, at most 4096 bytes, without NUL",
                ));
            }
        }
        if r.note.len() > 4096 {
            return Err(Status::invalid_argument(
                "the note is longer than 4096 bytes",
            ));
        }
        if r.to_seq != 0 && op != "revert" {
            return Err(Status::invalid_argument("to_seq is for revert only"));
        }
        let json = self
            .api
            .baseline(caller, op, r.paths, r.note, r.to_seq)
            .await?;
        Ok(Response::new(pb::BaselineResponse { json }))
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let caller = self.admin(&request, "Reload")?;
        Ok(Response::new(self.api.reload(caller).await?))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::Proposal>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        if r.path.is_empty() || r.path.len() > 4096 || r.path.contains(&0) || r.path[0] != b'/' {
            return Err(Status::invalid_argument(
                "the path must be absolute, at most 4096 bytes, without NUL",
            ));
        }
        Ok(Response::new(self.api.propose(caller, r).await?))
    }

    async fn get_proposal(
        &self,
        request: Request<pb::GetProposalRequest>,
    ) -> Result<Response<pb::Proposal>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.api.get_proposal(caller, r.id, r.wait_ms).await?,
        ))
    }

    async fn list_proposals(
        &self,
        request: Request<pb::ListProposalsRequest>,
    ) -> Result<Response<pb::ListProposalsResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::ListProposalsResponse {
            proposals: self.api.list_proposals(caller).await?,
        }))
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.admin(&request, "SubscribeEvents")?;
        tracing::debug!(
            pid = caller.pid,
            uid = caller.uid,
            "event subscriber connected"
        );
        Ok(Response::new(Box::pin(event_stream(
            self.api.subscribe(),
            caller,
        ))))
    }
}

/// The broadcast receiver as a gRPC stream. A lagging subscriber loses the oldest events: the
/// gap is counted and logged, nothing is sent in its place, and streaming goes on.
fn event_stream(
    rx: broadcast::Receiver<Arc<str>>,
    caller: Caller,
) -> impl Stream<Item = Result<pb::EventRecord, Status>> + Send + 'static {
    BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(line) => Some(Ok(pb::EventRecord {
            json: line.to_string(),
        })),
        Err(BroadcastStreamRecvError::Lagged(skipped)) => {
            SUBSCRIBER_LAGGED.fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                pid = caller.pid,
                uid = caller.uid,
                skipped,
                "event subscriber too slow; events skipped"
            );
            None
        }
    })
}

#[cfg(test)]
mod tests;
