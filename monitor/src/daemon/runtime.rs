//! The event loop: waits on its sources (the kernel's ring buffer, fanotify, the flush
//! cadence, the stats period, the gRPC server, signals) with one method for each, and
//! hands what the pipeline emits to the consumers.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::Signal, sync::oneshot, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    GateRuntime,
    cadence::Cadence,
    consumers::Consumers,
    reload::{Parts, ReloadAsk, Reloader},
    sdnotify::{Probe, SdNotify},
    shared::{Shared, lock},
};
use crate::{
    api::{RpcError, server::DaemonApi},
    kernel::decode::decode,
    metrics::Metrics,
    notify::{FanEvent, FanotifyError, NotifyWatcher},
    observe::{
        correlate::Watermarks,
        pipeline::{Action, Pipeline},
    },
    sessions::{NewSession, SessionSource},
};

/// The running daemon.
pub(super) struct Runtime {
    /// The kernel's ring buffer. Apart from [`Core`]: while its records are handled, the
    /// readiness guard borrows it.
    pub(super) ring: AsyncFd<RingBuf<MapData>>,
    pub(super) core: Core,
    /// Seconds between stats lines (0: none).
    pub(super) stats_every: u64,
    pub(super) stats_tick: tokio::time::Interval,
    pub(super) signals: Signals,
    pub(super) server: Server,
    /// Ledger records on their way to the outputs (see `event::audit`).
    pub(super) audit: tokio::sync::mpsc::Receiver<crate::event::audit::AuditEvent>,
    /// Operations confined sessions' supervisors answered themselves.
    pub(super) supervised: tokio::sync::mpsc::Receiver<crate::observe::supervised::Supervised>,
    /// The systemd watchdog's questions to this loop, and the task that asks them.
    pub(super) probe: Arc<Probe>,
    pub(super) watchdog: Option<JoinHandle<()>>,
    /// The Prometheus endpoint, when configured (stops when dropped).
    pub(super) metrics_endpoint: Option<crate::prom::server::Endpoint>,
    /// Reloads asked over the API (SIGHUP is in `signals`).
    pub(super) reloads: tokio::sync::mpsc::Receiver<ReloadAsk>,
    pub(super) reloader: Reloader,
}

pub(super) struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    pub(super) hup: Signal,
}

/// The gRPC server's task, and how to tell it to stop.
pub(super) struct Server {
    pub(super) task: JoinHandle<Result<(), RpcError>>,
    pub(super) stop: oneshot::Sender<()>,
}

/// What the loop's arms act on.
pub(super) struct Core {
    shared: Arc<Shared>,
    pipeline: Pipeline,
    fan: NotifyWatcher,
    consumers: Consumers,
    gate: Option<Arc<GateRuntime>>,
    metrics: Arc<Metrics>,
    cadence: Cadence,
    /// systemd's notification socket (when there is one).
    sd: Arc<SdNotify>,
    /// Record count at the last tick.
    records_at_tick: u64,
    /// Record counts at the last session sweep and at the last heap trim.
    records_at_sweep: u64,
    records_at_trim: u64,
}

/// Ring-buffer records read per wake-up before the event loop serves its other sources.
const RING_BATCH: usize = 4096;
/// Records read by one flush tick at most (its watermark needs a complete drain).
const RING_TICK_LIMIT: usize = 1 << 18;

impl Runtime {
    /// Runs until a termination signal (or until the gRPC server stops, an error).
    pub(super) async fn run(mut self) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("ring buffer poll")?;
                    // A full batch leaves the readiness set: the loop serves its other
                    // sources (supervised operations, signals, the API) and comes back.
                    if self.core.on_ring(guard.get_inner_mut(), RING_BATCH) {
                        guard.clear_ready();
                    }
                    self.core.cadence.activity(Instant::now());
                }
                batch = self.core.fan.next_batch() => self.core.on_fanotify(batch),
                Some(a) = self.audit.recv() => self.core.consumers.on_audit(&a),
                Some(op) = self.supervised.recv() => {
                    self.core.pipeline.on_supervised(op);
                    self.core.cadence.activity(Instant::now());
                }
                _ = self.core.cadence.tick() => self.core.on_tick(self.ring.get_mut()),
                _ = self.stats_tick.tick(), if self.stats_every > 0 => self.core.on_stats(),
                _ = self.probe.asked() => self.probe.answer(),
                res = &mut self.server.task => return Err(server_stopped(res)),
                _ = self.signals.hup.recv() => self.reload(None).await,
                Some(ask) = self.reloads.recv() => self.reload(Some(ask)).await,
                _ = self.signals.term.recv() => break,
                _ = self.signals.int.recv() => break,
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Re-reads the configuration (see `reload`). Events still buffered are emitted
    /// first, to the events file open until now and by the rules in force when they
    /// were observed.
    async fn reload(&mut self, ask: Option<ReloadAsk>) {
        self.core.on_tick(self.ring.get_mut());
        let core = &mut self.core;
        let parts = Parts {
            shared: &core.shared,
            pipeline: &mut core.pipeline,
            fan: &mut core.fan,
            consumers: &mut core.consumers,
            gate: core.gate.as_ref(),
        };
        self.reloader.reload(parts, ask).await;
    }

    /// Emit what is still buffered, then stop the gate and the API.
    async fn shutdown(self) {
        info!("shutting down");
        let Runtime {
            mut core,
            server,
            watchdog,
            metrics_endpoint,
            mut audit,
            ..
        } = self;
        drop(metrics_endpoint);
        core.sd.stopping();
        if let Some(w) = watchdog {
            w.abort();
        }
        let all = Watermarks {
            ebpf: Some(Instant::now()),
            fanotify: Some(Instant::now()),
        };
        for event in core.pipeline.flush(
            Instant::now() + Duration::from_secs(3600),
            &all,
            &core.shared.registry,
        ) {
            core.consumers.on_final_event(&event);
        }
        let _ = core.shared.registry.flush();
        if let Some(g) = &core.gate {
            g.stop().await;
        }
        // The ledger's last records (`daemon_stopped` among them) before the outputs close.
        while let Ok(a) = audit.try_recv() {
            core.consumers.on_audit(&a);
        }
        core.consumers.close();
        let _ = server.stop.send(());
        let _ = server.task.await;
    }
}

/// The gRPC server stopped: the API is how sessions register, so the daemon must not run
/// without it.
fn server_stopped(res: Result<Result<(), RpcError>, tokio::task::JoinError>) -> anyhow::Error {
    match res {
        Ok(Ok(())) => anyhow::anyhow!("gRPC server stopped unexpectedly"),
        Ok(Err(e)) => anyhow::Error::new(e).context("gRPC server"),
        Err(e) => anyhow::anyhow!("gRPC server task failed: {e}"),
    }
}

impl Core {
    pub(super) fn new(
        shared: Arc<Shared>,
        pipeline: Pipeline,
        fan: NotifyWatcher,
        consumers: Consumers,
        gate: Option<Arc<GateRuntime>>,
        cadence: Cadence,
        sd: Arc<SdNotify>,
    ) -> Self {
        let metrics = shared.metrics.clone();
        Core {
            shared,
            pipeline,
            fan,
            consumers,
            gate,
            metrics,
            cadence,
            sd,
            records_at_tick: 0,
            records_at_sweep: 0,
            records_at_trim: 0,
        }
    }

    /// The ring buffer is readable: process up to `limit` records now. Returns whether it
    /// was drained (false: `limit` records were read and more may wait).
    fn on_ring(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> bool {
        for _ in 0..limit {
            let Some(item) = ring.next() else {
                return true;
            };
            let decoded = decode(&item);
            drop(item);
            match decoded {
                Ok(rec) => {
                    let actions = self.pipeline.on_record(rec);
                    self.act(actions);
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.decode_errors);
                    debug!(error = %e, "undecodable ring-buffer record");
                }
            }
        }
        false
    }

    /// A batch of fanotify events arrived.
    fn on_fanotify(&mut self, batch: Result<Vec<FanEvent>, FanotifyError>) {
        match batch {
            Ok(events) => {
                for ev in events {
                    self.fanotify_event(ev);
                }
            }
            Err(e) => warn!(error = %e, "fanotify read failed"),
        }
        let s = self.fan.stats();
        self.metrics
            .fanotify_overflows
            .store(s.overflows, Ordering::Relaxed);
        self.metrics
            .fanotify_unresolved
            .store(s.unresolved, Ordering::Relaxed);
        self.cadence.activity(Instant::now());
    }

    /// One fanotify event: to the consumers, then to the pipeline.
    fn fanotify_event(&mut self, ev: FanEvent) {
        let session = self.pipeline.session_of(ev.pid);
        self.consumers.on_fanotify(&ev, session);
        self.pipeline.on_fanotify(ev);
    }

    /// The flush cadence ticked: drain both sources so that every twin of a buffered
    /// observation is known (see `observe::correlate`), emit what is complete, and do the
    /// periodic duties when they are due.
    fn on_tick(&mut self, ring: &mut RingBuf<MapData>) {
        let ebpf_mark = Instant::now();
        // The eBPF watermark says "everything before it was read": only a complete drain
        // may set it. Under a producer faster than the daemon the drain is cut, the mark
        // stays unset and buffered observations wait (or are released as `forced`).
        let ring_drained = self.on_ring(ring, RING_TICK_LIMIT);
        let fan_mark = Instant::now();
        let mut drained = 0usize;
        match self.fan.drain() {
            Ok(events) => {
                for ev in events {
                    drained += 1;
                    self.fanotify_event(ev);
                }
            }
            Err(e) => warn!(error = %e, "fanotify read failed"),
        }
        let marks = Watermarks {
            ebpf: ring_drained.then_some(ebpf_mark),
            fanotify: Some(fan_mark),
        };
        let consumers = &mut self.consumers;
        self.pipeline.flush_each(
            Instant::now(),
            &marks,
            &self.shared.registry,
            &mut |event| consumers.on_event(&event),
        );
        self.consumers.flushed();
        let now = Instant::now();
        let records = self.metrics.records.load(Ordering::Relaxed);
        let quiet = drained == 0 && records == self.records_at_tick && self.pipeline.is_quiet();
        self.records_at_tick = records;
        self.cadence.ticked(now, quiet);
        if self.cadence.sweep_due(now) {
            // An exit record lost to a full ring buffer would keep its process a member,
            // and its session (with its host-wide marks, and its end record unwritten)
            // alive forever: members the kernel no longer has are marked exited here.
            let (forget, lost) = self
                .pipeline
                .reap_vanished(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if lost > 0 {
                self.metrics
                    .exits_lost
                    .fetch_add(lost as u64, Ordering::Relaxed);
                warn!(
                    lost,
                    "session processes exited without their exit record (ring buffer full): marked exited"
                );
                self.act(forget);
            }
            let sessions = self.shared.registry.live();
            let live: Vec<u64> = sessions.iter().map(|s| s.id).collect();
            // The process table learns a new session's members from their first kernel
            // records; until then a session just registered has none there. Its root is
            // alive while the kernel's session map still tags it (the entry goes at exit):
            // such a session has not ended.
            let ended: Vec<Action> = {
                let k = lock(&self.shared.kernel);
                self.pipeline
                    .ended_sessions(&live)
                    .into_iter()
                    .filter(|a| match a {
                        Action::SessionEnded(id) => !sessions
                            .iter()
                            .any(|s| s.id == *id && k.session_of(s.root_pid) == *id),
                        _ => true,
                    })
                    .collect()
            };
            self.act(ended);
            // A burst is over (no record for a second): give its heap back.
            if records == self.records_at_sweep && records != self.records_at_trim {
                crate::os::memory::trim_heap();
                self.records_at_trim = records;
            }
            self.records_at_sweep = records;
        }
    }

    /// The stats period: drop state of exited processes, persist session counters, and
    /// log the counters.
    fn on_stats(&mut self) {
        self.pipeline.gc(Instant::now());
        if let Err(e) = self.shared.registry.flush() {
            warn!(error = %e, "persisting session counters");
        }
        let c = self.pipeline.correlator().stats();
        let m = &self.metrics;
        m.correlated_merged.store(c.merged, Ordering::Relaxed);
        m.correlated_folded.store(c.folded, Ordering::Relaxed);
        m.attrib_ignored.store(c.attrib_ignored, Ordering::Relaxed);
        m.correlation_forced.store(c.forced, Ordering::Relaxed);
        m.correlation_parked_expired
            .store(c.parked_expired, Ordering::Relaxed);
        m.correlation_scan_limited
            .store(c.scan_limited, Ordering::Relaxed);
        let stats = self.shared.stats();
        let line: Vec<String> = stats
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let drops = stats
            .iter()
            .find(|(n, _)| n == "kernel_ringbuf_drops")
            .map_or(0, |(_, v)| *v);
        if drops > 0 {
            warn!(drops, "kernel events were dropped (ring buffer full)");
        }
        info!(counters = %line.join(" "), "stats");
        if self.sd.active() {
            let live = self.shared.registry.live().len();
            let unconfined = self.shared.registry.live_unconfined().len();
            self.sd.status(&format!(
                "{live} live sessions ({} confined), {} events",
                live - unconfined,
                m.events_emitted.load(Ordering::Relaxed)
            ));
        }
    }

    /// Work the pipeline asks of the daemon.
    fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Detected {
                    pid,
                    uid,
                    detection,
                } => {
                    let (command, cwd) = self.pipeline.command_of(pid);
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
                        scope: detection.scope.clone(),
                    };
                    match self.shared.registry.create(new) {
                        Ok(info) => {
                            Metrics::inc(&self.metrics.sessions_detected);
                            let shared = &self.shared;
                            self.pipeline
                                .tag_descendants(pid, info.id, |m| shared.tag(m, info.id));
                            info!(session = info.id, agent = %info.agent, pid, rule = %detection.rule, "agent detected");
                            self.shared.record_start(&info, false);
                        }
                        Err(e) => warn!(pid, error = %e, "could not create a detected session"),
                    }
                }
                Action::ForgetFds { tgid, fds } => {
                    let mut k = lock(&self.shared.kernel);
                    for fd in fds {
                        k.forget_fd(tgid, fd as u32);
                    }
                }
                Action::SessionEnded(id) => {
                    debug!(session = id, "last session member exited");
                    if let Err(e) = self.shared.registry.end(id) {
                        warn!(session = id, error = %e, "could not record session end");
                    }
                    self.shared.record_end(id);
                    if let Some(g) = &self.gate {
                        g.on_session_ended(id);
                    }
                    self.sd.session_ended(id);
                }
            }
        }
    }
}
