//! Twin matching: which fanotify observations an eBPF observation absorbs (the same
//! operation seen by both observers), the merge itself, and the memory of emitted eBPF
//! observations that lets a late fanotify twin still be absorbed.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Correlator, Slot,
    index::{Index, Keys, scan},
    observation::Observation,
    seq::SeqStore,
};
use crate::event::{Kind, Source};

const O_TRUNC: u32 = 0o1000;

/// What an emitted eBPF observation must still tell a late fanotify twin ([`absorbs`]).
pub(super) struct Emitted {
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
pub(super) struct TwinView<'a> {
    kind: Kind,
    tid: u32,
    result: Option<i64>,
    open_flags: u32,
    pub(super) path: &'a [u8],
    pub(super) target: Option<&'a [u8]>,
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
pub(super) fn ebpf_twin(
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

impl Correlator {
    /// Merge into `e` the oldest buffered fanotify observation of each kind it accounts for.
    pub(super) fn absorb_twins(&mut self, e: &mut Observation, keys: Keys) {
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

    /// Keep emitted eBPF observation `e` for its late fanotify twins.
    pub(super) fn remember(&mut self, e: &Observation, keys: Keys) {
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

    /// Whether fanotify observation `obs` is the late twin of an emitted eBPF observation.
    pub(super) fn late_twin(&mut self, obs: &Observation, keys: Keys) -> bool {
        let recent = &self.recent;
        scan(
            self.recent_index.candidates(keys),
            &mut self.stats.scan_limited,
            |s| recent.get(s).is_some_and(|e| absorbs(e.into(), obs)),
        )
        .is_some()
    }

    /// Forget emitted eBPF observations that arrived more than `horizon` before `now`.
    pub(super) fn forget_emitted(&mut self, now: Instant, horizon: Duration) {
        while let Some((seq, e)) = self.recent.first() {
            if now.duration_since(e.arrived) <= horizon {
                break;
            }
            let keys = e.keys;
            self.recent.take(seq);
            self.recent_index.remove(keys, seq);
        }
    }
}

/// Whether eBPF observation `e` describes the same operation as fanotify observation `f`.
pub(super) fn absorbs(e: TwinView<'_>, f: &Observation) -> bool {
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
