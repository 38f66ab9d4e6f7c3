//! Userspace counters of the daemon. Every loss, fallback and error path increments one;
//! they are reported with the kernel counters by `confgate stats` and in the periodic
//! log line.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Default, Debug)]
        pub struct Metrics { $(#[doc = $doc] pub $name: AtomicU64,)* }
        impl Metrics {
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
        /// Each counter's name and description (the help text of its Prometheus metric).
        pub const DOCS: &[(&str, &str)] = &[$((stringify!($name), $doc),)*];
    };
}

counters! {
    records: "ring-buffer records decoded",
    decode_errors: "ring-buffer records that could not be decoded (malformed or unknown)",
    exits_without_enter: "syscall exits with no matching enter (enter lost or raced the daemon start)",
    enters_without_exit: "syscall enters whose exit never arrived (flushed as result unknown)",
    exits_lost: "session processes found gone without their exit record (ring buffer full): marked exited so that their sessions end",
    unresolved_paths: "paths whose base directory could not be determined",
    unwatched_dropped: "session operations on paths outside the watch set (not reported)",
    fanotify_events: "fanotify events read",
    fanotify_overflows: "fanotify queue overflows (events lost in the kernel queue)",
    fanotify_unresolved: "fanotify file handles that could not be resolved to a path",
    events_emitted: "events written to the outputs (file operations, and ledger records as audit events)",
    sink_errors: "failed writes to the events file (the event still went to stdout/subscribers)",
    subscriber_lag: "events skipped by slow gRPC subscribers",
    audit_events_queued: "ledger records queued for the outputs as audit events",
    audit_events_dropped: "ledger records that did not become audit events (queue full; the ledger has them)",
    sessions_detected: "sessions created by detection rules",
    session_tag_errors: "failures to tag a process into a session in the kernel map",
    correlated_merged: "fanotify observations merged into an eBPF event (source: both)",
    correlated_folded: "repeated fanotify MODIFY/CLOSE_WRITE folded into an earlier write",
    attrib_ignored: "fanotify ATTRIB changes that were neither chmod nor chown (times, xattrs)",
    correlation_forced: "observations released before their twin arrived because the buffer was full (possible duplicates)",
    correlation_parked_expired: "fanotify observations whose expected eBPF twin never took them",
    correlation_scan_limited: "twin lookups that gave up after 64 candidates of one file (possible duplicate events)",
    resolve_cache_hits: "directory canonicalizations answered from the cache",
    resolve_cache_misses: "directory canonicalizations done (realpath)",
    resolve_symlink_census: "directory symlink censuses taken (readdir) for opens that follow symlinks",
    resolve_cache_forgotten: "cached directories dropped because an operation may have moved them (or the cache was full)",
    attest_issued: "decider attestations signed for callers outside every agent session",
    attest_refused: "decider attestations refused because the caller was inside an agent session",
    attest_key_errors: "failures to load or make the decider attestation key at start",
    sd_notify_errors: "notifications the service manager could not be sent (NOTIFY_SOCKET)",
    sd_watchdog_withheld: "systemd watchdog pings withheld because a critical loop did not answer",
    fdstore_restored: "session listeners the service manager passed back at start and that were paired with their live session",
    fdstore_discarded: "descriptors passed back at start and closed (not a session listener, session ended or unknown, no spec kept)",
    fdstore_attach_errors: "restored session listeners the supervisor could not attach (closed: the session's notified syscalls fail)",
    config_reloads: "configuration reloads that took effect (SIGHUP, `confgate reload`)",
    config_reloads_refused: "configuration reloads refused (the file did not validate or could not be applied; the running configuration stayed)",
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
