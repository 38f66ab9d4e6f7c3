//! Where notifications go: [`webhook`] (signed JSON POSTs), [`slack`] (Block Kit messages
//! with decision buttons, and the interactive endpoint that takes the clicks) and
//! [`teams`] (Adaptive Cards). [`Sinks`] holds every configured one, loaded with its
//! secrets at start-up; the outbox's sender ([`super::outbox::sender`]) calls
//! [`Sinks::deliver`].
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::outbox::config::NotifySection;
use super::outbox::{OutboxEntry, SlackMessage};
use crate::store::Store;

pub mod http;
pub mod slack;
pub mod teams;
pub mod webhook;

/// Why a delivery failed (it is retried until the outbox's `max_age_secs`).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Http(String),
    #[error("{sink} answered {status}: {body}")]
    Rejected {
        sink: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Api(String),
    #[error("no sink {0} is configured (any more)")]
    Unknown(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a successful delivery leaves behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    Done,
    /// A Slack message about request `request_id` was posted there.
    SlackPosted {
        request_id: u64,
        message: SlackMessage,
    },
}

/// One configured sink.
#[derive(Debug)]
pub enum Sink {
    Webhook(webhook::Webhook),
    Slack(Arc<slack::Slack>),
    Teams(teams::Teams),
}

/// Every configured sink, by id.
#[derive(Debug, Default)]
pub struct Sinks {
    by_id: HashMap<String, Sink>,
    slack: Vec<Arc<slack::Slack>>,
}

impl Sinks {
    /// Loads the sinks of `cfg`, reading their secrets; `links` makes the signed action
    /// links of Teams cards (none: the cards carry no links).
    pub fn load(cfg: &NotifySection, links: Option<teams::LinkMaker>) -> Result<Sinks, String> {
        let mut s = Sinks::default();
        for w in &cfg.webhook {
            let client = client(w.ca_file.as_deref(), w.timeout_secs, &w.id())?;
            let secret = read_secret(&w.secret_file)?;
            s.by_id.insert(
                w.id(),
                Sink::Webhook(webhook::Webhook::new(w.id(), w.url.clone(), secret, client)),
            );
        }
        for c in &cfg.slack {
            let client = client(c.ca_file.as_deref(), c.timeout_secs, &c.id())?;
            let slack = Arc::new(slack::Slack {
                id: c.id(),
                channel: c.channel.clone(),
                token: String::from_utf8(read_secret(&c.bot_token_file)?)
                    .map_err(|_| format!("{}: not UTF-8", c.bot_token_file.display()))?,
                signing_secret: read_secret(&c.signing_secret_file)?,
                users: c.users.clone(),
                api_base: c.api_base_url.trim_end_matches('/').to_owned(),
                client,
            });
            s.slack.push(Arc::clone(&slack));
            s.by_id.insert(c.id(), Sink::Slack(slack));
        }
        for t in &cfg.teams {
            let client = client(t.ca_file.as_deref(), t.timeout_secs, &t.id())?;
            let url = String::from_utf8(read_secret(&t.url_file)?)
                .map_err(|_| format!("{}: not UTF-8", t.url_file.display()))?;
            super::outbox::config::url_problem(&url)
                .map_err(|e| format!("{}: {}", t.url_file.display(), http::redact(&e)))?;
            s.by_id.insert(
                t.id(),
                Sink::Teams(teams::Teams::new(
                    t.id(),
                    url,
                    client,
                    links.clone(),
                    t.approvers.clone(),
                )),
            );
        }
        Ok(s)
    }

    /// The Slack sinks (whose signing secrets verify interactive callbacks).
    pub fn slack(&self) -> &[Arc<slack::Slack>] {
        &self.slack
    }

    /// Delivers `entry` once.
    pub async fn deliver(
        &self,
        store: &Store,
        entry: &OutboxEntry,
    ) -> Result<Delivered, SinkError> {
        match self.by_id.get(&entry.sink) {
            Some(Sink::Webhook(w)) => w.deliver(entry).await,
            Some(Sink::Slack(s)) => s.deliver(store, entry).await,
            Some(Sink::Teams(t)) => t.deliver(entry).await,
            None => Err(SinkError::Unknown(entry.sink.clone())),
        }
    }
}

fn client(ca: Option<&Path>, timeout_secs: u64, id: &str) -> Result<http::HttpClient, String> {
    http::HttpClient::new(ca, Duration::from_secs(timeout_secs)).map_err(|e| format!("{id}: {e}"))
}

/// A secret from a file, trailing whitespace (the newline) removed; never empty.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(bytes)
}

/// HMAC-SHA256 of `message` under `key`, in lowercase hex.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex(ring::hmac::sign(&key, message).as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Hex to bytes (either case); `None` if not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}
