//! How a `confgate stats` name becomes a Prometheus metric: `confgate_` + the name, with
//! `_total` for a counter; the names listed in [`GAUGES`] are gauges (a level, not a
//! count), everything else a counter.

/// The `confgate stats` values that are levels (they go down as well as up).
pub const GAUGES: &[(&str, &str)] = &[
    ("sessions_live", "agent sessions live now"),
    ("gate_grants_live", "grants in force now"),
    (
        "gate_marks_placed",
        "1 while the host-wide gate's fanotify marks are placed, else 0",
    ),
    (
        "gate_held_now",
        "operations held now, waiting for the gate's decision (an approver, a pre-image)",
    ),
    (
        "gate_oldest_hold_seconds",
        "age in seconds of the oldest operation held now (0 when none is)",
    ),
    (
        "uplink_spool_pending",
        "messages to the approval service waiting in the spool",
    ),
    (
        "uplink_connected",
        "1 while the uplink is connected to the approval service (and subscribed), else 0",
    ),
    (
        "approver_notify_pending",
        "approval notifications waiting to be delivered",
    ),
    (
        "approver_requests_pending",
        "approval requests pending a decision",
    ),
];

/// Whether the stats value `name` is a gauge.
pub fn is_gauge(name: &str) -> bool {
    GAUGES
        .iter()
        .chain(crate::nats::GAUGES)
        .any(|(n, _)| *n == name)
}

/// The help text of `name`: its own when known, else where it is described.
pub fn help(name: &str) -> String {
    GAUGES
        .iter()
        .chain(crate::nats::GAUGES)
        .chain(crate::nats::DOCS)
        .chain(crate::metrics::DOCS)
        .find(|(n, _)| *n == name)
        .map(|(_, h)| (*h).to_owned())
        .unwrap_or_else(|| format!("confgate stats: {name} (README, Metrics)"))
}

/// Whether `name` can be a Prometheus metric name as it is (after the `confgate_` prefix):
/// lowercase letters, digits and `_`, not starting with a digit.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The exported name of the stats value `name`.
pub fn exported(name: &str) -> String {
    if is_gauge(name) {
        format!("confgate_{name}")
    } else {
        format!("confgate_{name}_total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            exported("kernel_ringbuf_drops"),
            "confgate_kernel_ringbuf_drops_total"
        );
        assert_eq!(exported("uplink_connected"), "confgate_uplink_connected");
        assert!(is_valid("gate_fallback_allow"));
        for bad in ["", "9x", "Upper", "a-b", "a b", "é"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert_eq!(
            help("fanotify_overflows"),
            "fanotify queue overflows (events lost in the kernel queue)"
        );
        assert!(help("gate_denied").contains("gate_denied"));
    }
}
