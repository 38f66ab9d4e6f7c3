//! The sender: one task per service that delivers the outbox's entries to their sinks.
//!
//! - At least once: an entry leaves the outbox only after its sink accepted it (or after
//!   `max_age_secs`, when it is given up: counted, logged and ledgered as `notify_failed`).
//!   A restart resumes every entry still there.
//! - Never in a decision's way: decisions only write entries (in their own transaction);
//!   delivery runs here, several at once ([`MAX_IN_FLIGHT`]).
//! - In order per request and sink: an entry waits while an older entry of the same sink
//!   and request is still in the outbox (a Slack message is posted before it is updated).
//! - A failed attempt is retried after an exponential pause with jitter
//!   ([`backoff_ms`]), at most `max_backoff_secs`.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::config::NotifySection;
use super::{OutboxEntry, Router};
use crate::approver::service::Shared;
use crate::approver::sinks::teams::LinkMaker;
use crate::approver::sinks::{Delivered, SinkError, Sinks};
use crate::os::clock::now_ms;
use crate::store::Store;

/// Deliveries in progress at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// The first retry's pause; each further one doubles it.
const FIRST_RETRY_MS: i64 = 1000;
/// How often the outbox is read even when nothing woke the sender.
const IDLE_SCAN: Duration = Duration::from_secs(5);

/// The pause before attempt `attempts + 1`: `FIRST_RETRY_MS * 2^attempts` capped at `max_ms`,
/// then a uniformly random share of its second half (`jitter` in [0, 1)) added to its
/// first half, so that many entries failing together do not retry together.
pub fn backoff_ms(attempts: u32, max_ms: i64, jitter: f64) -> i64 {
    let base = FIRST_RETRY_MS
        .saturating_mul(1i64 << attempts.min(30))
        .min(max_ms)
        .max(1);
    let half = base / 2;
    // Truncation of the jitter share is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let extra = ((base - half) as f64 * jitter.clamp(0.0, 1.0)) as i64;
    half + extra
}

/// The entries to start now: due, not in flight, and the oldest of their sink and request.
pub fn eligible(entries: &[OutboxEntry], in_flight: &HashSet<u64>, now: i64) -> Vec<OutboxEntry> {
    let mut blocked: HashSet<(&str, u64)> = HashSet::new();
    let mut out = Vec::new();
    // Entries come in id order, so the first one seen of a (sink, request) is the oldest.
    for e in entries {
        let key = e.event.request_id().map(|r| (e.sink.as_str(), r));
        if let Some(k) = key
            && !blocked.insert(k)
        {
            continue;
        }
        if e.next_attempt_unix_ms <= now && !in_flight.contains(&e.id) {
            out.push(e.clone());
        }
    }
    out
}

/// Limits of the sender.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_age_ms: i64,
    pub max_backoff_ms: i64,
}

/// Loads the sinks of `cfg` (reading their secrets), hands them to the service (for the
/// Slack endpoint) and starts the sender; it stops with the service. `links` makes the
/// signed web-page links of Teams cards.
pub fn start(
    shared: &Arc<Shared>,
    cfg: &NotifySection,
    router: Arc<Router>,
    links: Option<LinkMaker>,
) -> Result<(), String> {
    let sinks = Arc::new(Sinks::load(cfg, links)?);
    shared.set_sinks(Arc::clone(&sinks));
    let secs = |s: u64| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    };
    let limits = Limits {
        max_age_ms: secs(cfg.max_age_secs),
        max_backoff_ms: secs(cfg.max_backoff_secs),
    };
    // On PostgreSQL there is no outbox (the configuration refuses routes there).
    let Some(store) = shared.store.raw_store().cloned() else {
        return Ok(());
    };
    tokio::spawn(run(Arc::clone(shared), store, sinks, router, limits));
    Ok(())
}

/// Entries the sender reads per pass (the oldest ones).
const SCAN_LIMIT: usize = 1000;

/// Runs until the service stops.
pub async fn run(
    shared: Arc<Shared>,
    store: Store,
    sinks: Arc<Sinks>,
    router: Arc<Router>,
    limits: Limits,
) {
    let mut stopping = shared.stop_signal();
    let mut in_flight: HashSet<u64> = HashSet::new();
    let mut tasks: JoinSet<(OutboxEntry, Result<Delivered, SinkError>)> = JoinSet::new();
    loop {
        if *stopping.borrow_and_update() {
            tasks.abort_all();
            return;
        }
        let st = store.clone();
        let entries =
            tokio::task::spawn_blocking(move || super::oldest_entries(&st, SCAN_LIMIT)).await;
        let (entries, total) = match entries {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                (Vec::new(), 0)
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox read task failed");
                (Vec::new(), 0)
            }
        };
        shared
            .counters
            .notify_pending
            .store(total, Ordering::Relaxed);
        let now = now_ms();
        for e in eligible(&entries, &in_flight, now) {
            if in_flight.len() >= MAX_IN_FLIGHT {
                break;
            }
            in_flight.insert(e.id);
            let (sinks, st) = (Arc::clone(&sinks), store.clone());
            tasks.spawn(async move {
                let r = sinks.deliver(&st, &e).await;
                (e, r)
            });
        }
        let next_due = entries
            .iter()
            .filter(|e| !in_flight.contains(&e.id))
            .map(|e| e.next_attempt_unix_ms)
            .min();
        let wait = match next_due {
            Some(t) => {
                Duration::from_millis(u64::try_from(t - now).unwrap_or(0).max(50)).min(IDLE_SCAN)
            }
            None => IDLE_SCAN,
        };
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((entry, result)) = done {
                    in_flight.remove(&entry.id);
                    finish(&shared, &store, entry, result, limits).await;
                }
            }
            _ = router.woken() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Records the outcome of one attempt.
async fn finish(
    shared: &Arc<Shared>,
    store: &Store,
    entry: OutboxEntry,
    result: Result<Delivered, SinkError>,
    limits: Limits,
) {
    let store = store.clone();
    let c = &shared.counters;
    let now = now_ms();
    match result {
        Ok(d) => {
            let (id, sink) = (entry.id, entry.sink.clone());
            let r = tokio::task::spawn_blocking(move || {
                let posted = match d {
                    Delivered::SlackPosted {
                        request_id,
                        message,
                    } => Some((request_id, sink.as_str(), message)),
                    Delivered::Done => None,
                };
                super::delivered(&store, id, posted)
            })
            .await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::error!(
                    entry = entry.id,
                    "cannot remove a delivered notification (it will be sent again)"
                );
            }
            c.notify_sent.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(entry = entry.id, sink = %entry.sink, event = %entry.event.event, "notification delivered");
        }
        // Too old, or for a sink no longer configured: given up.
        Err(e)
            if now.saturating_sub(entry.created_unix_ms) >= limits.max_age_ms
                || matches!(e, SinkError::Unknown(_)) =>
        {
            let id = entry.id;
            let _ = tokio::task::spawn_blocking(move || super::give_up(&store, id)).await;
            c.notify_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(entry = entry.id, sink = %entry.sink, event = %entry.event.event, attempts = entry.attempts + 1, error = %e, "notification given up");
            let body = json!({
                "delivery_id": entry.id,
                "sink": entry.sink,
                "event": entry.event.event,
                "request_id": entry.event.request_id(),
                "host": entry.event.host,
                "attempts": entry.attempts + 1,
                "created_unix_ms": entry.created_unix_ms,
                "error": e.to_string(),
            });
            let me = Arc::clone(shared);
            let r =
                tokio::task::spawn_blocking(move || me.audit.append("notify_failed", body)).await;
            if !matches!(r, Ok(Ok(()))) {
                c.ledger_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(entry = entry.id, "cannot ledger a given-up notification");
            }
        }
        Err(e) => {
            let pause = backoff_ms(entry.attempts, limits.max_backoff_ms, fastrand::f64());
            let (id, msg) = (entry.id, e.to_string());
            let at = now.saturating_add(pause);
            let _ =
                tokio::task::spawn_blocking(move || super::retry_at(&store, id, at, &msg)).await;
            c.notify_retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(entry = entry.id, sink = %entry.sink, event = %entry.event.event, attempts = entry.attempts + 1, retry_in_ms = pause, error = %e, "notification not delivered; will retry");
        }
    }
}
