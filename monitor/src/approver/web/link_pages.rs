//! The pages of signed one-time action links ([`super::links`]). A link never decides by
//! itself: it binds one request, one approver, an expiry and a single use, and saves the
//! navigation. Deciding through it needs a signed-in web session (OpenID Connect) whose
//! identity is the link's approver; without one the page sends the browser to sign in and
//! back. The page shows the request's full context and asks for the click; the decision is
//! the signed-in approver's. The link is spent only when the decision is taken.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

use super::calls::{get_request, session_of, status_page, svc};
use super::html::{Live, esc, page, when};
use super::links::{ActionLink, LINK_PATH, LinkError};
use super::pages::{context_html, decide_forms, decide_request, html, state_name};
use super::{Web, WebSession, csrf_ok, refuse};
use crate::approver::http::conn::{LocalEnd, Peer};
use crate::os::clock::now_ms;

/// Whether the signed-in `session` is the link's `approver`: the same name, or the
/// `oidc:` identity of a bare name (`alice` in a Teams sink's `approvers` is the person
/// who signs in as `oidc:alice`).
pub(crate) fn is_links_approver(session: &str, approver: &str) -> bool {
    !approver.is_empty() && (session == approver || session.strip_prefix("oidc:") == Some(approver))
}

/// Why a browser may not use a link: not signed in (sign in first), or signed in as
/// someone else.
enum NotYours {
    SignIn,
    Refused(StatusCode, String),
}

/// A link's claims and the signed-in session of its approver.
fn verified_link(
    web: &Web,
    headers: &HeaderMap,
    token: &str,
    now: i64,
) -> Result<(ActionLink, WebSession), NotYours> {
    let link = web
        .links
        .verify(token, now)
        .map_err(|e| NotYours::Refused(StatusCode::FORBIDDEN, e.to_string()))?;
    let Some(s) = web.session(headers) else {
        return Err(NotYours::SignIn);
    };
    if !is_links_approver(&s.name, &link.approver) {
        return Err(NotYours::Refused(
            StatusCode::FORBIDDEN,
            format!(
                "{} (you are signed in as {})",
                LinkError::OtherApprover,
                s.name
            ),
        ));
    }
    Ok((link, s))
}

/// The answer to a browser that may not use the link.
fn not_yours(web: &Web, token: &str, why: NotYours) -> Response {
    match why {
        NotYours::Refused(code, m) => refuse(code, &m),
        NotYours::SignIn if web.oidc.is_some() => {
            let next = super::oidc::form_encode(&[("next", &format!("{LINK_PATH}{token}"))]);
            Redirect::to(&format!("/web/login?{next}")).into_response()
        }
        NotYours::SignIn => refuse(
            StatusCode::UNAUTHORIZED,
            "deciding through an action link needs sign-in, which is not configured on this \
             service ([web.oidc] in approver.toml); use `confgate approvals` instead",
        ),
    }
}

pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new().route(
        &format!("{LINK_PATH}{{token}}"),
        get(link_page).post(link_decide),
    )
}

/// Action links are kept in the embedded store; a service on PostgreSQL refuses `[web]`
/// at start, so this is only a guard.
const NO_LINKS: &str = "action links need the embedded store (store = a redb file)";

/// An action link's page: the request's full context and the forms, for the link's
/// approver once signed in.
pub(super) async fn link_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let now = now_ms();
    let (link, s) = match verified_link(&web, &headers, &token, now) {
        Ok(v) => v,
        Err(why) => return not_yours(&web, &token, why),
    };
    let Some(store) = web.shared.store.raw_store() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, NO_LINKS);
    };
    match web.links.is_used(store, &link) {
        Ok(false) => {}
        Ok(true) => return refuse(StatusCode::FORBIDDEN, &LinkError::Used.to_string()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    let r = match get_request(&web, &s.name, link.request_id).await {
        Ok(r) => r,
        Err(e) => return status_page(&e),
    };
    let mut body = format!(
        "<p class=\"banner\">This link lets <b>{}</b> decide request {} once, until {}.</p>\
         <h2>Request {}</h2>{}",
        esc(&s.name),
        link.request_id,
        when(link.expires_unix_ms),
        link.request_id,
        context_html(&r)
    );
    if r.state == pb::RequestState::Pending as i32 {
        body.push_str(&decide_forms(&format!("{LINK_PATH}{token}"), &s.csrf, &r));
    }
    html(page(
        &format!("Request {}", link.request_id),
        Some(&s.name),
        Some(&s.csrf),
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
    let now = now_ms();
    let (link, s) = match verified_link(&web, &headers, &token, now) {
        Ok(v) => v,
        Err(NotYours::SignIn) => return refuse(StatusCode::UNAUTHORIZED, "not signed in"),
        Err(NotYours::Refused(code, m)) => return refuse(code, &m),
    };
    if !csrf_ok(&form, &s.csrf) {
        return refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    // Everything that can refuse the form is checked before the link is spent.
    let req = match decide_request(link.request_id, &form) {
        Ok(r) => r,
        Err(m) => return refuse(StatusCode::BAD_REQUEST, &m),
    };
    let session = match session_of(&web, (peer, local)).await {
        Ok(v) => v,
        Err(m) => return refuse(StatusCode::FORBIDDEN, &m),
    };
    let Some(store) = web.shared.store.raw_store().cloned() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, NO_LINKS);
    };
    let spent = {
        let web = Arc::clone(&web);
        let token = token.clone();
        let store = store.clone();
        tokio::task::spawn_blocking(move || web.links.redeem(&store, &token, link.request_id, now))
            .await
    };
    match spent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return refuse(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    match svc(&web)
        .decide(Web::as_approver_in(&s.name, session, req))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            html(page(
                "Decided",
                Some(&s.name),
                Some(&s.csrf),
                Live::Off,
                &format!(
                    "<p class=\"banner\">Request {} is now {}.</p>{}",
                    r.id,
                    state_name(r.state),
                    context_html(&r)
                ),
            ))
        }
        Err(e) => {
            // No decision was taken: the link stays usable (until it expires).
            let web2 = Arc::clone(&web);
            let id = link.request_id;
            let released =
                tokio::task::spawn_blocking(move || web2.links.release(&store, &link)).await;
            if !matches!(released, Ok(Ok(()))) {
                tracing::warn!(request = id, "an action link could not be released");
            }
            status_page(&e)
        }
    }
}
