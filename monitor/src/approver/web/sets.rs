//! A session's pending requests as one reviewable set on the request page: every request
//! of the set with its path and likely final name, the session-scoped glob that covers
//! them, and one form that approves exactly that set with that glob
//! ([`crate::approver::session_set`], as `approvals approve --session-set` does). The
//! form carries what the approver saw (the glob and the ids); when the session asked for
//! more meanwhile, the service refuses and the page shows the new set.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

use super::calls::{get_request, session_of, status_page, svc};
use super::html::esc;
use super::{Web, refuse};
use crate::approver::burst::describe;
use crate::approver::http::conn::{LocalEnd, Peer};
use crate::approver::session_set::{Reviewed, Set, session_set};

/// The service's pending requests, as `who` sees them.
async fn pending(web: &Web, who: &str) -> Result<Vec<pb::ApprovalRequest>, tonic::Status> {
    svc(web)
        .list_requests(Web::as_approver(
            who,
            pb::ListRequestsRequest {
                all: false,
                limit: 1000,
            },
        ))
        .await
        .map(|r| r.into_inner().requests)
}

/// The set section of request `r`'s page for `who` (empty when `r` is not pending, comes
/// from no session, or its session's requests have no common glob).
pub(super) async fn section(web: &Web, who: &str, csrf: &str, r: &pb::ApprovalRequest) -> String {
    if r.state != pb::RequestState::Pending as i32 {
        return String::new();
    }
    let Ok(all) = pending(web, who).await else {
        return String::new();
    };
    match session_set(r, &all, None) {
        Ok(set) => render(r.id, csrf, &set),
        Err(_) => String::new(),
    }
}

fn render(id: u64, csrf: &str, set: &Set) -> String {
    let ids: Vec<String> = set.ids.iter().map(u64::to_string).collect();
    let mut rows = String::new();
    for (rid, path) in &set.paths {
        let final_name = describe(path)
            .map(|d| format!(" <span class=\"muted\">({})</span>", esc(&d)))
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<li><a href=\"/web/requests/{rid}\">{rid}</a> <span class=\"mono\">{}</span>{final_name}</li>",
            esc(path)
        );
    }
    format!(
        "<section class=\"set\" id=\"session-set\"><h3>This session's set: {n} pending request{s}</h3>\
         <p>One approval for all of them, for this session only, with the paths glob \
         <code id=\"set-glob\">{glob}</code> and the operations <span class=\"mono\">{ops}</span>:</p>\
         <ul class=\"set\">{rows}</ul>\
         <form method=\"post\" action=\"/web/requests/{id}/decide-set\" id=\"approve-set-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"expect_glob\" value=\"{glob}\">\
         <input type=\"hidden\" name=\"ids\" value=\"{ids}\">\
         <label>Grant for <select name=\"ttl\" id=\"set-ttl\">\
         <option value=\"15m\">15 minutes</option><option value=\"1h\" selected>1 hour</option>\
         <option value=\"8h\">8 hours</option></select></label>\
         <label>Note <input name=\"note\" id=\"set-note\" size=\"40\"></label>\
         <button type=\"submit\" class=\"approve\" id=\"approve-set\">Approve the set ({n})</button>\
         </form></section>",
        n = set.ids.len(),
        s = if set.ids.len() == 1 { "" } else { "s" },
        glob = esc(&set.glob),
        ops = esc(&set.operations.join(", ")),
        csrf = esc(csrf),
        ids = esc(&ids.join(",")),
    )
}

/// `POST /web/requests/{id}/decide-set`: approves the set as reviewed, each request with
/// the set's glob (session scope) and operations.
pub(super) async fn decide_set(
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
    let caller = match session_of(&web, (peer, local)).await {
        Ok(v) => v,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    let field = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let glob = field("expect_glob");
    let mut ids = Vec::new();
    for part in field("ids").split(',').filter(|p| !p.is_empty()) {
        match part.parse::<u64>() {
            Ok(v) => ids.push(v),
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "ids: not a list of numbers"),
        }
    }
    if glob.is_empty() || ids.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the form names no reviewed glob or requests",
        );
    }
    let ttl = match field("ttl").as_str() {
        "" => 0,
        t => match humantime::parse_duration(t) {
            Ok(d) => d.as_secs(),
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("grant lifetime {t:?}: {e}"),
                );
            }
        },
    };
    let r = match get_request(&web, &s.name, id).await {
        Ok(r) => r,
        Err(e) => return status_page(&e),
    };
    let all = match pending(&web, &s.name).await {
        Ok(a) => a,
        Err(e) => return status_page(&e),
    };
    let reviewed = Reviewed {
        glob: Some(&glob),
        ids: &ids,
    };
    let set = match session_set(&r, &all, Some(&reviewed)) {
        Ok(set) => set,
        Err(e) => return refuse(StatusCode::CONFLICT, &e.to_string()),
    };
    let note = field("note");
    for rid in &set.ids {
        let req = pb::DecideRequest {
            id: *rid,
            approve: true,
            ttl_seconds: ttl,
            note: note.clone(),
            scope: pb::GrantScope::Session as i32,
            path_glob: set.glob.clone(),
            operations: set.operations.clone(),
            decider_host: "web".into(),
            ..Default::default()
        };
        let mut req = Web::as_approver_in(&s.name, caller, req);
        req.extensions_mut()
            .insert(crate::approver::identity::WebGroups(s.groups.clone()));
        if let Err(e) = svc(&web).decide(req).await {
            // The ones before stay approved (each is its own ledgered decision); say which.
            let done = set.ids.iter().take_while(|x| *x != rid).count();
            tracing::warn!(request = rid, approved_before = done, error = %e.message(), "web: set approval stopped");
            return status_page(&e);
        }
    }
    Redirect::to(&format!("/web/requests/{id}")).into_response()
}
