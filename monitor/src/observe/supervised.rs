//! Operations of confined sessions as the supervisor saw them.
//!
//! The kernel's syscall tracepoints never see an operation the supervisor answered
//! itself (seccomp skips the syscall before the tracepoint), and the daemon's own writes
//! are not reported by fanotify: the supervisor reports each such operation here, with
//! the caller it held, so that it is observed and attributed like any other.
use std::sync::Arc;
use std::time::Instant;

use crate::event::{Details, Kind, Source};
use crate::kernel::decode::Comm;
use crate::observe::correlate::Observation;

/// One operation a supervisor answered itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Supervised {
    pub kind: Kind,
    /// Resolved absolute path (the source of a rename or link).
    pub path: Vec<u8>,
    /// Rename or link: the new name; symlink: the link's content.
    pub target: Option<Vec<u8>>,
    pub tid: u32,
    pub tgid: u32,
    pub session: u64,
    pub uid: Option<u32>,
    /// The syscall's result as the caller saw it (descriptor, 0, or `-errno`).
    pub result: i64,
    /// Open flags (opens), 0 otherwise.
    pub open_flags: u32,
    /// New or creation mode.
    pub mode: Option<u32>,
    /// Wall clock, ns since the epoch.
    pub time_ns: i128,
    /// Refused because it is outside the session's declared scope.
    pub scope_denied: bool,
    /// The caller's `comm`, read by the supervisor as it answered (the caller may have
    /// exited by the time the event loop takes this); `None`: unreadable then.
    pub comm: Option<Vec<u8>>,
}

impl Supervised {
    /// The observation the correlator takes.
    pub fn into_observation(self) -> Observation {
        let comm = self
            .comm
            .or_else(|| crate::os::procfs::read_at_most(self.tid, "comm", 32))
            .map(|c| Comm::new(c.strip_suffix(b"\n").unwrap_or(&c)))
            .unwrap_or_else(|| Comm::new(b""));
        Observation {
            kind: self.kind,
            path: Arc::from(self.path),
            target: self.target.map(Arc::from),
            tid: self.tid,
            tgid: self.tgid,
            result: Some(self.result),
            source: Source::Supervisor,
            time_ns: self.time_ns,
            details: Details {
                mode: self.mode.map(|m| format!("{m:o}")),
                scope_denied: self.scope_denied,
                ..Details::default()
            },
            session: self.session,
            uid: self.uid,
            comm,
            open_flags: self.open_flags,
            attrib: false,
            arrived: Instant::now(),
        }
    }
}
