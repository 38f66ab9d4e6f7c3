//! Exponential backoff with jitter between reconnection attempts.
use std::time::Duration;

/// Delays that double from `min` up to `max`; each delay is drawn uniformly from the
/// upper half of the current step ("equal jitter"), clamped to `[min, max]`, so that many
/// hosts losing the same service do not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// `min` must not exceed `max` (they are swapped if they do).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The delay before the next attempt; the following one will be about twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let delay = half + Duration::from_nanos(fastrand::u64(0..=jitter_ns));
        delay.clamp(self.min, self.max)
    }

    /// Back to `min` (after a connection that worked).
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow_to_the_max() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert_eq!(delays[0], min);
        // Step n is min * 2^n capped at max; its delay lies in its upper half.
        for (n, d) in delays.iter().enumerate().take(12) {
            let step = min.saturating_mul(1 << n).min(max);
            assert!(*d >= (step / 2).max(min) && *d <= step, "step {n}: {d:?}");
        }
        // Late delays are in [max/2, max] and not all equal (jitter).
        let late = &delays[20..];
        assert!(late.iter().all(|d| *d >= max / 2));
        assert!(late.iter().any(|d| *d != late[0]), "{late:?}");
        b.reset();
        assert_eq!(b.next_delay(), min);
    }

    #[test]
    fn swapped_bounds_are_fixed() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        let d = b.next_delay();
        assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
    }
}
