//! Folding: repeated fanotify `MODIFY`s of one open file and its final `CLOSE_WRITE` are
//! folded into the first write (the kernel side reports only the first write per open,
//! too). The state of each open file is kept by thread and path.
use std::time::{Duration, Instant};

use super::{Correlator, index::Keys, observation::Observation, twins::ebpf_twin};
use crate::event::{Kind, Source};

/// An open file's fold state is forgotten after this long without a close.
const OPEN_STATE_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub(super) struct OpenState {
    wrote: bool,
    since: Option<Instant>,
}

impl Correlator {
    /// An eBPF observation (indexed under `keys`) opens a file or writes to it.
    pub(super) fn note_open(&mut self, obs: &Observation, keys: Keys) {
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
    }

    /// Whether fanotify observation `obs` (indexed under `keys`) is folded into a write
    /// already reported (then it is counted and goes no further).
    pub(super) fn fold(&mut self, obs: &Observation, keys: Keys) -> bool {
        if obs.kind == Kind::Write {
            let st = self.open.entry(keys.path).or_default();
            st.since.get_or_insert(obs.arrived);
            if st.wrote {
                // Folded; if its eBPF twin is still buffered, it was seen by both.
                let limited = &mut self.stats.scan_limited;
                if let Some(s) = ebpf_twin(&self.ebpf_index, &self.slots, obs, keys, limited)
                    && let Some(e) = self.slots.get_mut(s)
                {
                    e.obs.source = Source::Both;
                }
                self.stats.folded += 1;
                return true;
            }
            st.wrote = true;
        } else if obs.kind == Kind::OpenWrite {
            // CLOSE_WRITE: the end of an open we already reported?
            if self.open.remove(&keys.path).is_some() {
                self.stats.folded += 1;
                return true;
            }
        }
        false
    }

    /// Forget the state of files open (without a close seen) for [`OPEN_STATE_TTL`].
    pub(super) fn expire_open(&mut self, now: Instant) {
        self.open.retain(|_, st| {
            st.since
                .is_none_or(|t| now.duration_since(t) < OPEN_STATE_TTL)
        });
    }
}
