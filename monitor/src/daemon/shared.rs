//! State shared between the event loop and the gRPC handlers, and the daemon's side of
//! the gRPC API and of the local approval service's session oracle.
use std::sync::{Arc, Mutex, atomic::Ordering};

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::GateRuntime;
use crate::{
    api::server::{ApiError, Caller, DaemonApi},
    kernel::Kernel,
    metrics::Metrics,
    sessions::{NewSession, SessionError, SessionInfo, SessionRegistry, SessionSource},
};

/// A reload asked over the API: the answer goes back to the caller (see `reload`).
pub(super) type ReloadAsk =
    tokio::sync::oneshot::Sender<Result<crate::api::pb::ReloadResponse, ApiError>>;

/// State shared between the event loop and the gRPC handlers.
pub(super) struct Shared {
    pub(super) kernel: Mutex<Kernel>,
    pub(super) registry: SessionRegistry,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tx: broadcast::Sender<Arc<str>>,
    pub(super) admin_gid: Option<u32>,
    /// The gate, once started (after the kernel programs and sessions).
    pub(super) gate: std::sync::OnceLock<Arc<GateRuntime>>,
    /// Signs decider attestations (`Daemon.Attest`); `None` if its key could not be made.
    pub(super) attestor: Option<crate::approver::attest::Attestor>,
    /// The host name attestations state (the host certificate's CN in remote mode).
    pub(super) attest_host: String,
    /// The supervisors of confined sessions' seccomp listeners.
    pub(super) supervisors: Arc<crate::gate::session::Supervisors>,
    /// `daemon.state_dir` (where the host ledger is).
    pub(super) state_dir: std::path::PathBuf,
    /// Reloads asked over the API, for the event loop.
    pub(super) reloads: tokio::sync::mpsc::Sender<ReloadAsk>,
    /// Ledger records queued and dropped on their way to the outputs.
    pub(super) audit: Arc<crate::event::audit::AuditCounters>,
    /// `daemon.credential_env`, compiled: names listed in sessions' start records.
    pub(super) credential_env: globset::GlobSet,
    /// The NATS publisher's counters, when `[output.nats]` is on.
    pub(super) nats: std::sync::OnceLock<Arc<crate::nats::Counters>>,
    /// Launchers' exit report keys and the statuses they reported.
    pub(super) exits: crate::sessions::exit::ExitReports,
}

/// How long a session's end record waits for its launcher's exit report when the
/// session's last process left first (the launcher, outside the session, reports as soon
/// as its `waitpid` returns: milliseconds).
const EXIT_REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn lock(k: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    // A panic while holding the lock leaves the maps valid: keep going.
    k.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Ledgers the `session_start` record of `info` (through the gate, whose ledger it
    /// is; without a gate there is no ledger to write).
    pub(super) fn record_start(&self, info: &crate::sessions::SessionInfo, confined: bool) {
        let Some(g) = self.gate.get() else {
            return;
        };
        let (gated, rules) = g
            .engine()
            .policy()
            .gated_for(&info.agent, !info.scope.is_empty());
        let mut body = super::session_record::start(info, &self.credential_env, &gated, confined);
        body["rules"] = serde_json::json!(rules);
        g.engine().session_began(info.id);
        g.record("session_start", body);
    }

    /// Ledgers the `session_end` record of session `id` (ended in the registry), on a
    /// task: it waits up to [`EXIT_REPORT_GRACE`] for an exit report still awaited.
    pub(super) fn record_end(self: &Arc<Self>, id: u64) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let exit = me.exits.take(id, EXIT_REPORT_GRACE).await;
            if let (Some(g), Some(info)) = (me.gate.get(), me.registry.get(id)) {
                let counts = g.engine().session_counts(id);
                let body = super::session_record::end(&info, exit, &counts);
                g.record("session_end", body);
            }
        });
    }

    /// Tag `pid` into `session` in the kernel's session map (a failure is logged and
    /// counted).
    pub(super) fn tag(&self, pid: u32, session: u64) -> bool {
        match lock(&self.kernel).tag_session(pid, session) {
            Ok(()) => true,
            Err(e) => {
                Metrics::inc(&self.metrics.session_tag_errors);
                warn!(pid, session, error = %e, "could not tag process into session");
                false
            }
        }
    }
}

impl Shared {
    /// The gate's proposals (`None`: no gate, or no baseline).
    fn proposals(&self) -> Option<Arc<crate::propose::Proposals>> {
        self.gate.get().and_then(|g| g.proposals())
    }

    /// Who proposes: the caller's pid, uid and agent session (the kernel's session map).
    fn proposer(&self, caller: &Caller) -> Result<crate::propose::Proposer, ApiError> {
        let session = lock(&self.kernel).session_of(caller.pid);
        super::propose_api::proposer(caller, session, self.is_admin(caller))
    }
}

/// The local approval service asks the kernel's session map who its callers are.
impl crate::approver::SessionOracle for Shared {
    fn host(&self) -> String {
        crate::os::host::host_name()
    }

    fn session_of_pid(&self, pid: u32) -> u64 {
        lock(&self.kernel).session_of(pid)
    }

    fn attestation_key(&self) -> Option<Vec<u8>> {
        self.attestor.as_ref().map(|a| a.public_key().to_vec())
    }
}

#[tonic::async_trait]
impl DaemonApi for Shared {
    fn caller_session(&self, caller: &Caller) -> (String, u64) {
        (
            crate::os::host::host_name(),
            lock(&self.kernel).session_of(caller.pid),
        )
    }

    fn attest(
        &self,
        caller: &Caller,
        request_id: u64,
        approve: bool,
    ) -> Result<(Vec<u8>, Vec<u8>, String), ApiError> {
        let host = self.attest_host.clone();
        // The pid is the one the kernel gave at connect time: it must still name the
        // process that connected, not one that got the pid after it exited.
        if !crate::api::peer::started_by(caller.pid, caller.accepted_ticks) {
            Metrics::inc(&self.metrics.attest_refused);
            warn!(
                pid = caller.pid,
                request_id, "attestation refused: the process that connected is gone"
            );
            return Err(ApiError::PermissionDenied(format!(
                "process {} that opened this connection is gone (its pid may name another \
                 process now); connect again",
                caller.pid
            )));
        }
        // The kernel's session map, for the pid the kernel gave for the connection.
        let session = lock(&self.kernel).session_of(caller.pid);
        if session != 0 {
            Metrics::inc(&self.metrics.attest_refused);
            warn!(
                pid = caller.pid,
                uid = caller.uid,
                session,
                request_id,
                "attestation refused: the caller is inside an agent session"
            );
            return Err(ApiError::PermissionDenied(format!(
                "process {} is inside agent session {session}: decisions must come from outside \
                 any agent session",
                caller.pid
            )));
        }
        let Some(a) = &self.attestor else {
            return Err(ApiError::Unavailable(
                "this daemon has no attestation key (see its log at start-up)".into(),
            ));
        };
        let (statement, signature) = a
            .attest(
                &host,
                request_id,
                approve,
                caller.pid,
                caller.uid,
                crate::os::clock::now_ms(),
            )
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Metrics::inc(&self.metrics.attest_issued);
        info!(
            pid = caller.pid,
            uid = caller.uid,
            request_id,
            approve,
            "decider attestation issued"
        );
        Ok((statement, signature, host))
    }

    async fn register_session(
        &self,
        caller: Caller,
        agent: String,
        reason: Option<String>,
        command: Vec<String>,
        cwd: String,
        confinement: crate::api::server::Confinement,
    ) -> Result<SessionInfo, ApiError> {
        let crate::api::server::Confinement {
            confine,
            scope,
            exit_report_key,
        } = confinement;
        crate::gate::session::scope::validate(&scope).map_err(ApiError::InvalidArgument)?;
        crate::sessions::exit::validate_key(&exit_report_key).map_err(ApiError::InvalidArgument)?;
        if !scope.is_empty() && !confine {
            return Err(ApiError::InvalidArgument(
                "a scope is enforced by the session's confinement: an unconfined session cannot declare one".into(),
            ));
        }
        let current = lock(&self.kernel).session_of(caller.pid);
        if current != 0 {
            return Err(ApiError::AlreadyInSession {
                pid: caller.pid,
                session: current,
            });
        }
        let info = self
            .registry
            .create(NewSession {
                agent,
                reason,
                root_pid: caller.pid,
                uid: caller.uid,
                source: SessionSource::Wrapper,
                command,
                cwd,
                scope,
            })
            .map_err(|e| match e {
                SessionError::Invalid(m) => ApiError::InvalidArgument(m),
                e => {
                    warn!(pid = caller.pid, error = %e, "cannot register a session");
                    ApiError::Internal(format!("the daemon could not record the session: {e}"))
                }
            })?;
        if !self.tag(caller.pid, info.id) {
            let _ = self.registry.end(info.id);
            return Err(ApiError::Internal(
                "could not tag the process in the kernel session map".into(),
            ));
        }
        let reports = !exit_report_key.is_empty();
        if !self.exits.expect(info.id, exit_report_key) {
            warn!(
                session = info.id,
                "exit report key already in use by another session: this session's exit status will not be recorded"
            );
        }
        info!(session = info.id, agent = %info.agent, pid = caller.pid, uid = caller.uid, confine, reports, "session registered");
        self.record_start(&info, confine);
        if confine {
            // It confines itself next: host-wide marks are not placed for it (unless it
            // is still unconfined after the grace).
            self.registry.expect_confinement(info.id);
        } else if let Some(g) = self.gate.get() {
            g.wait_marks().await;
        }
        Ok(info)
    }

    async fn baseline(
        &self,
        caller: Caller,
        op: String,
        paths: Vec<Vec<u8>>,
        note: String,
        to_seq: u64,
    ) -> Result<String, ApiError> {
        let session = lock(&self.kernel).session_of(caller.pid);
        let service = self.gate.get().and_then(|g| g.baseline());
        let what = super::baseline_api::What {
            op,
            paths,
            note,
            to_seq,
        };
        super::baseline_api::call(service, caller, session, what).await
    }

    async fn reload(&self, caller: Caller) -> Result<crate::api::pb::ReloadResponse, ApiError> {
        let session = lock(&self.kernel).session_of(caller.pid);
        if session != 0 {
            warn!(
                pid = caller.pid,
                session, "reload refused: the caller is inside an agent session"
            );
            return Err(ApiError::PermissionDenied(format!(
                "process {} is inside agent session {session}: the configuration is reloaded \
                 from outside any agent session",
                caller.pid
            )));
        }
        info!(pid = caller.pid, uid = caller.uid, "reload asked");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reloads
            .send(tx)
            .await
            .map_err(|_| ApiError::Unavailable("the daemon is stopping".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("the daemon is stopping".into()))?
    }

    async fn propose(
        &self,
        caller: Caller,
        r: crate::api::pb::ProposeRequest,
    ) -> Result<crate::api::pb::Proposal, ApiError> {
        let who = self.proposer(&caller)?;
        super::propose_api::propose(self.proposals(), who, r).await
    }

    async fn get_proposal(
        &self,
        caller: Caller,
        id: u64,
        wait_ms: u64,
    ) -> Result<crate::api::pb::Proposal, ApiError> {
        let who = self.proposer(&caller)?;
        super::propose_api::get(self.proposals(), who, id, wait_ms).await
    }

    async fn list_proposals(
        &self,
        caller: Caller,
    ) -> Result<Vec<crate::api::pb::Proposal>, ApiError> {
        let who = self.proposer(&caller)?;
        super::propose_api::list(self.proposals(), who)
    }

    async fn report_session_exit(
        &self,
        key: Vec<u8>,
        status: crate::sessions::exit::ExitStatus,
    ) -> Result<u64, ApiError> {
        match self.exits.report(&key, status) {
            Some(id) => {
                info!(session = id, ?status, "session root process exit reported");
                Ok(id)
            }
            None => Err(ApiError::NotFound(
                "no live session awaits an exit report with this key".into(),
            )),
        }
    }

    fn sessions(&self, include_ended: bool) -> Vec<SessionInfo> {
        if include_ended {
            self.registry.all()
        } else {
            self.registry.live()
        }
    }

    fn stats(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = lock(&self.kernel)
            .counters()
            .into_iter()
            .map(|(n, v)| (format!("kernel_{n}"), v))
            .collect();
        self.metrics.subscriber_lag.store(
            crate::api::server::subscriber_lagged_total(),
            Ordering::Relaxed,
        );
        let m = &self.metrics;
        m.audit_events_queued
            .store(self.audit.queued.load(Ordering::Relaxed), Ordering::Relaxed);
        m.audit_events_dropped.store(
            self.audit.dropped.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        out.extend(
            self.metrics
                .snapshot()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v)),
        );
        if let Some(g) = self.gate.get() {
            out.extend(g.counters().into_iter().map(|(n, v)| (n.to_string(), v)));
        }
        out.extend(
            crate::state::snapshot()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v)),
        );
        if let Some(n) = self.nats.get() {
            out.extend(n.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        out.push((
            "sessions_live".to_owned(),
            self.registry.live().len() as u64,
        ));
        out
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    fn is_admin(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || self.admin_gid.is_some_and(|g| {
                caller.gid == g || crate::os::procfs::groups_of(caller.pid).contains(&g)
            })
    }
}
