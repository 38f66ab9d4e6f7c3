//! Merging the two observers into one event per operation.
//!
//! The eBPF side sees syscalls (with their arguments and result); the fanotify side sees
//! what changed in the watched trees (with canonical paths, also for relative or
//! symlinked writes and for processes the kernel filter skipped). When an eBPF
//! observation leaves the buffer it absorbs the fanotify observations of the same thread
//! and path that describe the same operation (`source: both`). Fanotify observations with
//! no eBPF twin are emitted on their own.
//!
//! When an observation may leave the buffer follows from the kernel's ordering, not from
//! a timer: fsnotify queues its event inside the syscall, after the eBPF enter record and
//! before the exit record. So an eBPF observation (made at the exit) is complete once the
//! fanotify queue has been drained after it arrived, and a fanotify observation once the
//! ring buffer has been drained after it arrived and its thread has no syscall still in
//! flight. The daemon drains both sources before each flush and passes the instants as
//! [`Watermarks`]; `window` only caps the wait (e.g. a thread blocked in a syscall).
//!
//! Repeated fanotify `MODIFY`s of one open file and its final `CLOSE_WRITE` are folded
//! into the first write (the kernel side reports only the first write per open, too).
use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use std::os::unix::ffi::OsStrExt;

use crate::event::{Details, Kind, Source};

/// One observed operation, before attribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    pub path: Vec<u8>,
    pub target: Option<Vec<u8>>,
    /// Thread id of the writer (fanotify reports tids: `FAN_REPORT_TID`).
    pub tid: u32,
    /// Process id when known (eBPF); fanotify observations carry 0 here.
    pub tgid: u32,
    pub result: Option<i64>,
    pub source: Source,
    /// Wall clock, ns since the epoch.
    pub time_ns: i128,
    pub details: Details,
    /// Kernel session id from the eBPF record (0 = none or unknown).
    pub session: u64,
    pub uid: Option<u32>,
    pub comm: Vec<u8>,
    /// Open flags for open-family observations.
    pub open_flags: u32,
    /// fanotify `ATTRIB` not yet classified as chmod or chown.
    pub attrib: bool,
    pub arrived: Instant,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// fanotify observations merged into an eBPF one.
    pub merged: u64,
    /// fanotify MODIFY/CLOSE_WRITE folded into an earlier write of the same open.
    pub folded: u64,
    /// fanotify ATTRIB that changed neither mode nor owner (times, xattrs, link count).
    pub attrib_ignored: u64,
    pub emitted_ebpf: u64,
    pub emitted_fanotify: u64,
}

#[derive(Default)]
struct OpenState {
    wrote: bool,
    since: Option<Instant>,
}

/// When each source was last drained completely (everything queued before it is known).
#[derive(Clone, Copy, Debug, Default)]
pub struct Watermarks {
    pub ebpf: Option<Instant>,
    pub fanotify: Option<Instant>,
}

const O_TRUNC: u32 = 0o1000;
/// An open file's fold state is forgotten after this long without a close.
const OPEN_STATE_TTL: Duration = Duration::from_secs(600);

pub struct Correlator {
    window: Duration,
    pending: VecDeque<Observation>,
    /// Emitted eBPF observations kept one more window for late fanotify twins.
    recent: VecDeque<Observation>,
    open: HashMap<(u32, Vec<u8>), OpenState>,
    stats: CorrelatorStats,
    attribs: StatCache,
}

impl Correlator {
    pub fn new(window: Duration) -> Self {
        Correlator {
            window,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            open: HashMap::new(),
            stats: CorrelatorStats::default(),
            attribs: StatCache::default(),
        }
    }

    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Remember mode and owner of every file below `root` (to classify ATTRIB).
    pub fn prime_attributes(&mut self, root: &Path, limit: usize) -> usize {
        self.attribs.prime(root, limit)
    }

    pub fn push_ebpf(&mut self, obs: Observation) {
        let key = (obs.tid, obs.path.clone());
        match obs.kind {
            Kind::OpenWrite | Kind::Create => {
                self.open.insert(
                    key,
                    OpenState {
                        wrote: false,
                        since: Some(obs.arrived),
                    },
                );
            }
            Kind::Write => {
                self.open.entry(key).or_default().wrote = true;
            }
            _ => {}
        }
        self.pending.push_back(obs);
    }

    pub fn push_fanotify(&mut self, mut obs: Observation) {
        let key = (obs.tid, obs.path.clone());
        if obs.kind == Kind::Write {
            let st = self.open.entry(key).or_default();
            st.since.get_or_insert(obs.arrived);
            if st.wrote {
                // Folded; if its eBPF twin is still buffered, it was seen by both.
                obs.source = Source::Fanotify;
                if let Some(e) = self
                    .pending
                    .iter_mut()
                    .find(|e| e.source == Source::Ebpf && absorbs(e, &obs))
                {
                    e.source = Source::Both;
                }
                self.stats.folded += 1;
                return;
            }
            st.wrote = true;
        } else if obs.kind == Kind::OpenWrite {
            // CLOSE_WRITE: the end of an open we already reported?
            if self.open.remove(&key).is_some() {
                self.stats.folded += 1;
                return;
            }
        }
        obs.source = Source::Fanotify;
        self.pending.push_back(obs);
    }

    fn ready(
        &self,
        o: &Observation,
        now: Instant,
        marks: &Watermarks,
        busy: &dyn Fn(u32) -> bool,
    ) -> bool {
        if now.duration_since(o.arrived) >= self.window {
            return true;
        }
        match o.source {
            Source::Fanotify => marks.ebpf.is_some_and(|m| o.arrived < m) && !busy(o.tid),
            _ => marks.fanotify.is_some_and(|m| o.arrived < m),
        }
    }

    /// Complete observations (see the module documentation), merged, in arrival order.
    /// `busy(tid)`: the thread has a reported syscall whose exit has not been seen yet.
    pub fn flush(
        &mut self,
        now: Instant,
        marks: &Watermarks,
        busy: &dyn Fn(u32) -> bool,
    ) -> Vec<Observation> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            if !self.ready(front, now, marks, busy) {
                break;
            }
            let Some(obs) = self.pending.pop_front() else {
                break;
            };
            match obs.source {
                Source::Fanotify => {
                    if self
                        .pending
                        .iter()
                        .any(|e| e.source != Source::Fanotify && absorbs(e, &obs))
                    {
                        // A younger eBPF twin will take it when it leaves the buffer.
                        self.pending.push_front(obs);
                        // Keep order: move it behind that twin by re-queueing at the back.
                        if let Some(o) = self.pending.pop_front() {
                            self.pending.push_back(o);
                        }
                        continue;
                    }
                    if self.recent.iter().any(|e| absorbs(e, &obs)) {
                        self.stats.merged += 1;
                        continue;
                    }
                    if let Some(obs) = self.finish_fanotify(obs) {
                        self.stats.emitted_fanotify += 1;
                        out.push(obs);
                    }
                }
                _ => {
                    let mut obs = obs;
                    let mut i = 0;
                    while i < self.pending.len() {
                        if self.pending[i].source == Source::Fanotify
                            && absorbs(&obs, &self.pending[i])
                        {
                            if let Some(f) = self.pending.remove(i) {
                                merge(&mut obs, &f);
                                self.stats.merged += 1;
                            }
                        } else {
                            i += 1;
                        }
                    }
                    self.attribs.refresh(&obs.path);
                    self.stats.emitted_ebpf += 1;
                    self.recent.push_back(obs.clone());
                    out.push(obs);
                }
            }
        }
        while self
            .recent
            .front()
            .is_some_and(|r| now.duration_since(r.arrived) > self.window * 3)
        {
            self.recent.pop_front();
        }
        self.open.retain(|_, st| {
            st.since
                .is_none_or(|t| now.duration_since(t) < OPEN_STATE_TTL)
        });
        out
    }

    fn finish_fanotify(&mut self, mut obs: Observation) -> Option<Observation> {
        if obs.attrib {
            match self.attribs.classify(&obs.path) {
                Some(kind) => {
                    obs.kind = kind;
                    obs.attrib = false;
                }
                None => {
                    self.stats.attrib_ignored += 1;
                    return None;
                }
            }
        } else {
            self.attribs.refresh(&obs.path);
            if let Some(t) = &obs.target {
                self.attribs.refresh(t);
            }
        }
        Some(obs)
    }
}

/// Whether eBPF observation `e` describes the same operation as fanotify observation `f`.
fn absorbs(e: &Observation, f: &Observation) -> bool {
    if e.tid != f.tid || e.result.is_some_and(|r| r < 0) {
        return false;
    }
    let same = e.path == f.path;
    match (e.kind, f.kind) {
        _ if f.attrib => match e.kind {
            Kind::Chmod | Kind::Chown => same,
            // A new hard link changes the link count of the linked file.
            Kind::Link => same,
            _ => false,
        },
        (Kind::OpenWrite | Kind::Create, Kind::Create | Kind::OpenWrite) => same,
        (Kind::OpenWrite | Kind::Create, Kind::Write) => same && e.open_flags & O_TRUNC != 0,
        (Kind::Write | Kind::Truncate, Kind::Write) => same,
        // fanotify without the filesystem rename mark does not know the old side of a
        // rename from outside the tree (empty path); the new side identifies it.
        (Kind::Rename, Kind::Rename) => (same || f.path.is_empty()) && e.target == f.target,
        (Kind::Unlink, Kind::Unlink) | (Kind::Mkdir, Kind::Mkdir) => same,
        (Kind::Link, Kind::Create) => e.target.as_deref() == Some(&f.path[..]),
        (Kind::Symlink, Kind::Create) => same,
        _ => false,
    }
}

fn merge(e: &mut Observation, f: &Observation) {
    e.source = Source::Both;
    // fanotify knows whether the open created the file; the syscall record does not.
    if e.kind == Kind::OpenWrite && f.kind == Kind::Create && !f.attrib {
        e.kind = Kind::Create;
    }
}

/// Mode and owner of watched files, to tell a chmod from a chown (or from a timestamp
/// change) when fanotify reports only `ATTRIB`.
#[derive(Default)]
struct StatCache {
    entries: HashMap<Vec<u8>, (u32, u32, u32)>,
}

const STAT_CACHE_MAX: usize = 200_000;

impl StatCache {
    fn stat(path: &[u8]) -> Option<(u32, u32, u32)> {
        let m = std::fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(path))).ok()?;
        Some((m.mode() & 0o7777, m.uid(), m.gid()))
    }

    fn prime(&mut self, root: &Path, limit: usize) -> usize {
        let mut stack = vec![root.to_path_buf()];
        let mut n = 0;
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.flatten() {
                if n >= limit || self.entries.len() >= STAT_CACHE_MAX {
                    return n;
                }
                let path = entry.path();
                if let Ok(ft) = entry.file_type()
                    && ft.is_dir()
                {
                    stack.push(path.clone());
                }
                self.refresh(path.as_os_str().as_bytes());
                n += 1;
            }
        }
        n
    }

    fn refresh(&mut self, path: &[u8]) {
        match Self::stat(path) {
            Some(s) if self.entries.len() < STAT_CACHE_MAX || self.entries.contains_key(path) => {
                self.entries.insert(path.to_vec(), s);
            }
            Some(_) => {}
            None => {
                self.entries.remove(path);
            }
        }
    }

    /// What an ATTRIB on `path` changed: mode, owner, or neither (None).
    fn classify(&mut self, path: &[u8]) -> Option<Kind> {
        let now = Self::stat(path)?;
        let before = self.entries.insert(path.to_vec(), now);
        match before {
            Some(b) if b.0 != now.0 => Some(Kind::Chmod),
            Some(b) if (b.1, b.2) != (now.1, now.2) => Some(Kind::Chown),
            Some(_) => None,
            // Never seen before: report it rather than lose a possible change.
            None => Some(Kind::Chmod),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: Kind, path: &str, source: Source, at: Instant) -> Observation {
        Observation {
            kind,
            path: path.as_bytes().to_vec(),
            target: None,
            tid: 7,
            tgid: 7,
            result: if source == Source::Fanotify {
                None
            } else {
                Some(0)
            },
            source,
            time_ns: 0,
            details: Details::default(),
            session: 0,
            uid: None,
            comm: Vec::new(),
            open_flags: 0,
            attrib: false,
            arrived: at,
        }
    }

    const W: Duration = Duration::from_millis(100);
    const NONE: Watermarks = Watermarks {
        ebpf: None,
        fanotify: None,
    };

    fn idle(_: u32) -> bool {
        false
    }

    #[test]
    fn drained_sources_release_observations_before_the_window() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(60));
        let f = obs(Kind::Write, "/w/e", Source::Fanotify, t0);
        c.push_fanotify(f);
        let after = t0 + Duration::from_millis(1);
        let ebpf_only = Watermarks {
            ebpf: Some(after),
            fanotify: None,
        };
        // The thread still has a syscall in flight: its eBPF twin may be on the way.
        assert!(c.flush(after, &ebpf_only, &|tid| tid == 7).is_empty());
        let out = c.flush(after, &ebpf_only, &idle);
        assert_eq!(
            out.len(),
            1,
            "ring buffer drained after it arrived: nothing can merge any more"
        );
        c.push_ebpf(obs(Kind::Unlink, "/w/e", Source::Ebpf, after));
        let later = after + Duration::from_millis(1);
        assert!(
            c.flush(
                later,
                &Watermarks {
                    ebpf: Some(later),
                    fanotify: Some(after)
                },
                &idle
            )
            .is_empty()
        );
        assert_eq!(
            c.flush(
                later,
                &Watermarks {
                    ebpf: Some(later),
                    fanotify: Some(later)
                },
                &idle
            )
            .len(),
            1
        );
    }

    #[test]
    fn ebpf_open_absorbs_fanotify_create_and_becomes_create() {
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        c.push_fanotify(obs(Kind::Create, "/w/a", Source::Fanotify, t0));
        c.push_ebpf(Observation {
            open_flags: 0o101,
            ..obs(Kind::OpenWrite, "/w/a", Source::Ebpf, t0)
        });
        c.push_ebpf(obs(Kind::Write, "/w/a", Source::Ebpf, t0));
        c.push_fanotify(obs(Kind::Write, "/w/a", Source::Fanotify, t0));
        c.push_fanotify(obs(Kind::Write, "/w/a", Source::Fanotify, t0)); // second MODIFY: folded
        c.push_fanotify(obs(Kind::OpenWrite, "/w/a", Source::Fanotify, t0)); // CLOSE_WRITE: folded
        let out = c.flush(t0 + W, &NONE, &idle);
        let kinds: Vec<(Kind, Source)> = out.iter().map(|o| (o.kind, o.source)).collect();
        assert_eq!(
            kinds,
            vec![(Kind::Create, Source::Both), (Kind::Write, Source::Both)]
        );
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn fanotify_alone_is_emitted_after_the_window() {
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        c.push_fanotify(obs(Kind::Write, "/w/b", Source::Fanotify, t0));
        c.push_fanotify(obs(Kind::OpenWrite, "/w/b", Source::Fanotify, t0));
        assert!(
            c.flush(t0 + W / 2, &NONE, &idle).is_empty(),
            "held during the window"
        );
        let out = c.flush(t0 + W, &NONE, &idle);
        assert_eq!(out.len(), 1, "close-write after a write is folded: {out:?}");
        assert_eq!(
            (out[0].kind, out[0].source),
            (Kind::Write, Source::Fanotify)
        );
    }

    #[test]
    fn rename_matches_on_both_paths_only() {
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        let mut e = obs(Kind::Rename, "/w/tmp", Source::Ebpf, t0);
        e.target = Some(b"/w/conf".to_vec());
        let mut f = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0);
        f.target = Some(b"/w/other".to_vec());
        c.push_ebpf(e.clone());
        c.push_fanotify(f);
        assert_eq!(
            c.flush(t0 + W, &NONE, &idle).len(),
            2,
            "different targets are different operations"
        );
        let mut f2 = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0 + W);
        f2.target = Some(b"/w/conf".to_vec());
        let e2 = Observation {
            arrived: t0 + W,
            ..e
        };
        c.push_ebpf(e2);
        c.push_fanotify(f2);
        let out = c.flush(t0 + 2 * W, &NONE, &idle);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].source, Source::Both);
    }

    #[test]
    fn other_threads_and_failed_syscalls_do_not_merge() {
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        c.push_ebpf(Observation {
            result: Some(-13),
            ..obs(Kind::Unlink, "/w/c", Source::Ebpf, t0)
        });
        c.push_fanotify(Observation {
            tid: 8,
            ..obs(Kind::Unlink, "/w/c", Source::Fanotify, t0)
        });
        let out = c.flush(t0 + W, &NONE, &idle);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn attrib_is_classified_by_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.conf");
        std::fs::write(&f, b"x").expect("write");
        let mut c = Correlator::new(W);
        c.prime_attributes(dir.path(), 100);
        let p = f.to_str().expect("utf8");
        let t0 = Instant::now();
        // A timestamp-only change is not reported.
        c.push_fanotify(Observation {
            attrib: true,
            ..obs(Kind::Chmod, p, Source::Fanotify, t0)
        });
        assert!(c.flush(t0 + W, &NONE, &idle).is_empty());
        assert_eq!(c.stats().attrib_ignored, 1);
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        c.push_fanotify(Observation {
            attrib: true,
            ..obs(Kind::Chmod, p, Source::Fanotify, t0 + W)
        });
        let out = c.flush(t0 + 2 * W, &NONE, &idle);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::Chmod);
    }

    #[test]
    fn late_fanotify_twin_of_emitted_event_is_absorbed() {
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        c.push_ebpf(obs(Kind::Unlink, "/w/d", Source::Ebpf, t0));
        assert_eq!(c.flush(t0 + W, &NONE, &idle).len(), 1);
        c.push_fanotify(obs(Kind::Unlink, "/w/d", Source::Fanotify, t0 + W));
        assert!(c.flush(t0 + 2 * W, &NONE, &idle).is_empty());
    }
}
