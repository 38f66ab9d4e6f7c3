//! Slack's side of an interactive click, as Slack documents it: the `block_actions`
//! payload of a button, form-encoded (`payload=<json>`) and POSTed to the app's request
//! URL with `X-Slack-Request-Timestamp` and `X-Slack-Signature` (the caller signs: the
//! tests and the benchmark use the product's `sign`, checked against Slack's published
//! example in its unit tests). Plain HTTP: the approval service listens on loopback.
use std::io::{Read, Write};

use serde_json::{Value, json};

use crate::receiver::Recorded;

/// `application/x-www-form-urlencoded` encoding of `s`.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request body Slack sends for `payload`.
pub fn form_body(payload: &Value) -> String {
    format!("payload={}", urlencode(&payload.to_string()))
}

/// POSTs `body` to `http://127.0.0.1:<port>/slack/interactive` with the timestamp and
/// signature headers; returns the status and the response body.
pub fn post_interactive(
    port: u16,
    body: &str,
    ts: &str,
    sig: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "POST /slack/interactive HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         x-slack-request-timestamp: {ts}\r\nx-slack-signature: {sig}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, text))
}

/// The `block_actions` payload of `user` clicking `action` on request `request_id`'s
/// message; `response_url` on the receiver at `recv_url`.
pub fn button_click(user: &str, action: &str, request_id: u64, recv_url: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": { "id": user, "username": "someone", "team_id": "T0TEST" },
        "team": { "id": "T0TEST", "domain": "test" },
        "api_app_id": "A0TEST",
        "trigger_id": "12345.98765.abcd",
        "response_url": format!("{recv_url}/response"),
        "container": { "type": "message", "message_ts": "1700000000.000001", "channel_id": "C0TEST" },
        "channel": { "id": "C0TEST", "name": "ops" },
        "actions": [{ "type": "button", "action_id": action, "block_id": "confgate_decide",
                      "value": request_id.to_string(), "action_ts": "1700000001.0" }],
    })
}

/// The request id on the decision buttons of a posted request message, if it has them.
pub fn request_id_of(post: &Recorded) -> Option<u64> {
    let blocks = post.json()["blocks"].clone();
    blocks
        .as_array()?
        .iter()
        .find(|b| b["type"] == "actions")
        .and_then(|b| b["elements"][0]["value"].as_str())
        .and_then(|v| v.parse().ok())
}
