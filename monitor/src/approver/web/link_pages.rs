//! The pages of signed one-time action links ([`super::links`]): the request's full
//! context and the forms for the link's approver, who is not signed in by the link.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

use super::html::{Live, esc, page, when};
use super::links::{ActionLink, LINK_PATH, LinkError};
use super::pages::{
    context_html, decide_forms, decide_request, get_request, html, session_of, state_name,
    status_page, svc,
};
use super::{Web, refuse};
use crate::approver::http::conn::{LocalEnd, Peer};
use crate::os::clock::now_ms;

/// A link's claims, refused when the browser is signed in as someone else than the link's
/// approver (a forwarded link is not the signed-in person's to use).
fn verified_link(
    web: &Web,
    headers: &HeaderMap,
    token: &str,
    now: i64,
) -> Result<ActionLink, String> {
    let link = web.links.verify(token, now).map_err(|e| e.to_string())?;
    if let Some(s) = web.session(headers)
        && s.name != link.approver
    {
        return Err(format!(
            "{} (you are signed in as {})",
            LinkError::OtherApprover,
            s.name
        ));
    }
    Ok(link)
}

pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new().route(
        &format!("{LINK_PATH}{{token}}"),
        get(link_page).post(link_decide),
    )
}

/// An action link's page: the request's full context and the forms, for the link's
/// approver (nobody is signed in).
pub(super) async fn link_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let now = now_ms();
    let link = match verified_link(&web, &headers, &token, now) {
        Ok(l) => l,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    match web.links.is_used(web.shared.store.raw_store(), &link) {
        Ok(false) => {}
        Ok(true) => return refuse(StatusCode::FORBIDDEN, &LinkError::Used.to_string()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    let r = match get_request(&web, &link.approver, link.request_id).await {
        Ok(r) => r,
        Err(e) => return status_page(&e),
    };
    let mut body = format!(
        "<p class=\"banner\">This link lets <b>{}</b> decide request {} once, until {}.</p>\
         <h2>Request {}</h2>{}",
        esc(&link.approver),
        link.request_id,
        when(link.expires_unix_ms),
        link.request_id,
        context_html(&r)
    );
    if r.state == pb::RequestState::Pending as i32 {
        let csrf = web.links.mac(&[b"link-csrf", token.as_bytes()]);
        body.push_str(&decide_forms(&format!("{LINK_PATH}{token}"), &csrf, &r));
    }
    html(page(
        &format!("Request {}", link.request_id),
        None,
        None,
        Live::Off,
        &body,
    ))
}

pub(super) async fn link_decide(
    State(web): State<Arc<Web>>,
    peer: Option<Extension<Peer>>,
    local: Option<Extension<LocalEnd>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ok = form
        .get("csrf")
        .is_some_and(|c| web.links.mac_ok(&[b"link-csrf", token.as_bytes()], c));
    if !ok {
        return refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    // Checked before the link is spent: a refused caller leaves it to its approver.
    let session = match session_of(&web, (peer, local)).await {
        Ok(v) => v,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    let now = now_ms();
    let link = match verified_link(&web, &headers, &token, now) {
        Ok(l) => l,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    let store = web.shared.store.raw_store().clone();
    let links_ok = {
        let web = Arc::clone(&web);
        let token = token.clone();
        tokio::task::spawn_blocking(move || web.links.redeem(&store, &token, link.request_id, now))
            .await
    };
    match links_ok {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return refuse(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    let req = match decide_request(link.request_id, &form) {
        Ok(r) => r,
        Err(m) => return refuse(StatusCode::BAD_REQUEST, &m),
    };
    match svc(&web)
        .decide(Web::as_approver_in(&link.approver, session, req))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            html(page(
                "Decided",
                None,
                None,
                Live::Off,
                &format!(
                    "<p class=\"banner\">Request {} is now {}.</p>{}",
                    r.id,
                    state_name(r.state),
                    context_html(&r)
                ),
            ))
        }
        Err(e) => status_page(&e),
    }
}
