//! [`Supervisors`]: the daemon's supervisors of confined sessions, one thread (and one
//! performer thread) per session listener.
//!
//! For each notification the supervisor decodes the syscall, reads and resolves its paths
//! ([`super::resolve`]) and checks that the caller is still the one that made it. Then:
//! - every target covered by the session's Landlock rules and not a gated file under
//!   another name: CONTINUE (Landlock checks the object the kernel really uses, so a path
//!   swapped after this check gains nothing);
//! - otherwise the gate's decider rules on each target, as it does for a fanotify open:
//!   allow (the performer does it as the caller), deny (`EPERM`, recorded by the decider),
//!   or defer: the operation goes to the engine as a [`Held`] whose answer performs or
//!   denies it; a full queue applies the rule's failure verdict at once.
//!
//! A gated operation is never CONTINUEd. Nothing a caller sends can stop the thread: bad
//! pointers, paths and flags are answered with the errno the kernel would give.
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::ConfineSpec;
use super::common::{SessionHandle, SupervisorCounters, lock, open_for_preimage};
use super::holds::{Deferred, HoldRecord};
use super::ops::{self, Kind, Op};
use super::perform::{self, Job, PerformCounters};
use super::report::Reporter;
use super::resolve::{self, Target};
use super::spec::CoverSet;
use crate::gate::Verdict;
use crate::gate::listener::{Decider, FastVerdict, Held, OpFacts, PermEvent};
use crate::observe::supervised::Supervised;
use crate::os::creds;
use crate::os::seccomp::notify::{self, Ready};
use crate::store::Store;

/// How often a supervisor thread looks up from its listener (to notice a shutdown).
const WAIT_MS: i32 = 1000;
/// Operations queued for one session's performer.
const PERFORM_QUEUE: usize = 1024;

/// A session's seccomp listener, handed over by the helper or restored from systemd's
/// descriptor store after a restart.
pub struct Attach {
    /// The session the listener belongs to.
    pub session: u64,
    /// Its root process.
    pub root_pid: u32,
    /// The seccomp user-notification listener.
    pub listener: OwnedFd,
    /// What the session's Landlock domain allows (the supervisor's CONTINUE set).
    pub spec: Arc<ConfineSpec>,
}

/// Why a listener could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor thread could not start.
    #[error("cannot start the supervisor of session {session}: {source}")]
    Start {
        /// The session.
        session: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The gate is not running (no decider to supervise with).
    #[error("the gate is not running: session {0} cannot be supervised")]
    NoGate(u64),
    /// The session is already supervised.
    #[error("session {0} is already supervised")]
    Already(u64),
}

pub(super) struct Wiring {
    pub(super) decider: Arc<dyn Decider>,
    pub(super) held: mpsc::Sender<Held>,
    /// The gated set (the policy's mark roots), for the index of gated hard links.
    gated: Vec<PathBuf>,
}

/// The daemon's session supervisors. Created empty; [`Supervisors::wire`] connects it to
/// the gate once the gate runs.
#[derive(Default)]
pub struct Supervisors {
    pub(super) wiring: OnceLock<Wiring>,
    /// Where performed operations are reported for observation.
    pub(super) observed: OnceLock<mpsc::Sender<Supervised>>,
    /// Where held operations are recorded for a restart.
    pub(super) store: OnceLock<Store>,
    /// Each supervised session's listener and performer queue (for resumed holds).
    pub(super) handles: Mutex<HashMap<u64, SessionHandle>>,
    pub(super) live: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    pub(super) counters: Arc<SupervisorCounters>,
    pub(super) perform: Arc<PerformCounters>,
}

impl Supervisors {
    /// Connects the supervisors to the gate: its decider and the engine's queue of held
    /// operations. Later calls do nothing.
    pub fn wire(&self, decider: Arc<dyn Decider>, held: mpsc::Sender<Held>, gated: Vec<PathBuf>) {
        let _ = self.wiring.set(Wiring {
            decider,
            held,
            gated,
        });
    }

    /// Reports every operation a supervisor answers itself to `tx` (the event pipeline);
    /// a full queue drops the report (counted in `session_observe_dropped`).
    pub fn observe_into(&self, tx: mpsc::Sender<Supervised>) {
        let _ = self.observed.set(tx);
    }

    /// The daemon's store, once [`Supervisors::persist_into`] was called.
    pub fn store(&self) -> Option<Store> {
        self.store.get().cloned()
    }

    /// Records held operations in `store`, so that a restarted daemon can answer them.
    pub fn persist_into(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// After a restart, once the restored listeners are attached: every recorded held
    /// operation whose caller still waits goes to the engine again; see
    /// [`super::holds::resume`].
    pub fn resume_holds(&self) -> super::holds::Resumed {
        match (self.store.get(), self.wiring.get()) {
            (Some(store), Some(w)) => {
                super::holds::resume(store, &w.held, &self.handles, &self.counters)
            }
            _ => super::holds::Resumed::default(),
        }
    }

    /// Counters, for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.counters.snapshot();
        let p = &self.perform;
        v.push(("session_performed", p.performed.load(Ordering::Relaxed)));
        v.push((
            "session_perform_caller_gone",
            p.caller_gone.load(Ordering::Relaxed),
        ));
        v.push((
            "session_perform_unanswered",
            p.unanswered.load(Ordering::Relaxed),
        ));
        v.push((
            "session_perform_cred_errors",
            p.cred_errors.load(Ordering::Relaxed),
        ));
        v
    }

    /// Sessions supervised now.
    pub fn live(&self) -> Vec<u64> {
        lock(&self.live).keys().copied().collect()
    }

    /// Starts supervising `a.listener`: a supervisor thread and a performer thread, which
    /// end when every process of the session is gone.
    pub fn attach(&self, a: Attach) -> Result<(), SupervisorError> {
        let Some(w) = self.wiring.get() else {
            return Err(SupervisorError::NoGate(a.session));
        };
        let session = a.session;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut live = lock(&self.live);
            if live.contains_key(&session) {
                return Err(SupervisorError::Already(session));
            }
            live.insert(session, stop.clone());
        }
        let start = |source| SupervisorError::Start { session, source };
        let fail = |e| {
            lock(&self.live).remove(&session);
            start(e)
        };
        notify::check_sizes().map_err(fail)?;
        if !notify::is_listener(&a.listener) {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not a seccomp notification listener",
            )));
        }
        let sync = notify::set_sync_wake_up(&a.listener);
        let listener = Arc::new(a.listener);
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(PERFORM_QUEUE);
        lock(&self.handles).insert(session, (listener.clone(), job_tx.clone()));
        let perform_counters = self.perform.clone();
        let l2 = listener.clone();
        let report = Reporter {
            session,
            tx: self.observed.get().cloned(),
            counters: self.counters.clone(),
        };
        std::thread::Builder::new()
            .name(format!("confgate-perform-{session}"))
            .spawn({
                let report = report.clone();
                let perform_counters = perform_counters.clone();
                move || performer(l2, job_rx, perform_counters, report)
            })
            .map_err(fail)?;
        let sup = Supervisor {
            session,
            store: self.store.get().cloned(),
            listener,
            cover: CoverSet::new(&a.spec),
            decider: w.decider.clone(),
            held: w.held.clone(),
            jobs: job_tx,
            perform: perform_counters,
            report,
            inline: false,
            null: std::fs::File::open("/dev/null").map_err(fail)?,
            counters: self.counters.clone(),
            stop,
            gated_inodes: gated_links(&w.gated),
            scope: super::scope::ScopeMatcher::new(&a.spec.scope),
        };
        std::thread::Builder::new()
            .name(format!("confgate-supervise-{session}"))
            .spawn(move || sup.run())
            .map_err(fail)?;
        SupervisorCounters::inc(&self.counters.attached);
        info!(
            session,
            root_pid = a.root_pid,
            sync_wake_up = sync,
            "session confined: supervising its listener"
        );
        Ok(())
    }

    /// Forgets a session whose supervisor ended (called by the daemon when the session
    /// ends; the thread itself ends when the listener hangs up).
    pub fn ended(&self, session: u64) {
        lock(&self.handles).remove(&session);
        if let Some(stop) = lock(&self.live).remove(&session) {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

fn performer(
    listener: Arc<OwnedFd>,
    jobs: std::sync::mpsc::Receiver<Job>,
    c: Arc<PerformCounters>,
    report: Reporter,
) {
    if let Err(e) = perform::unshare_fs() {
        warn!(error = %e, "session performer: cannot unshare its filesystem context; callers' umask is not applied");
    }
    while let Ok(job) = jobs.recv() {
        perform_and_report(&listener, &job, &c, &report);
    }
}

/// Performs `job` as its caller, answers the caller and reports what happened.
fn perform_and_report(listener: &OwnedFd, job: &Job, c: &PerformCounters, report: &Reporter) {
    let r = perform::perform_and_answer(listener, job, c);
    debug!(id = job.id, op = job.op.name(), result = ?r.as_ref().map_err(|e| e.raw_os_error()), "performed for session");
    let result = match &r {
        Ok(v) => *v,
        // The caller was gone: nothing happened and nobody saw a result.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return,
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    report.send(
        &job.op,
        job.tid,
        job.tgid,
        job.creds.uid,
        &job.targets,
        result,
    );
}

struct Supervisor {
    session: u64,
    store: Option<Store>,
    listener: Arc<OwnedFd>,
    cover: CoverSet,
    decider: Arc<dyn Decider>,
    held: mpsc::Sender<Held>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    perform: Arc<PerformCounters>,
    report: Reporter,
    /// Whether this thread has its own filesystem context, so that it can perform
    /// operations that cannot block itself (see [`Supervisor::performs_inline`]).
    inline: bool,
    /// `/dev/null`, duplicated into the events given to the decider.
    null: std::fs::File,
    counters: Arc<SupervisorCounters>,
    stop: Arc<AtomicBool>,
    /// Gated files with more than one name, by (device, inode): a write through another
    /// name is decided as a write of the gated one.
    gated_inodes: HashMap<(u64, u64), PathBuf>,
    /// The declared scope (`None`: none): targets outside it are refused at once.
    scope: Option<super::scope::ScopeMatcher>,
}

/// How one notification is answered.
enum Plan {
    Error(i32),
    Perform,
    Deny,
    Defer {
        primary: usize,
        fail: Verdict,
        path: Vec<u8>,
        facts: OpFacts,
    },
}

impl Supervisor {
    fn run(mut self) {
        // Performing here saves a hand-off to the performer thread (a wake-up of another
        // task: tens of microseconds on a busy machine) for most allowed operations.
        self.inline = match perform::unshare_fs() {
            Ok(()) => true,
            Err(e) => {
                debug!(session = self.session, error = %e, "session supervisor: performs through its performer only");
                false
            }
        };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match notify::wait(&*self.listener, WAIT_MS) {
                Ok(Ready::Notification) => {}
                Ok(Ready::Timeout) => continue,
                Ok(Ready::Gone) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    warn!(session = self.session, error = %e, "session supervisor: poll failed");
                    break;
                }
            }
            let n = match notify::recv(&*self.listener) {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINTR)) => {
                    continue;
                }
                Err(e) => {
                    warn!(session = self.session, error = %e, "session supervisor: receive failed");
                    break;
                }
            };
            SupervisorCounters::inc(&self.counters.notifications);
            self.handle(n);
        }
        debug!(
            session = self.session,
            "session supervisor ends: no process of the session is left"
        );
    }

    fn answer_error(&self, id: u64, errno: i32) {
        if notify::respond_error(&*self.listener, id, errno).is_err() {
            SupervisorCounters::inc(&self.counters.answer_errors);
        }
    }

    fn handle(&self, n: notify::Notif) {
        if n.nr == libc::SYS_io_uring_setup {
            super::report::io_uring_refused(&self.counters, self.session, n.pid);
            return self.answer_error(n.id, libc::EPERM);
        }
        let Some(op) = ops::decode(n.nr, n.args) else {
            SupervisorCounters::inc(&self.counters.refused);
            return self.answer_error(n.id, libc::ENOSYS);
        };
        let tid = n.pid;
        // An openat2 that only reads is not the gate's business (the filter cannot read
        // its flags).
        if let Kind::Open { how, how_size, .. } = op.kind
            && how != 0
        {
            match ops::read_open_how(tid, how, how_size) {
                Ok((flags, _)) if !ops::open_writes(flags) => {
                    return self.answer_continue(n.id);
                }
                Ok(_) => {}
                Err(e) => {
                    SupervisorCounters::inc(&self.counters.resolve_errors);
                    return self.answer_error(n.id, e.raw_os_error().unwrap_or(libc::EFAULT));
                }
            }
        }
        if n.nr == 463 || n.nr == 466 {
            // setxattrat / removexattrat: not performed on a caller's behalf.
            SupervisorCounters::inc(&self.counters.refused);
            return self.answer_error(n.id, libc::ENOSYS);
        }
        // /proc/<tid> is the caller's view as /proc/self would be (same descriptors, cwd,
        // root): the thread group id is only looked up when the operation is not free.
        let targets = match self.targets(tid, tid, &op) {
            Ok(t) => t,
            Err(e) => {
                SupervisorCounters::inc(&self.counters.resolve_errors);
                return self.answer_error(n.id, e.raw_os_error().unwrap_or(libc::EINVAL));
            }
        };
        // What was read belongs to this caller only if the notification is still live.
        if !notify::id_valid(&*self.listener, n.id) {
            SupervisorCounters::inc(&self.counters.caller_gone);
            return;
        }
        // Outside the declared scope: refused before Landlock or the rules see it.
        if let Some(i) = self.scope.as_ref().and_then(|s| s.first_outside(&targets)) {
            self.answer_error(n.id, libc::EACCES);
            let (tgid, uid) = creds::status_of(tid).map_or((tid, 0), |(g, c)| (g, c.uid));
            let (c, r, d) = (&self.counters, &self.report, &*self.decider);
            return super::scope::refused(c, r, d, &op, (tid, tgid, uid), &targets, i);
        }
        if self.free(&targets) {
            return self.answer_continue(n.id);
        }
        // Not free: who is asking matters (attribution, the performer's credentials).
        let Some((tgid, creds)) = creds::status_of(tid) else {
            SupervisorCounters::inc(&self.counters.caller_gone);
            return self.answer_error(n.id, libc::ESRCH);
        };
        let plan = self.plan(tid, tgid, &op, &targets);
        let job = Job {
            id: n.id,
            tid,
            tgid,
            op,
            targets,
            creds,
        };
        match plan {
            Plan::Error(errno) => self.answer_error(n.id, errno),
            Plan::Deny => {
                SupervisorCounters::inc(&self.counters.denied);
                self.answer_error(n.id, libc::EPERM)
            }
            Plan::Perform => {
                SupervisorCounters::inc(&self.counters.allowed);
                if self.performs_inline(&job) {
                    return perform_and_report(&self.listener, &job, &self.perform, &self.report);
                }
                if self.jobs.try_send(job).is_err() {
                    SupervisorCounters::inc(&self.counters.perform_queue_full);
                    warn!(
                        session = self.session,
                        "session performer queue full: operation answered EAGAIN"
                    );
                    self.answer_error(n.id, libc::EAGAIN);
                }
            }
            Plan::Defer {
                primary,
                fail,
                path,
                facts,
            } => {
                let pre_fd = job
                    .targets
                    .get(primary)
                    .filter(|t| t.found.is_some_and(|f| f.is_regular()))
                    .and_then(|t| open_for_preimage(&t.path))
                    .or_else(|| self.null.try_clone().ok().map(OwnedFd::from));
                let Some(fd) = pre_fd else {
                    return self.answer_error(n.id, libc::EMFILE);
                };
                let record = HoldRecord {
                    session: self.session,
                    job: job.clone(),
                    path: path.clone(),
                    ops: facts.ops.to_strings(),
                    existed: facts.existed,
                    primary,
                    fail_allow: fail == Verdict::Allow,
                    request: None,
                };
                let event = PermEvent {
                    fd,
                    tid,
                    tgid,
                    session: self.session,
                    path,
                    intent: None,
                    received: Instant::now(),
                    op: Some(facts),
                };
                let answer = Deferred {
                    job: Some(job),
                    jobs: self.jobs.clone(),
                    listener: self.listener.clone(),
                    store: self.store.clone(),
                    record,
                };
                let held = Held::for_op(event, fail, Box::new(answer));
                SupervisorCounters::inc(&self.counters.deferred);
                // A full or closed queue drops `held`, which applies its failure verdict.
                if self.held.try_send(held).is_err() {
                    SupervisorCounters::inc(&self.counters.defer_failed);
                }
            }
        }
    }

    /// Whether an allowed operation is performed on this thread: every operation but an
    /// open of something that is not a regular file (a FIFO's open waits for its other
    /// end, a device's may wait for anything), which goes to the performer so that this
    /// session's other notifications are not held behind it.
    fn performs_inline(&self, job: &Job) -> bool {
        self.inline
            && (!matches!(job.op.kind, Kind::Open { .. })
                || job
                    .targets
                    .iter()
                    .all(|t| t.found.is_none_or(|f| f.is_regular())))
    }

    fn answer_continue(&self, id: u64) {
        SupervisorCounters::inc(&self.counters.continued);
        if notify::respond_continue(&*self.listener, id).is_err() {
            SupervisorCounters::inc(&self.counters.answer_errors);
        }
    }

    /// Reads and resolves every path of `op` (for descriptor operations: the file behind
    /// the descriptor).
    fn targets(&self, tid: u32, tgid: u32, op: &Op) -> io::Result<Vec<Target>> {
        let mut out = Vec::with_capacity(2);
        match op.kind {
            Kind::FdChmod { fd, .. } | Kind::FdChown { fd, .. } | Kind::FdXattr { fd, .. } => {
                let base = resolve::base_of(tid, fd)?;
                let found = std::fs::symlink_metadata(&base).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    resolve::Found {
                        dev: m.dev(),
                        ino: m.ino(),
                        mode: m.mode(),
                        nlink: m.nlink(),
                    }
                });
                out.push(Target { path: base, found });
                return Ok(out);
            }
            _ => {}
        }
        for (i, raw) in op.paths.iter().enumerate() {
            let bytes = resolve::read(tid, raw.addr)?;
            let names_itself = matches!(
                op.kind,
                Kind::Rename { .. }
                    | Kind::Unlink { .. }
                    | Kind::Mkdir { .. }
                    | Kind::Mknod { .. }
                    | Kind::Symlink { .. }
            ) || matches!(op.kind, Kind::Link { .. } if i == 1);
            if names_itself && resolve::ends_in_dots(&bytes) {
                // What the kernel answers: a name ending in `.` or `..` always exists, so
                // creating it fails with EEXIST (`tar` extracting into `.` relies on that);
                // renaming or removing it is EINVAL.
                let creates = matches!(
                    op.kind,
                    Kind::Mkdir { .. }
                        | Kind::Mknod { .. }
                        | Kind::Symlink { .. }
                        | Kind::Link { .. }
                );
                return Err(io::Error::from_raw_os_error(if creates {
                    libc::EEXIST
                } else {
                    libc::EINVAL
                }));
            }
            out.push(resolve::resolve(
                tid,
                tgid,
                raw.dirfd,
                &bytes,
                op.follows(i),
            )?);
        }
        Ok(out)
    }

    /// Another name of a gated file (a hard link made outside the gated trees).
    fn gated_name(&self, t: &Target) -> Option<PathBuf> {
        t.found
            .filter(|f| f.is_regular())
            .and_then(|f| self.gated_inodes.get(&(f.dev, f.ino)))
            .filter(|p| **p != t.path)
            .cloned()
    }

    /// Every target is one Landlock lets the session write and none is another name of a
    /// gated file: CONTINUE, and the kernel checks the object it really uses.
    fn free(&self, targets: &[Target]) -> bool {
        targets
            .iter()
            .all(|t| self.cover.covers(&t.path) && self.gated_name(t).is_none())
    }

    fn plan(&self, tid: u32, tgid: u32, op: &Op, targets: &[Target]) -> Plan {
        // What the kernel would refuse anyway is refused without asking anyone (an
        // approver must not be asked about `mv`'s RENAME_NOREPLACE attempt that can only
        // fail with EEXIST).
        let exists: Vec<bool> = targets.iter().map(|t| t.found.is_some()).collect();
        if let Some(errno) = ops::bound_to_fail(op, &exists) {
            return Plan::Error(errno);
        }
        let mut deferred = None;
        for (i, t) in targets.iter().enumerate() {
            let covered = self.cover.covers(&t.path);
            let alias = self.gated_name(t);
            if covered && alias.is_none() {
                continue;
            }
            let path = alias.unwrap_or_else(|| t.path.clone());
            let facts = OpFacts {
                ops: op.ops_on(i, t.found.is_some()),
                existed: t.found.is_some(),
                name: op.name(),
                resumes: None,
            };
            // The decider's event carries a descriptor; a duplicate is cheaper than an open.
            let Ok(fd) = self.null.try_clone() else {
                return Plan::Error(libc::EMFILE);
            };
            let ev = PermEvent {
                fd: fd.into(),
                tid,
                tgid,
                session: self.session,
                path: path.as_os_str().as_bytes().to_vec(),
                intent: None,
                received: Instant::now(),
                op: Some(facts),
            };
            match self.decider.decide(&ev) {
                FastVerdict::Allow => {}
                FastVerdict::Deny => return Plan::Deny,
                FastVerdict::Defer { fail } => {
                    if deferred.is_none() {
                        deferred = Some(Plan::Defer {
                            primary: i,
                            fail,
                            path: ev.path,
                            facts,
                        });
                    }
                }
            }
        }
        deferred.unwrap_or(Plan::Perform)
    }
}

/// Regular files with more than one name beneath the paths the spec does not cover, by
/// (device, inode) (at most [`MAX_LINKED`] are indexed; more are logged).
fn gated_links(gated: &[PathBuf]) -> HashMap<(u64, u64), PathBuf> {
    const MAX_LINKED: usize = 100_000;
    const MAX_VISITED: usize = 1_000_000;
    use std::os::unix::fs::MetadataExt as _;
    let mut out = HashMap::new();
    let mut visited = 0usize;
    let mut stack: Vec<PathBuf> = gated.to_vec();
    while let Some(p) = stack.pop() {
        visited += 1;
        if visited > MAX_VISITED || out.len() >= MAX_LINKED {
            warn!(
                indexed = out.len(),
                "gated trees too large to index every hard link; writes through other names of the rest are decided by that name"
            );
            break;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() && m.nlink() > 1 {
            out.insert((m.dev(), m.ino()), p);
        }
    }
    out
}
