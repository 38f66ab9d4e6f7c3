//! When the event loop flushes: every [`TICK`] while anything is arriving, buffered or in
//! flight, and every [`IDLE_TICK`] once a tick found none of that.
//!
//! A flush that finds nothing costs a wake-up of the loop's thread and of the runtime
//! thread that drives its timer; on a virtual machine each costs tens of microseconds of
//! CPU, and twenty a second were most of an idle daemon's CPU (BENCHMARKS.md, scenario 6).
//! Nothing waits longer for it: the first record or notification after a quiet spell
//! brings the next flush back to [`TICK`] from then.
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// Flush period while there is work.
pub const TICK: Duration = Duration::from_millis(50);
/// Flush period when quiet: what the periodic duties (session sweep, heap trim) need.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// Sessions without members are ended, and an idle heap trimmed, this often.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Cadence {
    sleep: Pin<Box<Sleep>>,
    /// The armed period is [`IDLE_TICK`].
    slow: bool,
    /// A record or notification arrived since the last tick.
    busy: bool,
    last_sweep: Instant,
}

impl Cadence {
    pub fn new(now: Instant) -> Self {
        Cadence {
            sleep: Box::pin(tokio::time::sleep_until((now + TICK).into())),
            slow: false,
            busy: false,
            last_sweep: now,
        }
    }

    /// The next tick, to await (in `select!`).
    pub fn tick(&mut self) -> &mut Pin<Box<Sleep>> {
        &mut self.sleep
    }

    /// Something arrived: the next flush is at most [`TICK`] away.
    pub fn activity(&mut self, now: Instant) {
        self.busy = true;
        if self.slow {
            self.slow = false;
            self.sleep.as_mut().reset((now + TICK).into());
        }
    }

    /// A tick was handled; `quiet`: the loop has nothing buffered or in flight and the tick
    /// itself drained nothing. Arms the next one.
    pub fn ticked(&mut self, now: Instant, quiet: bool) {
        self.slow = quiet && !self.busy;
        self.busy = false;
        let period = if self.slow { IDLE_TICK } else { TICK };
        self.sleep.as_mut().reset((now + period).into());
    }

    /// Whether the periodic duties are due (true at most once per [`SWEEP_EVERY`]).
    pub fn sweep_due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return false;
        }
        self.last_sweep = now;
        true
    }

    /// When the armed tick fires.
    #[cfg(test)]
    fn deadline(&self) -> Instant {
        self.sleep.deadline().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn quiet_ticks_slow_down_and_activity_speeds_up() {
        rt().block_on(async {
            let t0 = Instant::now();
            let mut c = Cadence::new(t0);
            assert_eq!(c.deadline(), t0 + TICK);
            // Busy: stays fast even when the state looks quiet at the tick.
            c.activity(t0);
            c.ticked(t0, true);
            assert_eq!(c.deadline(), t0 + TICK);
            // Work buffered: fast.
            c.ticked(t0, false);
            assert_eq!(c.deadline(), t0 + TICK);
            // Quiet and nothing arrived: slow.
            c.ticked(t0, true);
            assert_eq!(c.deadline(), t0 + IDLE_TICK);
            // A record arrives: the next flush is one TICK from it.
            let t1 = t0 + Duration::from_millis(300);
            c.activity(t1);
            assert_eq!(c.deadline(), t1 + TICK);
            // Further activity does not push the armed tick back.
            c.activity(t1 + Duration::from_millis(10));
            assert_eq!(c.deadline(), t1 + TICK);
        });
    }

    #[test]
    fn sweeps_once_per_period() {
        rt().block_on(async {
            let t0 = Instant::now();
            let mut c = Cadence::new(t0);
            assert!(!c.sweep_due(t0 + TICK));
            assert!(c.sweep_due(t0 + SWEEP_EVERY));
            assert!(!c.sweep_due(t0 + SWEEP_EVERY + TICK));
            assert!(c.sweep_due(t0 + 2 * SWEEP_EVERY + TICK));
        });
    }
}
