//! The listener: a dedicated OS thread that reads the permission group's events and
//! answers each one, at once or by handing it to the engine as a [`Held`].
//!
//! Per event, in this order (each step only when the previous did not answer):
//! 1. the opener is this process (its tid, or its tgid once known) → `FAN_ALLOW`
//!    (`allowed_self`): the daemon opens gated files itself to revert and diff them;
//! 2. the eBPF `PENDING` entry of the tid gives the write intent, session and tgid; without
//!    one, the session comes from `SESSIONS` (see [`IntentSource::opener`]);
//! 3. an opener outside any session → `FAN_ALLOW` (`allowed_fast`), unless the decider
//!    gates such processes too ([`Decider::wants_proc_fallback`]): then a write intent
//!    (from `PENDING`, else `/proc/<tid>/syscall`) goes on to the decider, anything else is
//!    allowed;
//! 4. a session member without a `PENDING` entry (a read-only open, or one whose entry is
//!    missing) → its intent is read from `/proc/<tid>/syscall`;
//! 5. the path is read (`readlinkat` of N in a kept `/proc/self/fd`) and the [`Decider`] answers `Allow`,
//!    `Deny`, or `Defer { fail }`; a deferred event is sent to the engine over a bounded
//!    channel as a [`Held`], and a full or closed channel applies `fail` at once (counted).
//!
//! So a read-only open by a process outside sessions costs two map lookups and one
//! `pidfd_open`, with no path lookup and no procfs text. The thread never touches the disk,
//! never logs (a second thread reports counter increases once a second) and never waits on
//! the network; its only blocking call is `poll` on the group.
//!
//! If the daemon dies, the kernel closes the group and allows every pending and queued
//! event: held writes go through unchecked (see the module docs of [`crate::gate`]).
use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{Sender, error::TrySendError};
use tracing::{debug, info, warn};

use super::group::PermGroup;
use super::intent::{self, Intent, IntentSource, Opener};
use super::watchdog::{EpisodeSink, Inflight, Watchdog};
use super::{GateCounters, GateError, Verdict};
use crate::os::fanotify::{FdEvent, parse_fd_events};
use crate::os::limits::raise_nofile_limit;
use crate::os::poll::{eventfd, eventfd_signal, poll_readable};
use crate::os::procfs::FdPaths;

/// Bytes read from the group at once (a permission event is 24 bytes; every event read
/// costs one descriptor until it is answered).
const READ_BUF: usize = 8192;
/// After `stop` removed the marks, queued events are drained until the group has been
/// quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// Policy's side of the gate, called on the listener thread.
///
/// `decide` must answer from memory, quickly: it must never do disk or network I/O, log to
/// a file, or wait on a lock that another thread may hold while it opens a file (that
/// thread's open may be the very event waiting for this answer: a deadlock that also blocks
/// every gated open on the host). Read snapshots (`Arc` swaps, `RwLock` read guards that
/// writers hold only briefly) are fine. A panic is caught and answered `Deny`.
pub trait Decider: Send + Sync {
    /// Decide an open. Called for every open by a session member (reads included: some
    /// paths are denied to sessions even for reading) and, when
    /// [`wants_proc_fallback`](Decider::wants_proc_fallback) is true, for write opens by
    /// processes outside sessions.
    fn decide(&self, event: &PermEvent) -> FastVerdict;

    /// True when policy also gates processes outside sessions: their write opens are then
    /// decided, with the intent from `PENDING` when the kernel's path filter matched, else
    /// from `/proc/<tid>/syscall`. False (the default): every open by a process outside a
    /// session is allowed on the fast path.
    fn wants_proc_fallback(&self) -> bool {
        false
    }

    /// A confined session's supervisor refused an operation on `path` by process `pid`
    /// because it is outside the session's declared scope (already answered `EACCES`):
    /// the decider records it (the gate's ledger). Default: nothing to record.
    fn scope_denied(&self, _session: u64, _pid: u32, _path: &[u8]) {}

    /// The verdict the watchdog applies to an open the listener did not answer in time
    /// (see [`super::watchdog`]); called on the watchdog's thread, from memory. `session`:
    /// the opener's (0: none); `write`: its write intent if the eBPF `PENDING` map had it.
    /// Default: `Deny` for session members and, when policy gates processes outside
    /// sessions, for their known write opens; `Allow` otherwise.
    fn stall_verdict(&self, session: u64, write: Option<bool>) -> Verdict {
        if session != 0 || (write == Some(true) && self.wants_proc_fallback()) {
            Verdict::Deny
        } else {
            Verdict::Allow
        }
    }
}

/// The decider's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastVerdict {
    /// Answer `FAN_ALLOW` now.
    Allow,
    /// Answer `FAN_DENY` now (the open fails with `EPERM`).
    Deny,
    /// Hand the event to the engine; `fail` is applied if it cannot be handed over (channel
    /// full or closed) or is dropped unanswered.
    Defer {
        /// The failure verdict.
        fail: Verdict,
    },
}

/// An open held in a permission wait that needs a decision.
#[derive(Debug)]
pub struct PermEvent {
    /// The event descriptor: the file being opened, opened read-only by the kernel for us
    /// (no permission event of its own). Read the pre-image from it
    /// ([`super::preimage::capture`]); never open the path instead.
    pub fd: OwnedFd,
    /// Thread id of the opener.
    pub tid: u32,
    /// Process of the opener (0 when unknown: it exited).
    pub tgid: u32,
    /// Agent session of the opener (0 = none).
    pub session: u64,
    /// The path the opener opened, exact bytes from `readlink /proc/self/fd/N` (ends with
    /// `" (deleted)"` if the file was unlinked meanwhile; empty when it could not be read,
    /// counted in `readlink_errors`).
    pub path: Vec<u8>,
    /// The open's flags and origin (`None`: not an open-family syscall, e.g. exec or
    /// io_uring, or procfs could not tell).
    pub intent: Option<Intent>,
    /// When the listener read the event.
    pub received: Instant,
    /// Set for an operation held by a session supervisor (not a fanotify open): what it
    /// does and whether its target existed. `fd` is then the target opened read-only by
    /// the daemon when it is a regular file (else `/dev/null`).
    pub op: Option<OpFacts>,
}

/// What a session supervisor knows of a held operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpFacts {
    /// The operations on the path.
    pub ops: crate::policy::OpSet,
    /// Whether the path existed when the operation was held (`false`: it creates it).
    pub existed: bool,
    /// The syscall's short name (`unlink`, `rename`, ...).
    pub name: &'static str,
    /// A hold taken again after a daemon restart: the request it filed then.
    pub resumes: Option<u64>,
}

/// Answers a supervised operation (see [`Held::for_op`]): `Allow` performs it on the
/// caller's behalf, `Deny` fails it with `EPERM`. Called once.
pub trait OpAnswer: Send + Sync + std::fmt::Debug {
    /// Answer `verdict`.
    fn answer(&mut self, verdict: Verdict) -> std::io::Result<()>;

    /// What must be recorded, with request `request_id`, for a restarted daemon to answer
    /// this operation (key and JSON record), if anything.
    fn hold_record(&self, request_id: u64) -> Option<(u64, serde_json::Value)> {
        let _ = request_id;
        None
    }
}

impl PermEvent {
    /// The path as a `Path` (bytes unchanged).
    pub fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path))
    }

    /// Whether the open carries a known write intent.
    pub fn is_write(&self) -> bool {
        self.op.is_some() || self.intent.is_some_and(|i| i.write)
    }
}

/// A deferred event: owns the event descriptor and the duty to answer. Answer it with
/// [`allow`](Held::allow), [`deny`](Held::deny) or [`answer`](Held::answer); dropping it
/// unanswered answers its failure verdict (counted in `held_dropped_fallback`), so an
/// opener is never left waiting by a lost value. It keeps the group open while it lives.
#[derive(Debug)]
pub struct Held {
    event: PermEvent,
    fail: Verdict,
    to: AnswerTo,
    answered: bool,
    /// Its ticket in [`super::held_now`].
    ticket: u64,
}

/// Where a held event's answer goes.
#[derive(Debug)]
enum AnswerTo {
    /// The fanotify group (the event's descriptor names the event).
    Group(Arc<PermGroup>),
    /// A session supervisor.
    Op(Box<dyn OpAnswer>),
}

impl Held {
    fn new(event: PermEvent, fail: Verdict, group: Arc<PermGroup>) -> Self {
        Self {
            ticket: super::held_now::enter(event.received),
            event,
            fail,
            to: AnswerTo::Group(group),
            answered: false,
        }
    }

    /// An operation held by a session supervisor (`event.op` is set); dropped unanswered,
    /// it gets `fail`.
    pub fn for_op(event: PermEvent, fail: Verdict, answer: Box<dyn OpAnswer>) -> Self {
        Self {
            ticket: super::held_now::enter(event.received),
            event,
            fail,
            to: AnswerTo::Op(answer),
            answered: false,
        }
    }

    /// What a restarted daemon needs to answer this hold (supervised operations only).
    pub fn hold_record(&self, request_id: u64) -> Option<(u64, serde_json::Value)> {
        match &self.to {
            AnswerTo::Op(a) => a.hold_record(request_id),
            AnswerTo::Group(_) => None,
        }
    }

    /// The held open.
    pub fn event(&self) -> &PermEvent {
        &self.event
    }

    /// The verdict applied if this is dropped unanswered.
    pub fn fail_verdict(&self) -> Verdict {
        self.fail
    }

    /// Let the open proceed.
    pub fn allow(self) -> Result<(), GateError> {
        self.answer(Verdict::Allow)
    }

    /// Fail the open with `EPERM`.
    pub fn deny(self) -> Result<(), GateError> {
        self.answer(Verdict::Deny)
    }

    /// Answer `verdict`. An error means the kernel did not take the answer (typically
    /// `ENOENT`: the opener was killed and the event is gone); it is counted too.
    pub fn answer(mut self, verdict: Verdict) -> Result<(), GateError> {
        self.answered = true;
        crate::prom::histograms::observe_since(
            &crate::prom::histograms::GATE_DECISION,
            self.event.received,
        );
        match &mut self.to {
            AnswerTo::Group(g) => respond(g, &self.event.fd, verdict),
            AnswerTo::Op(a) => a.answer(verdict),
        }
        .map_err(GateError::Respond)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        super::held_now::leave(self.ticket);
        if self.answered {
            return;
        }
        self.answered = true;
        crate::prom::histograms::observe_since(
            &crate::prom::histograms::GATE_DECISION,
            self.event.received,
        );
        debug!(
            tid = self.event.tid,
            path = %self.event.path().display(),
            verdict = ?self.fail,
            "gate: held open dropped unanswered; applying its failure verdict"
        );
        match &mut self.to {
            AnswerTo::Group(g) => {
                GateCounters::add(&g.counters().held_dropped_fallback);
                let _ = respond(g, &self.event.fd, self.fail);
            }
            AnswerTo::Op(a) => {
                let _ = a.answer(self.fail);
            }
        }
    }
}

/// Write a decided verdict and count it (`allowed`/`denied`, `response_errors`).
fn respond(group: &PermGroup, fd: &OwnedFd, verdict: Verdict) -> std::io::Result<()> {
    let c = group.counters();
    GateCounters::add(match verdict {
        Verdict::Allow => &c.allowed,
        Verdict::Deny => &c.denied,
    });
    let r = group.respond(fd.as_fd(), verdict);
    if r.is_err() {
        GateCounters::add(&c.response_errors);
    }
    r
}

/// The watchdog of a listener (see [`super::watchdog`]).
pub struct WatchdogOptions {
    /// How long a read event may stay unanswered by the listener.
    pub deadline: Duration,
    /// Told when the watchdog takes over and when the listener recovers.
    pub sink: Option<EpisodeSink>,
}

/// A helper thread of the listener and how to stop it.
type Helper = Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>;

/// The running listener. [`stop`](Listener::stop) (or drop) ends it.
pub struct Listener {
    group: Arc<PermGroup>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    reporter: Helper,
    watchdog: Helper,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Listener {
    /// Start the listener thread on `group`. Deferred events go to `tx` (bounded; the
    /// receiver is typically an async task: the thread only ever calls `try_send`).
    ///
    /// Every event read holds one descriptor until answered, so the soft `RLIMIT_NOFILE`
    /// is raised to the hard limit here: when the kernel cannot install an event
    /// descriptor, it denies that open.
    pub fn start(
        group: Arc<PermGroup>,
        intent: Arc<IntentSource>,
        decider: Arc<dyn Decider>,
        tx: Sender<Held>,
    ) -> Result<Listener, GateError> {
        Self::start_with(group, intent, decider, tx, None)
    }

    /// [`start`](Listener::start) with a watchdog thread (`None`: none).
    pub fn start_with(
        group: Arc<PermGroup>,
        intent: Arc<IntentSource>,
        decider: Arc<dyn Decider>,
        tx: Sender<Held>,
        watchdog: Option<WatchdogOptions>,
    ) -> Result<Listener, GateError> {
        match raise_nofile_limit() {
            Ok((old, new)) if new > old => {
                info!(old, new, "gate: raised the open-file limit for held events");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "gate: cannot raise the open-file limit"),
        }
        let wake = Arc::new(eventfd().map_err(GateError::Start)?);
        let inflight = Arc::new(Inflight::default());
        let watchdog = match watchdog {
            Some(o) => {
                let dog = Watchdog {
                    group: group.clone(),
                    inflight: inflight.clone(),
                    intent: intent.clone(),
                    stall_verdict: {
                        let d = decider.clone();
                        Box::new(move |session, write| d.stall_verdict(session, write))
                    },
                    deadline: o.deadline,
                    sink: o.sink,
                };
                let (stop_tx, stop_rx) = std::sync::mpsc::channel();
                let h = std::thread::Builder::new()
                    .name("confgate-gate-dog".into())
                    .spawn(move || dog.run(&stop_rx))
                    .map_err(GateError::Start)?;
                Some((stop_tx, h))
            }
            None => None,
        };
        let worker = Worker {
            group: group.clone(),
            intent,
            decider,
            tx,
            inflight,
            self_pid: std::process::id(),
            buf: vec![0u8; READ_BUF],
            events: Vec::with_capacity(READ_BUF / 24),
            paths: RefCell::new(FdPaths::new()),
        };
        let w = wake.clone();
        let thread = std::thread::Builder::new()
            .name("confgate-gate".into())
            .spawn(move || worker.run(&w))
            .map_err(GateError::Start)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let g = group.clone();
        let reporter = std::thread::Builder::new()
            .name("confgate-gate-log".into())
            .spawn(move || report_loop(&g, &stop_rx));
        let reporter = match reporter {
            Ok(h) => Some((stop_tx, h)),
            Err(e) => {
                warn!(error = %e, "gate: no reporter thread; gate fallbacks are only counted");
                None
            }
        };
        Ok(Listener {
            group,
            wake,
            thread: Some(thread),
            reporter,
            watchdog,
        })
    }

    /// Stop: the thread removes every mark of the group (no new events), answers the
    /// events already queued (through the decider as usual) and exits. Held events stay
    /// answerable; the group descriptor closes when the last `Arc` (held events, `Marks`)
    /// is gone, and the kernel then allows whatever is still pending. Idempotent.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = eventfd_signal(self.wake.as_fd()) {
                warn!(error = %e, "gate: cannot wake the listener to stop it");
            }
            if t.join().is_err() {
                warn!("gate: the listener thread panicked");
            }
        }
        let helpers = [self.watchdog.take(), self.reporter.take()];
        for (tx, h) in helpers.into_iter().flatten() {
            drop(tx);
            let _ = h.join();
        }
    }

    /// Counters of the group (marks, listener, held events), with their names.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.group.counters().snapshot()
    }

    /// The group this listener reads.
    pub fn group(&self) -> &Arc<PermGroup> {
        &self.group
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    group: Arc<PermGroup>,
    intent: Arc<IntentSource>,
    decider: Arc<dyn Decider>,
    tx: Sender<Held>,
    /// The batch being handled, shared with the watchdog.
    inflight: Arc<Inflight>,
    self_pid: u32,
    buf: Vec<u8>,
    events: Vec<FdEvent>,
    /// Reads each event's path (`handle` takes `&self`).
    paths: RefCell<FdPaths>,
}

impl Worker {
    fn run(mut self, wake: &OwnedFd) {
        loop {
            match poll_readable([self.group.as_fd(), wake.as_fd()], None) {
                Ok([_, true]) => break,
                Ok([true, false]) => {
                    self.read_batch();
                }
                Ok([false, false]) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    GateCounters::add(&self.group.counters().read_errors);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if self.group.flush_marks().is_err() {
            GateCounters::add(&self.group.counters().mark_errors);
        }
        // Events queued before the flush, and any the kernel was queueing during it.
        loop {
            if self.read_batch() > 0 {
                continue;
            }
            match poll_readable([self.group.as_fd()], Some(DRAIN_QUIET)) {
                Ok([true]) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                _ => break,
            }
        }
    }

    /// Read and answer one batch. Returns the number of events handled (0: none queued).
    fn read_batch(&mut self) -> usize {
        let c = self.group.counters();
        let n = loop {
            match self.group.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return 0,
                Err(_) => {
                    // EMFILE/ENFILE/ENOMEM: the kernel denied the event it could not give
                    // us. Back off a little so a persistent condition does not spin.
                    GateCounters::add(&c.read_errors);
                    std::thread::sleep(Duration::from_millis(1));
                    return 0;
                }
            }
        };
        let mut events = std::mem::take(&mut self.events);
        let malformed = parse_fd_events(&self.buf[..n], &mut events);
        c.malformed.fetch_add(malformed, Ordering::Relaxed);
        let count = events.len();
        self.inflight.begin(&events);
        for (i, ev) in events.drain(..).enumerate() {
            self.handle(ev, i);
        }
        self.inflight.end();
        self.events = events;
        count
    }

    /// Whether this thread may answer slot `slot` of the batch: false when the watchdog
    /// answered it (counted; the caller then drops the event unanswered).
    fn claim(&self, slot: usize) -> bool {
        let ok = self.inflight.claim(slot);
        if !ok {
            GateCounters::add(&self.group.counters().watchdog_late);
        }
        ok
    }

    fn fast(&self, fd: &OwnedFd, counter: &AtomicU64, slot: usize) {
        if !self.claim(slot) {
            return;
        }
        GateCounters::add(counter);
        if self.group.respond(fd.as_fd(), Verdict::Allow).is_err() {
            GateCounters::add(&self.group.counters().response_errors);
        }
    }

    fn handle(&self, ev: FdEvent, slot: usize) {
        let c = self.group.counters();
        GateCounters::add(&c.events);
        let Some(fd) = ev.fd else {
            // FAN_NOFD (queue overflow): nothing to answer.
            GateCounters::add(&c.malformed);
            return;
        };
        if ev.malformed || ev.mask & libc::FAN_OPEN_PERM == 0 {
            return self.fast(&fd, &c.allowed_fast, slot);
        }
        let Ok(tid) = u32::try_from(ev.pid) else {
            GateCounters::add(&c.unknown_opener);
            return self.fast(&fd, &c.allowed_fast, slot);
        };
        if tid == 0 {
            GateCounters::add(&c.unknown_opener);
            return self.fast(&fd, &c.allowed_fast, slot);
        }
        if tid == self.self_pid {
            return self.fast(&fd, &c.allowed_self, slot);
        }
        let (opener, mut intent) = match self.intent.intent(tid) {
            Some(i) => {
                GateCounters::add(&c.intent_ebpf);
                let o = Opener {
                    tgid: Some(i.tgid),
                    session: i.session,
                };
                (o, Some(i))
            }
            None => (self.intent.opener(tid), None),
        };
        if opener.tgid == Some(self.self_pid) {
            return self.fast(&fd, &c.allowed_self, slot);
        }
        if opener.session == 0 && !self.decider.wants_proc_fallback() {
            return self.fast(&fd, &c.allowed_fast, slot);
        }
        if intent.is_none() {
            intent = intent::proc_intent_for(tid, &opener);
            if intent.is_some() {
                GateCounters::add(&c.intent_proc);
            }
        }
        if opener.session == 0 && !intent.is_some_and(|i| i.write) {
            return self.fast(&fd, &c.allowed_fast, slot);
        }
        let path = match self.paths.borrow_mut().path_of(fd.as_fd()) {
            Ok(p) => p,
            Err(_) => {
                GateCounters::add(&c.readlink_errors);
                Vec::new()
            }
        };
        let event = PermEvent {
            fd,
            tid,
            tgid: opener.tgid.unwrap_or(0),
            session: opener.session,
            path,
            intent,
            received: Instant::now(),
            op: None,
        };
        let verdict = catch_unwind(AssertUnwindSafe(|| self.decider.decide(&event)))
            .unwrap_or_else(|_| {
                GateCounters::add(&c.decider_panics);
                FastVerdict::Deny
            });
        if !self.claim(slot) {
            return;
        }
        let fail = match verdict {
            FastVerdict::Allow => {
                let _ = respond(&self.group, &event.fd, Verdict::Allow);
                return;
            }
            FastVerdict::Deny => {
                let _ = respond(&self.group, &event.fd, Verdict::Deny);
                return;
            }
            FastVerdict::Defer { fail } => fail,
        };
        let held = Held::new(event, fail, self.group.clone());
        match self.tx.try_send(held) {
            Ok(()) => GateCounters::add(&c.deferred),
            Err(TrySendError::Full(held)) => {
                GateCounters::add(&c.defer_queue_full);
                let _ = held.answer(fail);
            }
            Err(TrySendError::Closed(held)) => {
                GateCounters::add(&c.defer_closed);
                let _ = held.answer(fail);
            }
        }
    }
}

/// Counters whose increase is logged (at warn) by the reporter thread, with what it means.
const REPORTED: &[(&str, &str)] = &[
    (
        "perm_defer_queue_full",
        "the engine's queue was full; held opens got their failure verdict at once",
    ),
    (
        "perm_defer_closed",
        "nobody receives held opens; they got their failure verdict at once",
    ),
    (
        "perm_held_dropped_fallback",
        "held opens were dropped unanswered and got their failure verdict",
    ),
    (
        "perm_response_errors",
        "the kernel refused answers (openers killed meanwhile?)",
    ),
    (
        "perm_readlink_errors",
        "paths of held files could not be read; decided with an empty path",
    ),
    (
        "perm_read_errors",
        "reading the fanotify group failed (out of descriptors?); the kernel denied those opens",
    ),
    ("perm_malformed", "unparsable fanotify records were allowed"),
    (
        "perm_decider_panics",
        "the decider panicked; those opens were denied",
    ),
    (
        "perm_mark_errors",
        "files or directories could not be gated",
    ),
];

/// Once a second, log the increase of the counters in [`REPORTED`]. Runs on its own
/// thread so the listener never waits on logging.
fn report_loop(group: &PermGroup, stop: &std::sync::mpsc::Receiver<()>) {
    let mut last: Vec<u64> = vec![0; REPORTED.len()];
    loop {
        let stopping = !matches!(
            stop.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        let snap = group.counters().snapshot();
        for (i, (name, what)) in REPORTED.iter().enumerate() {
            let Some(&(_, total)) = snap.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if total > last[i] {
                warn!(counter = name, new = total - last[i], total, "gate: {what}");
                last[i] = total;
            }
        }
        if stopping {
            return;
        }
    }
}
