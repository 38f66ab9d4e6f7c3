//! [`Placement`]: the permission group's marks on the policy's roots as one switch, placed
//! and removed as a whole (`gate.fanotify`), with the directories that appear in a gated
//! tree marked only while the switch is on.
//!
//! Placing walks every root (a few ms to a few hundred ms for `/etc`); removing is one
//! `FAN_MARK_FLUSH`. Place and remove are meant to be called by one task at a time (the
//! daemon's reconciler); [`Placement::on_new_dir`] may run concurrently with either.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::{info, warn};

use super::marks::Marks;

/// What one placement marked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// Directory trees marked.
    pub trees: u64,
    /// Directories and files marked.
    pub marks: u64,
    /// Entries that could not be marked.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct State {
    placed: bool,
    /// Gated directory trees (new subdirectories below them are marked).
    trees: Vec<PathBuf>,
}

/// The marks of the gate as a switch. Counters: `gate_marks_placed` (1 while placed),
/// `gate_marks_placements`, `gate_marks_removals`.
#[derive(Debug)]
pub struct Placement {
    marks: Marks,
    /// The policy's mark roots (replaced by a configuration reload).
    roots: Mutex<Vec<PathBuf>>,
    state: Mutex<State>,
    placements: AtomicU64,
    removals: AtomicU64,
    /// True once a placement's walk is done, false from a removal.
    done: tokio::sync::watch::Sender<bool>,
}

impl Placement {
    /// Marks of `marks`' group on `roots` (the policy's mark roots), none placed yet.
    pub fn new(marks: Marks, roots: Vec<PathBuf>) -> Self {
        Self {
            marks,
            roots: Mutex::new(roots),
            state: Mutex::new(State::default()),
            placements: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the marks are placed.
    pub fn is_placed(&self) -> bool {
        self.lock().placed
    }

    /// Mark every root (blocking: walks the trees). New directories are marked from the
    /// moment this starts. Placing placed marks walks again (marks are idempotent).
    pub fn place(&self) -> Placed {
        let trees = self.existing_trees();
        {
            let mut s = self.lock();
            s.placed = true;
            s.trees = trees;
        }
        let mut out = Placed::default();
        for root in &self.roots() {
            mark_root(&self.marks, root, &mut out);
        }
        self.placements.fetch_add(1, Ordering::Relaxed);
        self.done.send_replace(true);
        out
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The policy's mark roots changed (a configuration reload): placements from now on
    /// mark `roots`. Returns whether the marks are placed now (then the caller places them
    /// again, which adds the new roots' marks; marks of roots no longer named stay until
    /// the next removal, and their opens are decided by the new policy, which names them
    /// no more).
    pub fn set_roots(&self, roots: Vec<PathBuf>) -> bool {
        *self.roots.lock().unwrap_or_else(PoisonError::into_inner) = roots;
        self.is_placed()
    }

    /// Wait until the marks are placed (walk done), at most `limit`; false on timeout.
    pub async fn wait_placed(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.done.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|d| *d)).await,
            Ok(Ok(_))
        )
    }

    /// Remove every mark (`FAN_MARK_FLUSH`): opens are no longer held from now on (the
    /// events already queued are still answered by the listener).
    pub fn remove(&self) -> std::io::Result<()> {
        let mut s = self.lock();
        s.placed = false;
        s.trees.clear();
        self.done.send_replace(false);
        self.removals.fetch_add(1, Ordering::Relaxed);
        self.marks.flush()
    }

    /// A directory appeared: mark it if the marks are placed and it is in a gated tree.
    pub fn on_new_dir(&self, dir: &Path) {
        let s = self.lock();
        if s.placed
            && dir.is_absolute()
            && s.trees.iter().any(|t| dir.starts_with(t))
            && let Err(e) = self.marks.mark_dir(dir)
        {
            warn!(dir = %dir.display(), error = %e, "gate: cannot mark a new directory");
        }
    }

    /// `gate_marks_placed`, `gate_marks_placements`, `gate_marks_removals`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("gate_marks_placed", u64::from(self.is_placed())),
            (
                "gate_marks_placements",
                self.placements.load(Ordering::Relaxed),
            ),
            ("gate_marks_removals", self.removals.load(Ordering::Relaxed)),
        ]
    }

    /// The directory each root is marked as (see [`mark_target`]).
    fn existing_trees(&self) -> Vec<PathBuf> {
        self.roots()
            .iter()
            .filter_map(|r| mark_target(r))
            .filter(|t| t.is_dir())
            .collect()
    }
}

/// What marks a root: itself if it exists, else its nearest existing ancestor (so that its
/// creation is gated too), never `/` itself.
fn mark_target(root: &Path) -> Option<PathBuf> {
    let mut target = root.to_path_buf();
    while !target.exists() {
        match target.parent() {
            Some(p) if p != Path::new("/") && !p.as_os_str().is_empty() => {
                target = p.to_path_buf();
            }
            _ => return None,
        }
    }
    Some(target)
}

/// Marks one root of the policy: a directory recursively, a file with an inode mark.
fn mark_root(marks: &Marks, root: &Path, out: &mut Placed) {
    let Some(target) = mark_target(root) else {
        warn!(root = %root.display(), "gate: nothing to mark (no existing parent below /)");
        return;
    };
    if target.is_dir() {
        match marks.mark_tree(&target) {
            Ok(r) => {
                info!(tree = %target.display(), dirs = r.dirs, files = r.files, errors = r.errors, "gate: tree marked");
                out.trees += 1;
                out.marks += r.dirs + r.files;
                out.errors += r.errors;
            }
            Err(e) => {
                warn!(tree = %target.display(), error = %e, "gate: cannot mark tree");
                out.errors += 1;
            }
        }
    } else {
        match marks.mark_file(&target) {
            Ok(()) => out.marks += 1,
            Err(e) => {
                warn!(file = %target.display(), error = %e, "gate: cannot mark file");
                out.errors += 1;
            }
        }
    }
}
