//! The Block Kit of the Slack messages: a request with its context and decision buttons,
//! its outcome, the Approve… modal, and one-line summaries of other events. Every string
//! from a host is escaped for mrkdwn and stripped of control characters.
use serde_json::{Value, json};

use crate::approver::outbox::Event;
use crate::approver::store::{GrantRec, RequestRec, State};
use crate::policy::grants::exact_glob;

/// `callback_id` of the Approve… modal.
pub const MODAL_CALLBACK: &str = "confgate_approve";
/// Longest text of one field.
const FIELD_MAX: usize = 500;

/// Escapes `s` for mrkdwn (`&`, `<`, `>`), control characters shown as `?`, cut at `max`.
/// Text from a host cannot format the message either: a backtick (which would end the
/// code span it is shown in) is shown as `ˋ` and an asterisk (bold: a fake "*Approved*")
/// as `∗`.
pub fn esc(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('ˋ'),
            '*' => out.push('∗'),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn field(label: &str, value: &str) -> Value {
    let v = if value.is_empty() { "-" } else { value };
    json!({ "type": "mrkdwn", "text": format!("*{label}*\n{}", esc(v, FIELD_MAX)) })
}

/// Slack's date formatting of a Unix ms time (readers see their own time zone).
fn date(ms: i64) -> String {
    let secs = ms / 1000;
    format!("<!date^{secs}^{{date_short_pretty}} {{time_secs}}|{secs}>")
}

/// The request's content excerpt or diff (escaped, bounded and masked by the host), its
/// lines escaped for mrkdwn one by one (a backtick cannot end the code block), labelled.
fn excerpt(req: &RequestRec) -> Option<String> {
    let c = &req.context;
    if c.excerpt.is_empty() {
        return None;
    }
    let mut left = 1500usize;
    let mut lines = Vec::new();
    for line in c.excerpt.lines() {
        if left == 0 {
            lines.push("…".to_owned());
            break;
        }
        lines.push(esc(line, left));
        left = left.saturating_sub(line.chars().count().max(1));
    }
    let label = if c.excerpt_kind == "diff" {
        "Change"
    } else {
        "Content now"
    };
    Some(format!("*{label}*\n```{}```", lines.join("\n")))
}

/// The session-scoped glob suggested for the request, if it carries one.
fn suggested_glob(req: &RequestRec) -> Option<String> {
    let v = serde_json::to_value(req).ok()?;
    v.get("suggested_glob")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The context of a request as section blocks.
fn context_blocks(req: &RequestRec) -> Vec<Value> {
    let c = &req.context;
    let title = format!(
        "*{}* wants to {} `{}` on *{}*",
        esc(
            if c.agent.is_empty() {
                "an agent"
            } else {
                &c.agent
            },
            100
        ),
        esc(&c.operations.join("/"), 100),
        esc(&c.path, FIELD_MAX),
        esc(&c.host, 200),
    );
    let mut blocks = vec![
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": title } }),
        json!({ "type": "section", "fields": [
            field("Request", &req.id.to_string()),
            field("Session", &c.session_id.to_string()),
            field("User", &format!("{} (uid {})", c.user, c.uid)),
            field("Rule", &c.rule),
            field("Command", &c.command.join(" ")),
            field("Working directory", &c.cwd),
            field("Reason", &c.reason),
            field("Path", &c.path),
        ]}),
    ];
    if let Some(g) = suggested_glob(req) {
        blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn",
            "text": format!("Suggested for this session: `{}` (Approve… offers it)", esc(&g, FIELD_MAX)) }] }));
    }
    if let Some(x) = excerpt(req) {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": x }}));
    }
    blocks
}

fn button(text: &str, action: &str, id: u64, style: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "text": { "type": "plain_text", "text": text },
        "action_id": action,
        "value": id.to_string(),
    });
    if let Some(s) = style {
        b["style"] = json!(s);
    }
    b
}

/// The message of a new request: context, deadline, decision buttons.
pub fn request_blocks(req: &RequestRec) -> Value {
    let mut blocks = context_blocks(req);
    blocks.push(json!({ "type": "context", "elements": [{
        "type": "mrkdwn",
        "text": format!(
            "Held until {}; then the rule's failure verdict (*{}*) applies.",
            date(req.deadline_unix_ms),
            esc(&req.context.fail_verdict, 20)
        ),
    }]}));
    blocks.push(
        json!({ "type": "actions", "block_id": "confgate_decide", "elements": [
            button("Approve 15m", "approve_15m", req.id, Some("primary")),
            button("Approve 1h", "approve_1h", req.id, None),
            button("Approve…", "approve_custom", req.id, None),
            button("Deny", "deny", req.id, Some("danger")),
        ]}),
    );
    json!({
        "text": format!("confgate request {}: {} wants to write {} on {}",
            req.id, esc(&req.context.agent, 100), esc(&req.context.path, FIELD_MAX), esc(&req.context.host, 200)),
        "blocks": blocks,
    })
}

/// One line saying how a request ended.
pub fn outcome_line(req: &RequestRec, grant: Option<&GrantRec>) -> String {
    let Some(d) = &req.decision else {
        return "Pending".to_owned();
    };
    let by = esc(&d.decided_by, 200);
    let note = if d.note.is_empty() {
        String::new()
    } else {
        format!(" — “{}”", esc(&d.note, FIELD_MAX))
    };
    match req.state {
        State::Approved => {
            let how = grant.map_or(String::new(), |g| {
                format!(
                    " ({} scope, `{}`, until {})",
                    if g.scope == crate::approver::store::Scope::Agent {
                        "agent"
                    } else {
                        "session"
                    },
                    esc(&g.path_glob, FIELD_MAX),
                    date(g.expires_unix_ms)
                )
            });
            format!(":white_check_mark: *Approved* by {by}{how}{note}")
        }
        State::Denied => format!(":no_entry: *Denied* by {by}{note}"),
        State::Expired => format!(
            ":hourglass: *Expired*: nobody decided in time; the failure verdict ({}) applied",
            esc(&d.verdict, 20)
        ),
        State::Released => format!(":warning: *Released* by {by}: {}", esc(&d.note, FIELD_MAX)),
        State::Pending => "Pending".to_owned(),
    }
}

/// The request's message once it is decided: context and outcome, no buttons.
pub fn outcome_blocks(req: &RequestRec, grant: Option<&GrantRec>) -> Value {
    let line = outcome_line(req, grant);
    let mut blocks = context_blocks(req);
    blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": line } }));
    json!({
        "text": format!("confgate request {}: {}", req.id, line),
        "blocks": blocks,
    })
}

fn option(text: &str, value: &str) -> Value {
    json!({ "text": { "type": "plain_text", "text": text }, "value": value })
}

/// `views.open` body of the Approve… modal for `req`.
pub fn approve_modal(req: &RequestRec, trigger_id: &str) -> Value {
    let ttl = [
        ("15 minutes", "900"),
        ("1 hour", "3600"),
        ("4 hours", "14400"),
        ("1 day", "86400"),
        ("7 days", "604800"),
    ];
    let ttl_options: Vec<Value> = ttl.iter().map(|(t, v)| option(t, v)).collect();
    // The session-scoped suggestion when the request carries one, else the path itself.
    let mut glob = suggested_glob(req).unwrap_or_else(|| exact_glob(&req.context.path));
    glob.truncate(3000);
    json!({
        "trigger_id": trigger_id,
        "view": {
            "type": "modal",
            "callback_id": MODAL_CALLBACK,
            "private_metadata": req.id.to_string(),
            "title": { "type": "plain_text", "text": format!("Approve request {}", req.id).chars().take(24).collect::<String>() },
            "submit": { "type": "plain_text", "text": "Approve" },
            "close": { "type": "plain_text", "text": "Cancel" },
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": format!(
                    "*{}* on *{}*: `{}`", esc(&req.context.agent, 100), esc(&req.context.host, 200), esc(&req.context.path, FIELD_MAX)) } },
                { "type": "input", "block_id": "ttl", "label": { "type": "plain_text", "text": "For how long" },
                  "element": { "type": "static_select", "action_id": "ttl", "initial_option": option("1 hour", "3600"), "options": ttl_options } },
                { "type": "input", "block_id": "scope", "label": { "type": "plain_text", "text": "Scope" },
                  "element": { "type": "static_select", "action_id": "scope",
                    "initial_option": option("This session", "session"),
                    "options": [option("This session", "session"), option("The agent, every session", "agent")] } },
                { "type": "input", "block_id": "glob", "label": { "type": "plain_text", "text": "Paths (glob)" },
                  "element": { "type": "plain_text_input", "action_id": "glob", "initial_value": glob } },
                { "type": "input", "block_id": "note", "optional": true, "label": { "type": "plain_text", "text": "Note" },
                  "element": { "type": "plain_text_input", "action_id": "note", "multiline": true } },
            ],
        },
    })
}

/// A one-line message for events without a request message of their own.
pub fn summary(ev: &Event) -> String {
    let host = esc(&ev.host, 200);
    if let Some(g) = &ev.grant
        && ev.event == "grant.revoked"
    {
        return format!(
            ":leftwards_arrow_with_hook: Grant {} on *{host}* (`{}`) revoked by {}",
            g.id,
            esc(&g.path_glob, FIELD_MAX),
            esc(g.revoked_by.as_deref().unwrap_or("?"), 200)
        );
    }
    if let Some(req) = &ev.request {
        return format!(
            "confgate request {}: {}",
            req.id,
            outcome_line(req, ev.grant.as_ref())
        );
    }
    let kind = ev
        .event
        .strip_prefix("host.")
        .unwrap_or(&ev.event)
        .replace('_', " ");
    let r = ev.report.clone().unwrap_or(Value::Null);
    let s = |k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut line = format!(":mag: *{host}*: {kind}");
    for k in ["path", "from", "to"] {
        let v = s(k);
        if !v.is_empty() {
            line.push_str(&format!(" {k} `{}`", esc(&v, FIELD_MAX)));
        }
    }
    if let Some(sess) = r.get("session").and_then(Value::as_u64) {
        line.push_str(&format!(" (session {sess})"));
    }
    let agent = s("agent");
    if !agent.is_empty() {
        line.push_str(&format!(" agent {}", esc(&agent, 100)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_text_cannot_format_the_message() {
        let e = esc("*Approved* by `alice` <@U1> & co\n", 500);
        assert_eq!(e, "∗Approved∗ by ˋaliceˋ &lt;@U1&gt; &amp; co?");
    }
}
