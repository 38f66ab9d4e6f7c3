//! The operations held now (every live [`super::listener::Held`]) and since when, for the
//! gauges `gate_held_now` and `gate_oldest_hold_seconds`. Process-wide: a hold registers
//! when it is made and leaves when it is dropped (answered or not).
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU64 = AtomicU64::new(1);
static HELD: Mutex<BTreeMap<u64, Instant>> = Mutex::new(BTreeMap::new());

fn held() -> std::sync::MutexGuard<'static, BTreeMap<u64, Instant>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers a hold of an event received at `received`; returns its ticket for [`leave`].
pub(crate) fn enter(received: Instant) -> u64 {
    let ticket = NEXT.fetch_add(1, Ordering::Relaxed);
    held().insert(ticket, received);
    ticket
}

/// The hold of `ticket` is over.
pub(crate) fn leave(ticket: u64) {
    held().remove(&ticket);
}

/// How many operations are held now, and how long the oldest has been.
pub fn now() -> (u64, Duration) {
    let h = held();
    let oldest = h.values().min().map_or(Duration::ZERO, |t| t.elapsed());
    (h.len() as u64, oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_enter_and_leave() {
        let before = now().0;
        let a = enter(Instant::now() - Duration::from_secs(5));
        let b = enter(Instant::now());
        let (n, oldest) = now();
        assert!(n >= before + 2);
        assert!(oldest >= Duration::from_secs(5));
        leave(a);
        leave(b);
        leave(b);
    }
}
