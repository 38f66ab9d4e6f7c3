//! The daemon's side of systemd's `Type=notify` protocol: `READY=1` once it serves,
//! `STATUS=` lines, `STOPPING=1` at shutdown, and `WATCHDOG=1` pings that vouch for its
//! critical loops: the watchdog task asks each [`Probe`] every half watchdog period and
//! pings only when every probe answered the previous question and every [`Check`] passes,
//! so a loop stuck in a handler stops the pings and systemd restarts the daemon
//! (`WatchdogSec=`), where a blind timer would keep a wedged daemon alive.
//!
//! Without `NOTIFY_SOCKET` nothing is sent and no watchdog task runs. Failed sends are
//! counted (`sd_notify_errors`) and logged once; the daemon runs on.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::gate::session::resume;
use crate::metrics::Metrics;
use crate::os::sdnotify;
use crate::store::Store;

/// A critical loop's answers to the watchdog. The loop awaits [`Probe::asked`] among its
/// other sources and calls [`Probe::answer`].
pub(super) struct Probe {
    name: &'static str,
    asked: AtomicU64,
    answered: AtomicU64,
    wake: Notify,
}

impl Probe {
    pub(super) fn new(name: &'static str) -> Arc<Probe> {
        Arc::new(Probe {
            name,
            asked: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    /// Completes when the watchdog asked (cancel-safe: a question asked while nobody
    /// waits is kept for the next wait).
    pub(super) async fn asked(&self) {
        self.wake.notified().await;
    }

    /// The loop is alive: answers the last question.
    pub(super) fn answer(&self) {
        self.answered
            .store(self.asked.load(Ordering::Acquire), Ordering::Release);
    }

    /// Whether the last question was answered; then asks the next one.
    fn check_and_ask(&self) -> bool {
        let asked = self.asked.load(Ordering::Acquire);
        let ok = self.answered.load(Ordering::Acquire) == asked;
        self.asked.store(asked + 1, Ordering::Release);
        self.wake.notify_one();
        ok
    }
}

/// A liveness condition checked before each ping (e.g. a thread that must still run).
pub(super) type Check = (&'static str, Box<dyn Fn() -> bool + Send + Sync>);

/// The daemon's notifications to systemd.
pub(super) struct SdNotify {
    metrics: Arc<Metrics>,
    store: Store,
    /// A send failed already (logged once, counted always).
    failed: AtomicBool,
}

impl SdNotify {
    pub(super) fn new(metrics: Arc<Metrics>, store: Store) -> Arc<SdNotify> {
        if let Some(e) = sdnotify::notifier_error() {
            warn!(error = %e, "NOTIFY_SOCKET cannot be used: no readiness, watchdog or descriptor store");
        }
        Arc::new(SdNotify {
            metrics,
            store,
            failed: AtomicBool::new(false),
        })
    }

    /// Whether a service manager listens.
    pub(super) fn active(&self) -> bool {
        sdnotify::notifier().is_some()
    }

    fn send(&self, msg: &str) {
        let Some(n) = sdnotify::notifier() else {
            return;
        };
        if let Err(e) = n.send(msg, &[]) {
            Metrics::inc(&self.metrics.sd_notify_errors);
            if !self.failed.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// Start-up is complete: the daemon serves.
    pub(super) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// A status line for `systemctl status`.
    pub(super) fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// Shutdown has begun.
    pub(super) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down\n");
    }

    /// Session `id` ended: its listener leaves the descriptor store and its spec the
    /// store (both only if it was confined: a spec was kept).
    pub(super) fn session_ended(&self, id: u64) {
        match self.store.get(resume::SPECS, id) {
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(e) => warn!(session = id, error = %e, "cannot read the session's spec"),
        }
        if let Err(e) = resume::remove_listener(id) {
            Metrics::inc(&self.metrics.sd_notify_errors);
            warn!(session = id, error = %e, "cannot remove the session's listener from the descriptor store");
        }
        if let Err(e) = resume::forget_spec(&self.store, id) {
            warn!(session = id, error = %e, "cannot forget the session's spec");
        }
    }

    /// Starts the watchdog task if systemd asked for pings (`WATCHDOG_USEC`): every half
    /// period it pings if every probe answered and every check passes.
    pub(super) fn start_watchdog(
        self: &Arc<Self>,
        probes: Vec<Arc<Probe>>,
        checks: Vec<Check>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.active() {
            return None;
        }
        let period = sdnotify::watchdog_period()? / 2;
        let period = period.max(Duration::from_millis(10));
        info!(
            every_ms = period.as_millis() as u64,
            "systemd watchdog: pinging while the event loop answers"
        );
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut withheld = false;
            loop {
                tick.tick().await;
                let stuck: Vec<&str> = probes
                    .iter()
                    .filter(|p| !p.check_and_ask())
                    .map(|p| p.name)
                    .chain(checks.iter().filter(|(_, f)| !f()).map(|(n, _)| *n))
                    .collect();
                if stuck.is_empty() {
                    if withheld {
                        info!("systemd watchdog: every loop answers again; pinging");
                        withheld = false;
                    }
                    me.send("WATCHDOG=1\n");
                } else {
                    Metrics::inc(&me.metrics.sd_watchdog_withheld);
                    if !withheld {
                        warn!(stuck = ?stuck, "systemd watchdog: not answering, ping withheld (systemd restarts the daemon if this lasts)");
                    } else {
                        debug!(stuck = ?stuck, "systemd watchdog: still withheld");
                    }
                    withheld = true;
                }
            }
        }))
    }
}

/// `s` with line breaks and other control characters replaced (one `KEY=VALUE` line).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_answered_passes_and_one_unanswered_fails() {
        let p = Probe::new("loop");
        assert!(p.check_and_ask(), "nothing asked yet");
        assert!(!p.check_and_ask(), "asked, not answered");
        p.answer();
        assert!(p.check_and_ask());
        assert!(!p.check_and_ask());
    }

    #[tokio::test]
    async fn a_question_asked_while_nobody_waits_is_kept() {
        let p = Probe::new("loop");
        p.check_and_ask();
        tokio::time::timeout(Duration::from_secs(5), p.asked())
            .await
            .expect("the question was kept");
        p.answer();
        assert!(p.check_and_ask());
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
