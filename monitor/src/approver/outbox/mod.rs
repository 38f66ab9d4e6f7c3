//! The durable outbox of notifications: what the approval service tells people (Slack,
//! Teams, webhooks) about new requests, decisions, expiries, revocations and what hosts
//! report (flags, reverts, unapproved renames).
//!
//! - [`Event`]: one announced change, as sinks receive it.
//! - [`Router`]: which configured sink wants which event; as the store's
//!   [`super::store::Announce`], it writes one [`OutboxEntry`] per such sink in the
//!   transaction of the change itself, so a committed change is never without its
//!   notifications, and a crash loses neither.
//! - [`sender`]: the task that delivers the entries at least once, with backoff and
//!   jitter, counts them and ledgers the ones it gives up on.
//! - [`config`]: the `[notify]` section of approver.toml.
//!
//! Tables (in the service's store):
//! - `approver_outbox`: entry id → [`OutboxEntry`] (JSON), removed once delivered.
//! - `approver_slack_messages`: request id → [`SlackRefs`]: where each Slack sink posted the
//!   request's message, so that its outcome updates it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::store::{GrantRec, RequestRec, State};
use crate::store::{RecordTable, Store, StoreError, WriteTx};

pub mod config;
mod route;
pub mod sender;

pub use route::Router;

pub(crate) const OUTBOX: RecordTable<OutboxEntry> = RecordTable::new("approver_outbox");
pub(crate) const SLACK_MESSAGES: RecordTable<SlackRefs> =
    RecordTable::new("approver_slack_messages");
/// The sequence of entry ids (also the webhook delivery id): skipped ahead at start-up like
/// the request ids ([`skip_ids`]), since a new request's entries are committed with it,
/// without a sync.
pub const OUTBOX_IDS: &str = "approver_outbox";

/// Every event name, in the order the README lists them.
pub const EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "request.released",
    "grant.revoked",
    "host.change_flagged",
    "host.unapproved_rename",
    "host.reverted",
    "host.revert_failed",
    "host.released_by_crash",
    "host.fallback_verdict",
    "host.denied_by_policy",
    "host.session_ended",
];

/// One announced change. The webhook body is this, with the delivery's id and sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `request.created`, `request.approved`, ..., `grant.revoked`, `host.<report kind>`.
    pub event: String,
    pub time_unix_ms: i64,
    pub host: String,
    /// The request as it is after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestRec>,
    /// The grant an approval made, or the grant revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantRec>,
    /// What a host reported (`host.*`): the record of its own ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

impl Event {
    /// A request was filed.
    pub fn request_created(r: &RequestRec) -> Event {
        Event {
            event: "request.created".to_owned(),
            time_unix_ms: r.created_unix_ms,
            host: r.context.host.clone(),
            request: Some(r.clone()),
            grant: None,
            report: None,
        }
    }

    /// A request was decided, expired or released.
    pub fn resolved(r: &RequestRec, grant: Option<&GrantRec>, now_ms: i64) -> Event {
        let event = match r.state {
            State::Approved => "request.approved",
            State::Denied => "request.denied",
            State::Released => "request.released",
            State::Expired | State::Pending => "request.expired",
        };
        Event {
            event: event.to_owned(),
            time_unix_ms: now_ms,
            host: r.context.host.clone(),
            request: Some(r.clone()),
            grant: grant.cloned(),
            report: None,
        }
    }

    /// A grant was revoked.
    pub fn revoked(g: &GrantRec, now_ms: i64) -> Event {
        Event {
            event: "grant.revoked".to_owned(),
            time_unix_ms: now_ms,
            host: g.host.clone(),
            request: None,
            grant: Some(g.clone()),
            report: None,
        }
    }

    /// `host` reported `kind` (`change_flagged`, `reverted`, ...).
    pub fn report(host: &str, kind: &str, record: &serde_json::Value, now_ms: i64) -> Event {
        Event {
            event: format!("host.{kind}"),
            time_unix_ms: now_ms,
            host: host.to_owned(),
            request: None,
            grant: None,
            report: Some(record.clone()),
        }
    }

    /// The request the event is about, if any.
    pub fn request_id(&self) -> Option<u64> {
        self.request
            .as_ref()
            .map(|r| r.id)
            .or_else(|| self.grant.as_ref().map(|g| g.request_id))
    }

    /// The sinks the request's rule names (`notify = [...]`): empty means every sink.
    /// Read from the stored form, so that it does not matter where the record keeps it.
    pub fn routes(&self) -> Vec<String> {
        let Some(r) = &self.request else {
            return Vec::new();
        };
        let Ok(v) = serde_json::to_value(r) else {
            return Vec::new();
        };
        let list = v
            .get("notify")
            .or_else(|| v.get("context").and_then(|c| c.get("notify")));
        list.and_then(|l| l.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One notification for one sink, until it is delivered (or given up).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: u64,
    /// The sink's id: `webhook:<name>`, `slack:<name>`, `teams:<name>`.
    pub sink: String,
    pub event: Event,
    pub created_unix_ms: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub next_attempt_unix_ms: i64,
    #[serde(default)]
    pub last_error: String,
}

/// Where the Slack sinks posted a request's message: sink id → message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackRefs {
    pub by_sink: BTreeMap<String, SlackMessage>,
}

/// A posted Slack message: its channel id and timestamp (`chat.postMessage`'s answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackMessage {
    pub channel: String,
    pub ts: String,
}

/// Moves the entry id sequence past any id a crash may have taken with an unsynced
/// commit (at start-up).
pub fn skip_ids(store: &Store) -> Result<(), StoreError> {
    store.skip_ids(&[OUTBOX_IDS])
}

/// Writes `entries` (ids assigned here) in `tx`.
pub(crate) fn put_entries(
    tx: &WriteTx<'_>,
    entries: impl IntoIterator<Item = OutboxEntry>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut e in entries {
        e.id = tx.next_id(OUTBOX_IDS)?;
        tx.put(OUTBOX, e.id, &e)?;
        n += 1;
    }
    Ok(n)
}

/// Every entry in the outbox, by id.
pub fn entries(store: &Store) -> Result<Vec<OutboxEntry>, StoreError> {
    Ok(store.scan(OUTBOX)?.into_iter().map(|(_, e)| e).collect())
}

/// The oldest `limit` entries, by id, and how many the outbox holds: what the sender
/// looks at per pass, so that a sink down for days costs a bounded amount of memory (the
/// entries after them wait their turn; per sink and request the oldest goes first anyway).
pub fn oldest_entries(store: &Store, limit: usize) -> Result<(Vec<OutboxEntry>, u64), StoreError> {
    let (rows, total) = store.scan_first(OUTBOX, limit)?;
    Ok((rows.into_iter().map(|(_, e)| e).collect(), total))
}

/// Removes delivered entry `id`; records where a Slack message went, if one was posted.
pub fn delivered(
    store: &Store,
    id: u64,
    posted: Option<(u64, &str, SlackMessage)>,
) -> Result<(), StoreError> {
    // A lost removal only repeats a delivery; a lost message reference would make the
    // outcome a second message, so that one is committed durably.
    let durable = posted.is_some();
    let f = |tx: &WriteTx<'_>| {
        tx.remove(OUTBOX, id)?;
        if let Some((request_id, sink, msg)) = posted {
            let mut refs = tx.get(SLACK_MESSAGES, request_id)?.unwrap_or_default();
            refs.by_sink.insert(sink.to_owned(), msg);
            tx.put(SLACK_MESSAGES, request_id, &refs)?;
        }
        Ok(())
    };
    if durable {
        store.write(f)
    } else {
        store.write_lazy(f)
    }
}

/// Reschedules entry `id` after a failed attempt.
pub fn retry_at(store: &Store, id: u64, at_ms: i64, error: &str) -> Result<(), StoreError> {
    store.write_lazy(|tx| {
        if let Some(mut e) = tx.get(OUTBOX, id)? {
            e.attempts = e.attempts.saturating_add(1);
            e.next_attempt_unix_ms = at_ms;
            e.last_error = error.chars().take(500).collect();
            tx.put(OUTBOX, id, &e)?;
        }
        Ok(())
    })
}

/// Removes entry `id`, given up (the caller ledgers it).
pub fn give_up(store: &Store, id: u64) -> Result<(), StoreError> {
    store.write(|tx| {
        tx.remove(OUTBOX, id)?;
        Ok(())
    })
}

/// Where `sink` posted request `request_id`'s message.
pub fn slack_message(
    store: &Store,
    request_id: u64,
    sink: &str,
) -> Result<Option<SlackMessage>, StoreError> {
    Ok(store
        .get(SLACK_MESSAGES, request_id)?
        .and_then(|mut r| r.by_sink.remove(sink)))
}

#[cfg(test)]
mod tests;
