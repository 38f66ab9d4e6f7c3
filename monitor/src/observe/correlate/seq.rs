//! Storage of the buffered observations under their sequence numbers.
use std::collections::VecDeque;

/// Values under increasing sequence numbers, in a deque indexed by `seq - base`: no
/// hashing, and nothing is rehashed as it grows. A taken value leaves a hole (one pointer
/// wide when `T` is a `Box`) until the holes before it are gone too.
pub(super) struct SeqStore<T> {
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
    pub(super) fn push(&mut self, v: T) -> u64 {
        let seq = self.base + self.items.len() as u64;
        self.items.push_back(Some(v));
        self.live += 1;
        seq
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.items.len()).then_some(i)
    }

    pub(super) fn get(&self, seq: u64) -> Option<&T> {
        self.items.get(self.position(seq)?)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        let i = self.position(seq)?;
        self.items.get_mut(i)?.as_mut()
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    pub(super) fn take(&mut self, seq: u64) -> Option<T> {
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
    pub(super) fn first(&self) -> Option<(u64, &T)> {
        self.items
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.as_ref().map(|v| (self.base + i as u64, v)))
    }

    pub(super) fn len(&self) -> usize {
        self.live
    }
}
