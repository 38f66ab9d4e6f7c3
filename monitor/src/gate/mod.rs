//! The gate's kernel-facing half: a fanotify `FAN_CLASS_CONTENT` group whose
//! `FAN_OPEN_PERM` events hold openers of gated files until they are answered.
//!
//! - [`group`]: the permission group ([`PermGroup`]): creation, marks, reading events, and
//!   answering them (safe from any thread), over the raw calls of `crate::os::fanotify`.
//! - [`marks`]: [`Marks`] puts `FAN_OPEN_PERM` marks on gated trees, new subdirectories and
//!   single files; [`placement`]: [`Placement`] places and removes them as a whole
//!   (`gate.fanotify`).
//! - [`intent`]: [`IntentSource`] tells the write intent and session of the thread held in
//!   a permission wait (eBPF `PENDING`/`SESSIONS` maps, `/proc/<tid>/syscall` fallback).
//! - [`listener`]: [`Listener`], the dedicated OS thread that reads events and answers them
//!   at once or hands them to the engine as [`Held`]; the [`Decider`] trait is the seam to
//!   policy. [`watchdog`]: answers in its place when it misses a deadline.
//! - [`preimage`]: [`preimage::capture`] reads a held file's content and metadata from the
//!   event descriptor before the open proceeds.
//! - [`decider`]: [`GateDecider`], policy and grants on the listener thread, from memory.
//! - [`engine`]: [`Engine`], the async side: requests, waits, grants, failure verdicts,
//!   diffs, expiry (flag or revert) and unapproved renames.
//! - [`reverse`]: undoing one change's edit in a file others changed since.
//! - [`terminal`]: the one-line notice on a session's controlling terminal when its
//!   operation waits for a request.
//! - [`crash`]: holds a daemon crash released, closed and settled at the next start.
//! - [`changes`]: pre-images kept in the store, diffs, reverts; [`context`]: who asks and
//!   why (from `/proc`); [`requests`]: the host's record of requests and grants.
//!
//! What happens when the daemon dies while opens are held: closing the group descriptor
//! (which the kernel does when the process exits, however it exits) makes the kernel answer
//! every pending and queued permission event of the group with `FAN_ALLOW`. Held writes then
//! proceed unchecked, and opens after that are not gated until a new group is marked.
pub mod changes;
pub mod context;
pub mod crash;
pub mod decider;
pub mod engine;
pub mod group;
pub mod held_now;
pub mod intent;
pub mod listener;
pub mod marks;
pub mod out_of_scope;
pub mod placement;
pub mod preimage;
pub mod requests;
pub mod reverse;
pub mod session;
pub mod terminal;
pub mod watchdog;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use decider::{GateDecider, GateMetrics};
pub use engine::{Engine, EngineInputs, EngineParts, EngineSettings, GateHandles, Notice};
pub use group::PermGroup;
pub use intent::{Intent, IntentOrigin, IntentSource, Opener};
pub use listener::{Decider, FastVerdict, Held, Listener, PermEvent, WatchdogOptions};
pub use marks::{MarkReport, Marks};
pub use placement::{Placed, Placement};
pub use preimage::{PreImage, PreImageError};

/// The answer written to the kernel for a permission event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `FAN_ALLOW`: the open proceeds.
    Allow,
    /// `FAN_DENY`: the open fails with `EPERM`.
    Deny,
}

/// Errors of the gate's kernel-facing half.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// `fanotify_init` refused the permission group.
    #[error(
        "cannot create the fanotify permission group (flags {flags:#x}): {source}{}",
        init_hint(source)
    )]
    Init {
        /// `fanotify_init` flags of the last attempt.
        flags: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A path to mark could not be opened, inspected or marked.
    #[error("cannot gate {}: {source}", path.display())]
    Mark {
        /// The path as given or as found in the walk.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The kernel's limit on fanotify marks was reached (`ENOSPC`): nothing more can be
    /// gated until marks are freed or the limit (`/proc/sys/fs/fanotify/max_user_marks`)
    /// is raised.
    #[error(
        "cannot gate {}: the fanotify mark limit is reached (ENOSPC); raise \
         /proc/sys/fs/fanotify/max_user_marks or gate fewer files",
        path.display()
    )]
    MarkLimit {
        /// The path whose mark was refused.
        path: PathBuf,
    },
    /// The path is not of the kind the call needs.
    #[error("cannot gate {}: {what}", path.display())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The path is on a pseudo filesystem (/proc, /sys, ...), which is never gated.
    #[error("cannot gate {}: it is on a {fs} pseudo filesystem", path.display())]
    PseudoFs {
        /// The path.
        path: PathBuf,
        /// Name of the filesystem type.
        fs: &'static str,
    },
    /// Writing a response to the group failed (the opener may have been killed, in which
    /// case the kernel forgot the event: `ENOENT`).
    #[error("answering a fanotify permission event failed: {0}")]
    Respond(#[source] io::Error),
    /// The listener thread or its helpers could not be set up.
    #[error("starting the gate listener: {0}")]
    Start(#[source] io::Error),
}

fn init_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => " (needs CAP_SYS_ADMIN)",
        Some(libc::EINVAL) => {
            " (the kernel refused FAN_CLASS_CONTENT with FAN_REPORT_TID: Linux 4.20 or newer \
             with CONFIG_FANOTIFY_ACCESS_PERMISSIONS is needed)"
        }
        _ => "",
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of one permission group (its marks, listener and held events), since
        /// the group was created. Every response written to the kernel is counted in
        /// exactly one of `allowed_fast`, `allowed_self`, `allowed`, `denied`; fallback
        /// verdicts are counted both there and under their reason. `confgate stats` shows
        /// them with the prefix `perm_` (`perm_allowed_fast`, ...), apart from the
        /// engine's `gate_*` counters.
        #[derive(Debug, Default)]
        pub struct GateCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl GateCounters {
            /// Every counter with its name (`perm_` + the field), for `confgate stats`.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("perm_", stringify!($name)), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Permission events read from the group.
    events,
    /// Allowed without asking the decider: read-only opens, and opens by processes outside
    /// sessions when the decider does not gate those.
    allowed_fast,
    /// Allowed because the opener is this process (the daemon opens gated files itself).
    allowed_self,
    /// Allowed by a decision: the decider, a held event's answer, or a fallback `Allow`.
    allowed,
    /// Denied by a decision: the decider, a held event's answer, or a fallback `Deny`.
    denied,
    /// Events handed to the engine as `Held`.
    deferred,
    /// Deferred events answered at once with their failure verdict: the channel was full.
    defer_queue_full,
    /// Deferred events answered at once with their failure verdict: nobody receives.
    defer_closed,
    /// `Held` events dropped unanswered and answered with their failure verdict.
    held_dropped_fallback,
    /// Responses the kernel refused (the opener was killed meanwhile, or a bug).
    response_errors,
    /// Write intents found in the eBPF `PENDING` map.
    intent_ebpf,
    /// Intents read from `/proc/<tid>/syscall`.
    intent_proc,
    /// Paths of event descriptors that could not be read (the event is decided with an
    /// empty path).
    readlink_errors,
    /// Marks placed (directories and files).
    marks,
    /// Directories or files that could not be marked.
    mark_errors,
    /// Failed reads of the group (other than "no event").
    read_errors,
    /// Events or buffers that did not parse (answered `FAN_ALLOW` when they had a
    /// descriptor).
    malformed,
    /// Decider calls that panicked (answered `FAN_DENY`).
    decider_panics,
    /// Events whose opener is not visible in this pid namespace (pid 0; allowed).
    unknown_opener,
    /// Events the watchdog answered with their failure verdict because the listener
    /// missed its deadline (see [`watchdog`]).
    watchdog_answered,
    /// Events the listener finished after the watchdog had answered them (dropped).
    watchdog_late,
}

impl GateCounters {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
