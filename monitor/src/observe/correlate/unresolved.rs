//! Relative paths the daemon could not resolve (the process's working directory is
//! unknown, e.g. after an `fchdir` it could not follow): a fanotify twin of the same
//! thread whose path ends with the relative one supplies the full path (`mkdir -p a/b`
//! does `fchdir(a)` then `mkdir("b")`), whichever of the two arrives first.
use super::{
    Correlator,
    observation::Observation,
    twins::{TwinView, absorbs},
};
use crate::event::Source;

/// Most unresolved eBPF observations waiting for a twin to name their path.
const MAX_UNRESOLVED: usize = 1024;
/// Most buffered observations searched for the twin of an unresolved one.
const UNRESOLVED_SCAN: usize = 4096;

/// Whether `o` is an eBPF observation with a relative, unresolved path.
pub(super) fn relative_unresolved(o: &Observation) -> bool {
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
    /// Unresolved eBPF observation `obs` takes its path from its fanotify twin if that
    /// one is already buffered (it knows the path).
    pub(super) fn name_from_buffer(&self, obs: &mut Observation) {
        let named = self
            .order
            .iter()
            .rev()
            .take(UNRESOLVED_SCAN)
            .filter_map(|&s| self.slots.get(s))
            .find(|f| f.obs.source == Source::Fanotify && names_unresolved(obs, &f.obs))
            .map(|f| f.obs.path.clone());
        if let Some(path) = named {
            obs.path = path;
            obs.details.unresolved = false;
        }
    }

    /// The buffered eBPF observation `seq` waits, unresolved, for a twin to name it.
    pub(super) fn await_name(&mut self, seq: u64) {
        if self.unresolved.len() >= MAX_UNRESOLVED {
            self.unresolved.pop_front();
        }
        self.unresolved.push_back(seq);
    }

    /// A fanotify observation names the path of a buffered unresolved eBPF one: that one
    /// takes the path and is indexed under it (so the usual twin lookup finds them).
    pub(super) fn name_unresolved(&mut self, f: &Observation) {
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
}
