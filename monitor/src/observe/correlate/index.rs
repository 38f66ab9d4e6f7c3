//! The buffer's indices: buffered observations by thread and path, read without copying
//! or sorting, and a bounded scan over their candidates.
use std::collections::{HashMap, VecDeque, hash_map::Entry};

/// Index key: a thread and the hash of one path it named (an observation is indexed under
/// its path and, if any, its target). Keys hold a keyed 64-bit hash rather than a copy of
/// the path, so indexing an observation copies nothing; a collision (odds about 2^-64 per
/// pair) only adds a candidate, which the exact comparison in `twins::absorbs` rejects.
pub(super) type Key = (u32, u64);

/// The index keys of one observation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Keys {
    pub(super) path: Key,
    pub(super) target: Option<Key>,
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
pub(super) struct Index {
    map: HashMap<Key, VecDeque<u64>>,
    /// Lists in `map` that are empty.
    empty: usize,
}

impl Index {
    pub(super) fn add(&mut self, keys: Keys, seq: u64) {
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

    pub(super) fn remove(&mut self, keys: Keys, seq: u64) {
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
    pub(super) fn candidates(&self, keys: Keys) -> Candidates<'_> {
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
pub(super) struct Candidates<'a> {
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
pub(super) fn scan(
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
