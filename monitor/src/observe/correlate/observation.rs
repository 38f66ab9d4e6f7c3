//! What the correlator takes in and reports: one observed operation, its counters, and
//! when each source was last drained.
use std::{sync::Arc, time::Instant};

use crate::{
    event::{Details, Kind, Source},
    kernel::decode::Comm,
};

/// One observed operation, before attribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    /// Shared, so that the indices, the descriptor table and the late-twin memory hold
    /// it without copies.
    pub path: Arc<[u8]>,
    pub target: Option<Arc<[u8]>>,
    /// Thread id of the writer (fanotify reports tids: `FAN_REPORT_TID`).
    pub tid: u32,
    /// Process id when known (eBPF); fanotify observations carry 0 here.
    pub tgid: u32,
    pub result: Option<i64>,
    pub source: Source,
    /// Wall clock, ns since the epoch.
    pub time_ns: i128,
    pub details: Details,
    /// Kernel session id from the eBPF record (0 = none or unknown).
    pub session: u64,
    pub uid: Option<u32>,
    pub comm: Comm,
    /// Open flags for open-family observations.
    pub open_flags: u32,
    /// fanotify `ATTRIB` not yet classified as chmod or chown.
    pub attrib: bool,
    pub arrived: Instant,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// fanotify observations merged into an eBPF one.
    pub merged: u64,
    /// fanotify MODIFY/CLOSE_WRITE folded into an earlier write of the same open.
    pub folded: u64,
    /// fanotify ATTRIB that changed neither mode nor owner (times, xattrs, link count).
    pub attrib_ignored: u64,
    pub emitted_ebpf: u64,
    pub emitted_fanotify: u64,
    /// Observations released without waiting for their twin because the buffer was full.
    pub forced: u64,
    /// Parked fanotify observations released because their twin never took them.
    pub parked_expired: u64,
    /// Twin lookups that gave up after `SCAN_LIMIT` candidates (possible duplicates).
    pub scan_limited: u64,
}

/// When each source was last drained completely (everything queued before it is known).
#[derive(Clone, Copy, Debug, Default)]
pub struct Watermarks {
    pub ebpf: Option<Instant>,
    pub fanotify: Option<Instant>,
}
