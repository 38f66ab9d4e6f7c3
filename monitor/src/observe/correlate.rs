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
    collections::{HashMap, VecDeque, hash_map::Entry},
    hash::{BuildHasher, RandomState},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use std::os::unix::ffi::OsStrExt;

use crate::{
    event::{Details, Kind, Source},
    kernel::decode::Comm,
};

/// One observed operation, before attribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    /// Shared, so that the indices, the descriptor table and the late-twin memory hold
    /// it without copies.
    pub path: Arc<[u8]>,
    pub target: Option<Arc<[u8]>>,
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
    pub comm: Comm,
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
    /// Twin lookups that gave up after `SCAN_LIMIT` candidates (possible duplicates).
    pub scan_limited: u64,
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

/// Index key: a thread and the hash of one path it named (an observation is indexed under
/// its path and, if any, its target). Keys hold a keyed 64-bit hash rather than a copy of
/// the path, so indexing an observation copies nothing; a collision (odds about 2^-64 per
/// pair) only adds a candidate, which the exact comparison in [`absorbs`] rejects.
type Key = (u32, u64);

/// The index keys of one observation.
#[derive(Clone, Copy, Debug)]
struct Keys {
    path: Key,
    target: Option<Key>,
}

impl Keys {
    fn iter(self) -> impl Iterator<Item = Key> {
        std::iter::once(self.path).chain(self.target)
    }
}

/// Emptied index lists are kept (a hot key then allocates nothing per observation) until
/// there are this many and they are the majority.
const INDEX_SWEEP_MIN: usize = 1024;

/// Sequence numbers of buffered observations under each key, oldest first.
#[derive(Default)]
struct Index {
    map: HashMap<Key, VecDeque<u64>>,
    /// Lists in `map` that are empty.
    empty: usize,
}

impl Index {
    fn add(&mut self, keys: Keys, seq: u64) {
        for k in keys.iter() {
            match self.map.entry(k) {
                Entry::Occupied(o) => {
                    let v = o.into_mut();
                    if v.is_empty() {
                        self.empty -= 1;
                    }
                    v.push_back(seq);
                }
                Entry::Vacant(e) => {
                    e.insert(VecDeque::from([seq]));
                }
            }
        }
    }

    fn remove(&mut self, keys: Keys, seq: u64) {
        for k in keys.iter() {
            // Lists are in increasing order (sequence numbers are handed out in order).
            if let Some(v) = self.map.get_mut(&k)
                && let Ok(i) = v.binary_search(&seq)
            {
                v.remove(i);
                if v.is_empty() {
                    self.empty += 1;
                }
            }
        }
        if self.empty >= INDEX_SWEEP_MIN && self.empty * 2 > self.map.len() {
            self.map.retain(|_, v| !v.is_empty());
            self.empty = 0;
        }
    }

    /// Candidates under `keys`, oldest first, without duplicates: the lists of the (at
    /// most two) keys merged as they are read, nothing copied or sorted.
    fn candidates(&self, keys: Keys) -> Candidates<'_> {
        let list = |k: Option<Key>| {
            k.and_then(|k| self.map.get(&k))
                .map(|v| v.iter().copied())
                .into_iter()
                .flatten()
                .peekable()
        };
        Candidates {
            a: list(Some(keys.path)),
            b: list(keys.target.filter(|t| *t != keys.path)),
        }
    }
}

type List<'a> = std::iter::Peekable<
    std::iter::Flatten<
        std::option::IntoIter<std::iter::Copied<std::collections::vec_deque::Iter<'a, u64>>>,
    >,
>;

/// Merge of two increasing lists of sequence numbers, without duplicates.
struct Candidates<'a> {
    a: List<'a>,
    b: List<'a>,
}

impl Iterator for Candidates<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match (self.a.peek().copied(), self.b.peek().copied()) {
            (Some(x), Some(y)) if x == y => {
                self.b.next();
                self.a.next()
            }
            (Some(x), Some(y)) if y < x => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// Candidates looked at per lookup. In normal operation a key has a handful; after
/// losses (ring buffer drops) unmatched observations of one busy file can pile up under
/// its key, and an unbounded scan per observation made the pipeline quadratic exactly
/// when it was already behind. A lookup that gives up is counted (`scan_limited`).
const SCAN_LIMIT: usize = 64;

/// The first of `cands` (in order) satisfying `pred`, looking at most at [`SCAN_LIMIT`].
fn scan(
    cands: impl Iterator<Item = u64>,
    limited: &mut u64,
    mut pred: impl FnMut(u64) -> bool,
) -> Option<u64> {
    for (i, seq) in cands.enumerate() {
        if i == SCAN_LIMIT {
            *limited += 1;
            return None;
        }
        if pred(seq) {
            return Some(seq);
        }
    }
    None
}

/// Values under increasing sequence numbers, in a deque indexed by `seq - base`: no
/// hashing, and nothing is rehashed as it grows. A taken value leaves a hole (one pointer
/// wide when `T` is a `Box`) until the holes before it are gone too.
struct SeqStore<T> {
    base: u64,
    items: VecDeque<Option<T>>,
    live: usize,
}

impl<T> Default for SeqStore<T> {
    fn default() -> Self {
        SeqStore {
            base: 0,
            items: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> SeqStore<T> {
    fn push(&mut self, v: T) -> u64 {
        let seq = self.base + self.items.len() as u64;
        self.items.push_back(Some(v));
        self.live += 1;
        seq
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.items.len()).then_some(i)
    }

    fn get(&self, seq: u64) -> Option<&T> {
        self.items.get(self.position(seq)?)?.as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        let i = self.position(seq)?;
        self.items.get_mut(i)?.as_mut()
    }

    fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    fn take(&mut self, seq: u64) -> Option<T> {
        let i = self.position(seq)?;
        let v = self.items.get_mut(i)?.take()?;
        self.live -= 1;
        while matches!(self.items.front(), Some(None)) {
            self.items.pop_front();
            self.base += 1;
        }
        Some(v)
    }

    /// The oldest value still held.
    fn first(&self) -> Option<(u64, &T)> {
        self.items
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.as_ref().map(|v| (self.base + i as u64, v)))
    }

    fn len(&self) -> usize {
        self.live
    }
}

/// Most observations buffered at once; beyond it the oldest are released without waiting
/// for their twins (counted as `forced`), so a flood cannot grow memory without bound.
const MAX_BUFFERED: usize = 100_000;

/// A buffered observation with its index keys.
struct Slot {
    obs: Observation,
    keys: Keys,
}

/// What an emitted eBPF observation must still tell a late fanotify twin ([`absorbs`]).
struct Emitted {
    kind: Kind,
    tid: u32,
    result: Option<i64>,
    open_flags: u32,
    path: Arc<[u8]>,
    target: Option<Arc<[u8]>>,
    arrived: Instant,
    keys: Keys,
}

/// The fields of an eBPF observation that decide what it absorbs.
#[derive(Clone, Copy)]
struct TwinView<'a> {
    kind: Kind,
    tid: u32,
    result: Option<i64>,
    open_flags: u32,
    path: &'a [u8],
    target: Option<&'a [u8]>,
}

impl<'a> From<&'a Observation> for TwinView<'a> {
    fn from(o: &'a Observation) -> Self {
        TwinView {
            kind: o.kind,
            tid: o.tid,
            result: o.result,
            open_flags: o.open_flags,
            path: &o.path,
            target: o.target.as_deref(),
        }
    }
}

impl<'a> From<&'a Emitted> for TwinView<'a> {
    fn from(e: &'a Emitted) -> Self {
        TwinView {
            kind: e.kind,
            tid: e.tid,
            result: e.result,
            open_flags: e.open_flags,
            path: &e.path,
            target: e.target.as_deref(),
        }
    }
}

/// The oldest buffered eBPF observation that would absorb `f` (indexed under `keys`).
fn ebpf_twin(
    index: &Index,
    slots: &SeqStore<Box<Slot>>,
    f: &Observation,
    keys: Keys,
    limited: &mut u64,
) -> Option<u64> {
    scan(index.candidates(keys), limited, |s| {
        slots.get(s).is_some_and(|e| absorbs((&e.obs).into(), f))
    })
}

/// Buffered observations: `order` is the release order; `slots` holds the observations
/// still buffered (a fanotify observation whose eBPF twin is still buffered is *parked*:
/// out of `order`, in `slots`, until the twin absorbs it). Lookups go through the indices,
/// so the work per observation does not grow with the size of the buffer.
pub struct Correlator {
    window: Duration,
    /// Keyed (per daemon) hasher of paths for the index keys.
    hasher: RandomState,
    slots: SeqStore<Box<Slot>>,
    order: VecDeque<u64>,
    fan_index: Index,
    ebpf_index: Index,
    /// Emitted eBPF observations kept three windows for late fanotify twins.
    recent: SeqStore<Emitted>,
    recent_index: Index,
    /// Parked fanotify observations, by when they were parked.
    parked: VecDeque<(Instant, u64)>,
    open: HashMap<Key, OpenState>,
    stats: CorrelatorStats,
    attribs: StatCache,
    /// Buffered eBPF observations whose relative path could not be resolved (the
    /// process's working directory is unknown, e.g. after an `fchdir` the daemon could
    /// not follow): a fanotify twin of the same thread whose path ends with it supplies
    /// the path (`mkdir -p a/b` does `fchdir(a)` then `mkdir("b")`).
    unresolved: VecDeque<u64>,
}

/// Most unresolved eBPF observations waiting for a twin to name their path.
const MAX_UNRESOLVED: usize = 1024;
/// Most buffered observations searched for the twin of an unresolved one.
const UNRESOLVED_SCAN: usize = 4096;

/// Whether `o` is an eBPF observation with a relative, unresolved path.
fn relative_unresolved(o: &Observation) -> bool {
    o.details.unresolved && !o.path.is_empty() && o.path[0] != b'/'
}

/// Whether fanotify observation `f` is the same operation as the unresolved eBPF
/// observation `e`, once `e`'s relative path is taken to end `f`'s path.
fn names_unresolved(e: &Observation, f: &Observation) -> bool {
    let ends = f.path.len() > e.path.len()
        && f.path.ends_with(&e.path)
        && f.path[f.path.len() - e.path.len() - 1] == b'/';
    ends && {
        let mut view: TwinView<'_> = e.into();
        view.path = &f.path;
        view.target = None;
        e.target.is_none() && absorbs(view, f)
    }
}

impl Correlator {
    pub fn new(window: Duration) -> Self {
        Correlator {
            window,
            hasher: RandomState::new(),
            slots: SeqStore::default(),
            order: VecDeque::new(),
            fan_index: Index::default(),
            ebpf_index: Index::default(),
            recent: SeqStore::default(),
            recent_index: Index::default(),
            parked: VecDeque::new(),
            open: HashMap::new(),
            stats: CorrelatorStats::default(),
            attribs: StatCache::default(),
            unresolved: VecDeque::new(),
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

    fn key(&self, tid: u32, path: &[u8]) -> Key {
        (tid, self.hasher.hash_one(path))
    }

    fn keys(&self, o: &Observation) -> Keys {
        Keys {
            path: self.key(o.tid, &o.path),
            target: o.target.as_deref().map(|t| self.key(o.tid, t)),
        }
    }

    fn buffer(&mut self, obs: Observation, keys: Keys) -> u64 {
        let fanotify = obs.source == Source::Fanotify;
        let seq = self.slots.push(Box::new(Slot { obs, keys }));
        if fanotify {
            self.fan_index.add(keys, seq);
        } else {
            self.ebpf_index.add(keys, seq);
        }
        self.order.push_back(seq);
        seq
    }

    fn take(&mut self, seq: u64) -> Option<Observation> {
        let slot = self.slots.take(seq)?;
        if slot.obs.source == Source::Fanotify {
            self.fan_index.remove(slot.keys, seq);
        } else {
            self.ebpf_index.remove(slot.keys, seq);
        }
        Some(slot.obs)
    }

    pub fn push_ebpf(&mut self, mut obs: Observation) {
        let unresolved = relative_unresolved(&obs);
        if unresolved {
            // Its fanotify twin may already be here: it knows the path.
            let named = self
                .order
                .iter()
                .rev()
                .take(UNRESOLVED_SCAN)
                .filter_map(|&s| self.slots.get(s))
                .find(|f| f.obs.source == Source::Fanotify && names_unresolved(&obs, &f.obs))
                .map(|f| f.obs.path.clone());
            if let Some(path) = named {
                obs.path = path;
                obs.details.unresolved = false;
            }
        }
        let still_unresolved = unresolved && obs.details.unresolved;
        let keys = self.keys(&obs);
        match obs.kind {
            Kind::OpenWrite | Kind::Create => {
                self.open.insert(
                    keys.path,
                    OpenState {
                        wrote: false,
                        since: Some(obs.arrived),
                    },
                );
            }
            Kind::Write => {
                self.open.entry(keys.path).or_default().wrote = true;
            }
            _ => {}
        }
        let seq = self.buffer(obs, keys);
        if still_unresolved {
            if self.unresolved.len() >= MAX_UNRESOLVED {
                self.unresolved.pop_front();
            }
            self.unresolved.push_back(seq);
        }
    }

    /// A fanotify observation names the path of a buffered unresolved eBPF one: that one
    /// takes the path and is indexed under it (so the usual twin lookup finds them).
    fn name_unresolved(&mut self, f: &Observation) {
        self.unresolved.retain(|&s| self.slots.get(s).is_some());
        let found = self.unresolved.iter().position(|&s| {
            self.slots
                .get(s)
                .is_some_and(|e| names_unresolved(&e.obs, f))
        });
        let Some(i) = found else { return };
        let Some(seq) = self.unresolved.remove(i) else {
            return;
        };
        let Some(mut e) = self.take(seq) else {
            return;
        };
        e.path = f.path.clone();
        e.details.unresolved = false;
        let keys = self.keys(&e);
        // Released in its place: the new sequence number is queued at the back, and the
        // old one is skipped when it reaches the front (its slot is gone).
        self.buffer(e, keys);
    }

    pub fn push_fanotify(&mut self, mut obs: Observation) {
        obs.source = Source::Fanotify;
        if !self.unresolved.is_empty() {
            self.name_unresolved(&obs);
        }
        let keys = self.keys(&obs);
        if obs.kind == Kind::Write {
            let st = self.open.entry(keys.path).or_default();
            st.since.get_or_insert(obs.arrived);
            if st.wrote {
                // Folded; if its eBPF twin is still buffered, it was seen by both.
                let limited = &mut self.stats.scan_limited;
                if let Some(s) = ebpf_twin(&self.ebpf_index, &self.slots, &obs, keys, limited)
                    && let Some(e) = self.slots.get_mut(s)
                {
                    e.obs.source = Source::Both;
                }
                self.stats.folded += 1;
                return;
            }
            st.wrote = true;
        } else if obs.kind == Kind::OpenWrite {
            // CLOSE_WRITE: the end of an open we already reported?
            if self.open.remove(&keys.path).is_some() {
                self.stats.folded += 1;
                return;
            }
        }
        self.buffer(obs, keys);
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
        self.flush_into(now, marks, busy, &mut out);
        out
    }

    /// [`Correlator::flush`] appending to `out`.
    pub fn flush_into(
        &mut self,
        now: Instant,
        marks: &Watermarks,
        busy: &dyn Fn(u32) -> bool,
        out: &mut Vec<Observation>,
    ) {
        while let Some(&seq) = self.order.front() {
            let Some(front) = self.slots.get(seq) else {
                // Absorbed while queued.
                self.order.pop_front();
                continue;
            };
            let forced = self.slots.len() > MAX_BUFFERED;
            if !forced && !self.ready(&front.obs, now, marks, busy) {
                break;
            }
            if forced {
                self.stats.forced += 1;
            }
            self.order.pop_front();
            if front.obs.source == Source::Fanotify {
                let keys = front.keys;
                if !forced
                    && ebpf_twin(
                        &self.ebpf_index,
                        &self.slots,
                        &front.obs,
                        keys,
                        &mut self.stats.scan_limited,
                    )
                    .is_some()
                {
                    // Its eBPF twin is younger and will absorb it when it leaves.
                    self.parked.push_back((now, seq));
                    continue;
                }
                let Some(obs) = self.take(seq) else { continue };
                if let Some(obs) = self.release_fanotify(obs, keys) {
                    out.push(obs);
                }
            } else {
                let keys = front.keys;
                let Some(mut obs) = self.take(seq) else {
                    continue;
                };
                self.absorb_twins(&mut obs, keys);
                self.attribs.after(&obs);
                self.stats.emitted_ebpf += 1;
                self.remember(&obs, keys);
                out.push(obs);
            }
        }
        self.expire(now, out);
    }

    /// Merge into `e` the oldest buffered fanotify observation of each kind it accounts for.
    fn absorb_twins(&mut self, e: &mut Observation, keys: Keys) {
        let mut taken_kinds: Vec<(Kind, bool)> = Vec::new();
        let mut chosen: Vec<u64> = Vec::new();
        let view: TwinView<'_> = (&*e).into();
        let classes = absorbable_classes(view);
        let _ = scan(
            self.fan_index.candidates(keys),
            &mut self.stats.scan_limited,
            |seq| {
                if let Some(f) = self.slots.get(seq) {
                    let class = (f.obs.kind, f.obs.attrib);
                    if !taken_kinds.contains(&class) && absorbs(view, &f.obs) {
                        taken_kinds.push(class);
                        chosen.push(seq);
                    }
                }
                taken_kinds.len() >= classes
            },
        );
        for seq in chosen {
            if let Some(f) = self.take(seq) {
                merge(e, &f);
                self.stats.merged += 1;
            }
        }
    }

    fn remember(&mut self, e: &Observation, keys: Keys) {
        let seq = self.recent.push(Emitted {
            kind: e.kind,
            tid: e.tid,
            result: e.result,
            open_flags: e.open_flags,
            path: e.path.clone(),
            target: e.target.clone(),
            arrived: e.arrived,
            keys,
        });
        self.recent_index.add(keys, seq);
    }

    fn release_fanotify(&mut self, obs: Observation, keys: Keys) -> Option<Observation> {
        let recent = &self.recent;
        let late_twin = scan(
            self.recent_index.candidates(keys),
            &mut self.stats.scan_limited,
            |s| recent.get(s).is_some_and(|e| absorbs(e.into(), &obs)),
        )
        .is_some();
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
        while let Some((seq, e)) = self.recent.first() {
            if now.duration_since(e.arrived) <= horizon {
                break;
            }
            let keys = e.keys;
            self.recent.take(seq);
            self.recent_index.remove(keys, seq);
        }
        // A parked observation whose twin never took it (should not happen) is released.
        while let Some(&(parked_at, seq)) = self.parked.front() {
            if self.slots.contains(seq) && now.duration_since(parked_at) <= horizon {
                break;
            }
            self.parked.pop_front();
            let Some(keys) = self.slots.get(seq).map(|s| s.keys) else {
                continue;
            };
            if let Some(obs) = self.take(seq) {
                self.stats.parked_expired += 1;
                if let Some(obs) = self.release_fanotify(obs, keys) {
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
fn absorbs(e: TwinView<'_>, f: &Observation) -> bool {
    if e.tid != f.tid || e.result.is_some_and(|r| r < 0) {
        return false;
    }
    let same = e.path == &f.path[..];
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
        (Kind::Rename, Kind::Rename) => {
            (same || f.path.is_empty()) && e.target == f.target.as_deref()
        }
        (Kind::Unlink, Kind::Unlink) | (Kind::Mkdir, Kind::Mkdir) => same,
        (Kind::Link, Kind::Create) => e.target == Some(&f.path[..]),
        (Kind::Symlink, Kind::Create) => same,
        _ => false,
    }
}

/// How many kinds of fanotify observation (kind, attrib) `e` can absorb at most (see
/// [`absorbs`]): the search for its twins stops once it has them all.
fn absorbable_classes(e: TwinView<'_>) -> usize {
    match e.kind {
        Kind::OpenWrite | Kind::Create if e.open_flags & O_TRUNC != 0 => 3,
        Kind::OpenWrite | Kind::Create | Kind::Link => 2,
        _ => 1,
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

    /// Keep the cache true after eBPF observation `o`, with a `stat` only where needed:
    /// content-only operations change neither mode nor owner; a file renamed or unlinked
    /// takes its attributes along (known from the syscall's success).
    fn after(&mut self, o: &Observation) {
        let succeeded = o.result.is_some_and(|r| r >= 0);
        match o.kind {
            Kind::Write | Kind::OpenWrite | Kind::Truncate => {}
            Kind::Rename if succeeded => {
                let moved = self.entries.remove(&o.path[..]);
                if let Some(to) = o.target.as_deref() {
                    match moved {
                        Some(a) if self.entries.len() < STAT_CACHE_MAX => {
                            self.entries.insert(to.to_vec(), a);
                        }
                        _ => {
                            self.entries.remove(to);
                        }
                    }
                }
            }
            Kind::Unlink if succeeded => {
                self.entries.remove(&o.path[..]);
            }
            _ => self.refresh(&o.path),
        }
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
            path: path.as_bytes().into(),
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
            comm: Comm::default(),
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
    fn a_fanotify_twin_names_an_unresolved_relative_path_in_either_order() {
        let t0 = Instant::now();
        let unresolved = |path: &str| {
            let mut o = obs(Kind::Mkdir, path, Source::Ebpf, t0);
            o.details.unresolved = true;
            o
        };
        for ebpf_first in [true, false] {
            let mut c = Correlator::new(W);
            if ebpf_first {
                c.push_ebpf(unresolved("b"));
                c.push_fanotify(obs(Kind::Mkdir, "/w/a/b", Source::Fanotify, t0));
            } else {
                c.push_fanotify(obs(Kind::Mkdir, "/w/a/b", Source::Fanotify, t0));
                c.push_ebpf(unresolved("b"));
            }
            // Not a twin: a name that merely ends with the same bytes.
            c.push_fanotify(obs(Kind::Mkdir, "/w/ab", Source::Fanotify, t0));
            let out = c.flush(t0 + W, &NONE, &idle);
            let got: Vec<(&[u8], Source, bool)> = out
                .iter()
                .map(|o| (&o.path[..], o.source, o.details.unresolved))
                .collect();
            assert_eq!(
                got,
                vec![
                    (&b"/w/a/b"[..], Source::Both, false),
                    (&b"/w/ab"[..], Source::Fanotify, false)
                ],
                "ebpf first: {ebpf_first}"
            );
            assert_eq!(c.pending(), 0);
        }
        // Without a twin it is reported as it is, unresolved.
        let mut c = Correlator::new(W);
        c.push_ebpf(unresolved("b"));
        let out = c.flush(t0 + W, &NONE, &idle);
        assert_eq!(
            (&out[0].path[..], out[0].details.unresolved),
            (&b"b"[..], true)
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
        e.target = Some(b"/w/conf"[..].into());
        let mut f = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0);
        f.target = Some(b"/w/other"[..].into());
        c.push_ebpf(e.clone());
        c.push_fanotify(f);
        assert_eq!(
            c.flush(t0 + W, &NONE, &idle).len(),
            2,
            "different targets are different operations"
        );
        let mut f2 = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0 + W);
        f2.target = Some(b"/w/conf"[..].into());
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
    fn renamed_file_keeps_its_known_attributes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.tmp"), dir.path().join("b.conf"));
        std::fs::write(&a, b"x").expect("write");
        let mut c = Correlator::new(W);
        c.prime_attributes(dir.path(), 100);
        std::fs::rename(&a, &b).expect("rename");
        let t0 = Instant::now();
        let mut e = obs(Kind::Rename, a.to_str().expect("utf8"), Source::Ebpf, t0);
        e.target = Some(b.as_os_str().as_bytes().into());
        c.push_ebpf(e);
        assert_eq!(c.flush(t0 + W, &NONE, &idle).len(), 1);
        // A timestamp-only ATTRIB on the new name: known attributes, nothing changed.
        c.push_fanotify(Observation {
            attrib: true,
            ..obs(
                Kind::Chmod,
                b.to_str().expect("utf8"),
                Source::Fanotify,
                t0 + W,
            )
        });
        assert!(c.flush(t0 + 2 * W, &NONE, &idle).is_empty());
        assert_eq!(c.stats().attrib_ignored, 1);
    }

    #[test]
    fn a_pile_of_unmatched_observations_under_one_key_is_scanned_boundedly() {
        // After ring-buffer losses, fanotify observations of one busy file whose eBPF
        // twins were lost pile up under its key; a lookup looks at SCAN_LIMIT of them.
        let t0 = Instant::now();
        let mut c = Correlator::new(Duration::from_secs(3600));
        c.push_ebpf(Observation {
            target: Some(b"/w/new"[..].into()),
            ..obs(Kind::Rename, "/w/busy", Source::Ebpf, t0)
        });
        for _ in 0..1000 {
            c.push_fanotify(obs(Kind::Unlink, "/w/busy", Source::Fanotify, t0));
        }
        let marks = Watermarks {
            ebpf: Some(t0 + W),
            fanotify: Some(t0 + W),
        };
        let out = c.flush(t0 + W, &marks, &idle);
        assert_eq!(out.len(), 1001, "nothing merged, nothing lost");
        assert!(c.stats().scan_limited >= 1);
        assert_eq!(c.pending(), 0);
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
