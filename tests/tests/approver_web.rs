//! End-to-end: the web approval page in a real browser. A daemon in local mode serves the
//! page on loopback (`[http]`), with sign-in against a real OpenID provider started here
//! (npm `oidc-provider`, tests/oidc); headless Chromium, driven over WebDriver
//! (chromedriver), signs in, sees a held write of a confined session appear live, approves
//! it with a 15-minute grant, and the write proceeds. Along the way: the cookie's flags, a
//! form without CSRF token and a request without session refused, and a hostile agent
//! name, reason and path rendered inert. A screenshot of the request page is kept under
//! target/e2e-artifacts/ (and copied to docs/ for the README with
//! `CONFGATE_UPDATE_SCREENSHOT=1`).
use std::time::Duration;

use e2e::browser::{
    Browser, free_port, http, local_web_approval, missing_prerequisites, start_oidc,
};
use e2e::gate::{Gate, parse_json_list, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"90s\"\nfail = \"deny\"";

/// A daemon whose local approval service serves the page on `http://127.0.0.1:web_port`
/// with sign-in at the provider on `oidc_port` (approvers: group `sre`).
fn gate_with_web(web_port: u16, oidc_port: u16) -> Gate {
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |root| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).unwrap();
            format!(
                "{}\n[gate]\n{}",
                local_web_approval(root, web_port, oidc_port),
                rule(&watched.display().to_string(), "ask-hold", HOLD)
            )
        })),
        ..DaemonOptions::default()
    });
    Gate { d }
}

#[test]
fn a_person_signs_in_sees_a_held_write_live_and_approves_it_in_a_browser() {
    const NAME: &str = "a_person_signs_in_sees_a_held_write_live_and_approves_it_in_a_browser";
    if !require_root(NAME) {
        return;
    }
    if let Some(why) = missing_prerequisites() {
        skip(NAME, &why);
        return;
    }
    let (web_port, oidc_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{web_port}");
    let web_addr = format!("127.0.0.1:{web_port}");
    let g = gate_with_web(web_port, oidc_port);
    let logs = g.d.dir.path().to_owned();
    let _idp = start_oidc(
        oidc_port,
        &format!("{base}/web/callback"),
        &logs.join("oidc.log"),
    );
    let health = http("GET", &web_addr, "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", g.d.log());

    // Without a session: the sign-in page, and forms refused.
    let r = http("GET", &web_addr, "/", &[], b"");
    assert_eq!(r.status, 401);
    let r = http(
        "POST",
        &web_addr,
        "/web/requests/1/decide",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"decision=approve",
    );
    assert_eq!(r.status, 401, "{}", r.text());

    let b = Browser::start(&logs.join("chromedriver.log"));
    b.goto(&format!("{base}/"));
    b.click("#sign-in");
    b.type_into("#username", "alice");
    b.click("#idp-submit");
    // Back on the page, signed in, nothing pending yet.
    b.wait_for("#none", Duration::from_secs(30));
    assert!(b.source().contains("oidc:alice"));
    let session = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "cg_session")
        .expect("session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");

    // A confined session of a hostile-named agent holds a write; the page shows it live
    // (the browser is not told to reload: the event stream does it).
    let agent = "<script>alert(1)</script>";
    let reason = "<img src=x onerror=alert(2)> & \"quoted\"";
    let child = g.spawn_with_reason(agent, reason, "printf 'new\\n' > gated/app.conf");
    b.wait_for("tr.request", Duration::from_secs(30));
    let id = g.wait_request(&g.gated("app.conf"))["id"].as_u64().unwrap();
    let list = b.source();
    assert!(
        list.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{list}"
    );
    assert!(b.find_all("main script, main img").is_empty(), "{list}");

    // The request page: the full context, and the click.
    b.click(&format!("#request-{id} a"));
    b.wait_for("#approve-form", Duration::from_secs(15));
    let page = b.source();
    for want in ["gated/app.conf", "ask-hold", "&lt;img src=x", "printf"] {
        assert!(page.contains(want), "{want} not on the page:\n{page}");
    }
    b.click("#ttl option[value='15m']");
    b.type_into("#approve-note", "checked in the browser");
    let png = b.screenshot();
    let artifacts = target_dir().join("e2e-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("approval-page.png"), &png).unwrap();
    // The README's picture: refreshed on request (it is committed; runs leave it alone).
    let docs = workspace().join("docs/approval-page.png");
    if std::env::var_os("CONFGATE_UPDATE_SCREENSHOT").is_some() || !docs.exists() {
        std::fs::write(&docs, &png).unwrap();
    }

    // With the browser's own session cookie but no CSRF token: refused.
    let cookie = b.cookie_header();
    let r = http(
        "POST",
        &web_addr,
        &format!("/web/requests/{id}/decide"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        b"decision=approve&ttl=15m",
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // The same form posted from inside an agent session (the session's own request even):
    // refused, the process behind the connection is in a session.
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf field")
        .to_owned();
    let inside = g.d.in_session(
        "demo",
        "e2e",
        &format!(
            "curl -sS -w ' %{{http_code}}' -H 'Cookie: {cookie}' \
             --data 'decision=approve&csrf={csrf}' {base}/web/requests/{id}/decide"
        ),
    );
    let said = output_text(&inside);
    assert!(
        said.contains("403") && said.contains("inside agent session"),
        "{said}"
    );
    assert_eq!(g.pending().len(), 1, "still pending");

    b.click("#approve");
    let out = wait_child(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        std::fs::read_to_string(g.gated("app.conf")).unwrap(),
        "new\n"
    );
    let all = g.cli(&["approvals", "list", "--all", "--json"]);
    ok(&all);
    let decided = parse_json_list(&all.stdout)
        .into_iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .expect("the request");
    let text = decided.to_string();
    assert!(text.contains("oidc:alice"), "{text}");
    assert!(text.contains("checked in the browser"), "{text}");
    // The page now says who approved it.
    b.wait_for("dl.ctx", Duration::from_secs(15));
    poll(
        "the page shows the approval",
        Duration::from_secs(15),
        || b.source().contains("approved by oidc:alice").then_some(()),
    );

    // A hostile file name (markup, newline, ANSI escape) renders inert in the list.
    b.goto(&format!("{base}/"));
    let mut hostile = g.spawn_in_session(
        "demo",
        "printf x > \"$(printf 'gated/<i>x\\n\\033[31m.conf')\"",
    );
    b.wait_for("tr.request", Duration::from_secs(30));
    let list = b.source();
    assert!(list.contains("&lt;i&gt;x"), "{list}");
    assert!(!list.contains('\u{1b}'), "{list}");
    assert!(b.find_all("main i").is_empty(), "{list}");
    let _ = hostile.kill();
    let _ = hostile.wait();
    drop(b);

    // An action link (as a Teams card carries one per approver) decides nothing by
    // itself: without a session it only redirects to sign-in; a fresh browser signs in as
    // the link's approver, comes back to the link's page and decides there.
    let child = g.spawn_in_session("demo", "printf 'linked\\n' > gated/linked.conf");
    let id = g.wait_request(&g.gated("linked.conf"))["id"]
        .as_u64()
        .unwrap();
    let key = monitor::approver::web::links::LinkKey::load_or_create(
        &logs.join("approver-state/web-link.key"),
    )
    .unwrap();
    let now = monitor::os::clock::now_ms();
    let url = key.url(&base, id, "alice", now + 600_000, now).unwrap();
    let path = url.strip_prefix(&base).unwrap();
    let r = http("GET", &web_addr, path, &[], b"");
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with("/web/login?next=%2Fweb%2Flink%2F")),
        "{:?}",
        r.header("location")
    );
    assert!(!r.text().contains("linked.conf"));
    let r = http(
        "POST",
        &web_addr,
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"decision=approve",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let b = Browser::start(&logs.join("chromedriver-link.log"));
    b.goto(&url);
    b.type_into("#username", "alice");
    b.click("#idp-submit");
    b.wait_for("#approve-form", Duration::from_secs(30));
    assert!(b.url().contains("/web/link/"), "{}", b.url());
    assert!(b.source().contains("linked.conf"), "{}", b.source());
    b.click("#approve");
    let out = wait_child(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", output_text(&out));
    let all = g.cli(&["approvals", "list", "--all", "--json"]);
    let decided = parse_json_list(&all.stdout)
        .into_iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .expect("the linked request");
    assert!(decided.to_string().contains("oidc:alice"), "{decided}");
    drop(b);
}
