//! `confgate daemon`: wires the kernel programs, fanotify, the pipeline, the outputs and
//! the gRPC API together and runs until SIGTERM/SIGINT.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::broadcast};
use tracing::{debug, info, warn};

mod cadence;
mod gate;
mod protected;

pub use gate::GateRuntime;

/// Most threads the daemon's runtime starts for blocking work (see `main.rs`).
pub const MAX_BLOCKING_THREADS: usize = 64;

use crate::{
    api::server::{ApiError, Caller, DaemonApi},
    config::Config,
    config::watch::WatchSet,
    kernel::{Kernel, KernelSettings, decode::decode},
    metrics::Metrics,
    notify::NotifyWatcher,
    observe::correlate::Watermarks,
    observe::pipeline::{Action, Pipeline},
    observe::procs::detect::Detector,
    observe::sink::Sink,
    sessions::{NewSession, SessionError, SessionInfo, SessionRegistry, SessionSource},
    store::Store,
};

const BROADCAST_CAPACITY: usize = 8192;
/// Files primed into the chmod/chown classification cache per watched tree.
const ATTRIB_PRIME_LIMIT: usize = 100_000;

/// State shared between the event loop and the gRPC handlers.
struct Shared {
    kernel: Mutex<Kernel>,
    registry: SessionRegistry,
    metrics: Arc<Metrics>,
    tx: broadcast::Sender<Arc<str>>,
    admin_gid: Option<u32>,
    /// The gate, once started (after the kernel programs and sessions).
    gate: std::sync::OnceLock<Arc<GateRuntime>>,
    /// Signs decider attestations (`Daemon.Attest`); `None` if its key could not be made.
    attestor: Option<crate::approver::attest::Attestor>,
    /// The host name attestations state (the host certificate's CN in remote mode).
    attest_host: String,
}

fn lock(k: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    // A panic while holding the lock leaves the maps valid: keep going.
    k.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn tag(&self, pid: u32, session: u64) -> bool {
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
    ) -> Result<SessionInfo, ApiError> {
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
        info!(session = info.id, agent = %info.agent, pid = caller.pid, uid = caller.uid, "session registered");
        Ok(info)
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

/// Records in the host ledger the state files found damaged in `state_dir` at start-up
/// (moved aside by the store); the ledger is opened briefly, before the gate takes it.
fn ledger_damage(state_dir: &Path) {
    if crate::state::pending_notes(state_dir) == 0 {
        return;
    }
    let path = crate::ledger::default_path(state_dir);
    match crate::ledger::Ledger::open(&path) {
        Ok(mut l) => crate::state::ledger_notes(state_dir, |kind, body| {
            l.append(kind, body).map(|_| ()).map_err(|e| e.to_string())
        }),
        Err(e) => {
            warn!(ledger = %path.display(), error = %e, "cannot record damaged state files in the ledger")
        }
    }
}

/// Put back into their sessions the processes of sessions that outlived a restart, and
/// end sessions with no live process left.
fn restore_sessions(shared: &Shared, pipeline: &mut Pipeline) {
    for s in shared.registry.live() {
        let root_alive = Path::new(&format!("/proc/{}", s.root_pid)).exists();
        if !root_alive {
            info!(
                session = s.id,
                "session root gone across restart; ending session"
            );
            let _ = shared.registry.end(s.id);
            continue;
        }
        let mut members = vec![s.root_pid];
        members.extend(pipeline.procs.descendants(s.root_pid));
        for pid in members {
            if shared.tag(pid, s.id) {
                pipeline.procs.set_session(pid, s.id);
            }
        }
        info!(session = s.id, agent = %s.agent, "session restored after restart");
    }
}

fn handle_actions(shared: &Shared, pipeline: &mut Pipeline, actions: Vec<Action>) {
    for a in actions {
        match a {
            Action::Detected {
                pid,
                uid,
                detection,
            } => {
                let (command, cwd) = match pipeline.procs.get(pid) {
                    Some(p) => (
                        p.argv
                            .iter()
                            .map(|a| crate::event::escape::encode(a))
                            .collect(),
                        p.cwd
                            .as_deref()
                            .map(crate::event::escape::encode)
                            .unwrap_or_default(),
                    ),
                    None => (Vec::new(), String::new()),
                };
                let new = NewSession {
                    agent: detection.agent.clone(),
                    reason: None,
                    root_pid: pid,
                    uid,
                    source: SessionSource::Detected {
                        rule: detection.rule.clone(),
                    },
                    command,
                    cwd,
                };
                match shared.registry.create(new) {
                    Ok(info) => {
                        Metrics::inc(&shared.metrics.sessions_detected);
                        let mut members = vec![pid];
                        members.extend(pipeline.procs.descendants(pid));
                        for m in members {
                            if shared.tag(m, info.id) {
                                pipeline.procs.set_session(m, info.id);
                            }
                        }
                        info!(session = info.id, agent = %info.agent, pid, rule = %detection.rule, "agent detected");
                    }
                    Err(e) => warn!(pid, error = %e, "could not create a detected session"),
                }
            }
            Action::ForgetFds { tgid, fds } => {
                let mut k = lock(&shared.kernel);
                for fd in fds {
                    k.forget_fd(tgid, fd as u32);
                }
            }
            Action::SessionEnded(id) => {
                debug!(session = id, "last session member exited");
                if let Err(e) = shared.registry.end(id) {
                    warn!(session = id, error = %e, "could not record session end");
                }
                if let Some(g) = shared.gate.get() {
                    g.on_session_ended(id);
                }
            }
        }
    }
}

/// Process every record in the ring buffer now.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    shared: &Shared,
    pipeline: &mut Pipeline,
    metrics: &Metrics,
) {
    while let Some(item) = ring.next() {
        let decoded = decode(&item);
        drop(item);
        match decoded {
            Ok(rec) => {
                let actions = pipeline.on_record(rec);
                handle_actions(shared, pipeline, actions);
            }
            Err(e) => {
                Metrics::inc(&metrics.decode_errors);
                debug!(error = %e, "undecodable ring-buffer record");
            }
        }
    }
}

/// The decider attestation key in the state directory (made on first start). A failure is
/// logged and counted; the daemon runs on without one (`Attest` then says so).
fn attestor(state_dir: &Path, metrics: &Metrics) -> Option<crate::approver::attest::Attestor> {
    let path = state_dir.join(crate::approver::attest::KEY_FILE);
    match crate::approver::attest::Attestor::load_or_create(&path) {
        Ok(a) => Some(a),
        Err(e) => {
            Metrics::inc(&metrics.attest_key_errors);
            tracing::error!(error = %e, "no decider attestation key: approvals through a remote service cannot be attested from this host");
            None
        }
    }
}

fn admin_gid(name: Option<&str>) -> anyhow::Result<Option<u32>> {
    let Some(name) = name else { return Ok(None) };
    let g = nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up admin group {name}"))?
        .with_context(|| format!("admin group {name} does not exist"))?;
    Ok(Some(g.gid.as_raw()))
}

/// Run the daemon until a termination signal. `config_path` is the configuration file in
/// use (protected by the gate's built-in rule even when it does not exist).
pub async fn run(mut cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let state_dir = cfg.daemon.state_dir.clone();
    match crate::state::secure_dir(&state_dir)? {
        Some(mode) => {
            warn!(dir = %state_dir.display(), old_mode = format!("{mode:04o}"), "state directory tightened to 0700")
        }
        None => debug!(dir = %state_dir.display(), "state directory is 0700"),
    }
    let store_path: PathBuf = state_dir.join(crate::store::STORE_FILE);
    let store = Store::open_with(&store_path, |tx| {
        // Every table the daemon reads: one of another type makes the file damaged at open.
        for table in [
            crate::gate::requests::REQUESTS.name(),
            crate::gate::requests::GRANTS.name(),
            crate::gate::changes::CHANGES.name(),
            crate::gate::changes::PREIMAGES.name(),
            crate::uplink::spool::SPOOL.name(),
            crate::uplink::spool::CURSOR.name(),
        ] {
            tx.ensure_table(table)?;
        }
        Ok(())
    })
    .with_context(|| format!("opening store {}", store_path.display()))?;
    ledger_damage(&state_dir);
    let registry = SessionRegistry::open(store.clone()).context("loading sessions")?;
    let policy = if cfg.gate.enabled {
        let policy = gate::compile_policy(&cfg, config_path)?;
        // What the gate holds is also watched (events, kernel prefixes).
        for root in gate::watched_roots(&policy, &cfg) {
            if !cfg.watch.paths.iter().any(|p| root.starts_with(p)) {
                cfg.watch.paths.push(root);
            }
        }
        Some(policy)
    } else {
        None
    };
    let watch = WatchSet::new(&cfg.watch).context("watch set")?;
    let detector = Detector::new(&cfg.detect).context("detect rules")?;

    let settings = KernelSettings {
        ringbuf_bytes: cfg.kernel.ringbuf_bytes,
        path_filter: cfg.kernel.path_filter,
    };
    let (mut kernel, report) = Kernel::load(&settings).context("loading eBPF programs")?;
    for (name, err) in &report.missing {
        warn!(program = %name, error = %err, "tracepoint not attached (not available on this kernel)");
    }
    let prefixes = watch.kernel_prefixes();
    for p in &prefixes {
        kernel.add_prefix(p).context("watched prefix")?;
    }
    let ringbuf = kernel.events.take().context("ring buffer already taken")?;

    let mut pipeline = Pipeline::new(
        watch,
        detector,
        Duration::from_millis(cfg.correlation.window_ms),
        metrics.clone(),
    );
    let procs = pipeline.procs.scan_procfs();

    let mut fan = NotifyWatcher::new().context("fanotify notification group")?;
    if cfg.watch.rename_sources {
        fan.enable_rename_sources();
    }
    for tree in pipeline.watch().fanotify_trees() {
        match fan.add_tree(&tree) {
            Ok(n) => debug!(tree = %tree.display(), marks = n, "watching tree"),
            Err(e) => warn!(tree = %tree.display(), error = %e, "could not watch tree"),
        }
        pipeline
            .correlator_mut()
            .prime_attributes(&tree, ATTRIB_PRIME_LIMIT);
    }
    for file in pipeline.watch().fanotify_files() {
        if let Err(e) = fan.add_file(&file) {
            warn!(file = %file.display(), error = %e, "could not watch file");
        }
    }

    let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
    let mut sink = Sink::open(&cfg.output.events_file, cfg.output.stdout, tx.clone())
        .context("events output")?;
    let shared = Arc::new(Shared {
        kernel: Mutex::new(kernel),
        registry,
        metrics: metrics.clone(),
        tx,
        admin_gid: admin_gid(cfg.daemon.admin_group.as_deref())?,
        gate: std::sync::OnceLock::new(),
        attestor: attestor(&cfg.daemon.state_dir, &metrics),
        attest_host: match cfg.approval.mode {
            crate::config::ApprovalMode::Remote => crate::approver::attest::host_name_for(
                cfg.approval.client_config().cert.as_deref(),
                crate::os::host::host_name(),
            ),
            crate::config::ApprovalMode::Local => crate::os::host::host_name(),
        },
    });
    restore_sessions(&shared, &mut pipeline);
    if let Some(policy) = policy {
        let oracle: Arc<dyn crate::approver::SessionOracle> = shared.clone();
        let g = GateRuntime::start(
            &cfg,
            policy,
            store.clone(),
            shared.registry.clone(),
            &shared.kernel,
            oracle,
        )
        .await?;
        let _ = shared.gate.set(Arc::new(g));
    } else {
        warn!("gate disabled (gate.enabled = false): writes are observed, never held");
    }
    let gate = shared.gate.get().cloned();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api: Arc<dyn DaemonApi> = shared.clone();
    let socket = cfg.daemon.socket.clone();
    let mode = cfg.daemon.socket_mode;
    let mut server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        crate::api::server::serve(&socket, mode, api, shutdown).await
    });

    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both
    // are dropped together at the end of this function.
    let mut rb = unsafe { AsyncFd::register(ringbuf) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut cadence = cadence::Cadence::new(Instant::now());
    let mut records_at_tick = 0u64;
    // Record counts at the last session sweep and at the last heap trim.
    let (mut records_at_sweep, mut records_at_trim) = (0u64, 0u64);
    let stats_every = cfg.output.stats_interval_secs;
    let mut stats_tick = tokio::time::interval(Duration::from_secs(stats_every.max(1)));
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // Start-up (the eBPF loader above all) freed ~12 MiB of heap: give it back, and unmap
    // the code that start-up ran (see memory::forget_code).
    crate::os::memory::trim_heap();
    crate::os::memory::forget_code();
    info!(
        programs = report.attached.len(),
        prefixes = prefixes.len(),
        marks = fan.marks(),
        processes = procs,
        socket = %cfg.daemon.socket.display(),
        events_file = %cfg.output.events_file.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "confgate ready"
    );

    loop {
        tokio::select! {
            guard = rb.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                drain_ring(guard.get_inner_mut(), &shared, &mut pipeline, &metrics);
                guard.clear_ready();
                cadence.activity(Instant::now());
            }
            batch = fan.next_batch() => {
                match batch {
                    Ok(events) => {
                        for ev in events {
                            if let Some(g) = &gate {
                                let session = pipeline.procs.get(ev.pid).map_or(0, |p| p.session);
                                g.on_fanotify(&ev, session);
                            }
                            pipeline.on_fanotify(ev);
                        }
                    }
                    Err(e) => warn!(error = %e, "fanotify read failed"),
                }
                let s = fan.stats();
                metrics.fanotify_overflows.store(s.overflows, Ordering::Relaxed);
                metrics.fanotify_unresolved.store(s.unresolved, Ordering::Relaxed);
                cadence.activity(Instant::now());
            }
            _ = cadence.tick() => {
                // Drain both sources so that every twin of a buffered observation is known
                // (see correlate.rs), then emit what is complete.
                let ebpf_mark = Instant::now();
                drain_ring(rb.get_mut(), &shared, &mut pipeline, &metrics);
                let fan_mark = Instant::now();
                let mut drained = 0usize;
                match fan.drain() {
                    Ok(events) => events.into_iter().for_each(|ev| {
                        drained += 1;
                        if let Some(g) = &gate {
                            let session = pipeline.procs.get(ev.pid).map_or(0, |p| p.session);
                            g.on_fanotify(&ev, session);
                        }
                        pipeline.on_fanotify(ev)
                    }),
                    Err(e) => warn!(error = %e, "fanotify read failed"),
                }
                let marks = Watermarks { ebpf: Some(ebpf_mark), fanotify: Some(fan_mark) };
                pipeline.flush_each(Instant::now(), &marks, &shared.registry, &mut |event| {
                    Metrics::inc(&metrics.events_emitted);
                    if let Some(g) = &gate {
                        g.on_event(&event);
                    }
                    if let Err(e) = sink.emit(&event) {
                        Metrics::inc(&metrics.sink_errors);
                        warn!(error = %e, "event not written to the events file");
                    }
                });
                if let Err(e) = sink.flush() {
                    Metrics::inc(&metrics.sink_errors);
                    warn!(error = %e, "flushing the events file");
                }
                let now = Instant::now();
                let records = metrics.records.load(Ordering::Relaxed);
                let quiet = drained == 0 && records == records_at_tick && pipeline.is_quiet();
                records_at_tick = records;
                cadence.ticked(now, quiet);
                if cadence.sweep_due(now) {
                    let live: Vec<u64> = shared.registry.live().iter().map(|s| s.id).collect();
                    let ended = pipeline.ended_sessions(&live);
                    handle_actions(&shared, &mut pipeline, ended);
                    // A burst is over (no record for a second): give its heap back.
                    if records == records_at_sweep && records != records_at_trim {
                        crate::os::memory::trim_heap();
                        records_at_trim = records;
                    }
                    records_at_sweep = records;
                }
            }
            _ = stats_tick.tick(), if stats_every > 0 => {
                pipeline.gc(Instant::now());
                if let Err(e) = shared.registry.flush() {
                    warn!(error = %e, "persisting session counters");
                }
                let c = pipeline.correlator().stats();
                metrics.correlated_merged.store(c.merged, Ordering::Relaxed);
                metrics.correlated_folded.store(c.folded, Ordering::Relaxed);
                metrics.attrib_ignored.store(c.attrib_ignored, Ordering::Relaxed);
                metrics.correlation_forced.store(c.forced, Ordering::Relaxed);
                metrics.correlation_parked_expired.store(c.parked_expired, Ordering::Relaxed);
                metrics.correlation_scan_limited.store(c.scan_limited, Ordering::Relaxed);
                let stats = shared.stats();
                let line: Vec<String> = stats.iter().filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
                let drops = stats.iter().find(|(n, _)| n == "kernel_ringbuf_drops").map_or(0, |(_, v)| *v);
                if drops > 0 {
                    warn!(drops, "kernel events were dropped (ring buffer full)");
                }
                info!(counters = %line.join(" "), "stats");
            }
            res = &mut server => {
                // The API is how sessions register: without it the daemon must not run.
                match res {
                    Ok(Ok(())) => anyhow::bail!("gRPC server stopped unexpectedly"),
                    Ok(Err(e)) => return Err(anyhow::Error::new(e).context("gRPC server")),
                    Err(e) => anyhow::bail!("gRPC server task failed: {e}"),
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("shutting down");
    // Emit what is still buffered, then stop the API.
    let all = Watermarks {
        ebpf: Some(Instant::now()),
        fanotify: Some(Instant::now()),
    };
    for event in pipeline.flush(
        Instant::now() + Duration::from_secs(3600),
        &all,
        &shared.registry,
    ) {
        let _ = sink.emit(&event);
    }
    let _ = sink.flush();
    let _ = shared.registry.flush();
    if let Some(g) = &gate {
        g.stop().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}
