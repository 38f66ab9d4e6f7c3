//! The web page's handlers against the real service in process (no browser): sessions,
//! CSRF, action links, escaping, and decisions through the service's own path.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::links::{LINK_PATH, LinkKey};
use super::{Web, pages};
use crate::approver::testing;
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;

struct Harness {
    _dir: tempfile::TempDir,
    server: crate::approver::Server,
    client: testing::Client,
    web: Arc<Web>,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = testing::start_in(dir.path()).await;
    let web = Arc::new(Web {
        shared: Arc::clone(&server.shared),
        links: LinkKey::from_bytes(&[9u8; 32]),
        oidc: None,
        sessions: Mutex::new(HashMap::new()),
        session_ttl_ms: 3_600_000,
        streams: Arc::default(),
    });
    Harness {
        _dir: dir,
        server,
        client,
        web,
    }
}

impl Harness {
    fn router(&self) -> axum::Router {
        pages::routes()
            .merge(super::link_pages::routes())
            .with_state(Arc::clone(&self.web))
            .layer(axum::middleware::map_response(
                crate::approver::http::security_headers,
            ))
    }

    /// Signs `name` in; (cookie header value, csrf).
    fn sign_in(&self, name: &str) -> (String, String) {
        let set = self.web.sign_in(name.into(), vec![]);
        let cookie = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let csrf = self
            .web
            .sessions
            .lock()
            .unwrap()
            .values()
            .find(|s| s.name == name)
            .unwrap()
            .csrf
            .clone();
        (cookie, csrf)
    }

    async fn submit(&mut self, r: pb::SubmitRequest) -> u64 {
        self.client.submit(r).await.unwrap().into_inner().id
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, HashMap<String, String>, String) {
        let res = self.router().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
        let mut b = Request::get(path);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        let (s, _, body) = self.call(b.body(Body::empty()).unwrap()).await;
        (s, body)
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> (StatusCode, String) {
        let mut b =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        let (s, _, body) = self
            .call(b.body(Body::from(form.to_owned())).unwrap())
            .await;
        (s, body)
    }

    async fn state(&mut self, id: u64) -> i32 {
        self.client
            .get_request(pb::GetRequestRequest { id })
            .await
            .unwrap()
            .into_inner()
            .state
    }
}

#[tokio::test]
async fn without_a_session_pages_ask_to_sign_in_and_forms_are_refused() {
    let mut h = harness().await;
    let id = h.submit(testing::request(1, 7).build()).await;
    let (s, body) = h.get("/", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(!body.contains("/etc/app.conf"), "{body}");
    let (s, _) = h.get(&format!("/web/requests/{id}"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h.get("/web/events", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .post(
            &format!("/web/requests/{id}/decide"),
            None,
            "decision=approve&csrf=x",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A forged cookie is no session.
    let (s, _) = h.get("/", Some("cg_session=forged")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h.state(id).await, pb::RequestState::Pending as i32);
    h.server.stop().await.unwrap();
}

#[tokio::test]
async fn decisions_need_the_session_csrf_token_and_go_through_the_service() {
    let mut h = harness().await;
    let id = h.submit(testing::request(1, 7).build()).await;
    let (cookie, csrf) = h.sign_in("oidc:alice");
    h.submit(testing::request(2, 7).path("/etc/app2.conf").build())
        .await;
    h.submit(testing::request(3, 9).build()).await;
    let (s, body) = h.get("/", Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains(&format!("/web/requests/{id}")), "{body}");
    // Grouped by session: session 7 with two requests, session 9 with one.
    assert!(
        body.contains("Session 7 of codex on") && body.contains(": 2 pending"),
        "{body}"
    );
    assert!(
        body.contains("Session 9 of codex on") && body.contains(": 1 pending"),
        "{body}"
    );
    let (s, body) = h.get(&format!("/web/requests/{id}"), Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains(&format!("value=\"{csrf}\"")), "{body}");
    let path = format!("/web/requests/{id}/decide");
    for form in [
        "decision=approve&ttl=15m".to_owned(),
        "decision=approve&ttl=15m&csrf=".to_owned(),
        format!("decision=approve&ttl=15m&csrf={}x", csrf),
    ] {
        let (s, body) = h.post(&path, Some(&cookie), &form).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form}: {body}");
        assert!(body.contains("CSRF"), "{body}");
    }
    // Another session's token is not this one's.
    let (_, other_csrf) = h.sign_in("oidc:bob");
    let (s, _) = h
        .post(
            &path,
            Some(&cookie),
            &format!("decision=approve&csrf={other_csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h.state(id).await, pb::RequestState::Pending as i32);
    let (s, _) = h
        .post(
            &path,
            Some(&cookie),
            &format!("decision=approve&ttl=15m&scope=session&note=ok&csrf={csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let r = h
        .client
        .get_request(pb::GetRequestRequest { id })
        .await
        .unwrap()
        .into_inner();
    let d = r.decision.unwrap();
    assert_eq!(r.state, pb::RequestState::Approved as i32);
    assert_eq!(d.decided_by, "oidc:alice");
    let g = d.grant.unwrap();
    assert_eq!(g.expires_unix_ms - g.created_unix_ms, 15 * 60 * 1000);
    // Deciding again is refused by the service (already approved).
    let (s, body) = h
        .post(&path, Some(&cookie), &format!("decision=deny&csrf={csrf}"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // The grant is listed and revoked with the token too.
    let (_, body) = h.get("/web/grants", Some(&cookie)).await;
    assert!(
        body.contains(&format!("/web/grants/{}/revoke", g.id)),
        "{body}"
    );
    let rpath = format!("/web/grants/{}/revoke", g.id);
    let (s, _) = h.post(&rpath, Some(&cookie), "note=x").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.post(&rpath, Some(&cookie), &format!("csrf={csrf}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    // The ledger view finds the decision by path and agent.
    let (_, body) = h
        .get("/web/ledger?path=/etc/app.conf&agent=codex", Some(&cookie))
        .await;
    assert!(body.contains("request_approved"), "{body}");
    let (_, body) = h.get("/web/ledger?agent=nobody", Some(&cookie)).await;
    assert!(!body.contains("request_approved"), "{body}");
    h.server.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_request_strings_render_inert() {
    let mut h = harness().await;
    // The service refuses raw control characters in a request (hosts escape them); what
    // gets through is markup and invisible formatting, which the page must show inert.
    let mut r = testing::request(1, 7)
        .path("/etc/<img src=x onerror=alert(1)>.conf")
        .build();
    let c = testing::context(&mut r);
    c.agent = "<script>alert('a')</script>".into();
    c.reason = "fine\u{202e}toor :yb devorppA\u{200b}\\x1b[31m".into();
    let id = h.submit(r).await;
    let (cookie, _) = h.sign_in("oidc:alice");
    for path in ["/".to_owned(), format!("/web/requests/{id}")] {
        let res = h
            .call(
                Request::get(&path)
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let (s, headers, body) = res;
        assert_eq!(s, StatusCode::OK);
        assert!(!body.contains("<script>alert"), "{body}");
        assert!(!body.contains("<img"), "{body}");
        assert!(!body.contains('\x1b') && !body.contains('\x07') && !body.contains('\u{202e}'));
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(body.contains("\\u{202e}"), "{body}");
        let csp = &headers["content-security-policy"];
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        // The only script is the served file.
        assert_eq!(body.matches("<script").count(), 1, "{body}");
    }
    h.server.stop().await.unwrap();
}

#[tokio::test]
async fn action_links_decide_only_for_their_signed_in_approver_once() {
    let mut h = harness().await;
    let id = h.submit(testing::request(1, 7).build()).await;
    let other = h.submit(testing::request(2, 7).build()).await;
    let now = now_ms();
    // A Teams sink names bare approvers: `carol` is the person signed in as oidc:carol.
    let token = h.web.links.sign(id, "carol", now + 60_000, now).unwrap();
    let path = format!("{LINK_PATH}{token}");
    // Nobody signed in: no context, no form, and no decision (sign-in is not configured
    // in this harness: refused; with OIDC the page redirects to sign in, see below).
    let (s, body) = h.get(&path, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.contains("/etc/app.conf"), "{body}");
    for form in ["decision=deny&note=no", "decision=approve&csrf=x"] {
        let (s, _) = h.post(&path, None, form).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(h.state(id).await, pb::RequestState::Pending as i32);
    // With sign-in configured, the page sends the browser to sign in and back.
    let with_oidc = Arc::new(Web {
        shared: Arc::clone(&h.web.shared),
        links: LinkKey::from_bytes(&[9u8; 32]),
        oidc: Some(
            super::oidc::Oidc::new(
                &super::config::OidcSection {
                    issuer: "https://idp.test".into(),
                    client_id: "confgate".into(),
                    ..Default::default()
                },
                "https://approver.test",
            )
            .unwrap(),
        ),
        sessions: Mutex::new(HashMap::new()),
        session_ttl_ms: 3_600_000,
        streams: Arc::default(),
    });
    let res = super::link_pages::link_page(
        axum::extract::State(with_oidc),
        axum::http::HeaderMap::new(),
        axum::extract::Path(token.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = res.headers()[header::LOCATION].to_str().unwrap();
    assert_eq!(
        to,
        format!(
            "/web/login?{}",
            super::oidc::form_encode(&[("next", &path)])
        )
    );
    // Signed in as someone else: refused, page and form.
    let (dave, dave_csrf) = h.sign_in("oidc:dave");
    let (s, body) = h.get(&path, Some(&dave)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("another approver"), "{body}");
    let (s, _) = h
        .post(
            &path,
            Some(&dave),
            &format!("decision=approve&csrf={dave_csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h.state(id).await, pb::RequestState::Pending as i32);
    // Signed in as the link's approver: the context and the click.
    let (carol, csrf) = h.sign_in("oidc:carol");
    let (s, body) = h.get(&path, Some(&carol)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.contains("/etc/app.conf") && body.contains("oidc:carol"),
        "{body}"
    );
    assert!(body.contains(&format!("value=\"{csrf}\"")), "{body}");
    // Without the session's CSRF token, or with a malformed form: refused, not spent.
    let (s, _) = h.post(&path, Some(&carol), "decision=approve").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(&path, Some(&carol), &format!("decision=maybe&csrf={csrf}"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .post(
            &path,
            Some(&carol),
            &format!("decision=approve&ttl=soon&csrf={csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = h.get(&path, Some(&carol)).await;
    assert_eq!(s, StatusCode::OK, "still usable: {body}");
    let (s, body) = h
        .post(
            &path,
            Some(&carol),
            &format!("decision=deny&note=no&csrf={csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let r = h
        .client
        .get_request(pb::GetRequestRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::RequestState::Denied as i32);
    assert_eq!(r.decision.unwrap().decided_by, "oidc:carol");
    // Used: the page and the form refuse it now.
    let (s, body) = h.get(&path, Some(&carol)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("already used"), "{body}");
    let (s, _) = h
        .post(&path, Some(&carol), &format!("decision=deny&csrf={csrf}"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A decision the service refuses does not spend the link: `other` decided elsewhere
    // first, then the link's click is refused and the link stays unused.
    let token2 = h
        .web
        .links
        .sign(other, "oidc:carol", now + 60_000, now)
        .unwrap();
    let path2 = format!("{LINK_PATH}{token2}");
    let (bob, bob_csrf) = h.sign_in("oidc:bob");
    let (s, _) = h
        .post(
            &format!("/web/requests/{other}/decide"),
            Some(&bob),
            &format!("decision=approve&csrf={bob_csrf}"),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _) = h
        .post(&path2, Some(&carol), &format!("decision=deny&csrf={csrf}"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let l = h.web.links.verify(&token2, now_ms()).unwrap();
    assert!(
        !h.web
            .links
            .is_used(h.web.shared.store.raw_store().unwrap(), &l)
            .unwrap()
    );
    // Expired and foreign links.
    let old = h
        .web
        .links
        .sign(other, "oidc:carol", now - 1, now - 10)
        .unwrap();
    let (s, body) = h.get(&format!("{LINK_PATH}{old}"), Some(&carol)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("expired"), "{body}");
    let foreign = LinkKey::from_bytes(&[1u8; 32])
        .sign(other, "oidc:carol", now + 60_000, now)
        .unwrap();
    let (s, _) = h.get(&format!("{LINK_PATH}{foreign}"), Some(&carol)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    h.server.stop().await.unwrap();
}

#[test]
fn a_links_approver_is_the_signed_in_name_or_its_oidc_identity() {
    use super::link_pages::is_links_approver;
    assert!(is_links_approver("oidc:alice", "alice"));
    assert!(is_links_approver("oidc:alice", "oidc:alice"));
    assert!(!is_links_approver("oidc:alice", "bob"));
    assert!(!is_links_approver("oidc:alice", "oidc:alice2"));
    assert!(!is_links_approver("alice", "oidc:alice"));
    assert!(!is_links_approver("oidc:", ""));
}

#[test]
fn sign_in_returns_only_to_pages_of_this_site() {
    use super::oidc::local_next;
    let ok = "/web/link/eyJy.abc_-";
    assert_eq!(local_next(ok).as_deref(), Some(ok));
    for bad in [
        "https://evil.example/",
        "//evil.example/web/",
        "/web//evil",
        "/\\evil",
        "/other",
        "/web/x\"><script>",
        "/web/x;url=https://evil",
        "/web/x\ny",
    ] {
        assert_eq!(local_next(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn a_session_holds_a_bounded_number_of_event_streams() {
    let h = harness().await;
    let (cookie, _) = h.sign_in("oidc:alice");
    let open = || async {
        h.router()
            .oneshot(
                Request::get("/web/events")
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    let mut streams = Vec::new();
    for _ in 0..super::MAX_STREAMS_PER_SESSION {
        let r = open().await;
        assert_eq!(r.status(), StatusCode::OK);
        streams.push(r);
    }
    assert_eq!(open().await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another session has its own.
    let (bob, _) = h.sign_in("oidc:bob");
    let r = h
        .router()
        .oneshot(
            Request::get("/web/events")
                .header(header::COOKIE, &bob)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A closed stream gives its slot back.
    streams.pop();
    assert_eq!(open().await.status(), StatusCode::OK);
    drop(streams);
    h.server.stop().await.unwrap();
}

#[test]
fn the_ledger_search_keeps_only_the_newest_matches() {
    let mut n = pages::Newest::new(3);
    for i in 0..10_000 {
        n.push(i);
        assert!(n.kept.len() <= 3);
    }
    assert_eq!(n.seen, 10_000);
    assert_eq!(
        n.kept.iter().copied().collect::<Vec<_>>(),
        [9997, 9998, 9999]
    );
    let mut none = pages::Newest::new(0);
    none.push(1);
    assert!(none.kept.is_empty() && none.seen == 1);
}

#[test]
fn decision_forms_map_to_decide_requests() {
    let f = |s: &str| -> HashMap<String, String> {
        s.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let r = pages::decide_request(
        3,
        &f("decision=approve&ttl=1h&scope=agent&glob=/etc/nginx/**"),
    )
    .unwrap();
    assert!(r.approve);
    assert_eq!(r.ttl_seconds, 3600);
    assert_eq!(r.scope, pb::GrantScope::Agent as i32);
    assert_eq!(r.path_glob, "/etc/nginx/**");
    let r = pages::decide_request(3, &f("decision=deny&note=no")).unwrap();
    assert!(!r.approve && r.ttl_seconds == 0 && r.note == "no");
    assert!(pages::decide_request(3, &f("decision=maybe")).is_err());
    assert!(pages::decide_request(3, &f("decision=approve&ttl=soon")).is_err());
    assert!(pages::decide_request(3, &f("decision=approve&scope=world")).is_err());
}

#[tokio::test]
async fn a_sessions_set_is_approved_in_one_form_only_as_reviewed() {
    let mut h = harness().await;
    let a = h
        .submit(testing::request(1, 7).path("/etc/nginx/nginx.conf").build())
        .await;
    let b = h
        .submit(testing::request(2, 7).path("/etc/nginx/mime.types").build())
        .await;
    let other = h
        .submit(testing::request(3, 9).path("/etc/nginx/x.conf").build())
        .await;
    let (cookie, csrf) = h.sign_in("oidc:alice");
    let (s, body) = h.get(&format!("/web/requests/{a}"), Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("id=\"approve-set\""), "{body}");
    assert!(
        body.contains("<code id=\"set-glob\">/etc/nginx/**</code>"),
        "{body}"
    );
    assert!(
        body.contains(&format!("name=\"ids\" value=\"{a},{b}\"")),
        "{body}"
    );
    let path = format!("/web/requests/{a}/decide-set");
    let form = |glob: &str, ids: &str, csrf: &str| {
        format!(
            "expect_glob={}&ids={ids}&ttl=15m&csrf={csrf}",
            glob.replace('/', "%2F")
        )
    };
    let (s, _) = h
        .post(&path, None, &form("/etc/nginx/**", "1", &csrf))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .post(
            &path,
            Some(&cookie),
            &form("/etc/nginx/**", &a.to_string(), "x"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Not what the set is now: refused, nothing decided.
    let (s, body) = h
        .post(
            &path,
            Some(&cookie),
            &form("/etc/nginx/conf.d/**", &a.to_string(), &csrf),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, _) = h
        .post(
            &path,
            Some(&cookie),
            &form("/etc/nginx/**", &other.to_string(), &csrf),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "another session's request is not in the set"
    );
    assert_eq!(h.state(a).await, pb::RequestState::Pending as i32);
    let (s, body) = h
        .post(
            &path,
            Some(&cookie),
            &form("/etc/nginx/**", &format!("{a},{b}"), &csrf),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    for id in [a, b] {
        let r = h
            .client
            .get_request(pb::GetRequestRequest { id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state, pb::RequestState::Approved as i32);
        let d = r.decision.unwrap();
        assert_eq!(d.decided_by, "oidc:alice");
    }
    assert_eq!(h.state(other).await, pb::RequestState::Pending as i32);
    let grants = h
        .client
        .list_grants(pb::ListGrantsRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(
        grants.iter().all(|g| g.path_glob == "/etc/nginx/**"),
        "{grants:?}"
    );
    h.server.stop().await.unwrap();
}
