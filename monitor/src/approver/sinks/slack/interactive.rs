//! `POST /slack/interactive`: Slack's interactivity callbacks (button clicks and the
//! Approve… modal's submission), form-encoded `payload=<JSON>`.
//!
//! Each callback is verified as Slack documents: `X-Slack-Signature` must be
//! `v0=<hex HMAC-SHA256(signing secret, "v0:" + X-Slack-Request-Timestamp + ":" + raw
//! body)>` (constant-time compare), the timestamp within 5 minutes of now. The clicking
//! user's Slack id must be in the sink's `users` allow-list, which names the approver
//! identity the decision is made as; anyone else is told so (an ephemeral message, or an
//! error in the modal) and nothing is decided. Decisions go through the service's own
//! `Decide`, in process (see `decide_as`): the same checks as any other decision.
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::Slack;
use super::blocks::{MODAL_CALLBACK, approve_modal, esc};
use std::net::SocketAddr;

use axum::Extension;

use crate::approver::http::conn::{LocalEnd, Peer};
use crate::approver::identity::{WebCallerSession, WebPrincipal};
use crate::approver::service::{ApproverService, Shared};
use crate::approver::sinks::Sinks;
use crate::approver::web::peer::{Client, locate_client};
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

/// How far a callback's timestamp may be from now, in seconds.
pub const WINDOW_SECS: i64 = 5 * 60;

/// Why a callback was refused before its payload was looked at.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp")]
    Missing,
    #[error("the request timestamp is more than 5 minutes from now")]
    Stale,
    #[error("the signature does not match")]
    BadSignature,
}

/// `v0=<hex HMAC-SHA256(secret, "v0:" + ts + ":" + body)>`.
pub fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        crate::approver::sinks::hmac_hex(secret, &base(ts, body))
    )
}

fn base(ts: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = format!("v0:{ts}:").into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// Checks a callback's signature against `secret` at `now_secs`.
pub fn verify(
    secret: &[u8],
    ts: Option<&str>,
    sig: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), Unverified> {
    let (Some(ts), Some(sig)) = (ts, sig) else {
        return Err(Unverified::Missing);
    };
    let t: i64 = ts.trim().parse().map_err(|_| Unverified::Stale)?;
    if now_secs.abs_diff(t) > WINDOW_SECS.unsigned_abs() {
        return Err(Unverified::Stale);
    }
    let given = sig
        .trim()
        .strip_prefix("v0=")
        .and_then(crate::approver::sinks::unhex)
        .ok_or(Unverified::BadSignature)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    // ring's verify compares in constant time.
    ring::hmac::verify(&key, &base(ts, body), &given).map_err(|_| Unverified::BadSignature)
}

/// The Slack sink whose signing secret verifies the callback.
pub fn verified_sink<'a>(
    sinks: &'a Sinks,
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<&'a Arc<Slack>, Unverified> {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let (ts, sig) = (h("x-slack-request-timestamp"), h("x-slack-signature"));
    let mut worst = Unverified::BadSignature;
    for s in sinks.slack() {
        match verify(&s.signing_secret, ts, sig, body, now_secs) {
            Ok(()) => return Ok(s),
            Err(e @ (Unverified::Missing | Unverified::Stale)) => return Err(e),
            Err(e) => worst = e,
        }
    }
    Err(worst)
}

/// The `payload` field of a form-encoded body.
pub fn form_payload(body: &[u8]) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        if k != b"payload" {
            return None;
        }
        let plus: Vec<u8> = v
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        percent_encoding::percent_decode(&plus)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    })
}

/// What the endpoint answers: a status and a JSON body (empty for a plain 200).
pub type Answer = (StatusCode, String);

/// Handles one callback (after routing): verification, then the action.
pub async fn handle(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: &[u8],
    ends: (Option<SocketAddr>, Option<SocketAddr>),
) -> Answer {
    let Some(sinks) = shared.sinks() else {
        return (StatusCode::NOT_FOUND, "no Slack sink is configured".into());
    };
    let now_secs = now_ms() / 1000;
    let slack = match verified_sink(&sinks, &headers, body, now_secs) {
        Ok(s) => Arc::clone(s),
        Err(e) => {
            bump_refused(&shared);
            tracing::warn!(reason = %e, "Slack callback refused");
            return (StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    let Some(payload) = form_payload(body).and_then(|p| serde_json::from_str::<Value>(&p).ok())
    else {
        return (StatusCode::BAD_REQUEST, "no JSON payload".into());
    };
    let user = payload["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Slack's servers send these; a process on this host inside an agent session that
    // holds the signing secret must still not decide (no self-approval).
    let session = match caller_session(&shared, ends).await {
        Ok(s) => s,
        Err(m) => return (StatusCode::FORBIDDEN, m),
    };
    let who = slack.users.get(&user).cloned().map(|name| (name, session));
    match payload["type"].as_str() {
        Some("block_actions") => block_action(&shared, &slack, &payload, &user, who).await,
        Some("view_submission") if payload["view"]["callback_id"] == MODAL_CALLBACK => {
            view_submission(&shared, &payload, &user, who).await
        }
        _ => (StatusCode::OK, String::new()),
    }
}

fn bump_refused(shared: &Shared) {
    shared
        .counters
        .refused_unauthenticated
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn not_allowed(user: &str) -> String {
    format!(
        "Slack user {} is not allowed to decide confgate requests (not in this service's users list); nothing was decided.",
        esc(user, 40)
    )
}

/// The approver a callback decides as, and the agent session of the local process that
/// sent it (`None`: not a process on this host, or no session map here).
type Who = Option<(String, Option<u64>)>;

async fn block_action(
    shared: &Arc<Shared>,
    slack: &Arc<Slack>,
    payload: &Value,
    user: &str,
    who: Who,
) -> Answer {
    let action = &payload["actions"][0];
    let action_id = action["action_id"].as_str().unwrap_or_default();
    let Some(id) = action["value"].as_str().and_then(|v| v.parse::<u64>().ok()) else {
        return (StatusCode::OK, String::new());
    };
    let response_url = payload["response_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(who) = who else {
        tracing::warn!(
            slack_user = user,
            request = id,
            "Slack user not in the allow-list"
        );
        bump_refused(shared);
        tell(slack, &response_url, &not_allowed(user)).await;
        return (StatusCode::OK, String::new());
    };
    let decide = |approve: bool, ttl: u64| pb::DecideRequest {
        id,
        approve,
        ttl_seconds: ttl,
        ..Default::default()
    };
    let r = match action_id {
        "approve_15m" => decide(true, 900),
        "approve_1h" => decide(true, 3600),
        "deny" => decide(false, 0),
        "approve_custom" => {
            let st = shared.store.clone();
            let req = tokio::task::spawn_blocking(move || st.request(id)).await;
            let trigger = payload["trigger_id"].as_str().unwrap_or_default();
            match req {
                Ok(Ok(Some(req))) => {
                    if let Err(e) = slack.api("views.open", &approve_modal(&req, trigger)).await {
                        tracing::warn!(error = %e, "Slack views.open failed");
                        tell(
                            slack,
                            &response_url,
                            &format!("Cannot open the approval dialog: {e}"),
                        )
                        .await;
                    }
                }
                _ => tell(slack, &response_url, &format!("No request {id}.")).await,
            }
            return (StatusCode::OK, String::new());
        }
        _ => return (StatusCode::OK, String::new()),
    };
    if let Err(msg) = decide_as(shared, &who, user, payload, r).await {
        tell(slack, &response_url, &msg).await;
    }
    (StatusCode::OK, String::new())
}

async fn view_submission(shared: &Arc<Shared>, payload: &Value, user: &str, who: Who) -> Answer {
    let errors = |block: &str, msg: String| {
        let body = json!({ "response_action": "errors", "errors": { block: msg } });
        (StatusCode::OK, body.to_string())
    };
    let Some(who) = who else {
        bump_refused(shared);
        return errors("ttl", not_allowed(user));
    };
    let view = &payload["view"];
    let Some(id) = view["private_metadata"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return errors("ttl", "this dialog names no request".into());
    };
    let values = &view["state"]["values"];
    let selected = |b: &str| {
        values[b][b]["selected_option"]["value"]
            .as_str()
            .unwrap_or_default()
    };
    let text = |b: &str| {
        values[b][b]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let ttl = selected("ttl").parse::<u64>().unwrap_or(3600);
    let scope = match selected("scope") {
        "agent" => pb::GrantScope::Agent,
        _ => pb::GrantScope::Session,
    };
    let r = pb::DecideRequest {
        id,
        approve: true,
        ttl_seconds: ttl,
        scope: scope as i32,
        path_glob: text("glob").trim().to_owned(),
        note: text("note"),
        ..Default::default()
    };
    match decide_as(shared, &who, user, payload, r).await {
        Ok(()) => (StatusCode::OK, String::new()),
        Err(msg) => errors("glob", msg),
    }
}

/// Decides as `who` (from Slack user `user`) through the service's own `Decide`, in
/// process, as the web page does ([`WebPrincipal`]): every check of a gRPC decision
/// applies (no self-approval, quorum, the rule's limits) and the ledger records it with
/// `decider_host` = `slack:<user id>@<team id>`. The error is a message for the user.
async fn decide_as(
    shared: &Arc<Shared>,
    who: &(String, Option<u64>),
    user: &str,
    payload: &Value,
    mut r: pb::DecideRequest,
) -> Result<(), String> {
    let (who, session) = (who.0.as_str(), who.1);
    let id = r.id;
    let team = payload["team"]["id"].as_str().unwrap_or_default();
    r.decider_host = esc(&format!("slack:{user}@{team}"), 120);
    let mut req = tonic::Request::new(r);
    req.extensions_mut().insert(WebPrincipal(who.to_owned()));
    if let Some(s) = session {
        req.extensions_mut().insert(WebCallerSession(s));
    }
    match ApproverService::new(Arc::clone(shared)).decide(req).await {
        Ok(_) => Ok(()),
        Err(status) => {
            tracing::info!(
                request = id,
                approver = who,
                slack_user = user,
                reason = status.message(),
                "Slack decision refused"
            );
            Err(format!("Request {id}: {}", status.message()))
        }
    }
}

/// The agent session of the process on this host behind a connection, found as the web
/// page finds it (local mode only: the service has the kernel's session map then).
async fn caller_session(
    shared: &Shared,
    ends: (Option<SocketAddr>, Option<SocketAddr>),
) -> Result<Option<u64>, String> {
    let (Some(peer), Some(local)) = ends else {
        return Ok(None);
    };
    if shared.auth.session_of_pid(0).is_none() {
        return Ok(None);
    }
    // The same answer as the web page's (IPv4-mapped addresses, the host's own
    // addresses, a local client whose process cannot be found: refused).
    let client = tokio::task::spawn_blocking(move || locate_client(peer, local))
        .await
        .map_err(|e| e.to_string())?;
    match client {
        Client::Process(pid) => Ok(shared.auth.session_of_pid(pid)),
        Client::OnThisHost => Err(format!(
            "cannot tell which process on this host sent this callback (from {peer})"
        )),
        Client::Elsewhere => Ok(None),
    }
}

/// Tells the clicking user `text` through the callback's `response_url` (ephemeral).
async fn tell(slack: &Slack, response_url: &str, text: &str) {
    if crate::approver::outbox::config::url_problem(response_url).is_err() {
        return;
    }
    let body = json!({ "response_type": "ephemeral", "replace_original": false, "text": text });
    let r = slack
        .client
        .post(
            response_url,
            &[],
            "application/json; charset=utf-8",
            serde_json::to_vec(&body).unwrap_or_default(),
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot answer a Slack callback");
    }
}

/// The routes of the Slack integration, for the service's HTTP listener.
pub fn routes(shared: Arc<Shared>) -> axum::Router {
    use axum::body::Bytes;
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/slack/interactive",
        axum::routing::post(
            move |peer: Option<Extension<Peer>>,
                  local: Option<Extension<LocalEnd>>,
                  headers: HeaderMap,
                  body: Bytes| {
                let shared = Arc::clone(&shared);
                let ends = (peer.map(|p| p.0.0), local.map(|l| l.0.0));
                async move {
                    let (status, text) = handle(shared, headers, &body, ends).await;
                    let ct = if text.starts_with('{') {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    (status, [(axum::http::header::CONTENT_TYPE, ct)], text).into_response()
                }
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_documented_example_verifies() {
        assert_eq!(sign(SECRET, TS, BODY), SIG);
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), BODY, 1531420618 + 10),
            Ok(())
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        for ts in [i64::MIN.to_string(), i64::MAX.to_string(), "-1".into()] {
            assert_eq!(
                verify(SECRET, Some(&ts), Some(SIG), BODY, 1531420618),
                Err(Unverified::Stale)
            );
        }
    }

    #[test]
    fn a_bad_signature_an_old_timestamp_and_missing_headers_are_refused() {
        let now = 1531420618;
        let mut body = BODY.to_vec();
        body[0] = b'T';
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), &body, now),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verify(b"other", Some(TS), Some(SIG), BODY, now),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("v0=zz"), BODY, now),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("a2114d"), BODY, now),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), BODY, now + 301),
            Err(Unverified::Stale)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIG), BODY, now - 301),
            Err(Unverified::Stale)
        );
        assert_eq!(
            verify(SECRET, None, Some(SIG), BODY, now),
            Err(Unverified::Missing)
        );
        assert_eq!(
            verify(SECRET, Some(TS), None, BODY, now),
            Err(Unverified::Missing)
        );
        // A timestamp that is not a number.
        assert_eq!(
            verify(SECRET, Some("x"), Some(SIG), BODY, now),
            Err(Unverified::Stale)
        );
    }

    #[test]
    fn the_payload_is_taken_from_the_form() {
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%2C%22a%22%3A%22x+y%22%7D&other=1";
        assert_eq!(
            form_payload(body).as_deref(),
            Some(r#"{"type":"block_actions","a":"x y"}"#)
        );
        assert_eq!(form_payload(b"other=1"), None);
    }
}
