//! The daemon's processing core, free of I/O wiring: kernel records and fanotify events
//! go in; attributed [`Event`]s and actions for the daemon (tag a detected agent, drop
//! descriptors, end sessions) come out. Turning an observation into an event is
//! `observe::attribute`'s job.
use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::{
    config::watch::WatchSet,
    event::escape::encode,
    event::{Details, Event, Kind, Source},
    kernel::decode::{Comm, Record, SyscallRecord},
    metrics::Metrics,
    notify::{self, FanEvent},
    observe::attribute::Attributor,
    observe::correlate::{Correlator, Observation, Watermarks},
    observe::procs::detect::{Detection, Detector},
    observe::procs::proctable::ProcTable,
    observe::procs::resolve::DirCache,
    observe::syscalls::{Outcome, interpret},
    os::{clock, procfs},
    sessions::SessionRegistry,
};

/// A syscall enter whose exit has not arrived after this long is reported as is.
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Work the daemon must do outside the pipeline.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// A detection rule matched this process: create a session and tag it.
    Detected {
        pid: u32,
        uid: u32,
        detection: Detection,
    },
    /// The process exited: drop these tracked descriptors from the kernel map.
    ForgetFds { tgid: u32, fds: Vec<i32> },
    /// The last member of this session exited.
    SessionEnded(u64),
}

pub struct Pipeline {
    procs: ProcTable,
    correlator: Correlator,
    /// Canonical forms of directories, for resolving syscall paths.
    dirs: DirCache,
    enters: HashMap<u32, (SyscallRecord, Instant)>,
    watch: WatchSet,
    detector: Detector,
    metrics: Arc<Metrics>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, to date kernel records.
    boot_offset_ns: i128,
    /// Observations to events.
    attributor: Attributor,
    /// Observations ready to attribute (reused from flush to flush).
    ready: Vec<Observation>,
}

impl Pipeline {
    pub fn new(
        watch: WatchSet,
        detector: Detector,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let boot_offset_ns = clock::monotonic_offset_ns();
        Pipeline {
            procs: ProcTable::default(),
            correlator: Correlator::new(window),
            dirs: DirCache::default(),
            enters: HashMap::new(),
            watch,
            detector,
            metrics,
            boot_offset_ns,
            attributor: Attributor::new(clock::now_ns()),
            ready: Vec::new(),
        }
    }

    pub fn correlator_mut(&mut self) -> &mut Correlator {
        &mut self.correlator
    }

    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    pub fn watch(&self) -> &WatchSet {
        &self.watch
    }

    /// A configuration reload: observations from now on are filtered by `watch` and
    /// processes exec'd from now on are matched against `detector` (sessions already
    /// detected stay).
    pub fn reconfigure(&mut self, watch: WatchSet, detector: Detector) {
        self.watch = watch;
        self.detector = detector;
    }

    fn watched(&self, o: &Observation) -> bool {
        let m = |p: &[u8]| self.watch.matches(Path::new(OsStr::from_bytes(p)));
        m(&o.path) || (o.kind != Kind::Symlink && o.target.as_deref().is_some_and(m))
    }

    fn push_ebpf(&mut self, obs: Observation) {
        // A session's relative path whose directory is unknown: its fanotify twin, if
        // any, names it in the correlator; otherwise it is reported unresolved.
        let unnamed = obs.session != 0 && obs.details.unresolved && !obs.path.starts_with(b"/");
        if unnamed || self.watched(&obs) {
            self.correlator.push_ebpf(obs);
        } else {
            Metrics::inc(&self.metrics.unwatched_dropped);
        }
    }

    fn complete(&mut self, s: SyscallRecord, ret: Option<i64>) {
        let time_ns = i128::from(s.header.ktime_ns) + self.boot_offset_ns;
        match interpret(&self.procs, &mut self.dirs, &s, ret, time_ns) {
            Outcome::Op(obs) => {
                let failed = obs.result.is_some_and(|r| r < 0);
                self.dirs
                    .note(obs.kind, &obs.path, obs.target.as_deref(), failed);
                if obs.details.unresolved {
                    Metrics::inc(&self.metrics.unresolved_paths);
                }
                if matches!(obs.kind, Kind::OpenWrite | Kind::Create)
                    && let Some(fd) = ret.filter(|r| *r >= 0)
                {
                    self.procs
                        .set_fd(s.header.tgid, fd as i32, obs.path.clone());
                }
                self.push_ebpf(*obs);
            }
            Outcome::Chdir(cwd) => self.procs.set_cwd(s.header.tgid, cwd),
            Outcome::CwdUnknown => self.procs.forget_cwd(s.header.tgid),
            Outcome::Nothing => {}
        }
    }

    /// An operation a confined session's supervisor answered itself (the tracepoints
    /// never saw it).
    pub fn on_supervised(&mut self, s: crate::observe::supervised::Supervised) {
        let mut obs = s.into_observation();
        if obs.comm.is_empty()
            && let Some(p) = self.procs.get(obs.tgid)
        {
            // Gone before anyone read /proc: the process table knows it from its exec.
            obs.comm = crate::kernel::decode::Comm::new(&p.comm);
        }
        if matches!(obs.kind, Kind::OpenWrite | Kind::Create)
            && let Some(fd) = obs.result.filter(|r| *r >= 0)
        {
            self.procs.set_fd(obs.tgid, fd as i32, obs.path.clone());
        }
        self.push_ebpf(obs);
    }

    /// Handle one kernel record.
    pub fn on_record(&mut self, rec: Record) -> Vec<Action> {
        Metrics::inc(&self.metrics.records);
        let mut actions = Vec::new();
        match rec {
            Record::Fork { header, child_pid } => self.procs.on_fork(&header, child_pid),
            Record::ExecArgs {
                header,
                argv,
                truncated,
            } => self.procs.on_exec_args(&header, argv, truncated),
            Record::Exec {
                header,
                old_tid,
                filename,
            } => {
                self.procs.on_exec(&header, old_tid, filename);
                if !self.detector.is_empty()
                    && let Some(p) = self.procs.get(header.tgid)
                    && let Some(detection) = self.detector.detect(p)
                {
                    actions.push(Action::Detected {
                        pid: header.tgid,
                        uid: header.uid,
                        detection,
                    });
                }
            }
            Record::Exit { header, group_dead } => {
                // Sessions left without members are found by `ended_sessions` (one pass
                // per second rather than a scan per exit).
                let fds = self.procs.on_exit(&header, group_dead);
                if !fds.is_empty() {
                    actions.push(Action::ForgetFds {
                        tgid: header.tgid,
                        fds,
                    });
                }
            }
            Record::Syscall(s) => {
                self.procs.note_session(&s.header);
                if let Some((stale, _)) = self.enters.insert(s.header.tid, (s, Instant::now())) {
                    Metrics::inc(&self.metrics.enters_without_exit);
                    self.complete(stale, None);
                }
            }
            Record::SyscallExit { header, op, ret } => match self.enters.remove(&header.tid) {
                Some((s, _)) if s.op == op => self.complete(s, Some(ret)),
                Some((s, t)) => {
                    self.enters.insert(header.tid, (s, t));
                    Metrics::inc(&self.metrics.exits_without_enter);
                }
                None => Metrics::inc(&self.metrics.exits_without_enter),
            },
            Record::Dup {
                header,
                old_fd,
                new_fd,
            } => {
                // Writes through the duplicate (a shell's fd 1) name the same file.
                if let Some(path) = self.procs.fd_path_shared(header.tgid, old_fd) {
                    self.procs.set_fd(header.tgid, new_fd, path);
                }
            }
            Record::Write {
                header,
                op: _,
                fd,
                count,
            } => {
                let known = self.procs.fd_path_shared(header.tgid, fd);
                let path = procfs::fd_path_or_live(known, header.tgid, fd);
                let Some(path) = path else {
                    Metrics::inc(&self.metrics.unresolved_paths);
                    return actions;
                };
                let obs = Observation {
                    kind: Kind::Write,
                    path,
                    target: None,
                    tid: header.tid,
                    tgid: header.tgid,
                    result: Some(0),
                    source: Source::Ebpf,
                    time_ns: i128::from(header.ktime_ns) + self.boot_offset_ns,
                    details: Details {
                        count: Some(count),
                        ..Details::default()
                    },
                    session: header.session_id,
                    uid: Some(header.uid),
                    comm: header.comm,
                    open_flags: 0,
                    attrib: false,
                    arrived: Instant::now(),
                };
                self.push_ebpf(obs);
            }
        }
        actions
    }

    /// Handle one fanotify event (it may carry several operations in its mask).
    pub fn on_fanotify(&mut self, ev: FanEvent) {
        Metrics::inc(&self.metrics.fanotify_events);
        let base = Observation {
            kind: Kind::Write,
            path: ev.path.as_os_str().as_bytes().into(),
            target: None,
            tid: ev.pid,
            tgid: 0,
            result: None,
            source: Source::Fanotify,
            time_ns: clock::now_ns(),
            details: Details {
                dir: ev.is_dir,
                ..Details::default()
            },
            session: 0,
            uid: None,
            comm: Comm::default(),
            open_flags: 0,
            attrib: false,
            arrived: Instant::now(),
        };
        let m = ev.mask;
        let mut parts = Vec::new();
        if m & notify::FAN_CREATE != 0 {
            parts.push(Observation {
                kind: if ev.is_dir { Kind::Mkdir } else { Kind::Create },
                ..base.clone()
            });
        }
        if m & notify::FAN_MODIFY != 0 {
            parts.push(Observation {
                kind: Kind::Write,
                ..base.clone()
            });
        }
        if m & notify::FAN_ATTRIB != 0 {
            parts.push(Observation {
                kind: Kind::Chmod,
                attrib: true,
                ..base.clone()
            });
        }
        if m & notify::FAN_CLOSE_WRITE != 0 {
            parts.push(Observation {
                kind: Kind::OpenWrite,
                ..base.clone()
            });
        }
        if m & notify::FAN_RENAME != 0 {
            let target = ev
                .new_path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().into());
            parts.push(Observation {
                kind: Kind::Rename,
                target,
                ..base.clone()
            });
        }
        if m & notify::FAN_DELETE != 0 {
            parts.push(Observation {
                kind: Kind::Unlink,
                ..base.clone()
            });
        }
        for obs in parts {
            self.dirs
                .note_fanotify(obs.kind, &obs.path, obs.target.as_deref());
            if self.watched(&obs) {
                self.correlator.push_fanotify(obs);
            }
        }
    }

    /// Complete events, attributed. `marks`: when each source was last drained.
    /// Nothing buffered or in flight: no observation waits for its twin and no syscall
    /// for its exit, so a flush now would emit nothing.
    pub fn is_quiet(&self) -> bool {
        self.enters.is_empty() && self.correlator.pending() == 0
    }

    pub fn flush(
        &mut self,
        now: Instant,
        marks: &Watermarks,
        sessions: &SessionRegistry,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        self.flush_each(now, marks, sessions, &mut |e| out.push(e));
        out
    }

    /// [`Pipeline::flush`], handing each event to `emit` as it is attributed (no batch of
    /// events is built and freed).
    pub fn flush_each(
        &mut self,
        now: Instant,
        marks: &Watermarks,
        sessions: &SessionRegistry,
        emit: &mut dyn FnMut(Event),
    ) {
        let stale: Vec<u32> = self
            .enters
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) > ENTER_TIMEOUT)
            .map(|(tid, _)| *tid)
            .collect();
        for tid in stale {
            if let Some((s, _)) = self.enters.remove(&tid) {
                Metrics::inc(&self.metrics.enters_without_exit);
                self.complete(s, None);
            }
        }
        let d = self.dirs.stats();
        self.metrics
            .resolve_cache_hits
            .store(d.hits, Ordering::Relaxed);
        self.metrics
            .resolve_cache_misses
            .store(d.misses, Ordering::Relaxed);
        self.metrics
            .resolve_cache_forgotten
            .store(d.forgotten, Ordering::Relaxed);
        self.metrics
            .resolve_symlink_census
            .store(d.census_taken, Ordering::Relaxed);
        let enters = &self.enters;
        let mut ready = std::mem::take(&mut self.ready);
        self.correlator
            .flush_into(now, marks, &|tid| enters.contains_key(&tid), &mut ready);
        for mut o in ready.drain(..) {
            if self.watch.is_iac(&o.path)
                || o.target.as_deref().is_some_and(|t| self.watch.is_iac(t))
            {
                o.details.class = Some("iac");
            }
            if o.source == Source::Fanotify {
                self.dirs
                    .note_unpaired(o.kind, &o.path, o.target.as_deref());
            }
            emit(self.attributor.attribute(o, &mut self.procs, sessions));
        }
        self.ready = ready;
    }

    /// Load every process in `/proc` into the process table; how many there are.
    pub fn scan_procfs(&mut self) -> usize {
        self.procs.scan_procfs()
    }

    /// The session process `pid` is in as the process table knows it (0: none, or unknown).
    pub fn session_of(&self, pid: u32) -> u64 {
        self.procs.get(pid).map_or(0, |p| p.session)
    }

    /// The command line and working directory of `pid` as events encode them (empty if
    /// the process is unknown).
    pub fn command_of(&self, pid: u32) -> (Vec<String>, String) {
        match self.procs.get(pid) {
            Some(p) => (
                p.argv.iter().map(|a| encode(a)).collect(),
                p.cwd.as_deref().map(encode).unwrap_or_default(),
            ),
            None => (Vec::new(), String::new()),
        }
    }

    /// Put `root` and its descendants into session `session`: each one `tag` accepts
    /// (tagging it in the kernel's session map) joins it in the process table too.
    pub fn tag_descendants(&mut self, root: u32, session: u64, mut tag: impl FnMut(u32) -> bool) {
        let mut members = vec![root];
        members.extend(self.procs.descendants(root));
        for pid in members {
            if tag(pid) {
                self.procs.set_session(pid, session);
            }
        }
    }

    /// Of the live `sessions`, those whose last process has exited.
    /// Session members whose exit record was lost (`alive` says they are gone) are
    /// marked exited, so that their sessions end (and a dropped exit does not keep a
    /// session, its host-wide marks and its missing end record alive forever). Returns
    /// the kernel-map cleanups and how many were reaped.
    pub fn reap_vanished(&mut self, alive: impl Fn(u32) -> bool) -> (Vec<Action>, usize) {
        let gone = self.procs.reap_vanished(alive);
        let n = gone.len();
        let actions = gone
            .into_iter()
            .filter(|(_, fds)| !fds.is_empty())
            .map(|(tgid, fds)| Action::ForgetFds { tgid, fds })
            .collect();
        (actions, n)
    }

    pub fn ended_sessions(&self, sessions: &[u64]) -> Vec<Action> {
        self.procs
            .sessions_without_members(sessions)
            .into_iter()
            .map(Action::SessionEnded)
            .collect()
    }

    /// Drop state of exited processes past retention.
    pub fn gc(&mut self, now: Instant) {
        self.procs.gc(now);
        self.attributor.gc(&self.procs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::WatchSection,
        kernel::decode::{Comm, Header},
        sessions::SessionRegistry,
        store::Store,
    };
    use monitor_common::{AT_FDCWD, SysOp};

    /// A pid no live process can have (above the kernel's maximum).
    const PID: u32 = 4_194_304 + 10;

    fn header(comm: &[u8]) -> Header {
        Header {
            flags: 0,
            ktime_ns: 0,
            tgid: PID,
            tid: PID,
            uid: 0,
            gid: 0,
            session_id: 0,
            cgroup_id: 0,
            comm: Comm::new(comm),
        }
    }

    fn exec(p: &mut Pipeline, argv: &[&[u8]]) {
        let h = header(argv[0]);
        p.on_record(Record::ExecArgs {
            header: h.clone(),
            argv: argv.iter().map(|a| a.to_vec()).collect(),
            truncated: false,
        });
        p.on_record(Record::Exec {
            header: h,
            old_tid: PID,
            filename: [b"/usr/bin/", argv[0]].concat(),
        });
    }

    fn open(p: &mut Pipeline, path: &[u8]) {
        let h = header(b"x");
        p.on_record(Record::Syscall(SyscallRecord {
            header: h.clone(),
            op: SysOp::Openat,
            flags: 0o1101,
            dfd1: AT_FDCWD,
            dfd2: AT_FDCWD,
            fd: -1,
            mode: 0o644,
            arg_uid: 0,
            arg_gid: 0,
            length: 0,
            path1: path.to_vec(),
            path2: Vec::new(),
        }));
        p.on_record(Record::SyscallExit {
            header: h,
            op: SysOp::Openat,
            ret: 3,
        });
    }

    /// A pipeline watching a new temporary directory (kept alive by the returned guard,
    /// with its canonical path), and a session registry stored in it.
    fn watched_pipeline() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Pipeline,
        SessionRegistry,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        let watch = WatchSet::new(&WatchSection {
            paths: vec![real.clone()],
            project_roots: Vec::new(),
            ..WatchSection::default()
        })
        .expect("watch set");
        let detector = Detector::new(&[]).expect("detector");
        let p = Pipeline::new(
            watch,
            detector,
            Duration::from_millis(1),
            Arc::new(Metrics::default()),
        );
        let sessions =
            SessionRegistry::open(Store::open(&real.join("s.redb")).expect("store")).expect("reg");
        (dir, real, p, sessions)
    }

    #[test]
    fn events_describe_the_writer_as_of_its_latest_exec() {
        let (_dir, real, mut p, sessions) = watched_pipeline();
        let file = real.join("a.conf");
        let file = file.as_os_str().as_bytes();
        let flush = |p: &mut Pipeline| {
            let later = Instant::now() + Duration::from_secs(1);
            let marks = Watermarks {
                ebpf: Some(later),
                fanotify: Some(later),
            };
            p.flush(later, &marks, &sessions)
        };
        exec(&mut p, &[b"sed", b"-i", b"s/a/b/"]);
        open(&mut p, file);
        open(&mut p, file);
        let first = flush(&mut p);
        assert_eq!(first.len(), 2);
        assert_eq!(*first[0].argv, vec!["sed", "-i", "s/a/b/"]);
        assert_eq!(first[1].argv, first[0].argv);
        assert_eq!(first[0].exe.as_deref(), Some("/usr/bin/sed"));
        // The same process execs something else: its events say so.
        exec(&mut p, &[b"vim", b"a.conf"]);
        open(&mut p, file);
        let second = flush(&mut p);
        assert_eq!(second.len(), 1);
        assert_eq!(*second[0].argv, vec!["vim", "a.conf"]);
        assert_eq!(second[0].exe.as_deref(), Some("/usr/bin/vim"));
        assert_eq!(second[0].path, real.join("a.conf").to_string_lossy());
    }

    #[test]
    fn a_syscall_is_attributed_to_the_session_it_was_made_in() {
        let (_dir, real, mut p, sessions) = watched_pipeline();
        exec(
            &mut p,
            &[b"sh", b"-c", b"exec 3>>a.conf; exec confgate run ..."],
        );
        // The open, outside any session ...
        open(&mut p, real.join("a.conf").as_os_str().as_bytes());
        // ... then the same process joins session 9 (its next syscall says so), all
        // before the open's event leaves the correlation window.
        let mut h = header(b"confgate");
        h.session_id = 9;
        p.on_record(Record::Syscall(SyscallRecord {
            header: h.clone(),
            op: SysOp::Chdir,
            flags: 0,
            dfd1: AT_FDCWD,
            dfd2: AT_FDCWD,
            fd: -1,
            mode: 0,
            arg_uid: 0,
            arg_gid: 0,
            length: 0,
            path1: b"/".to_vec(),
            path2: Vec::new(),
        }));
        p.on_record(Record::SyscallExit {
            header: h,
            op: SysOp::Chdir,
            ret: 0,
        });
        let later = Instant::now() + Duration::from_secs(1);
        let marks = Watermarks {
            ebpf: Some(later),
            fanotify: Some(later),
        };
        let out = p.flush(later, &marks, &sessions);
        assert_eq!(out.len(), 1);
        assert!(out[0].session.is_none(), "{:?}", out[0].session);
    }
}
