//! The approvals and grants commands against the real approval service (in-process, on a
//! temporary Unix socket, with its real store and ledger) and, for the self-approval
//! check, the daemon's real RPC layer.
use std::sync::Arc;
use std::time::Duration;

use confgate_proto::v1 as pb;

use super::approvals::{self, ScopeArg};
use super::connect::attest;
use super::grants;
use crate::api::testing::{FakeDaemon, TestServer};
use crate::approver::testing;
use crate::os::clock::now_ms;

/// A request due in five minutes, filed without a creation time.
fn submit(hid: u64, session: u64) -> pb::SubmitRequest {
    testing::request(hid, session)
        .created(0)
        .deadline(now_ms() + 300_000)
        .build()
}

fn text(buf: &[u8]) -> String {
    String::from_utf8(buf.to_vec()).unwrap()
}

#[tokio::test]
async fn list_show_watch_approve_deny_and_revoke_against_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = testing::start_in(dir.path()).await;
    // Root on the socket files requests as the local host (the daemon's role).
    let r1 = c.submit(submit(1, 7)).await.unwrap().into_inner();
    let r2 = c.submit(submit(2, 8)).await.unwrap().into_inner();

    let mut out = Vec::new();
    approvals::list(
        &mut c,
        approvals::Page::default(),
        false,
        now_ms(),
        &mut out,
    )
    .await
    .unwrap();
    let s = text(&out);
    assert_eq!(s.lines().count(), 3, "{s}");
    assert!(s.contains("/etc/app.conf") && s.contains("pending"), "{s}");
    // A page smaller than what is pending says how many are left out (issue 13).
    let mut out = Vec::new();
    let one = approvals::Page {
        all: false,
        limit: 1,
    };
    approvals::list(&mut c, one, false, now_ms(), &mut out)
        .await
        .unwrap();
    let s = text(&out);
    assert_eq!(s.lines().count(), 3, "{s}");
    let newest = s.lines().nth(1).unwrap_or_default();
    assert!(newest.starts_with(&format!("{} ", r2.id)), "{s}");
    assert!(
        s.ends_with("1 older request not shown (--limit N shows up to 1000)\n"),
        "{s}"
    );

    let mut out = Vec::new();
    approvals::show(&mut c, r1.id, false, now_ms(), &mut out)
        .await
        .unwrap();
    let s = text(&out);
    assert!(s.contains(&format!("request {}  PENDING", r1.id)), "{s}");
    assert!(
        s.contains("command      sh -c 'echo x > /etc/app.conf'"),
        "{s}"
    );
    assert!(s.contains("reason       update the port"), "{s}");

    // watch: the two pending requests come first, as JSON lines.
    let mut out = Vec::new();
    let ended = tokio::time::timeout(
        Duration::from_millis(500),
        approvals::watch(&mut c, true, &mut out),
    )
    .await;
    assert!(ended.is_err(), "watch keeps running");
    let ids: Vec<u64> = text(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&r1.id) && ids.contains(&r2.id));

    // The daemon's real RPC layer attests that this process is in no session; the service
    // knows the fake host's key once it presented it as a host ("fake-host": the service
    // names Unix-socket hosts after this machine, so the fake's key is registered by hand).
    let fake = FakeDaemon::new(false);
    let daemon =
        TestServer::start(Arc::clone(&fake) as Arc<dyn crate::api::server::DaemonApi>).await;
    let me = attest(&daemon.socket, r1.id, true).await.unwrap();
    assert_eq!(me.host, "fake-host");
    server.register_host_key("fake-host", &fake.attestation_key());

    let req = approvals::decide_request(
        r1.id,
        true,
        Some(Duration::from_secs(1800)),
        Some("looks right"),
        Some(ScopeArg::Session),
        None,
        Some(&me),
    )
    .unwrap();
    let mut out = Vec::new();
    approvals::decide(&mut c, req, false, now_ms(), &mut out)
        .await
        .unwrap();
    let s = text(&out);
    assert!(
        s.starts_with(&format!(
            "request {} (/etc/app.conf): approved\ngrant ",
            r1.id
        )),
        "{s}"
    );
    assert!(
        s.contains("session 7 (codex)") && s.contains("(in 30m)"),
        "{s}"
    );

    // Deciding again: a clear error from the service.
    let me = attest(&daemon.socket, r1.id, false).await.unwrap();
    let again = approvals::decide_request(r1.id, false, None, None, None, None, Some(&me)).unwrap();
    let e = approvals::decide(&mut c, again, false, now_ms(), &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("request {}: not possible now", r1.id)),
        "{e}"
    );

    // An attestation for another request, or for the other decision, or replayed: refused.
    let other = attest(&daemon.socket, r1.id, false).await.unwrap();
    let req =
        approvals::decide_request(r2.id, false, None, None, None, None, Some(&other)).unwrap();
    let e = approvals::decide(&mut c, req, false, now_ms(), &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused by the approval service"), "{e}");
    assert!(e.contains("not for denying request"), "{e}");
    let yes = attest(&daemon.socket, r2.id, true).await.unwrap();
    let req = approvals::decide_request(r2.id, false, None, None, None, None, Some(&yes)).unwrap();
    let e = approvals::decide(&mut c, req, false, now_ms(), &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is for approving request"), "{e}");

    let me = attest(&daemon.socket, r2.id, false).await.unwrap();
    let req =
        approvals::decide_request(r2.id, false, None, Some("no"), None, None, Some(&me)).unwrap();
    let mut out = Vec::new();
    approvals::decide(&mut c, req, true, now_ms(), &mut out)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["state"], "denied");
    assert_eq!(v["decision"]["note"], "no");

    // --all counts decided requests too.
    let mut out = Vec::new();
    let all = approvals::Page {
        all: true,
        limit: 1,
    };
    approvals::list(&mut c, all, false, now_ms(), &mut out)
        .await
        .unwrap();
    assert!(text(&out).ends_with("1 older request not shown (--limit N shows up to 1000)\n"));
    let mut out = Vec::new();
    approvals::list(
        &mut c,
        approvals::Page {
            all: true,
            limit: 0,
        },
        false,
        now_ms(),
        &mut out,
    )
    .await
    .unwrap();
    assert!(!text(&out).contains("not shown"), "{}", text(&out));

    // Grants: list, revoke, list --all.
    let mut out = Vec::new();
    grants::list(&mut c, false, true, now_ms(), &mut out)
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let gid = list[0]["id"].as_u64().unwrap();
    assert_eq!(list[0]["scope"], "session");
    let mut out = Vec::new();
    grants::revoke(&mut c, gid, "done", false, now_ms(), &mut out)
        .await
        .unwrap();
    let s = text(&out);
    assert!(
        s.starts_with(&format!("revoked grant {gid}: session 7")),
        "{s}"
    );
    assert!(s.contains("revoked by unix:root"), "{s}");
    let mut out = Vec::new();
    grants::list(&mut c, false, false, now_ms(), &mut out)
        .await
        .unwrap();
    assert_eq!(text(&out), "no live grants\n");
    let mut out = Vec::new();
    grants::list(&mut c, true, false, now_ms(), &mut out)
        .await
        .unwrap();
    assert!(text(&out).contains("revoked "), "{}", text(&out));

    daemon.stop().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_shell_inside_an_agent_session_is_refused_locally() {
    let fake = FakeDaemon::new(false);
    let daemon =
        TestServer::start(Arc::clone(&fake) as Arc<dyn crate::api::server::DaemonApi>).await;
    // Put this test process into a session through the real RPC layer.
    let mut d = crate::api::client::connect(&daemon.socket).await.unwrap();
    d.register_session(pb::RegisterSessionRequest {
        agent: "codex".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = attest(&daemon.socket, 1, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("refusing to decide:") && e.contains("inside agent session 41"),
        "{e}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_local_daemon_the_cli_says_what_to_do() {
    // Issue 21: "cannot ask the local confgate daemon" with no way forward.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon.sock");
    let e = attest(&socket, 1, true).await.unwrap_err().to_string();
    assert!(e.contains("no confgate daemon answers on"), "{e}");
    assert!(e.contains(&socket.display().to_string()), "{e}");
    assert!(
        e.contains("--no-daemon") && e.contains("workstation_approvers"),
        "{e}"
    );
}
