//! The daemon's latency histograms: process-wide, observed where the time is known and
//! exported by the daemon's `/metrics` (not by `confgate stats`, which shows counts only).
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Time from a permission event (a fanotify open, a supervised syscall) reaching the gate
/// to its answer, for every operation the gate's engine decides: 100 µs to ~7 min. It
/// includes an approver's time when one was asked.
pub static GATE_DECISION: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 4.0, 12)));

/// Time from filing an approval request to its decision reaching the gate (approved,
/// denied or rejected; a timeout is `gate_hold_timeouts`): 10 ms to ~30 min.
pub static APPROVAL_ROUND_TRIP: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.01, 3.0, 12)));

/// Time from an operation (its kernel timestamp) to its event being written out:
/// 0.5 ms to ~4 s.
pub static EVENT_PIPELINE_DELAY: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)));

/// Observes `d` in `h`, in seconds.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// Observes the time since `start` in `h`, in seconds.
pub fn observe_since(h: &Histogram, start: std::time::Instant) {
    observe(h, start.elapsed());
}

/// Observes the delay of an event that happened at `time_ns` (Unix epoch nanoseconds),
/// now; a time in the future (clock adjustments) counts as no delay.
pub fn observe_event_delay(time_ns: i128) {
    let delay_ns = crate::os::clock::now_ns().saturating_sub(time_ns).max(0);
    EVENT_PIPELINE_DELAY.observe(delay_ns as f64 / 1e9);
}
