//! How a session's root process ended, as its launcher reports it.
//!
//! `confgate run` forks: the child registers the session (it is the session's root
//! process, confined, then the agent) and the parent, outside the session, waits for it
//! and reports its exit status with the key it gave at registration
//! (`RegisterSessionRequest.exit_report_key`). The daemon keeps the keys and the reported
//! statuses in memory ([`ExitReports`]) until it writes the session's `session_end` record;
//! a status nobody reported is written as not reported, never guessed.
use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

/// Shortest accepted exit report key (bytes).
pub const MIN_KEY: usize = 16;
/// Longest accepted exit report key (bytes).
pub const MAX_KEY: usize = 64;

/// How a process ended (`waitpid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (0-255).
    Code(i32),
    /// A signal killed it.
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The `exit` object of a `session_end` record.
    pub fn to_json(self) -> Value {
        match self {
            ExitStatus::Code(c) => json!({"reported": true, "code": c}),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                json!({"reported": true, "signal": signal, "signal_name": name,
                       "core_dumped": core_dumped})
            }
        }
    }

    /// Checks a reported status: codes 0-255, signals 1-64.
    pub fn validate(self) -> Result<Self, String> {
        match self {
            ExitStatus::Code(c) if !(0..=255).contains(&c) => {
                Err(format!("exit code {c} is not 0-255"))
            }
            ExitStatus::Signal { signal, .. } if !(1..=64).contains(&signal) => {
                Err(format!("signal {signal} is not 1-64"))
            }
            s => Ok(s),
        }
    }
}

/// Whether a key is acceptable ([`MIN_KEY`] to [`MAX_KEY`] bytes; empty: none given).
pub fn validate_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() || (MIN_KEY..=MAX_KEY).contains(&key.len()) {
        Ok(())
    } else {
        Err(format!(
            "exit_report_key must be {MIN_KEY} to {MAX_KEY} bytes (got {})",
            key.len()
        ))
    }
}

/// What the daemon knows of a session's exit status when it writes its end record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Reported by the launcher.
    Reported(ExitStatus),
    /// A launcher will report it (a key was given) but has not yet.
    Awaited,
    /// Nobody will: no key was given (a detected session, an older client) or the daemon
    /// restarted since the session was registered (keys are kept in memory only).
    NoLauncher,
}

#[derive(Default)]
struct Inner {
    /// Key -> session, for the sessions whose launcher has not reported yet.
    keys: HashMap<Vec<u8>, u64>,
    /// Session -> reported status, until its end record takes it.
    statuses: HashMap<u64, ExitStatus>,
}

/// The daemon's keys and reported statuses (in memory).
#[derive(Default)]
pub struct ExitReports {
    inner: Mutex<Inner>,
    reported: tokio::sync::Notify,
}

impl ExitReports {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Session `id` was registered with `key` (validated; empty: nothing to expect). A key
    /// already in use is not replaced (the first session keeps it; the second gets no
    /// report): false.
    pub fn expect(&self, id: u64, key: Vec<u8>) -> bool {
        if key.is_empty() {
            return true;
        }
        let mut g = self.lock();
        if g.keys.contains_key(&key) {
            return false;
        }
        g.keys.insert(key, id);
        true
    }

    /// The launcher holding `key` reports `status`: the session it was for, or `None`
    /// when no session awaits that key (the key is good once).
    pub fn report(&self, key: &[u8], status: ExitStatus) -> Option<u64> {
        let mut g = self.lock();
        let id = g.keys.remove(key)?;
        g.statuses.insert(id, status);
        drop(g);
        self.reported.notify_waiters();
        Some(id)
    }

    /// What is known of session `id`'s status now (not taken).
    pub fn known(&self, id: u64) -> Known {
        let g = self.lock();
        if let Some(s) = g.statuses.get(&id) {
            Known::Reported(*s)
        } else if g.keys.values().any(|&s| s == id) {
            Known::Awaited
        } else {
            Known::NoLauncher
        }
    }

    /// Session `id`'s status for its end record, waiting at most `grace` for a report
    /// that is awaited; forgets the session's key and status.
    pub async fn take(&self, id: u64, grace: std::time::Duration) -> Known {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.reported.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.known(id) {
                Known::Awaited if tokio::time::Instant::now() < deadline => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                k => {
                    let mut g = self.lock();
                    g.statuses.remove(&id);
                    g.keys.retain(|_, s| *s != id);
                    return k;
                }
            }
        }
    }
}

/// The `exit` object of a `session_end` record from what is known.
pub fn exit_json(k: Known) -> Value {
    match k {
        Known::Reported(s) => s.to_json(),
        Known::Awaited => json!({"reported": false,
            "why": "the launcher (confgate run) did not report it: it was killed, or could not reach the daemon"}),
        Known::NoLauncher => json!({"reported": false,
            "why": "no launcher reports it: a detected session, a launcher older than exit reports, or the daemon restarted during the session"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_report_is_taken_once_and_only_with_its_key() {
        let r = ExitReports::default();
        assert!(r.expect(1, vec![1; 32]));
        assert!(!r.expect(2, vec![1; 32]), "a key in use is not replaced");
        assert!(r.expect(3, Vec::new()));
        assert_eq!(r.known(1), Known::Awaited);
        assert_eq!(r.known(3), Known::NoLauncher);
        assert_eq!(r.report(&[2; 32], ExitStatus::Code(3)), None);
        assert_eq!(r.report(&[1; 32], ExitStatus::Code(3)), Some(1));
        assert_eq!(r.report(&[1; 32], ExitStatus::Code(0)), None, "once");
        let k = r.take(1, Duration::ZERO).await;
        assert_eq!(k, Known::Reported(ExitStatus::Code(3)));
        assert_eq!(r.known(1), Known::NoLauncher, "forgotten once taken");
    }

    #[tokio::test]
    async fn take_waits_for_a_late_report_then_gives_up() {
        let r = std::sync::Arc::new(ExitReports::default());
        r.expect(7, vec![7; 16]);
        let r2 = r.clone();
        let t = tokio::spawn(async move { r2.take(7, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sig = ExitStatus::Signal {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(r.report(&[7; 16], sig), Some(7));
        assert_eq!(t.await.unwrap(), Known::Reported(sig));

        r.expect(8, vec![8; 16]);
        let start = std::time::Instant::now();
        assert_eq!(r.take(8, Duration::from_millis(100)).await, Known::Awaited);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(r.report(&[8; 16], ExitStatus::Code(0)), None);
    }

    #[test]
    fn statuses_and_keys_are_checked() {
        assert!(ExitStatus::Code(256).validate().is_err());
        assert!(ExitStatus::Code(-1).validate().is_err());
        assert!(
            ExitStatus::Signal {
                signal: 0,
                core_dumped: false
            }
            .validate()
            .is_err()
        );
        assert!(validate_key(&[0; 8]).is_err() && validate_key(&[0; 65]).is_err());
        assert!(validate_key(&[]).is_ok() && validate_key(&[0; 32]).is_ok());
        let j = ExitStatus::Signal {
            signal: 15,
            core_dumped: false,
        }
        .to_json();
        assert_eq!(j["signal_name"], "SIGTERM");
        assert_eq!(exit_json(Known::Awaited)["reported"], false);
    }
}
