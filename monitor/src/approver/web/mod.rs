//! The web approval page, served on the service's HTTP listener (`[http]`, `[web]`):
//! pending requests with their full context, approve (TTL, scope, glob, note) and deny,
//! live updates over server-sent events, grants with revoke, and the ledger with search.
//!
//! - Sign-in with OpenID Connect ([`oidc`]): the approver is `oidc:<username claim>`,
//!   allowed by `[web.oidc] approvers` (names and `group:<name>`).
//! - Signed one-time action links ([`links`]) open one request's page for one approver;
//!   they sign nobody in and still ask for the click.
//! - Every decision goes through the gRPC service's own `Decide` / `RevokeGrant` (called
//!   in-process as [`WebPrincipal`]): the same checks, ledger records and streams.
//! - Sessions live in memory (a restart signs everyone out) behind a cookie that is
//!   `Secure; HttpOnly; SameSite=Strict`; every form carries a CSRF token that the POST
//!   handlers check; the Content-Security-Policy allows no inline script
//!   ([`crate::approver::http::security_headers`]); every host string is escaped
//!   ([`html::esc`]).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::ApproverError;
use super::config::ServiceConfig;
use super::identity::{WebCallerSession, WebPrincipal};
use super::service::Shared;
use crate::os::clock::now_ms;

mod calls;
pub mod config;
pub mod html;
pub mod httpc;
mod link_pages;
pub mod links;
pub mod oidc;
mod pages;
pub mod peer;
mod sets;

#[cfg(test)]
mod tests;

/// Name of the session cookie.
const SESSION_COOKIE: &str = "cg_session";
/// Sessions kept at once; the oldest is dropped beyond.
const MAX_SESSIONS: usize = 10_000;
/// Live event streams one signed-in session may hold open at once (a page each).
pub(crate) const MAX_STREAMS_PER_SESSION: usize = 8;

/// A signed-in approver.
#[derive(Clone, Debug)]
pub struct WebSession {
    /// `oidc:<user>`.
    pub name: String,
    pub groups: Vec<String>,
    pub expires_unix_ms: i64,
    /// The CSRF token of this session's forms.
    pub csrf: String,
}

/// The web page's state.
pub struct Web {
    pub(crate) shared: Arc<Shared>,
    pub(crate) links: links::LinkKey,
    pub(crate) oidc: Option<oidc::Oidc>,
    sessions: Mutex<HashMap<String, WebSession>>,
    session_ttl_ms: i64,
    /// Open event streams per session (keyed by the session's CSRF token, unique to it).
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open event stream of a session, given back when dropped.
pub(crate) struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.key);
            }
        }
    }
}

/// The web page's routes; none without `[http] listen`.
pub fn routes(shared: Arc<Shared>, cfg: &ServiceConfig) -> Result<Router, ApproverError> {
    let Some(base_url) = cfg.http.base_url() else {
        return Ok(Router::new());
    };
    let links = links::LinkKey::load_or_create(&links::key_path(cfg))?;
    let oidc = match &cfg.web.oidc {
        Some(o) => Some(oidc::Oidc::new(o, &base_url)?),
        None => None,
    };
    let web = Arc::new(Web {
        shared,
        links,
        oidc,
        sessions: Mutex::new(HashMap::new()),
        session_ttl_ms: i64::try_from(cfg.web.session_ttl_secs).unwrap_or(i64::MAX / 1000) * 1000,
        streams: Arc::default(),
    });
    Ok(pages::routes()
        .merge(link_pages::routes())
        .merge(oidc::routes())
        .route("/web/static/app.js", get(app_js))
        .route("/web/static/style.css", get(style_css))
        .route("/web/logout", post(logout))
        .with_state(web))
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        html::APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLE_CSS,
    )
        .into_response()
}

/// 32 random bytes, base64url.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 32];
    // SystemRandom reads getrandom(2); it does not fail on Linux once the pool is ready.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    B64.encode(b)
}

/// The value of cookie `name` in `headers`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value: Secure, HttpOnly, Path=/, the given SameSite and lifetime.
pub(crate) fn set_cookie(name: &str, value: &str, same_site: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

impl Web {
    /// The signed-in session of a request, if any (expired ones are dropped).
    /// The session of a form POST: signed in (else 401) and the form's CSRF token its own
    /// (else 403); the refusal as the response to send.
    pub(crate) fn posted_session(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<WebSession, Box<Response>> {
        let Some(s) = self.session(headers) else {
            return Err(Box::new(refuse(StatusCode::UNAUTHORIZED, "not signed in")));
        };
        if !csrf_ok(form, &s.csrf) {
            return Err(Box::new(refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token",
            )));
        }
        Ok(s)
    }

    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<WebSession> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        match s.get(&id) {
            Some(w) if w.expires_unix_ms > now => Some(w.clone()),
            Some(_) => {
                s.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Signs `name` in: a new session; returns its `Set-Cookie`.
    pub(crate) fn sign_in(&self, name: String, groups: Vec<String>) -> HeaderValue {
        let id = random_token();
        let now = now_ms();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, w| w.expires_unix_ms > now);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s
                .iter()
                .min_by_key(|(_, w)| w.expires_unix_ms)
                .map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        tracing::info!(approver = %name, "web sign-in");
        s.insert(
            id.clone(),
            WebSession {
                name,
                groups,
                expires_unix_ms: now.saturating_add(self.session_ttl_ms),
                csrf: random_token(),
            },
        );
        set_cookie(SESSION_COOKIE, &id, "Strict", self.session_ttl_ms / 1000)
    }

    /// A slot for one more event stream of `session`, or `None` when it has
    /// [`MAX_STREAMS_PER_SESSION`] open.
    pub(crate) fn stream_slot(&self, session: &WebSession) -> Option<StreamSlot> {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.entry(session.csrf.clone()).or_insert(0);
        if *n >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: Arc::clone(&self.streams),
            key: session.csrf.clone(),
        })
    }

    /// Ends the session of `headers`.
    fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }

    /// A tonic request carrying the web approver `name`, for the in-process service.
    pub(crate) fn as_approver<T>(name: &str, msg: T) -> tonic::Request<T> {
        Self::as_approver_in(name, None, msg)
    }

    /// [`Web::as_approver`] for a caller whose process on this host is in `session`.
    pub(crate) fn as_approver_in<T>(name: &str, session: Option<u64>, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.extensions_mut().insert(WebPrincipal(name.to_owned()));
        if let Some(s) = session {
            req.extensions_mut().insert(WebCallerSession(s));
        }
        req
    }

    /// The agent session of the process that sent a browser's request, when this service
    /// has the kernel's session map (local mode) and the process runs on this host: a
    /// decision from inside a session is refused like one on the Unix socket. A client on
    /// this host whose process cannot be found is refused outright ([`peer::locate_client`]).
    pub(crate) async fn caller_session(
        &self,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Result<Option<u64>, String> {
        let (Some(peer), Some(local)) = (peer, local) else {
            return Ok(None);
        };
        if self.shared.auth.session_of_pid(0).is_none() {
            return Ok(None);
        }
        let client = tokio::task::spawn_blocking(move || peer::locate_client(peer, local))
            .await
            .map_err(|e| e.to_string())?;
        match client {
            peer::Client::Process(pid) => Ok(self.shared.auth.session_of_pid(pid)),
            peer::Client::OnThisHost => Err(format!(
                "cannot tell which process on this host sent this request (from {peer}); \
                 decisions must be traceable to a process outside any agent session"
            )),
            peer::Client::Elsewhere => Ok(None),
        }
    }
}

/// Whether the form's `csrf` field is `want` (constant time).
pub(crate) fn csrf_ok(form: &HashMap<String, String>, want: &str) -> bool {
    form.get("csrf").is_some_and(|got| {
        got.len() == want.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                got.as_bytes(),
                want.as_bytes(),
            ))
    })
}

/// A refusal page with `status`.
pub(crate) fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::page(
            "Refused",
            None,
            None,
            html::Live::Off,
            &format!(
                "<p class=\"error\">{}</p><p><a href=\"/\">Back</a></p>",
                html::esc(message)
            ),
        ),
    )
        .into_response()
}

async fn logout(
    axum::extract::State(web): axum::extract::State<Arc<Web>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = web.posted_session(&headers, &form) {
        return *refused;
    }
    web.sign_out(&headers);
    let mut res = axum::response::Redirect::to("/").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "Strict", 0),
    );
    res
}
