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
//!
//! The parts: [`Observation`] and what the correlator reports (`observation`), the
//! buffer's storage and indices (`seq`, `index`), twin matching and merging (`twins`),
//! naming unresolved relative paths (`unresolved`), folding repeated writes (`fold`), and
//! classifying `ATTRIB` (`attrib`). This file holds the buffer itself: what goes in, when
//! it leaves, and parking.
use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    path::Path,
    time::{Duration, Instant},
};

use crate::event::Source;

mod attrib;
mod fold;
mod index;
mod observation;
mod seq;
#[cfg(test)]
mod tests;
mod twins;
mod unresolved;

pub use observation::{CorrelatorStats, Observation, Watermarks};

use attrib::StatCache;
use fold::OpenState;
use index::{Index, Key, Keys};
use seq::SeqStore;
use twins::{Emitted, ebpf_twin};
use unresolved::relative_unresolved;

/// Most observations buffered at once; beyond it the oldest are released without waiting
/// for their twins (counted as `forced`), so a flood cannot grow memory without bound.
const MAX_BUFFERED: usize = 100_000;

/// A buffered observation with its index keys.
struct Slot {
    obs: Observation,
    keys: Keys,
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
            self.name_from_buffer(&mut obs);
        }
        let still_unresolved = unresolved && obs.details.unresolved;
        let keys = self.keys(&obs);
        self.note_open(&obs, keys);
        let seq = self.buffer(obs, keys);
        if still_unresolved {
            self.await_name(seq);
        }
    }

    pub fn push_fanotify(&mut self, mut obs: Observation) {
        obs.source = Source::Fanotify;
        if !self.unresolved.is_empty() {
            self.name_unresolved(&obs);
        }
        let keys = self.keys(&obs);
        if self.fold(&obs, keys) {
            return;
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

    /// A fanotify observation leaving the buffer: absorbed by the emitted eBPF observation
    /// it is the late twin of, dropped if it is an `ATTRIB` that changed nothing we
    /// report, else emitted.
    fn release_fanotify(&mut self, obs: Observation, keys: Keys) -> Option<Observation> {
        if self.late_twin(&obs, keys) {
            self.stats.merged += 1;
            return None;
        }
        let Some(obs) = self.attribs.settle(obs) else {
            self.stats.attrib_ignored += 1;
            return None;
        };
        self.stats.emitted_fanotify += 1;
        Some(obs)
    }

    /// Age out remembered and parked observations and stale open-file state.
    fn expire(&mut self, now: Instant, out: &mut Vec<Observation>) {
        let horizon = self.window * 3;
        self.forget_emitted(now, horizon);
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
        self.expire_open(now);
    }
}
