//! Start-up: everything the daemon runs with, built from the configuration in an order
//! that matters (the state directory before the store, the store before the sessions, the
//! gate's policy before the watch set it widens, the kernel programs before the pipeline
//! that reads them, the sessions restored before the gate asks for them, the API last).
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::broadcast};
use tracing::{debug, info, warn};

use super::{
    GateRuntime,
    cadence::Cadence,
    consumers::{Consumers, Counted, Gated, Output},
    gate,
    reload::{ATTRIB_PRIME_LIMIT, Reloader},
    runtime::{Core, Runtime, Server, Signals},
    sdnotify::{Probe, SdNotify},
    shared::Shared,
};
use crate::{
    api::server::DaemonApi,
    config::{ApprovalMode, Config, watch::WatchSet},
    event::audit::AuditQueue,
    gate::session::{handoff, resume},
    kernel::{AttachReport, Kernel, KernelSettings},
    metrics::Metrics,
    notify::NotifyWatcher,
    observe::{pipeline::Pipeline, procs::detect::Detector, sink::Sink},
    policy::Policy,
    sessions::SessionRegistry,
    store::Store,
};

const BROADCAST_CAPACITY: usize = 8192;

/// Builds everything from `cfg`, ready to run. `config_path` is the configuration file in
/// use (protected by the gate's built-in rule even when it does not exist).
pub(super) async fn start(mut cfg: Config, config_path: &Path) -> anyhow::Result<Runtime> {
    let started = Instant::now();
    // First: descriptors systemd passed back (session listeners) are ours from exec on.
    let passed_back = resume::restored_listeners().unwrap_or_else(|e| {
        warn!(error = %e, "cannot take the descriptors the service manager passed back");
        resume::Restored::default()
    });
    let metrics = Arc::new(Metrics::default());
    // The configuration as the file says, before the gate's roots join the watch paths:
    // what a reload compares the file with.
    let as_loaded = cfg.clone();
    let (store, registry) = open_state(&cfg.daemon.state_dir)?;
    let policy = gate_policy(&mut cfg, config_path)?;
    let mark_roots = policy.as_ref().map(Policy::mark_roots).unwrap_or_default();
    let watch = WatchSet::new(&cfg.watch).context("watch set")?;
    let detector = Detector::new(&cfg.detect).context("detect rules")?;
    let Loaded {
        kernel,
        report,
        prefixes,
        ringbuf,
    } = load_kernel(&cfg, &watch)?;

    let mut pipeline = Pipeline::new(
        watch,
        detector,
        Duration::from_millis(cfg.correlation.window_ms),
        metrics.clone(),
    );
    let processes = pipeline.scan_procfs();
    let fan = watch_files(&cfg, &mut pipeline)?;

    let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
    let sink = Sink::open(
        &cfg.output.events_file,
        cfg.output.stdout,
        cfg.output.format,
        tx.clone(),
    )
    .context("events output")?;
    let (reloads_tx, reloads) = tokio::sync::mpsc::channel(RELOAD_QUEUE);
    // Ledger records on their way to the outputs (see event::audit).
    let (audit_queue, audit) = AuditQueue::new(crate::event::audit::QUEUE);
    let shared = Arc::new(shared(
        &cfg,
        kernel,
        registry,
        &metrics,
        (tx, audit_queue.counters()),
        reloads_tx,
    )?);
    restore_sessions(&shared, &mut pipeline);
    let resuming = passed_back.listeners.iter().map(|(s, _)| *s).collect();
    let gate = start_gate(&cfg, policy, &store, &shared, resuming, audit_queue).await?;
    let sd = SdNotify::new(metrics.clone(), store.clone());
    let (resumed, holds) = attach_restored(&shared, &store, passed_back);
    if let Some(g) = &gate {
        // Requests of restored sessions whose held operation did not come back.
        g.engine().close_unresumed(&holds).await;
    }
    let confine = start_handoff(&cfg, config_path, &mark_roots, &shared);
    let server = serve_api(&cfg, &shared).await?;
    let metrics_endpoint = serve_metrics(&cfg, &shared).await?;

    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both
    // are dropped together, with the runtime.
    let ring = unsafe { AsyncFd::register(ringbuf) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let cadence = Cadence::new(Instant::now());
    let stats_every = cfg.output.stats_interval_secs;
    let stats_tick = tokio::time::interval(Duration::from_secs(stats_every.max(1)));
    let signals = Signals {
        term: tokio::signal::unix::signal(SignalKind::terminate())?,
        int: tokio::signal::unix::signal(SignalKind::interrupt())?,
        hup: tokio::signal::unix::signal(SignalKind::hangup())?,
    };
    // Start-up (the eBPF loader above all) freed ~12 MiB of heap: give it back, and unmap
    // the code that start-up ran (see memory::forget_code).
    crate::os::memory::trim_heap();
    crate::os::memory::forget_code();
    info!(
        programs = report.attached.len(),
        prefixes,
        marks = fan.marks(),
        processes,
        socket = %cfg.daemon.socket.display(),
        events_file = %cfg.output.events_file.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "confgate ready"
    );
    sd.ready(&format!(
        "ready: {} fanotify marks, {} live sessions, {} session listeners resumed",
        fan.marks(),
        shared.registry.live().len(),
        resumed
    ));
    let probe = Probe::new("event loop");
    let watchdog = sd.start_watchdog(vec![probe.clone()], Vec::new());

    // What is done with each event, in this order.
    let mut consumers = Consumers::default();
    consumers.add(Counted(metrics.clone()));
    if let Some(g) = &gate {
        consumers.add(Gated(g.clone()));
    }
    consumers.add(Output {
        sink,
        metrics: metrics.clone(),
    });
    if let Some(n) = super::nats::start(&cfg, &shared).context("[output.nats]")? {
        consumers.add(super::nats::Published::new(n, &cfg));
    }
    // Operations the session supervisors perform themselves are observed through them.
    let (supervised_tx, supervised) = tokio::sync::mpsc::channel(SUPERVISED_QUEUE);
    if let Some(g) = &gate {
        g.supervisors().observe_into(supervised_tx);
    }
    Ok(Runtime {
        ring,
        audit,
        supervised,
        core: Core::new(shared, pipeline, fan, consumers, gate, cadence, sd),
        stats_every,
        stats_tick,
        signals,
        server,
        probe,
        watchdog,
        metrics_endpoint,
        reloads,
        reloader: Reloader::new(config_path, as_loaded, confine),
    })
}

/// The Prometheus endpoint (`[metrics] listen`), when configured: it reads what
/// `confgate stats` reads ([`DaemonApi::stats`]).
async fn serve_metrics(
    cfg: &Config,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<crate::prom::server::Endpoint>> {
    let Some(addr) = cfg.metrics.address() else {
        return Ok(None);
    };
    let s = shared.clone();
    let exporter =
        crate::prom::Exporter::new(crate::prom::Service::Daemon, Arc::new(move || s.stats()));
    Ok(Some(
        crate::prom::server::start(addr, Arc::new(exporter)).await?,
    ))
}

/// Reloads asked over the API and not yet taken by the event loop.
const RELOAD_QUEUE: usize = 4;

/// Reports of supervised operations waiting for the event pipeline.
const SUPERVISED_QUEUE: usize = 4096;

/// The state directory (made 0700), the store in it and the sessions it holds.
fn open_state(state_dir: &Path) -> anyhow::Result<(Store, SessionRegistry)> {
    match crate::state::secure_dir(state_dir)? {
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
            crate::gate::session::resume::SPECS.name(),
        ] {
            tx.ensure_table(table)?;
        }
        Ok(())
    })
    .with_context(|| format!("opening store {}", store_path.display()))?;
    ledger_damage(state_dir);
    let registry = SessionRegistry::open(store.clone()).context("loading sessions")?;
    Ok((store, registry))
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

/// The gate's policy if the gate is enabled; what it holds is also watched (events,
/// kernel prefixes), so its roots join `cfg.watch.paths`.
fn gate_policy(cfg: &mut Config, config_path: &Path) -> anyhow::Result<Option<Policy>> {
    if !cfg.gate.enabled {
        return Ok(None);
    }
    let policy = gate::compile_policy(cfg, config_path)?;
    for root in gate::watched_roots(&policy, cfg) {
        if !cfg.watch.paths.iter().any(|p| root.starts_with(p)) {
            cfg.watch.paths.push(root);
        }
    }
    Ok(Some(policy))
}

/// The kernel programs, loaded and given the watched prefixes, and their ring buffer.
struct Loaded {
    kernel: Kernel,
    report: AttachReport,
    /// Watched prefixes given to the kernel.
    prefixes: usize,
    ringbuf: RingBuf<MapData>,
}

fn load_kernel(cfg: &Config, watch: &WatchSet) -> anyhow::Result<Loaded> {
    let settings = KernelSettings {
        ringbuf_bytes: cfg.kernel.ringbuf_bytes,
        path_filter: cfg.kernel.path_filter,
        skip_programs: cfg.kernel.skip_programs.clone(),
    };
    let (mut kernel, report) = Kernel::load(&settings).context("loading eBPF programs")?;
    if !report.skipped.is_empty() {
        info!(programs = %report.skipped.join(" "), "eBPF programs skipped by kernel.skip_programs");
    }
    for (name, err) in &report.missing {
        warn!(program = %name, error = %err, "tracepoint not attached (not available on this kernel)");
    }
    let prefixes = watch.kernel_prefixes();
    for p in &prefixes {
        kernel.add_prefix(p).context("watched prefix")?;
    }
    let ringbuf = kernel.events.take().context("ring buffer already taken")?;
    Ok(Loaded {
        kernel,
        report,
        prefixes: prefixes.len(),
        ringbuf,
    })
}

/// The fanotify notification group, marking the pipeline's watched trees (whose files'
/// modes and owners are primed for classifying `ATTRIB`) and files.
fn watch_files(cfg: &Config, pipeline: &mut Pipeline) -> anyhow::Result<NotifyWatcher> {
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
    Ok(fan)
}

/// What the event loop and the gRPC handlers share.
fn shared(
    cfg: &Config,
    kernel: Kernel,
    registry: SessionRegistry,
    metrics: &Arc<Metrics>,
    (tx, audit): (
        broadcast::Sender<Arc<str>>,
        Arc<crate::event::audit::AuditCounters>,
    ),
    reloads: tokio::sync::mpsc::Sender<super::shared::ReloadAsk>,
) -> anyhow::Result<Shared> {
    Ok(Shared {
        audit,
        supervisors: Arc::new(crate::gate::session::Supervisors::default()),
        state_dir: cfg.daemon.state_dir.clone(),
        reloads,
        credential_env: super::session_record::credential_matcher(&cfg.daemon.credential_env),
        exits: Default::default(),
        kernel: Mutex::new(kernel),
        registry,
        metrics: metrics.clone(),
        tx,
        admin_gid: admin_gid(cfg.daemon.admin_group.as_deref())?,
        gate: std::sync::OnceLock::new(),
        nats: std::sync::OnceLock::new(),
        attestor: attestor(&cfg.daemon.state_dir, metrics),
        attest_host: match cfg.approval.mode {
            ApprovalMode::Remote => crate::approver::attest::host_name_for(
                cfg.approval.client_config().cert.as_deref(),
                crate::os::host::host_name(),
            ),
            ApprovalMode::Local => crate::os::host::host_name(),
        },
    })
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
        pipeline.tag_descendants(s.root_pid, s.id, |pid| shared.tag(pid, s.id));
        info!(session = s.id, agent = %s.agent, "session restored after restart");
    }
}

/// Starts the gate if it is enabled (`policy`), after the kernel programs and sessions.
async fn start_gate(
    cfg: &Config,
    policy: Option<Policy>,
    store: &Store,
    shared: &Arc<Shared>,
    resuming: std::collections::HashSet<u64>,
    audit: AuditQueue,
) -> anyhow::Result<Option<Arc<GateRuntime>>> {
    if let Some(policy) = policy {
        let oracle: Arc<dyn crate::approver::SessionOracle> = shared.clone();
        let g = GateRuntime::start(
            cfg,
            policy,
            store.clone(),
            shared.registry.clone(),
            &shared.kernel,
            oracle,
            gate::Attached {
                supervisors: shared.supervisors.clone(),
                resuming,
                audit: audit.tap(),
            },
        )
        .await?;
        let _ = shared.gate.set(Arc::new(g));
    } else {
        warn!("gate disabled (gate.enabled = false): writes are observed, never held");
    }
    Ok(shared.gate.get().cloned())
}

/// Serves the supervise socket, where `confgate-confine` hands a session's seccomp listener
/// over. Without it `confgate run` fails (closed); the daemon runs on. Returns the paths
/// new sessions are confined to, for reloads.
fn start_handoff(
    cfg: &Config,
    config_path: &Path,
    mark_roots: &[PathBuf],
    shared: &Shared,
) -> Option<handoff::ConfinePaths> {
    let (denied, hidden) = super::protected::confine_paths(cfg, config_path, mark_roots);
    let settings = handoff::HandoffSettings {
        socket: cfg.daemon.supervise_socket.clone(),
        denied,
        hidden,
    };
    match handoff::start(
        settings,
        shared.registry.clone(),
        shared.supervisors.clone(),
    ) {
        Ok((_, paths)) => Some(paths),
        Err(e) => {
            tracing::error!(
                socket = %cfg.daemon.supervise_socket.display(),
                error = %e,
                "cannot serve the supervise socket: `confgate run` sessions cannot be confined (they fail unless run with --no-confine)"
            );
            None
        }
    }
}

/// Binds the gRPC API's socket (connections queue from here on: the daemon may say it is
/// ready) and serves it until told to stop.
async fn serve_api(cfg: &Config, shared: &Arc<Shared>) -> anyhow::Result<Server> {
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api: Arc<dyn DaemonApi> = shared.clone();
    let bound = crate::api::server::bind(&cfg.daemon.socket, cfg.daemon.socket_mode)
        .await
        .context("gRPC API socket")?;
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        bound.serve(api, shutdown).await
    });
    Ok(Server { task, stop })
}

/// Attaches again the session listeners systemd passed back (`passed_back`), each paired
/// with its spec and live session; the others are closed. Returns how many were attached.
/// A listener that cannot be attached is closed and taken out of the descriptor store:
/// its session's notified syscalls then fail (closed) instead of waiting for a supervisor
/// that never comes.
fn attach_restored(
    shared: &Shared,
    store: &Store,
    passed_back: resume::Restored,
) -> (usize, Vec<u64>) {
    let m = &shared.metrics;
    let resumed = resume::pair(passed_back, store, &shared.registry);
    m.fdstore_discarded
        .fetch_add(resumed.discarded, std::sync::atomic::Ordering::Relaxed);
    let mut attached = 0;
    for a in resumed.attach {
        Metrics::inc(&m.fdstore_restored);
        let session = a.session;
        match shared.supervisors.attach(a) {
            Ok(()) => {
                shared.registry.mark_confined(session);
                info!(session, "resumed supervising the session after a restart");
                attached += 1;
            }
            Err(e) => {
                Metrics::inc(&m.fdstore_attach_errors);
                tracing::error!(session, error = %e, "cannot supervise a restored session listener; its notified syscalls will fail");
                if let Err(e) = resume::remove_listener(session) {
                    warn!(session, error = %e, "cannot remove the listener from the descriptor store");
                }
            }
        }
    }
    // Held operations of the restored sessions: answered again, or counted lost.
    // Their requests are closed and ledgered (`hold_lost`) by the engine when no operation
    // came back for them, damaged records included.
    let r = shared.supervisors.resume_holds();
    if !r.requests.is_empty() || r.lost > 0 || r.unreadable > 0 {
        info!(
            resumed = r.requests.len(),
            lost = r.lost,
            unreadable = r.unreadable,
            "held operations after the restart"
        );
    }
    (attached, r.requests)
}
