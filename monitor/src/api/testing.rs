//! Test double of the daemon behind the RPC layer, and a server harness (tests only).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot};

use super::server::{ApiError, Caller, DaemonApi, serve};
use crate::sessions::{SessionInfo, SessionSource};

/// First id the fake hands out (not 1, so tests notice ids that are made up elsewhere).
pub(crate) const FIRST_FAKE_ID: u64 = 41;

#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub caller: Caller,
    pub agent: String,
    pub reason: Option<String>,
    pub command: Vec<String>,
    pub cwd: String,
    pub exit_report_key: Vec<u8>,
}

type ExitReport = (Vec<u8>, crate::sessions::exit::ExitStatus);

/// Records registrations, refuses a pid that already has a session (as the daemon must), and
/// has a switchable admin verdict.
pub(crate) struct FakeDaemon {
    admin: AtomicBool,
    registered: Mutex<Vec<Registration>>,
    sessions: Mutex<Vec<SessionInfo>>,
    exit_reports: Mutex<Vec<ExitReport>>,
    events: broadcast::Sender<Arc<str>>,
    /// A real attestation key in a temporary directory.
    attestor: crate::approver::attest::Attestor,
    _key_dir: tempfile::TempDir,
}

impl FakeDaemon {
    pub fn new(admin: bool) -> Arc<Self> {
        Self::with_event_capacity(admin, 64)
    }

    pub fn with_event_capacity(admin: bool, capacity: usize) -> Arc<Self> {
        let key_dir = tempfile::tempdir().unwrap();
        let attestor = crate::approver::attest::Attestor::load_or_create(
            &key_dir.path().join(crate::approver::attest::KEY_FILE),
        )
        .unwrap();
        Arc::new(FakeDaemon {
            admin: AtomicBool::new(admin),
            registered: Mutex::default(),
            sessions: Mutex::default(),
            exit_reports: Mutex::default(),
            events: broadcast::channel(capacity).0,
            attestor,
            _key_dir: key_dir,
        })
    }

    /// The public half of the fake's attestation key.
    pub fn attestation_key(&self) -> Vec<u8> {
        self.attestor.public_key().to_vec()
    }

    pub fn set_admin(&self, admin: bool) {
        self.admin.store(admin, Ordering::SeqCst);
    }

    pub fn registered(&self) -> Vec<Registration> {
        self.registered.lock().unwrap().clone()
    }

    /// The exit reports accepted, in order.
    pub fn exit_reports(&self) -> Vec<ExitReport> {
        self.exit_reports.lock().unwrap().clone()
    }

    pub fn publish(&self, line: &str) {
        // No receivers is fine for the tests that do not subscribe.
        let _ = self.events.send(Arc::from(line));
    }
}

#[tonic::async_trait]
impl DaemonApi for FakeDaemon {
    fn caller_session(&self, caller: &Caller) -> (String, u64) {
        let sessions = self.sessions.lock().unwrap();
        let id = sessions
            .iter()
            .find(|s| s.root_pid == caller.pid && s.ended.is_none())
            .map_or(0, |s| s.id);
        ("fake-host".into(), id)
    }

    fn attest(
        &self,
        caller: &Caller,
        request_id: u64,
        approve: bool,
    ) -> Result<(Vec<u8>, Vec<u8>, String), ApiError> {
        let (host, session) = self.caller_session(caller);
        if session != 0 {
            return Err(ApiError::PermissionDenied(format!(
                "process {} is inside agent session {session}",
                caller.pid
            )));
        }
        let (st, sig) = self
            .attestor
            .attest(
                &host,
                request_id,
                approve,
                caller.pid,
                caller.uid,
                crate::os::clock::now_ms(),
            )
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((st, sig, host))
    }

    async fn register_session(
        &self,
        caller: Caller,
        agent: String,
        reason: Option<String>,
        command: Vec<String>,
        cwd: String,
        confine: super::server::Confinement,
    ) -> Result<SessionInfo, ApiError> {
        let scope = confine.scope;
        let exit_report_key = confine.exit_report_key;
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(s) = sessions.iter().find(|s| s.root_pid == caller.pid) {
            return Err(ApiError::AlreadyInSession {
                pid: caller.pid,
                session: s.id,
            });
        }
        self.registered.lock().unwrap().push(Registration {
            caller,
            agent: agent.clone(),
            reason: reason.clone(),
            command: command.clone(),
            cwd: cwd.clone(),
            exit_report_key,
        });
        let info = SessionInfo {
            id: FIRST_FAKE_ID + sessions.len() as u64,
            agent,
            reason,
            root_pid: caller.pid,
            uid: caller.uid,
            user: caller.uid.to_string(),
            started: "2026-01-01T00:00:00Z".into(),
            source: SessionSource::Wrapper,
            command,
            cwd,
            events: 0,
            ended: None,
            scope,
        };
        sessions.push(info.clone());
        Ok(info)
    }

    async fn report_session_exit(
        &self,
        key: Vec<u8>,
        status: crate::sessions::exit::ExitStatus,
    ) -> Result<u64, ApiError> {
        let registered = self.registered.lock().unwrap();
        let Some(i) = registered.iter().position(|r| r.exit_report_key == key) else {
            return Err(ApiError::NotFound("no session awaits this key".into()));
        };
        self.exit_reports.lock().unwrap().push((key, status));
        Ok(FIRST_FAKE_ID + i as u64)
    }

    fn sessions(&self, include_ended: bool) -> Vec<SessionInfo> {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .iter()
            .filter(|s| include_ended || s.ended.is_none())
            .cloned()
            .collect()
    }

    fn stats(&self) -> Vec<(String, u64)> {
        vec![(
            "sessions".into(),
            self.sessions.lock().unwrap().len() as u64,
        )]
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    fn is_admin(&self, _caller: &Caller) -> bool {
        self.admin.load(Ordering::SeqCst)
    }
}

/// A server on a socket in a temporary directory, running on the current tokio runtime.
pub(crate) struct TestServer {
    pub socket: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), super::RpcError>>,
}

impl TestServer {
    pub async fn start(api: Arc<dyn DaemonApi>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("confgate.sock");
        let mut s = Self::start_at(api, socket, 0o600).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_at(api: Arc<dyn DaemonApi>, socket: PathBuf, mode: u32) -> TestServer {
        let (stop, rx) = oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            serve(&path, mode, api, async {
                let _ = rx.await;
            })
            .await
        });
        // Wait until the socket accepts connections.
        for _ in 0..500 {
            if task.is_finished() {
                break;
            }
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return TestServer {
                    socket,
                    _dir: None,
                    stop,
                    task,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("test server did not come up: {:?}", task.await);
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A [`TestServer`] on its own thread and runtime, for tests of blocking code (the CLI).
pub(crate) struct ThreadServer {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadServer {
    pub fn start(api: Arc<dyn DaemonApi>) -> ThreadServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = TestServer::start(api).await;
                ready_tx.send(server.socket.clone()).unwrap();
                let _ = stop_rx.await;
                server.stop().await;
            });
        });
        let socket = ready_rx.recv().unwrap();
        ThreadServer {
            socket,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
