//! The gate inside the daemon: starts the ledger, the approval service (local mode), the
//! uplink, the engine, the permission group, its marks and the listener (as
//! `gate.fanotify` says: [`super::fanmode`]), and feeds the engine what the event pipeline
//! sees (close-writes of gated files, renames by sessions, new directories to mark).
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::fanmode::{FanGate, FanParts};
use crate::approver::{self, SessionOracle, config::ServiceConfig};
use crate::baseline::Limits;
use crate::baseline::service::{BaselineService, Settings as BaselineSettings};
use crate::config::{ApprovalMode, Config};
use crate::event::{Event, Kind};
use crate::gate::session::Supervisors;
use crate::gate::terminal::SessionLookup;
use crate::gate::{
    Engine, EngineInputs, EngineParts, EngineSettings, GateMetrics, IntentSource, Notice,
};
use crate::kernel::Kernel;
use crate::ledger::{self, SharedLedger};
use crate::notify::{self, FanEvent};
use crate::policy::{GateQuery, OpSet, Policy, SessionRef as PolicySession};
use crate::propose::Proposals;
use crate::sessions::SessionRegistry;
use crate::store::Store;
use crate::uplink::{Uplink, UplinkHandle, UplinkOptions};

/// Held opens waiting for the engine (each holds one descriptor until answered); a full
/// queue applies the open's failure verdict at once (counted by the listener).
const HELD_QUEUE: usize = 4096;
/// Notices from the pipeline; a full queue drops the notice (counted).
const NOTICE_QUEUE: usize = 4096;

/// The running gate.
pub struct GateRuntime {
    engine: Arc<Engine>,
    metrics: Arc<GateMetrics>,
    /// The fanotify permission gate (`None`: `gate.fanotify = "off"`).
    fan: Option<FanGate>,
    /// The kernel's session map (who closed a tracked file).
    intent: Arc<IntentSource>,
    notices: mpsc::Sender<Notice>,
    uplink: UplinkHandle,
    ledger: SharedLedger,
    approver: Mutex<Option<approver::Server>>,
    supervisors: Arc<Supervisors>,
    baseline: Option<Arc<BaselineService>>,
    proposals: Option<Arc<Proposals>>,
}

/// The proposals of this host (they need the baseline: `None` without one, or when their
/// records cannot be read, logged).
fn start_proposals(
    store: &Store,
    ledger: &SharedLedger,
    uplink: &UplinkHandle,
    baseline: Option<&Arc<BaselineService>>,
    sessions: &SessionRegistry,
) -> Option<Arc<Proposals>> {
    let baseline = baseline?;
    match Proposals::open(
        store.clone(),
        ledger.clone(),
        uplink.clone(),
        Arc::clone(baseline),
        sessions.clone(),
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the proposals in the store: `confgate propose` is unavailable");
            None
        }
    }
}

/// Opens the approved baseline of the watched and gated trees, taking it at the first
/// start (before the gate runs: what is there now is the approved state), and starts the
/// periodic drift check. `None` (logged, counted nowhere else) when it cannot be opened:
/// the gate runs on, and reverts use the kept pre-images.
async fn start_baseline(
    cfg: &Config,
    policy: &Policy,
    ledger: &SharedLedger,
) -> Option<Arc<BaselineService>> {
    let mut roots: Vec<PathBuf> = cfg.watch.paths.clone();
    roots.extend(watched_roots(policy, cfg));
    let settings = BaselineSettings {
        state_dir: cfg.daemon.state_dir.clone(),
        roots,
        limits: Limits {
            max_file_bytes: cfg.baseline.max_file_bytes,
            max_total_bytes: cfg.baseline.max_total_bytes,
        },
        events_file: cfg.output.events_file.clone(),
        masker: policy.masker().clone(),
        quarantine: cfg.daemon.state_dir.join("quarantine"),
    };
    let ledger = ledger.clone();
    let started =
        tokio::task::spawn_blocking(move || BaselineService::start(settings, ledger)).await;
    match started {
        Ok(Ok(b)) => {
            let b = Arc::new(b);
            tokio::spawn(Arc::clone(&b).drift_loop(cfg.drift.interval.0));
            Some(b)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot open the approved baseline: drift and revert are unavailable");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "the baseline's start-up thread failed");
            None
        }
    }
}

/// The gate's part of the watch set: the directories its rules name (not confgate's own
/// state, which the built-in rule protects without reporting every write the daemon makes).
pub fn watched_roots(policy: &Policy, cfg: &Config) -> Vec<PathBuf> {
    policy
        .mark_roots()
        .into_iter()
        .filter(|p| !p.starts_with(&cfg.daemon.state_dir))
        .filter(|p| p.is_dir())
        .collect()
}

/// Compiles the gate's policy for this configuration.
pub fn compile_policy(cfg: &Config, config_path: &Path) -> anyhow::Result<Policy> {
    Policy::compile(
        &cfg.gate,
        &super::protected::protected_paths(cfg, config_path),
    )
    .context("gate policy")
}

/// Settings of the in-process approval service: `approval.local_config` if set, else its
/// defaults with the store and ledger under the daemon's state directory.
fn local_service_config(cfg: &Config) -> anyhow::Result<ServiceConfig> {
    let a = &cfg.approval;
    let mut sc = ServiceConfig::for_local(a.local_config.as_deref(), &a.local_socket)
        .context("local approval service settings")?;
    if a.local_config.is_none() {
        let dir = cfg.daemon.state_dir.join("approver");
        sc.store = dir.join("approver.redb");
        sc.ledger = dir.join("ledger.jsonl");
    }
    Ok(sc)
}

/// The base URL of the terminal notice's link: `gate.approvals_url`, else in local mode
/// (`local`: the in-process service's settings) the service's `[http]` public URL.
fn notice_url(cfg: &Config, local: Option<&ServiceConfig>) -> Option<String> {
    cfg.gate
        .approvals_url
        .clone()
        .or_else(|| local.and_then(|sc| sc.http.base_url()))
}

/// What the gate is attached to outside itself: confined sessions' supervisors, the
/// sessions whose listeners the service manager passed back (their holds resume), and the
/// outputs, which get each ledger record as an audit event.
pub struct Attached {
    pub supervisors: Arc<Supervisors>,
    pub resuming: std::collections::HashSet<u64>,
    pub audit: crate::ledger::Tap,
}

impl GateRuntime {
    /// Starts everything the gate needs. `oracle` tells the local approval service the
    /// session of a caller (from the kernel's session map).
    pub async fn start(
        cfg: &Config,
        policy: Policy,
        store: Store,
        sessions: SessionRegistry,
        kernel: &Mutex<Kernel>,
        oracle: Arc<dyn SessionOracle>,
        attached: Attached,
    ) -> anyhow::Result<GateRuntime> {
        let Attached {
            supervisors,
            resuming,
            audit,
        } = attached;
        let host = oracle.host();
        let oracle_key = oracle.attestation_key();
        let ledger_path = ledger::default_path(&cfg.daemon.state_dir);
        let ledger = SharedLedger::open(&ledger_path)
            .with_context(|| format!("opening the ledger {}", ledger_path.display()))?;
        // Every record from here on is also an audit event in the outputs.
        ledger.set_tap(audit).context("the ledger's audit tap")?;
        if let Err(e) = ledger
            .append_async(
                "daemon_started",
                serde_json::json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
            )
            .await
        {
            warn!(error = %e, "cannot record the start in the ledger");
        }
        let baseline = start_baseline(cfg, &policy, &ledger).await;
        let mut approvals_url = cfg.gate.approvals_url.clone();
        let approver = match cfg.approval.mode {
            ApprovalMode::Local => {
                let sc = local_service_config(cfg)?;
                approvals_url = notice_url(cfg, Some(&sc));
                let server = approver::Server::start(sc, Some(oracle))
                    .await
                    .context("starting the local approval service")?;
                info!(socket = %cfg.approval.local_socket.display(), "local approval service ready");
                Some(server)
            }
            ApprovalMode::Remote => None,
        };
        let client = cfg.approval.client_config();
        let options = UplinkOptions {
            attestation_key: oracle_key,
            ..UplinkOptions::default()
        };
        let (uplink, updates) =
            Uplink::start_with(client.clone(), store.clone(), host.clone(), options);
        // Proposed changes (they need the baseline): their service updates are taken
        // out of the engine's input.
        let proposals = start_proposals(&store, &ledger, &uplink, baseline.as_ref(), &sessions);
        let updates = match &proposals {
            Some(p) => crate::propose::route_updates(updates, Arc::clone(p)),
            None => updates,
        };
        let (held_tx, held_rx) = mpsc::channel(HELD_QUEUE);
        let (notice_tx, notice_rx) = mpsc::channel(NOTICE_QUEUE);
        let policy = Arc::new(policy);
        supervisors.persist_into(store.clone());
        let parts = EngineParts {
            policy: policy.clone(),
            sessions: sessions.clone(),
            store,
            ledger: ledger.clone(),
            uplink: uplink.clone(),
            resuming,
            baseline: baseline.clone(),
        };
        let intent = {
            let k = kernel.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::new(IntentSource::from_kernel(&k).context("gate maps")?)
        };
        let session_of = {
            let intent = Arc::clone(&intent);
            SessionLookup(Arc::new(move |pid| intent.session_of_tid(pid)))
        };
        let settings = EngineSettings {
            host,
            quarantine_dir: cfg.daemon.state_dir.join("quarantine"),
            terminal_notice: cfg.gate.terminal_notice,
            approvals_url,
            session_of: Some(session_of),
        };
        let inputs = EngineInputs {
            held: held_rx,
            updates,
            notices: notice_rx,
        };
        let handles = Engine::start(parts, settings, inputs).context("starting the gate engine")?;
        if let Some(p) = &proposals {
            p.attach(handles.engine.clone());
        }
        // Confined sessions' supervisors decide with the same decider and hand held
        // operations to the same engine queue as the fanotify listener.
        supervisors.wire(
            handles.decider.clone(),
            held_tx.clone(),
            policy.mark_roots(),
        );
        let fan = FanGate::start(
            &cfg.gate,
            FanParts {
                policy: policy.clone(),
                sessions,
                ledger: ledger.clone(),
                intent: intent.clone(),
                decider: handles.decider.clone(),
                held: held_tx,
            },
        )
        .await?;
        info!(
            rules = policy.rules().count(),
            fanotify = %cfg.gate.fanotify,
            mode = ?cfg.approval.mode,
            endpoint = %client.endpoint,
            "gate ready"
        );
        Ok(GateRuntime {
            engine: handles.engine,
            metrics: handles.metrics,
            fan,
            intent,
            notices: notice_tx,
            uplink,
            ledger,
            approver: Mutex::new(approver),
            supervisors,
            baseline,
            proposals,
        })
    }

    /// Changes agents propose (`None`: no baseline).
    pub fn proposals(&self) -> Option<Arc<Proposals>> {
        self.proposals.clone()
    }

    /// The approved baseline (`None`: it could not be opened; logged at start).
    pub fn baseline(&self) -> Option<Arc<BaselineService>> {
        self.baseline.clone()
    }

    /// The engine (for start-up steps that follow the gate's).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// The host ledger the gate writes.
    pub fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    /// Puts a reloaded policy in force: the marks of its roots first (when placed), then
    /// the policy itself, in one swap, for the fanotify gate and the confined sessions'
    /// supervisors alike (they share the decider).
    pub async fn set_policy(&self, policy: Policy) {
        let policy = Arc::new(policy);
        if let Some(f) = &self.fan {
            f.reroot(policy.mark_roots(), &self.ledger).await;
        }
        self.engine.set_policy(policy);
    }

    /// The supervisors of confined sessions.
    pub fn supervisors(&self) -> Arc<Supervisors> {
        self.supervisors.clone()
    }

    /// Every gate counter, for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut out = self.fan.as_ref().map(FanGate::counters).unwrap_or_default();
        out.extend(self.metrics.snapshot());
        let (held, oldest) = crate::gate::held_now::now();
        out.push(("gate_held_now", held));
        out.push(("gate_oldest_hold_seconds", oldest.as_secs()));
        out.extend(self.supervisors.counters());
        out.extend(self.uplink.counters());
        out.extend(self.ledger.counters());
        if let Some(b) = &self.baseline {
            out.extend(b.counters());
        }
        if let Some(p) = &self.proposals {
            out.extend(p.snapshot());
        }
        if let Some(s) = self
            .approver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            out.extend(s.counters());
        }
        out
    }

    /// A notification event: marks directories that appear in a gated tree, and tells the
    /// engine when a gated file with a kept pre-image is closed after writing, and by which
    /// session (`session`: the process table's, 0 if unknown; the kernel's session map is
    /// asked then, while the closer still exists).
    pub fn on_fanotify(&self, ev: &FanEvent, session: u64) {
        let new_dir = ev.is_dir
            && ev.mask & (notify::FAN_CREATE | notify::FAN_RENAME | notify::FAN_MOVED_TO) != 0;
        if new_dir {
            let dir = ev.new_path.as_deref().unwrap_or(&ev.path);
            if let Some(f) = &self.fan {
                f.placement.on_new_dir(dir);
            }
        }
        if ev.mask & notify::FAN_CLOSE_WRITE != 0 && !ev.is_dir {
            let path = ev.path.as_os_str().as_bytes();
            if self.engine.tracks(path) {
                let session = match session {
                    0 => self.intent.session_of_tid(ev.pid),
                    s => s,
                };
                self.notify(Notice::Closed {
                    path: path.to_vec(),
                    session,
                    pid: ev.pid,
                });
            }
        }
    }

    /// An emitted event: a rename by a session onto a gated path goes to the engine.
    ///
    /// The policy part of the engine's check ([`Policy::unheld_rule`]) is made here, on the
    /// pipeline's thread: a notice wakes the engine's task on another thread, and sending
    /// one for every rename of a session (most of them outside gated trees) cost the
    /// pipeline ~30% of its CPU in an agent's write loop (BENCHMARKS.md, scenario 3).
    pub fn on_event(&self, ev: &Event) {
        self.check_scope(ev);
        let unheld = match ev.kind {
            Kind::Rename => None,
            Kind::Unlink => Some(OpSet::REMOVE),
            Kind::Chmod => Some(OpSet::CHMOD),
            Kind::Chown => Some(OpSet::CHOWN),
            Kind::Truncate => Some(OpSet::TRUNCATE),
            _ => return,
        };
        if let Some(ops) = unheld {
            self.on_unheld(ev, ops);
            return;
        }
        // A rename that failed (`mv -n`'s RENAME_NOREPLACE onto an existing name, EPERM,
        // ENOTDIR, ...) moved nothing: the file at the target is still the one that was
        // there, and acting on it would punish whoever owns it.
        if ev.result.is_some_and(|r| r < 0) {
            return;
        }
        let (Some(session), Some(target)) = (ev.session.as_ref(), ev.target.as_deref()) else {
            return;
        };
        let Some(to) = crate::event::escape::decode(target) else {
            return;
        };
        let q = GateQuery {
            path: &to,
            session: Some(PolicySession {
                id: session.id,
                agent: &session.agent,
                within_scope: self.engine.within_scope(session.id, &to),
            }),
            ops: OpSet::RENAME,
            write: true,
        };
        if self.engine.policy().unheld_rule(&q).is_none() {
            return;
        }
        self.notify(Notice::Renamed {
            session: session.id,
            agent: session.agent.clone(),
            pid: ev.pid,
            from: crate::event::escape::decode(&ev.path),
            to,
        });
    }

    /// A session's unlink, chmod, chown or truncate that succeeded: when it completes a
    /// review-mode change (`mode = "review"`), the engine reviews the path. Rare events,
    /// so the policy may be asked for each.
    fn on_unheld(&self, ev: &Event, ops: OpSet) {
        if ev.result.is_some_and(|r| r < 0) {
            return;
        }
        let Some(session) = ev.session.as_ref() else {
            return;
        };
        let Some(path) = crate::event::escape::decode(&ev.path) else {
            return;
        };
        if self
            .engine
            .completes_review(&path, session.id, &session.agent, ops)
        {
            self.notify(Notice::Closed {
                path,
                session: session.id,
                pid: ev.pid,
            });
        } else if let Some(grant) =
            self.engine
                .approving_grant(&path, session.id, &session.agent, ops)
        {
            self.notify(Notice::ApprovedOp {
                path,
                grant,
                session: session.id,
            });
        }
    }

    /// A session was registered by `confgate run`: until its confinement is attached it
    /// is unconfined, so in `detected` mode wait (at most a few seconds) for the marks the
    /// registration makes the gate place, so that its first opens are held, not only
    /// recorded. Returns at once when there is no permission group.
    pub async fn wait_marks(&self) {
        if let Some(f) = &self.fan
            && !f
                .placement
                .wait_placed(std::time::Duration::from_secs(10))
                .await
        {
            warn!("gate: marks still not placed 10s after a session registered; going on");
        }
    }

    /// Appends a `kind` record to the host ledger (on a task; failures are counted and
    /// logged by the engine).
    pub fn record(&self, kind: &'static str, body: serde_json::Value) {
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move { engine.record(kind, body).await });
    }

    /// A session's successful write outside its declared scope (which the gate could not
    /// refuse): ledgered once per session and path (`out_of_scope`), counted.
    fn check_scope(&self, ev: &Event) {
        use crate::gate::out_of_scope::First;
        let Some(session) = ev.session.as_ref() else {
            return;
        };
        if ev.result.is_some_and(|r| r < 0) {
            return;
        }
        for p in std::iter::once(&ev.path).chain(ev.target.as_ref()) {
            let Some(path) = crate::event::escape::decode(p) else {
                continue;
            };
            if self.engine.within_scope(session.id, &path) != Some(false) {
                continue;
            }
            match self.engine.scope_seen().first(session.id, &path) {
                First::Ledger => {
                    GateMetrics::inc(&self.metrics.out_of_scope);
                    self.record(
                        "out_of_scope",
                        serde_json::json!({"path": p, "session": session.id, "pid": ev.pid,
                                           "kind": ev.kind.as_str()}),
                    );
                }
                First::Again => {}
                First::OverLimit => GateMetrics::inc(&self.metrics.out_of_scope_unledgered),
            }
        }
    }

    /// An agent session ended (its last member exited).
    pub fn on_session_ended(&self, id: u64) {
        self.engine.forget_session_scope(id);
        self.supervisors.ended(id);
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move { engine.session_ended(id).await });
    }

    fn notify(&self, n: Notice) {
        if self.notices.try_send(n).is_err() {
            GateMetrics::inc(&self.metrics.notices_dropped);
        }
    }

    /// Stops the listener (marks removed; queued opens answered), the uplink and the
    /// local approval service.
    pub async fn stop(&self) {
        if let Some(f) = &self.fan {
            f.stop();
        }
        if let Err(e) = self
            .ledger
            .append_async(
                "daemon_stopped",
                serde_json::json!({"pid": std::process::id()}),
            )
            .await
        {
            warn!(error = %e, "cannot record the stop in the ledger");
        }
        self.uplink.shutdown().await;
        let server = self
            .approver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(s) = server
            && let Err(e) = s.stop().await
        {
            warn!(error = %e, "stopping the local approval service");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_links_to_the_local_services_page_unless_configured() {
        let mut cfg = Config::default();
        let mut sc = ServiceConfig::default();
        assert_eq!(notice_url(&cfg, Some(&sc)), None);
        sc.http.listen = Some("https://0.0.0.0:8443".into());
        sc.http.public_url = Some("https://approve.example:8443/".into());
        assert_eq!(
            notice_url(&cfg, Some(&sc)).as_deref(),
            Some("https://approve.example:8443")
        );
        // Remote mode: no local service to link to.
        assert_eq!(notice_url(&cfg, None), None);
        cfg.gate.approvals_url = Some("https://elsewhere.example".into());
        assert_eq!(
            notice_url(&cfg, Some(&sc)).as_deref(),
            Some("https://elsewhere.example")
        );
    }
}
