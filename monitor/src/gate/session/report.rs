//! Reports of the operations a supervisor answered itself, for the event pipeline (see
//! [`crate::observe::supervised`]).
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::common::SupervisorCounters;
use super::ops::{Kind, Op};
use super::resolve::Target;
use crate::event::Kind as EvKind;
use crate::observe::supervised::Supervised;

/// Reports answered operations to the event pipeline.
#[derive(Clone)]
pub(super) struct Reporter {
    pub(super) session: u64,
    pub(super) tx: Option<mpsc::Sender<Supervised>>,
    pub(super) counters: Arc<SupervisorCounters>,
}

impl Reporter {
    pub(super) fn send(
        &self,
        op: &Op,
        tid: u32,
        tgid: u32,
        uid: u32,
        targets: &[Target],
        result: i64,
    ) {
        self.send_as(op, (tid, tgid, uid), targets, result, false)
    }

    /// [`Reporter::send`], marked as refused by the session's scope or not.
    pub(super) fn send_as(
        &self,
        op: &Op,
        (tid, tgid, uid): (u32, u32, u32),
        targets: &[Target],
        result: i64,
        scope_denied: bool,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (kind, flags, mode) = match op.kind {
            Kind::Open { flags, mode, .. } => {
                let created = targets.first().is_some_and(|t| t.found.is_none());
                let k = if created && flags & libc::O_CREAT != 0 {
                    EvKind::Create
                } else {
                    EvKind::OpenWrite
                };
                (
                    k,
                    flags as u32,
                    (flags & libc::O_CREAT != 0).then_some(mode),
                )
            }
            Kind::Rename { .. } => (EvKind::Rename, 0, None),
            Kind::Link { .. } => (EvKind::Link, 0, None),
            Kind::Symlink { .. } => (EvKind::Symlink, 0, None),
            Kind::Unlink { .. } => (EvKind::Unlink, 0, None),
            Kind::Mkdir { mode } => (EvKind::Mkdir, 0, Some(mode)),
            Kind::Mknod { mode, .. } => (EvKind::Create, 0, Some(mode)),
            Kind::Truncate { .. } => (EvKind::Truncate, 0, None),
            Kind::Chmod { mode, .. } | Kind::FdChmod { mode, .. } => (EvKind::Chmod, 0, Some(mode)),
            Kind::Chown { .. }
            | Kind::FdChown { .. }
            | Kind::Xattr { .. }
            | Kind::FdXattr { .. } => (EvKind::Chown, 0, None),
        };
        let path = |i: usize| {
            targets
                .get(i)
                .map(|t| t.path.as_os_str().as_bytes().to_vec())
        };
        let (path, target) = match op.kind {
            Kind::Rename { .. } | Kind::Link { .. } => (path(0), path(1)),
            _ => (path(0), None),
        };
        let Some(path) = path else {
            return;
        };
        let s = Supervised {
            kind,
            path,
            target,
            tid,
            tgid,
            session: self.session,
            uid: Some(uid),
            result,
            open_flags: flags,
            mode,
            time_ns: crate::os::clock::now_ns(),
            scope_denied,
            comm: crate::os::procfs::read_at_most(tid, "comm", 32),
        };
        if tx.try_send(s).is_err() {
            self.counters
                .observe_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Counts and logs (the 1st, 2nd, 4th, ... time) an `io_uring_setup` of session `session`'s
/// process `pid`, which the supervisor refuses with `EPERM`: a ring's opens, renames and
/// unlinks pass no notification (Landlock would still refuse those beneath gated trees,
/// but silently), so sessions get no io_uring, as under Docker's default seccomp profile.
pub(super) fn io_uring_refused(counters: &SupervisorCounters, session: u64, pid: u32) {
    let total = counters
        .io_uring_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if total.is_power_of_two() {
        let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
        tracing::warn!(
            session,
            pid,
            comm = %crate::event::escape::for_terminal(comm.trim_ascii_end()),
            refused_so_far = total,
            "confined session: io_uring_setup refused (EPERM); io_uring is not available in sessions"
        );
    }
}
