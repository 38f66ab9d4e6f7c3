//! What the supervisor, its performer and the held-operation records share: the
//! counters, a poison-tolerant lock, the read-only open of a pre-image, the handle of a
//! supervised session.
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::perform::Job;

/// A supervised session's listener and its performer's queue.
pub type SessionHandle = (Arc<OwnedFd>, std::sync::mpsc::SyncSender<Job>);

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of every supervisor since start-up (`confgate stats`: `session_*`).
        #[derive(Debug, Default)]
        pub struct SupervisorCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl SupervisorCounters {
            /// Every counter with its name.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("session_", stringify!($name)), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Listeners attached.
    attached,
    /// Notifications received.
    notifications,
    /// Answered CONTINUE (every target covered by Landlock).
    continued,
    /// Allowed by the decider and performed by the supervisor.
    allowed,
    /// Denied by the decider (`EPERM`).
    denied,
    /// Handed to the engine.
    deferred,
    /// Could not be handed to the engine (queue full or closed): failure verdict applied.
    defer_failed,
    /// Paths that could not be read or resolved (answered with the errno).
    resolve_errors,
    /// Syscalls refused outright (`setxattrat`, unknown numbers): `ENOSYS`.
    refused,
    /// `io_uring_setup` refused (`EPERM`): a ring's operations pass no notification.
    io_uring_refused,
    /// Operations outside the session's declared scope, refused at once (`EACCES`).
    scope_denied,
    /// Callers gone before they were answered.
    caller_gone,
    /// Answers the kernel refused.
    answer_errors,
    /// Reports of answered operations the event pipeline's queue had no room for.
    observe_dropped,
    /// Held operations taken again after a restart.
    holds_resumed,
    /// Allowed operations the performer's queue had no room for (answered `EAGAIN`).
    perform_queue_full,
    /// Recorded held operations whose caller was gone at a restart.
    holds_lost,
    /// Recorded held operations that could not be read back at a restart (a damaged
    /// record): the caller, if still waiting, is answered `EPERM`.
    holds_unreadable,
}

impl SupervisorCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The target, opened read-only for its pre-image (never blocking on a FIFO, never
/// following a symlink).
pub fn open_for_preimage(path: &Path) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()
        .map(OwnedFd::from)
}
