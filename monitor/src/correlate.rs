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
//! Matching is first-in first-out per thread and path: an eBPF observation takes the
//! oldest buffered fanotify observation of each kind it accounts for (a loop of
//! open/rename on one file pairs each open with its own CREATE).
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
    /// Observations released without waiting for their twin because the buffer was full.
    pub forced: u64,
    /// Parked fanotify observations released because their twin never took them.
    pub parked_expired: u64,
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

/// Index key: a thread and one path it named (an observation is indexed under its path
/// and, if any, its target).
type Key = (u32, Vec<u8>);

fn keys(o: &Observation) -> impl Iterator<Item = Key> + '_ {
    std::iter::once((o.tid, o.path.clone())).chain(o.target.iter().map(move |t| (o.tid, t.clone())))
}

/// Sequence numbers of buffered observations under each key, oldest first.
#[derive(Default)]
struct Index(HashMap<Key, VecDeque<u64>>);

impl Index {
    fn add(&mut self, o: &Observation, seq: u64) {
        for k in keys(o) {
            self.0.entry(k).or_default().push_back(seq);
        }
    }

    fn remove(&mut self, o: &Observation, seq: u64) {
        for k in keys(o) {
            if let Some(v) = self.0.get_mut(&k) {
                if let Some(i) = v.iter().position(|s| *s == seq) {
                    v.remove(i);
                }
                if v.is_empty() {
                    self.0.remove(&k);
                }
            }
        }
    }

    /// Candidates for `o`, oldest first, without duplicates.
    fn candidates(&self, o: &Observation) -> Vec<u64> {
        let mut out: Vec<u64> = keys(o)
            .filter_map(|k| self.0.get(&k))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Most observations buffered at once; beyond it the oldest are released without waiting
/// for their twins (counted as `forced`), so a flood cannot grow memory without bound.
const MAX_BUFFERED: usize = 100_000;

/// Buffered observations: `order` is the release order; `slots` holds the observations
/// still buffered (a fanotify observation whose eBPF twin is still buffered is *parked*:
/// out of `order`, in `slots`, until the twin absorbs it). Lookups go through the indices,
/// so the work per observation does not grow with the size of the buffer.
pub struct Correlator {
    window: Duration,
    slots: HashMap<u64, Observation>,
    order: VecDeque<u64>,
    next_seq: u64,
    fan_index: Index,
    ebpf_index: Index,
    /// Emitted eBPF observations kept three windows for late fanotify twins.
    recent: HashMap<u64, Observation>,
    recent_index: Index,
    recent_order: VecDeque<u64>,
    /// Parked fanotify observations, by when they were parked.
    parked: VecDeque<(Instant, u64)>,
    open: HashMap<Key, OpenState>,
    stats: CorrelatorStats,
    attribs: StatCache,
}

impl Correlator {
    pub fn new(window: Duration) -> Self {
        Correlator {
            window,
            slots: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            fan_index: Index::default(),
            ebpf_index: Index::default(),
            recent: HashMap::new(),
            recent_index: Index::default(),
            recent_order: VecDeque::new(),
            parked: VecDeque::new(),
            open: HashMap::new(),
            stats: CorrelatorStats::default(),
            attribs: StatCache::default(),
        }
    }

    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    /// Observations buffered (queued or parked).
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// Remember mode and owner of every file below `root` (to classify ATTRIB).
    pub fn prime_attributes(&mut self, root: &Path, limit: usize) -> usize {
        self.attribs.prime(root, limit)
    }

    fn buffer(&mut self, obs: Observation) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if obs.source == Source::Fanotify {
            self.fan_index.add(&obs, seq);
        } else {
            self.ebpf_index.add(&obs, seq);
        }
        self.slots.insert(seq, obs);
        self.order.push_back(seq);
    }

    fn take(&mut self, seq: u64) -> Option<Observation> {
        let obs = self.slots.remove(&seq)?;
        if obs.source == Source::Fanotify {
            self.fan_index.remove(&obs, seq);
        } else {
            self.ebpf_index.remove(&obs, seq);
        }
        Some(obs)
    }

    /// The oldest buffered eBPF observation that would absorb `f`.
    fn ebpf_twin(&self, f: &Observation) -> Option<u64> {
        self.ebpf_index
            .candidates(f)
            .into_iter()
            .find(|s| self.slots.get(s).is_some_and(|e| absorbs(e, f)))
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
        self.buffer(obs);
    }

    pub fn push_fanotify(&mut self, mut obs: Observation) {
        obs.source = Source::Fanotify;
        let key = (obs.tid, obs.path.clone());
        if obs.kind == Kind::Write {
            let st = self.open.entry(key).or_default();
            st.since.get_or_insert(obs.arrived);
            if st.wrote {
                // Folded; if its eBPF twin is still buffered, it was seen by both.
                if let Some(e) = self.ebpf_twin(&obs).and_then(|s| self.slots.get_mut(&s)) {
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
        self.buffer(obs);
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
        while let Some(&seq) = self.order.front() {
            let Some(front) = self.slots.get(&seq) else {
                // Absorbed while queued.
                self.order.pop_front();
                continue;
            };
            let forced = self.slots.len() > MAX_BUFFERED;
            if !forced && !self.ready(front, now, marks, busy) {
                break;
            }
            if forced {
                self.stats.forced += 1;
            }
            self.order.pop_front();
            if front.source == Source::Fanotify {
                if !forced && self.ebpf_twin(front).is_some() {
                    // Its eBPF twin is younger and will absorb it when it leaves.
                    self.parked.push_back((now, seq));
                    continue;
                }
                let Some(obs) = self.take(seq) else { continue };
                if let Some(obs) = self.release_fanotify(obs) {
                    out.push(obs);
                }
            } else {
                let Some(mut obs) = self.take(seq) else {
                    continue;
                };
                self.absorb_twins(&mut obs);
                // Content-only operations leave mode and owner as they were: no stat needed.
                if !matches!(obs.kind, Kind::Write | Kind::OpenWrite | Kind::Truncate) {
                    self.attribs.refresh(&obs.path);
                }
                self.stats.emitted_ebpf += 1;
                self.remember(obs.clone());
                out.push(obs);
            }
        }
        self.expire(now, &mut out);
        out
    }

    /// Merge into `e` the oldest buffered fanotify observation of each kind it accounts for.
    fn absorb_twins(&mut self, e: &mut Observation) {
        let mut taken_kinds: Vec<(Kind, bool)> = Vec::new();
        for seq in self.fan_index.candidates(e) {
            let Some(f) = self.slots.get(&seq) else {
                continue;
            };
            let class = (f.kind, f.attrib);
            if taken_kinds.contains(&class) || !absorbs(e, f) {
                continue;
            }
            taken_kinds.push(class);
            if let Some(f) = self.take(seq) {
                merge(e, &f);
                self.stats.merged += 1;
            }
        }
    }

    fn remember(&mut self, e: Observation) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.recent_index.add(&e, seq);
        self.recent.insert(seq, e);
        self.recent_order.push_back(seq);
    }

    fn release_fanotify(&mut self, obs: Observation) -> Option<Observation> {
        let late_twin = self
            .recent_index
            .candidates(&obs)
            .into_iter()
            .any(|s| self.recent.get(&s).is_some_and(|e| absorbs(e, &obs)));
        if late_twin {
            self.stats.merged += 1;
            return None;
        }
        let obs = self.finish_fanotify(obs)?;
        self.stats.emitted_fanotify += 1;
        Some(obs)
    }

    /// Age out remembered and parked observations and stale open-file state.
    fn expire(&mut self, now: Instant, out: &mut Vec<Observation>) {
        let horizon = self.window * 3;
        while let Some(&seq) = self.recent_order.front() {
            let old = self
                .recent
                .get(&seq)
                .is_none_or(|r| now.duration_since(r.arrived) > horizon);
            if !old {
                break;
            }
            self.recent_order.pop_front();
            if let Some(e) = self.recent.remove(&seq) {
                self.recent_index.remove(&e, seq);
            }
        }
        // A parked observation whose twin never took it (should not happen) is released.
        while let Some(&(parked_at, seq)) = self.parked.front() {
            if self.slots.contains_key(&seq) && now.duration_since(parked_at) <= horizon {
                break;
            }
            self.parked.pop_front();
            if let Some(obs) = self.take(seq) {
                self.stats.parked_expired += 1;
                if let Some(obs) = self.release_fanotify(obs) {
                    out.push(obs);
                }
            }
        }
        self.open.retain(|_, st| {
            st.since
                .is_none_or(|t| now.duration_since(t) < OPEN_STATE_TTL)
        });
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
    fn pairs_first_in_first_out_per_thread_and_path() {
        // A loop re-creating one file: each open takes its own CREATE, whatever the order
        // in which the two sources were read.
        let t0 = Instant::now();
        let mut c = Correlator::new(W);
        for _ in 0..3 {
            c.push_ebpf(Observation {
                open_flags: 0o1101,
                ..obs(Kind::OpenWrite, "/w/loop", Source::Ebpf, t0)
            });
        }
        for _ in 0..3 {
            c.push_fanotify(obs(Kind::Create, "/w/loop", Source::Fanotify, t0));
        }
        let out = c.flush(t0 + W, &NONE, &idle);
        let kinds: Vec<(Kind, Source)> = out.iter().map(|o| (o.kind, o.source)).collect();
        assert_eq!(kinds, vec![(Kind::Create, Source::Both); 3]);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_flood_cannot_grow_the_buffer_without_bound() {
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(3600));
        for i in 0..MAX_BUFFERED + 50 {
            c.push_fanotify(obs(Kind::Unlink, &format!("/w/f{i}"), Source::Fanotify, t0));
        }
        // Nothing is ready (no watermark, window not passed), yet the excess is released.
        let out = c.flush(t0, &NONE, &idle);
        assert_eq!(out.len(), 50);
        assert_eq!(c.stats().forced, 50);
        assert_eq!(c.pending(), MAX_BUFFERED);
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
