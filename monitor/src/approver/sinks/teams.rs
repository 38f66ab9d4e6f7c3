//! Microsoft Teams: an Adaptive Card per request, POSTed to a Workflows ("When a Teams
//! webhook request is received") or incoming-webhook URL, in the message-with-attachments
//! shape both accept. Approve and Deny are signed one-time links to the service's web page
//! ([`LinkMaker`], [`crate::approver::web::links`]), one per approver the sink names
//! (`approvers`): a link is bound to the request and one approver, and lives at most 15
//! minutes; the page shows the full context and asks for the click.
//! Decisions, expiries and host reports are cards of one line.
use std::sync::Arc;

use serde_json::{Value, json};

use super::http::HttpClient;
use super::{Delivered, SinkError};
use crate::approver::outbox::{Event, OutboxEntry};
use crate::approver::store::{GrantRec, RequestRec, State};

/// Makes the signed action link of request `id` (first) for approver `approver` (second),
/// valid until the request's deadline (third, Unix ms) or 15 minutes, whichever is first;
/// `None` when it cannot.
pub type LinkFn = dyn Fn(u64, &str, i64) -> Option<String> + Send + Sync;

/// A [`LinkFn`] shared by the Teams sinks.
#[derive(Clone)]
pub struct LinkMaker(pub Arc<LinkFn>);

impl std::fmt::Debug for LinkMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkMaker")
    }
}

/// One configured Teams sink.
#[derive(Debug)]
pub struct Teams {
    id: String,
    url: String,
    client: HttpClient,
    links: Option<LinkMaker>,
    /// Who gets an action link on request cards.
    approvers: Vec<String>,
}

impl Teams {
    pub fn new(
        id: String,
        url: String,
        client: HttpClient,
        links: Option<LinkMaker>,
        approvers: Vec<String>,
    ) -> Teams {
        Teams {
            id,
            url,
            client,
            links,
            approvers,
        }
    }

    /// POSTs the card of `entry`; any 2xx answer (Workflows answers 202) is a delivery.
    pub async fn deliver(&self, entry: &OutboxEntry) -> Result<Delivered, SinkError> {
        let links = self.links.as_ref().map(|l| (l, self.approvers.as_slice()));
        let body = message(&card(&entry.event, links));
        let resp = self
            .client
            .post(
                &self.url,
                &[],
                "application/json",
                serde_json::to_vec(&body).unwrap_or_default(),
            )
            .await?;
        if !resp.is_success() {
            return Err(SinkError::Rejected {
                sink: self.id.clone(),
                status: resp.status,
                body: resp.excerpt(),
            });
        }
        Ok(Delivered::Done)
    }
}

/// The webhook body carrying `card`.
pub fn message(card: &Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

/// Text for an Adaptive Card: control characters shown as `?`, cut at `max`.
/// Text from a host as a card shows it: control characters as `?`, and brackets in
/// their full-width forms, so that a hostile name or path cannot become a markdown link
/// (`[Approve](https://...)`) beside the card's real actions.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| match c {
            c if c.is_control() => '?',
            '[' => '［',
            ']' => '］',
            c => c,
        })
        .collect()
}

fn fact(title: &str, value: &str) -> Value {
    json!({ "title": title, "value": if value.is_empty() { "-".to_owned() } else { clean(value, 500) } })
}

fn facts(req: &RequestRec) -> Value {
    let c = &req.context;
    json!({ "type": "FactSet", "facts": [
        fact("Request", &req.id.to_string()),
        fact("Host", &c.host),
        fact("Agent", &c.agent),
        fact("Session", &c.session_id.to_string()),
        fact("User", &format!("{} (uid {})", c.user, c.uid)),
        fact("Command", &c.command.join(" ")),
        fact("Working directory", &c.cwd),
        fact("Path", &c.path),
        fact("Rule", &c.rule),
        fact("Reason", &c.reason),
        fact("Deadline", &time_text(req.deadline_unix_ms)),
    ]})
}

fn time_text(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How `req` ended, in plain words.
fn outcome(req: &RequestRec, grant: Option<&GrantRec>) -> String {
    let Some(d) = &req.decision else {
        return format!("Request {} is pending", req.id);
    };
    let note = if d.note.is_empty() {
        String::new()
    } else {
        format!(": {}", d.note)
    };
    match req.state {
        State::Approved => format!(
            "Request {} approved by {}{}{note}",
            req.id,
            d.decided_by,
            grant.map_or(String::new(), |g| format!(
                " ({}, until {})",
                g.path_glob,
                time_text(g.expires_unix_ms)
            ))
        ),
        State::Denied => format!("Request {} denied by {}{note}", req.id, d.decided_by),
        State::Expired => format!(
            "Request {} expired: nobody decided in time; the failure verdict ({}) applied",
            req.id, d.verdict
        ),
        State::Released => format!("Request {} released by {}{note}", req.id, d.decided_by),
        State::Pending => format!("Request {} is pending", req.id),
    }
}

/// The Adaptive Card of `ev`.
pub fn card(ev: &Event, links: Option<(&LinkMaker, &[String])>) -> Value {
    let mut body = Vec::new();
    let mut actions = Vec::new();
    match (&ev.request, ev.event.as_str()) {
        (Some(req), "request.created") => {
            body.push(json!({ "type": "TextBlock", "weight": "Bolder", "size": "Medium", "wrap": true,
                "text": clean(&format!("{} wants to write {} on {}", req.context.agent, req.context.path, req.context.host), 600) }));
            body.push(facts(req));
            // One monospace line per excerpt line: a card's text would read markdown.
            for line in req.context.excerpt.lines().take(60) {
                body.push(
                    json!({ "type": "TextBlock", "fontType": "Monospace", "wrap": true,
                    "spacing": "None", "size": "Small", "text": clean(line, 300) }),
                );
            }
            if let Some((l, approvers)) = links {
                for who in approvers {
                    if let Some(url) = (l.0)(req.id, who, req.deadline_unix_ms) {
                        let title = clean(&format!("Approve / deny as {who}"), 100);
                        actions
                            .push(json!({ "type": "Action.OpenUrl", "title": title, "url": url }));
                    }
                }
            }
        }
        (Some(req), _) => {
            let line = outcome(req, ev.grant.as_ref());
            body.push(json!({ "type": "TextBlock", "weight": "Bolder", "wrap": true, "text": clean(&line, 600) }));
            body.push(facts(req));
        }
        (None, _) => {
            body.push(json!({ "type": "TextBlock", "wrap": true,
                "text": clean(&super::slack::summary(ev).replace('`', ""), 800) }));
        }
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if !actions.is_empty() {
        card["actions"] = Value::Array(actions);
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approver::store::ContextRec;

    #[test]
    fn host_text_cannot_become_a_link() {
        let c = clean("[Approve here](https://evil.example/)\n", 500);
        assert!(!c.contains('[') && !c.contains(']'), "{c}");
        assert!(c.ends_with('?'), "{c}");
    }

    #[test]
    fn a_request_card_has_the_context_and_signed_links() {
        let context = ContextRec {
            host: "web-1".into(),
            agent: "codex".into(),
            path: "/etc/x\u{1b}[31m".into(),
            ..ContextRec::default()
        };
        // From its stored form, so that fields the record gains take their defaults.
        let req: RequestRec = serde_json::from_value(serde_json::json!({
            "id": 7, "host_request_id": 1, "context": context, "created_unix_ms": 0,
            "deadline_unix_ms": 60_000, "state": "pending", "decision": null,
        }))
        .unwrap();
        let links = LinkMaker(Arc::new(|id, who: &str, until| {
            Some(format!("https://approver/web/link/{id}.{who}.{until}"))
        }));
        let who = ["alice".to_owned(), "bob".to_owned()];
        let c = card(&Event::request_created(&req), Some((&links, &who)));
        let msg = message(&c);
        assert_eq!(
            msg["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(
            c["actions"][0]["url"],
            "https://approver/web/link/7.alice.60000"
        );
        assert_eq!(c["actions"][0]["title"], "Approve / deny as alice");
        assert_eq!(
            c["actions"][1]["url"],
            "https://approver/web/link/7.bob.60000"
        );
        let text = c.to_string();
        assert!(text.contains("codex") && text.contains("web-1"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        // Without a web page, no links.
        assert!(
            card(&Event::request_created(&req), None)
                .get("actions")
                .is_none()
        );
    }
}
