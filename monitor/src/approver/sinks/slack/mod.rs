//! Slack: a bot posts one Block Kit message per request (`chat.postMessage`) with buttons
//! Approve 15m / Approve 1h / Approve… / Deny, and updates it with the outcome
//! (`chat.update`) whichever channel decided; other events are posted as short messages
//! (in the request's thread when there is one). [`interactive`] takes the clicks.
//!
//! Web API shapes as Slack documents them: JSON bodies with `Authorization: Bearer
//! <bot token>`, answers `{"ok": true, "channel": "...", "ts": "..."}` or
//! `{"ok": false, "error": "..."}`.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::http::HttpClient;
use super::{Delivered, SinkError};
use crate::approver::outbox::{self, OutboxEntry, SlackMessage};
use crate::store::Store;

mod blocks;
pub mod interactive;

pub use blocks::{approve_modal, outcome_blocks, request_blocks, summary};

/// One configured Slack sink.
pub struct Slack {
    pub id: String,
    pub channel: String,
    pub token: String,
    pub signing_secret: Vec<u8>,
    /// Slack user id → approver identity.
    pub users: BTreeMap<String, String>,
    /// `https://slack.com/api` (no trailing slash).
    pub api_base: String,
    pub client: HttpClient,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl Slack {
    /// Calls Web API `method` with `body`; the answer when `ok`.
    pub async fn api(&self, method: &str, body: &Value) -> Result<Value, SinkError> {
        let url = format!("{}/{method}", self.api_base);
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let resp = self
            .client
            .post(
                &url,
                &[("authorization", format!("Bearer {}", self.token))],
                "application/json; charset=utf-8",
                bytes,
            )
            .await?;
        if !resp.is_success() {
            return Err(SinkError::Rejected {
                sink: format!("{} {method}", self.id),
                status: resp.status,
                body: resp.excerpt(),
            });
        }
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            SinkError::Api(format!("{} {method}: answer is not JSON: {e}", self.id))
        })?;
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            let err = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error given");
            return Err(SinkError::Api(format!("{} {method}: {err}", self.id)));
        }
        Ok(v)
    }

    /// Posts to the channel; returns where the message went.
    async fn post(&self, mut msg: Value) -> Result<SlackMessage, SinkError> {
        msg["channel"] = json!(self.channel);
        let v = self.api("chat.postMessage", &msg).await?;
        Ok(SlackMessage {
            channel: v
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or(&self.channel)
                .to_owned(),
            ts: v
                .get("ts")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// Delivers `entry`: a request's message, its update, or a short message.
    pub async fn deliver(
        &self,
        store: &Store,
        entry: &OutboxEntry,
    ) -> Result<Delivered, SinkError> {
        let ev = &entry.event;
        let request_id = ev.request_id();
        let known = match request_id {
            Some(id) => {
                let (st, sink) = (store.clone(), entry.sink.clone());
                tokio::task::spawn_blocking(move || outbox::slack_message(&st, id, &sink))
                    .await
                    .map_err(|e| SinkError::Api(e.to_string()))??
            }
            None => None,
        };
        match (ev.event.as_str(), &ev.request, request_id) {
            ("request.created", Some(req), Some(id)) => {
                if known.is_some() {
                    // Posted before a crash took the outbox removal with it.
                    return Ok(Delivered::Done);
                }
                let message = self.post(request_blocks(req)).await?;
                Ok(Delivered::SlackPosted {
                    request_id: id,
                    message,
                })
            }
            (e, Some(req), Some(id)) if e.starts_with("request.") => {
                let msg = outcome_blocks(req, ev.grant.as_ref());
                match known {
                    Some(m) => {
                        let mut body = msg;
                        body["channel"] = json!(m.channel);
                        body["ts"] = json!(m.ts);
                        self.api("chat.update", &body).await?;
                        Ok(Delivered::Done)
                    }
                    // Its first message never went out (given up, or the sink is new).
                    None => {
                        let message = self.post(msg).await?;
                        Ok(Delivered::SlackPosted {
                            request_id: id,
                            message,
                        })
                    }
                }
            }
            _ => {
                let mut msg = json!({ "text": summary(ev) });
                if let Some(m) = known {
                    msg["thread_ts"] = json!(m.ts);
                }
                self.post(msg).await?;
                Ok(Delivered::Done)
            }
        }
    }
}
