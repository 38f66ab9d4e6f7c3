//! Which sink wants which event: each sink's event filter, and the sinks a request's rule
//! names (`notify = ["slack:#ops", "webhook:siem"]`; none named: every sink).
use tokio::sync::Notify;

use super::{Event, OutboxEntry, put_entries};
use crate::approver::store::{Announce, Change};
use crate::os::clock::now_ms;
use crate::store::{StoreError, WriteTx};

/// One sink as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `webhook:<name>`, `slack:<name>`, `teams:<name>`.
    pub id: String,
    /// Other names a rule may use for it (`slack:<channel>`).
    pub aliases: Vec<String>,
    /// Event patterns it wants: an event name, or a prefix ending in `*` (`request.*`).
    pub events: Vec<String>,
}

impl Route {
    /// Whether the filter accepts `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|p| pattern_matches(p, event))
    }

    /// Whether a rule's `notify` entry names this sink: its id, an alias, or its kind alone
    /// (`slack`: every Slack sink).
    fn named_by(&self, entry: &str) -> bool {
        self.id == entry
            || self.aliases.iter().any(|a| a == entry)
            || self
                .id
                .split_once(':')
                .is_some_and(|(kind, _)| kind == entry)
    }
}

/// `request.*` matches every `request.` event; anything else matches itself.
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event.starts_with(prefix),
        None => pattern == event,
    }
}

/// The configured sinks' routes, and the sender's wake-up.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    wake: Notify,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        Router {
            routes,
            wake: Notify::new(),
        }
    }

    /// The sinks that get `event`: its filter accepts it, and the request's rule names the
    /// sink (or names none).
    pub fn targets(&self, event: &Event) -> Vec<&str> {
        self.targets_named(&event.event, &event.routes())
    }

    /// The sinks that get an event named `event` when the rule names `named`.
    pub fn targets_named(&self, event: &str, named: &[String]) -> Vec<&str> {
        self.routes
            .iter()
            .filter(|r| r.wants(event))
            .filter(|r| named.is_empty() || named.iter().any(|n| r.named_by(n)))
            .map(|r| r.id.as_str())
            .collect()
    }

    /// Writes one outbox entry per target of `event` in `tx`; returns how many.
    pub fn enqueue(&self, tx: &WriteTx<'_>, event: Event) -> Result<usize, StoreError> {
        let now = now_ms();
        let entries: Vec<OutboxEntry> = self
            .targets(&event)
            .into_iter()
            .map(|sink| OutboxEntry {
                id: 0,
                sink: sink.to_owned(),
                event: event.clone(),
                created_unix_ms: now,
                attempts: 0,
                next_attempt_unix_ms: 0,
                last_error: String::new(),
            })
            .collect();
        put_entries(tx, entries)
    }

    /// Wakes the sender (after a commit that may have added entries).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Router::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Whether any sink is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Announce for Router {
    fn announce(&self, tx: &WriteTx<'_>, change: Change<'_>) -> Result<(), StoreError> {
        let event = match change {
            Change::Created(r) => Event::request_created(r),
            Change::Resolved(r, g, now) => Event::resolved(r, g, now),
            Change::Revoked(g, now) => Event::revoked(g, now),
            Change::Reported {
                host,
                kind,
                record,
                now_ms,
            } => Event::report(host, kind, record, now_ms),
        };
        self.enqueue(tx, event).map(|_| ())
    }

    fn committed(&self) {
        self.wake();
    }
}
