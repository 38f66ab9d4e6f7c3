//! The pages and form handlers of the web approval page.
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio_stream::StreamExt as _;

use super::calls::{get_request, session_of, status_page, svc};
use super::html::{Live, esc, page, when};
use super::{Web, refuse};
use crate::approver::http::conn::{LocalEnd, Peer};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

/// Longest ledger listing shown.
const LEDGER_ROWS: usize = 500;

pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/", get(index))
        .route("/web/requests/{id}", get(request_page))
        .route("/web/requests/{id}/decide", axum::routing::post(decide))
        .route(
            "/web/requests/{id}/decide-set",
            axum::routing::post(super::sets::decide_set),
        )
        .route("/web/grants", get(grants))
        .route("/web/grants/{id}/revoke", axum::routing::post(revoke))
        .route("/web/ledger", get(ledger))
        .route("/web/events", get(events))
}

pub(super) fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The sign-in page for a request without a session.
fn sign_in_page(web: &Web) -> Response {
    let body = if web.oidc.is_some() {
        "<p>Sign in to see and decide pending requests.</p>\
         <p><a class=\"button\" id=\"sign-in\" href=\"/web/login\">Sign in</a></p>"
    } else {
        "<p>Sign-in is not configured on this service ([web.oidc] in approver.toml); \
         action links from notifications still open their request.</p>"
    };
    (
        StatusCode::UNAUTHORIZED,
        html(page("Sign in", None, None, Live::Off, body)),
    )
        .into_response()
}

/// Short lowercase name of a request state.
pub(super) fn state_name(state: i32) -> &'static str {
    match pb::RequestState::try_from(state) {
        Ok(pb::RequestState::Pending) => "pending",
        Ok(pb::RequestState::Approved) => "approved",
        Ok(pb::RequestState::Denied) => "denied",
        Ok(pb::RequestState::Expired) => "expired",
        Ok(pb::RequestState::Released) => "released",
        _ => "unknown",
    }
}

async fn index(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some(s) = web.session(&headers) else {
        return sign_in_page(&web);
    };
    let list = svc(&web)
        .list_requests(Web::as_approver(
            &s.name,
            pb::ListRequestsRequest {
                all: false,
                limit: 1000,
            },
        ))
        .await;
    let list = match list {
        Ok(r) => r.into_inner().requests,
        Err(e) => return status_page(&e),
    };
    let mut body = String::new();
    let ids: Vec<String> = list.iter().map(|r| r.id.to_string()).collect();
    let _ = write!(
        body,
        "<h2>Pending requests ({})</h2><div id=\"pending\" data-ids=\"{}\">",
        list.len(),
        ids.join(" ")
    );
    if list.is_empty() {
        body.push_str("<p id=\"none\">Nothing waits for a decision.</p>");
    } else {
        body.push_str(
            "<table><tr><th>#</th><th>Host</th><th>Agent</th><th>Session</th><th>Path</th>\
             <th>Operations</th><th>Reason</th><th>Deadline</th></tr>",
        );
        // One group per session (host, session), oldest first within it: what one agent
        // run asked for is reviewed together.
        let mut groups: Vec<((String, u64), Vec<&pb::ApprovalRequest>)> = Vec::new();
        for r in &list {
            let c = r.context.as_ref();
            let key = (
                c.map(|c| c.host.clone()).unwrap_or_default(),
                c.map_or(0, |c| c.session_id),
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(r),
                None => groups.push((key, vec![r])),
            }
        }
        for ((host, session), mut rs) in groups {
            rs.sort_by_key(|r| r.id);
            let agent = rs
                .first()
                .and_then(|r| r.context.as_ref())
                .map(|c| c.agent.clone())
                .unwrap_or_default();
            let _ = write!(
                body,
                "<tbody class=\"session\"><tr class=\"group\"><th colspan=\"8\">Session {session} \
                 of {} on {}: {} pending</th></tr>",
                esc(&agent),
                esc(&host),
                rs.len()
            );
            for r in rs {
                let c = r.context.clone().unwrap_or_default();
                let _ = write!(
                    body,
                    "<tr class=\"request\" id=\"request-{id}\"><td><a href=\"/web/requests/{id}\">{id}</a></td>\
                     <td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td>\
                     <td class=\"deadline\">{}</td></tr>",
                    esc(&c.host),
                    esc(&c.agent),
                    c.session_id,
                    esc(&c.path),
                    esc(&c.operations.join(", ")),
                    esc(&c.reason),
                    when(r.deadline_unix_ms),
                    id = r.id,
                );
            }
            body.push_str("</tbody>");
        }
        body.push_str("</table>");
    }
    body.push_str("</div>");
    html(page(
        "Pending",
        Some(&s.name),
        Some(&s.csrf),
        Live::List,
        &body,
    ))
}

/// The full context of a request, as a definition list.
pub(super) fn context_html(r: &pb::ApprovalRequest) -> String {
    let c = r.context.clone().unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        ("Request", format!("{} ({})", r.id, state_name(r.state))),
        ("Host", esc(&c.host)),
        ("Agent", esc(&c.agent)),
        ("Session", c.session_id.to_string()),
        ("User", format!("{} (uid {})", esc(&c.user), c.uid)),
        ("Process", c.pid.to_string()),
        (
            "Command",
            esc(&c
                .command
                .iter()
                .map(|a| shell_word(a))
                .collect::<Vec<_>>()
                .join(" ")),
        ),
        ("Working directory", esc(&c.cwd)),
        ("Path", esc(&c.path)),
        ("Operations", esc(&c.operations.join(", "))),
        ("Rule", esc(&c.rule)),
        ("Mode", esc(&c.mode)),
        ("Reason", esc(&c.reason)),
        ("Filed", when(r.created_unix_ms)),
        (
            "Deadline",
            format!(
                "<span class=\"deadline\">{}</span> (then: {})",
                when(r.deadline_unix_ms),
                esc(&c.fail_verdict)
            ),
        ),
    ];
    if !c.content_sha256.is_empty() {
        rows.push(("Content SHA-256", esc(&c.content_sha256)));
    }
    if !c.excerpt.is_empty() {
        rows.push((
            if c.excerpt_kind == "diff" {
                "Change"
            } else {
                "Content now"
            },
            format!("<pre class=\"excerpt\">{}</pre>", esc(&c.excerpt)),
        ));
    }
    if !c.ancestry.is_empty() {
        let chain = c
            .ancestry
            .iter()
            .map(|p| format!("{} {}", p.pid, esc(&p.comm)))
            .collect::<Vec<_>>()
            .join(" ← ");
        rows.push(("Ancestry", chain));
    }
    if let Some(d) = &r.decision {
        rows.push((
            "Decision",
            format!(
                "{} by {} at {}{}",
                state_name(d.state),
                esc(&d.decided_by),
                when(d.decided_unix_ms),
                if d.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", esc(&d.note))
                }
            ),
        ));
    }
    let mut out = String::from("<dl class=\"ctx\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");
    out
}

/// `a` quoted for a shell when it needs it (display only; escaped by the caller).
fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// The approve and deny forms posting to `action` with `csrf`.
pub(super) fn decide_forms(action: &str, csrf: &str, r: &pb::ApprovalRequest) -> String {
    let c = r.context.clone().unwrap_or_default();
    format!(
        "<div class=\"decide\">\
         <form method=\"post\" action=\"{action}\" id=\"approve-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"decision\" value=\"approve\">\
         <label>Grant for <select name=\"ttl\" id=\"ttl\">\
         <option value=\"15m\">15 minutes</option><option value=\"1h\" selected>1 hour</option>\
         <option value=\"8h\">8 hours</option><option value=\"24h\">24 hours</option></select></label>\
         <label>Scope <select name=\"scope\" id=\"scope\"><option value=\"session\">this session</option>\
         <option value=\"agent\">every session of agent {agent}</option></select></label>\
         <label>Paths (glob) <input name=\"glob\" id=\"glob\" size=\"50\" placeholder=\"{path}\"></label>\
         <label>Note <input name=\"note\" id=\"approve-note\" size=\"50\"></label>\
         <button type=\"submit\" class=\"approve\" id=\"approve\">Approve</button></form>\
         <form method=\"post\" action=\"{action}\" id=\"deny-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"decision\" value=\"deny\">\
         <label>Note <input name=\"note\" id=\"deny-note\" size=\"40\"></label>\
         <button type=\"submit\" class=\"deny\" id=\"deny\">Deny</button></form></div>",
        action = esc(action),
        csrf = esc(csrf),
        agent = esc(&c.agent),
        path = esc(&c.path),
    )
}

async fn request_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let Some(s) = web.session(&headers) else {
        return sign_in_page(&web);
    };
    let r = match get_request(&web, &s.name, id).await {
        Ok(r) => r,
        Err(e) => return status_page(&e),
    };
    let mut body = format!("<h2>Request {id}</h2>{}", context_html(&r));
    if r.state == pb::RequestState::Pending as i32 {
        body.push_str(&decide_forms(
            &format!("/web/requests/{id}/decide"),
            &s.csrf,
            &r,
        ));
        body.push_str(&super::sets::section(&web, &s.name, &s.csrf, &r).await);
    }
    html(page(
        &format!("Request {id}"),
        Some(&s.name),
        Some(&s.csrf),
        Live::Request(id),
        &body,
    ))
}

/// A decision form's fields as the service's `DecideRequest`.
pub(super) fn decide_request(
    id: u64,
    form: &HashMap<String, String>,
) -> Result<pb::DecideRequest, String> {
    let field = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let note = field("note");
    match field("decision").as_str() {
        "deny" => Ok(pb::DecideRequest {
            id,
            approve: false,
            note,
            decider_host: "web".into(),
            ..Default::default()
        }),
        "approve" => {
            let ttl = match field("ttl").as_str() {
                "" => 0,
                t => humantime::parse_duration(t)
                    .map_err(|e| format!("grant lifetime {t:?}: {e}"))?
                    .as_secs(),
            };
            let scope = match field("scope").as_str() {
                "" | "session" => pb::GrantScope::Session,
                "agent" => pb::GrantScope::Agent,
                other => return Err(format!("scope {other:?} is not session or agent")),
            };
            Ok(pb::DecideRequest {
                id,
                approve: true,
                ttl_seconds: ttl,
                note,
                scope: scope as i32,
                path_glob: field("glob"),
                decider_host: "web".into(),
                ..Default::default()
            })
        }
        _ => Err("the form says neither approve nor deny".into()),
    }
}

/// Runs a decision as `who` and answers with the request's page.
async fn run_decision(
    web: &Web,
    who: &str,
    groups: &[String],
    session: Option<u64>,
    id: u64,
    form: &HashMap<String, String>,
) -> Response {
    let req = match decide_request(id, form) {
        Ok(r) => r,
        Err(m) => return refuse(StatusCode::BAD_REQUEST, &m),
    };
    match svc(web)
        .decide({
            // The sign-in's groups count for rules' `group:<name>` approvers.
            let mut req = Web::as_approver_in(who, session, req);
            req.extensions_mut()
                .insert(crate::approver::identity::WebGroups(groups.to_vec()));
            req
        })
        .await
    {
        Ok(_) => Redirect::to(&format!("/web/requests/{id}")).into_response(),
        Err(e) => status_page(&e),
    }
}

async fn decide(
    State(web): State<Arc<Web>>,
    peer: Option<Extension<Peer>>,
    local: Option<Extension<LocalEnd>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match web.posted_session(&headers, &form) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let session = match session_of(&web, (peer, local)).await {
        Ok(v) => v,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    run_decision(&web, &s.name, &s.groups, session, id, &form).await
}

async fn grants(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some(s) = web.session(&headers) else {
        return sign_in_page(&web);
    };
    let list = match svc(&web)
        .list_grants(Web::as_approver(
            &s.name,
            pb::ListGrantsRequest { all: false },
        ))
        .await
    {
        Ok(r) => r.into_inner().grants,
        Err(e) => return status_page(&e),
    };
    let mut body = format!("<h2>Live grants ({})</h2>", list.len());
    if list.is_empty() {
        body.push_str("<p>No live grant.</p>");
    } else {
        body.push_str(
            "<table><tr><th>#</th><th>Host</th><th>Scope</th><th>Agent</th><th>Paths</th>\
             <th>Expires</th><th>By</th><th></th></tr>",
        );
        for g in &list {
            let scope = if g.scope == pb::GrantScope::Agent as i32 {
                "agent".to_owned()
            } else {
                format!("session {}", g.session_id)
            };
            let _ = write!(
                body,
                "<tr id=\"grant-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>\
                 <form method=\"post\" action=\"/web/grants/{id}/revoke\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" class=\"deny\">Revoke</button></form></td></tr>",
                esc(&g.host),
                scope,
                esc(&g.agent),
                esc(&g.path_glob),
                when(g.expires_unix_ms),
                esc(&g.granted_by),
                esc(&s.csrf),
                id = g.id,
            );
        }
        body.push_str("</table>");
    }
    html(page(
        "Grants",
        Some(&s.name),
        Some(&s.csrf),
        Live::Off,
        &body,
    ))
}

async fn revoke(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match web.posted_session(&headers, &form) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let note = form.get("note").cloned().unwrap_or_default();
    match svc(&web)
        .revoke_grant(Web::as_approver(
            &s.name,
            pb::RevokeGrantRequest { id, note },
        ))
        .await
    {
        Ok(_) => Redirect::to("/web/grants").into_response(),
        Err(e) => status_page(&e),
    }
}

/// The ledger search: records whose body mentions `host`, `agent` and `path` (substrings,
/// case-sensitive), between `since` and `until` (RFC 3339 or `YYYY-MM-DD`).
async fn ledger(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(s) = web.session(&headers) else {
        return sign_in_page(&web);
    };
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let (host, agent, path) = (get("host"), get("agent"), get("path"));
    let (since, until) = (parse_time(&get("since")), parse_time(&get("until")));
    let stream = svc(&web)
        .audit_log(Web::as_approver(
            &s.name,
            pb::AuditLogRequest {
                since_unix_ms: since.unwrap_or(0),
            },
        ))
        .await;
    let mut stream = match stream {
        Ok(r) => r.into_inner(),
        Err(e) => return status_page(&e),
    };
    // Only the newest LEDGER_ROWS matches are kept while scanning (the ledger is long).
    let mut rows = Newest::new(LEDGER_ROWS);
    while let Some(item) = stream.next().await {
        let Ok(entry) = item else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&entry.json) else {
            continue;
        };
        let body = &v["body"];
        let field = |k: &str| body.get(k).and_then(|x| x.as_str()).unwrap_or("");
        let matches = |want: &str, k: &str| want.is_empty() || field(k).contains(want);
        if !(matches(&host, "host") && matches(&agent, "agent") && matches(&path, "path")) {
            continue;
        }
        let time = v["time"].as_str().unwrap_or("").to_owned();
        if let Some(u) = until
            && parse_time(&time).is_some_and(|t| t > u)
        {
            continue;
        }
        rows.push(v);
    }
    let (matched, rows) = (rows.seen, rows.kept);
    let shown = rows.len();
    let mut body = format!(
        "<h2>Ledger</h2><form method=\"get\" action=\"/web/ledger\" id=\"ledger-search\">\
         <label>Host <input name=\"host\" value=\"{}\"></label> \
         <label>Agent <input name=\"agent\" value=\"{}\"></label> \
         <label>Path <input name=\"path\" value=\"{}\"></label> \
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"2026-01-31\"></label> \
         <label>Until <input name=\"until\" value=\"{}\"></label> \
         <button type=\"submit\">Search</button></form>\
         <p>{} records match; the newest {shown} are shown.</p>\
         <table><tr><th>#</th><th>Time</th><th>Kind</th><th>Host</th><th>Agent</th><th>Path</th>\
         <th>Details</th></tr>",
        esc(&host),
        esc(&agent),
        esc(&path),
        esc(&get("since")),
        esc(&get("until")),
        matched,
    );
    for v in rows.iter().rev() {
        let b = &v["body"];
        let f = |k: &str| esc(b.get(k).and_then(|x| x.as_str()).unwrap_or(""));
        let details = serde_json::to_string(b).unwrap_or_default();
        let short: String = details.chars().take(300).collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td>\
             <td class=\"mono\">{}</td></tr>",
            v["seq"].as_u64().unwrap_or(0),
            esc(v["time"].as_str().unwrap_or("")),
            esc(v["kind"].as_str().unwrap_or("")),
            f("host"),
            f("agent"),
            f("path"),
            esc(&short),
        );
    }
    body.push_str("</table>");
    html(page(
        "Ledger",
        Some(&s.name),
        Some(&s.csrf),
        Live::Off,
        &body,
    ))
}

/// The last `cap` items pushed, and how many were pushed.
pub(super) struct Newest<T> {
    cap: usize,
    pub(super) seen: usize,
    pub(super) kept: std::collections::VecDeque<T>,
}

impl<T> Newest<T> {
    pub(super) fn new(cap: usize) -> Self {
        Newest {
            cap,
            seen: 0,
            kept: std::collections::VecDeque::with_capacity(cap.min(1024)),
        }
    }

    pub(super) fn push(&mut self, item: T) {
        self.seen += 1;
        if self.cap == 0 {
            return;
        }
        if self.kept.len() == self.cap {
            self.kept.pop_front();
        }
        self.kept.push_back(item);
    }
}

/// `2026-01-31` or RFC 3339, as Unix ms.
fn parse_time(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .or_else(|| {
            let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                .ok()?;
            Some(d.midnight().assume_utc())
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Server-sent events: `request` with `{"id", "state"}` for every pending request at
/// first, then for every change.
async fn events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some(s) = web.session(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let Some(slot) = web.stream_slot(&s) else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live pages open for this session; close some",
        );
    };
    let stream = match svc(&web)
        .watch_requests(Web::as_approver(&s.name, pb::WatchRequestsRequest {}))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return status_page(&e),
    };
    let events = stream.map_while(|item| item.ok()).map(move |r| {
        // Held by the stream: the slot is given back when the stream is dropped.
        let _slot = &slot;
        let data = serde_json::json!({ "id": r.id, "state": state_name(r.state) }).to_string();
        Ok::<_, Infallible>(Event::default().event("request").data(data))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
