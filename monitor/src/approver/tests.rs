//! End-to-end tests of the service: real gRPC over a temporary Unix socket and over TLS on
//! 127.0.0.1 with certificates from `init-ca`, real store and ledger files.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::Code;

use super::ca::{CaRequest, init_ca};
use super::client::{ClientConfig, connect};
use super::config::{ServiceConfig, TlsSection, TokenEntry};
use super::testing::{self, approve, deny};
use super::{ApproverError, Server, SessionOracle};
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;

const TOKEN: &str = "s3cret-ops-token";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared test service, with the token `ops` accepted too.
fn base_config(dir: &Path) -> ServiceConfig {
    ServiceConfig {
        tokens: vec![TokenEntry {
            name: "ops".into(),
            sha256: hex(&Sha256::digest(TOKEN.as_bytes())),
            groups: Vec::new(),
        }],
        ..testing::service_config(dir)
    }
}

/// A request that claims a host (the service replaces it) and names a path that needs
/// glob escaping, filed without a creation time.
fn submit_req(hid: u64, session: u64, deadline: i64, fail: &str) -> pb::SubmitRequest {
    testing::request(hid, session)
        .host("claimed-host")
        .path("/etc/app[1].conf")
        .fail_verdict(fail)
        .created(0)
        .deadline(deadline)
        .build()
}

async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("stream item within 10 s")
        .expect("stream ok")
        .expect("stream not ended")
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

struct TestOracle {
    session: AtomicU64,
}

impl SessionOracle for TestOracle {
    fn host(&self) -> String {
        "oracle-host".into()
    }
    fn session_of_pid(&self, _pid: u32) -> u64 {
        self.session.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn submit_watch_decide_and_updates_with_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = testing::start(base_config(dir.path())).await;

    let who = c.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (who.name.as_str(), who.role.as_str()),
        ("unix:root", "approver")
    );

    let mut watch = c
        .watch_requests(pb::WatchRequestsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut updates = c
        .updates(pb::UpdatesRequest {
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let before = now_ms();
    let r1 = c
        .submit(submit_req(1, 7, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    let ctx = r1.context.as_ref().unwrap();
    // Root on the Unix socket is the local host; the claimed host name is replaced.
    assert_eq!(ctx.host, crate::os::host::host_name());
    assert_eq!(r1.state, pb::RequestState::Pending as i32);
    // No deadline sent: the default lifetime (600 s) applies.
    assert!((r1.deadline_unix_ms - before - 600_000).abs() < 5_000);

    let seen = next(&mut watch).await;
    assert_eq!(
        (seen.id, seen.state),
        (r1.id, pb::RequestState::Pending as i32)
    );

    let decided = c.decide(approve(r1.id)).await.unwrap().into_inner();
    assert_eq!(decided.state, pb::RequestState::Approved as i32);
    let d = decided.decision.unwrap();
    assert_eq!(d.decided_by, "unix:root");
    let g = d.grant.unwrap();
    assert_eq!(
        g.path_glob, "/etc/app[[]1[]].conf",
        "exact path, glob-escaped"
    );
    assert_eq!(g.scope, pb::GrantScope::Session as i32);
    assert_eq!(
        (g.session_id, g.operations.as_slice()),
        (7, &["write".to_owned()][..])
    );
    let ttl = g.expires_unix_ms - g.created_unix_ms;
    assert_eq!(ttl, 3_600_000, "default ttl 1 h");

    // The watcher sees the change, the host the decision with its grant.
    let changed = next(&mut watch).await;
    assert_eq!(changed.state, pb::RequestState::Approved as i32);
    let u1 = next(&mut updates).await;
    assert_eq!((u1.seq, u1.host_request_id), (1, 1));
    match u1.update {
        Some(pb::host_update::Update::Decision(d)) => {
            assert_eq!(d.state, pb::RequestState::Approved as i32);
            assert_eq!(d.grant.unwrap().id, g.id);
        }
        other => panic!("{other:?}"),
    }

    // Deciding again is refused.
    assert_eq!(code(c.decide(deny(r1.id)).await), Code::FailedPrecondition);
    assert_eq!(code(c.decide(deny(999)).await), Code::NotFound);

    // A second request, denied, arrives live on the open stream.
    let r2 = c
        .submit(submit_req(2, 7, now_ms() + 60_000, "allow"))
        .await
        .unwrap()
        .into_inner();
    c.decide(deny(r2.id)).await.unwrap();
    let u2 = next(&mut updates).await;
    assert_eq!((u2.seq, u2.host_request_id), (2, 2));

    // Revocation is an update too.
    let revoked = c
        .revoke_grant(pb::RevokeGrantRequest {
            id: g.id,
            note: "done".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_by, "unix:root");
    let u3 = next(&mut updates).await;
    assert_eq!(u3.seq, 3);
    assert!(matches!(u3.update, Some(pb::host_update::Update::Revoked(ref g2)) if g2.id == g.id));
    assert_eq!(
        code(
            c.revoke_grant(pb::RevokeGrantRequest {
                id: g.id,
                note: String::new()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    let live = c
        .list_grants(pb::ListGrantsRequest { all: false })
        .await
        .unwrap()
        .into_inner();
    assert!(live.grants.is_empty());
    let all = c
        .list_grants(pb::ListGrantsRequest { all: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.grants.len(), 1);

    // Resume after seq 1: only 2 and 3 are replayed.
    let mut resumed = c
        .updates(pb::UpdatesRequest {
            after_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await.seq, 2);
    assert_eq!(next(&mut resumed).await.seq, 3);

    let listed = c
        .list_requests(pb::ListRequestsRequest {
            all: true,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.requests.iter().map(|r| r.id).collect::<Vec<_>>(),
        [r2.id, r1.id],
        "newest first"
    );
    let pending = c
        .list_requests(pb::ListRequestsRequest {
            all: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pending.requests.is_empty());

    // The ledger has every step, hash-chained.
    let mut audit = c
        .audit_log(pb::AuditLogRequest { since_unix_ms: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(e) = audit.message().await.unwrap() {
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        kinds.push(v["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        kinds,
        [
            "request_submitted",
            "request_approved",
            "grant_created",
            "request_submitted",
            "request_denied",
            "grant_revoked"
        ]
    );
    let report = crate::ledger::verify(&dir.path().join("state/ledger.jsonl")).unwrap();
    assert!(report.is_intact(), "{report:?}");

    drop(watch);
    drop(updates);
    drop(resumed);
    server.stop().await.unwrap();
    assert!(!dir.path().join("approver.sock").exists());
}

#[tokio::test]
async fn submit_is_idempotent_and_decisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path());
    let (server, mut c) = testing::start(cfg.clone()).await;
    let a = c
        .submit(submit_req(10, 3, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    let mut other = submit_req(10, 99, 0, "allow");
    other.context.as_mut().unwrap().path = "/etc/other".into();
    let b = c.submit(other).await.unwrap().into_inner();
    assert_eq!(a, b, "a resubmission returns the stored request");
    let pending = c
        .submit(submit_req(11, 3, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    c.decide(deny(a.id)).await.unwrap();
    // A resubmission after the decision carries the decision.
    let again = c
        .submit(submit_req(10, 3, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::RequestState::Denied as i32);
    drop(c);
    server.stop().await.unwrap();

    // Reopened: the decision, the pending request and the update log are all there.
    let (server, mut c) = testing::start(cfg).await;
    let got = c
        .get_request(pb::GetRequestRequest { id: a.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::RequestState::Denied as i32);
    assert_eq!(got.decision.unwrap().note, "no");
    let mut updates = c
        .updates(pb::UpdatesRequest {
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let u = next(&mut updates).await;
    assert_eq!((u.seq, u.host_request_id), (1, 10));
    let decided = c.decide(approve(pending.id)).await.unwrap().into_inner();
    assert_eq!(decided.state, pb::RequestState::Approved as i32);
    assert_eq!(next(&mut updates).await.seq, 2);
    assert_eq!(
        code(c.get_request(pb::GetRequestRequest { id: 12345 }).await),
        Code::NotFound
    );
    drop(updates);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn deadline_expiry_applies_the_fail_verdict_and_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = testing::start(base_config(dir.path())).await;
    let mut updates = c
        .updates(pb::UpdatesRequest {
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = c
        .submit(submit_req(1, 3, now_ms() + 300, "allow"))
        .await
        .unwrap()
        .into_inner();
    let u = next(&mut updates).await;
    match u.update {
        Some(pb::host_update::Update::Decision(d)) => {
            assert_eq!(d.request_id, r.id);
            assert_eq!(d.state, pb::RequestState::Expired as i32);
            assert_eq!(
                (d.verdict.as_str(), d.decided_by.as_str()),
                ("allow", "timeout")
            );
            assert!(d.decided_unix_ms >= r.deadline_unix_ms);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(c.decide(approve(r.id)).await),
        Code::FailedPrecondition
    );
    let stored = c
        .get_request(pb::GetRequestRequest { id: r.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.state, pb::RequestState::Expired as i32);
    assert_eq!(
        code(
            c.updates(pb::UpdatesRequest {
                after_seq: 2,
                ..Default::default()
            })
            .await
        ),
        Code::OutOfRange
    );
    let ledger = crate::ledger::read(&dir.path().join("state/ledger.jsonl"), None).unwrap();
    let expired: Vec<_> = ledger
        .iter()
        .filter(|r| r.kind == "request_expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].body["decision"]["verdict"], "allow");
    // Stopping ends open streams instead of waiting for them.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("stop with an open stream")
        .unwrap();
    assert!(updates.message().await.map_or(true, |m| m.is_none()));
}

#[tokio::test]
async fn self_approval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = Arc::new(TestOracle {
        session: AtomicU64::new(0),
    });
    let (server, mut c) = testing::start_with(
        base_config(dir.path()),
        Some(oracle.clone() as Arc<dyn SessionOracle>),
    )
    .await;
    let r = c
        .submit(submit_req(1, 42, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.context.unwrap().host, "oracle-host");

    // The caller's real session (from the oracle) is the asking session.
    oracle.session.store(42, Ordering::Relaxed);
    let e = c.decide(approve(r.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("inside agent session 42"), "{e}");
    assert!(e.message().contains("self-approval"), "{e}");
    // Any agent session at all is refused, and it cannot act as the host either.
    oracle.session.store(5, Ordering::Relaxed);
    let e = c.decide(deny(r.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("outside any agent session"), "{e}");
    assert_eq!(
        code(c.submit(submit_req(2, 1, 0, "deny")).await),
        Code::PermissionDenied
    );
    // Outside any session the real session replaces the claim.
    oracle.session.store(0, Ordering::Relaxed);
    let mut claimed = approve(r.id);
    claimed.decider_host = "oracle-host".into();
    claimed.decider_session = 42;
    c.decide(claimed).await.unwrap();

    // A client claiming to be outside any session while the kernel says otherwise is
    // refused: claims are never what the service goes by.
    let r = c
        .submit(submit_req(2, 42, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    oracle.session.store(42, Ordering::Relaxed);
    let mut claimed = approve(r.id);
    claimed.decider_host = "elsewhere".into();
    claimed.decider_session = 0;
    assert_eq!(code(c.decide(claimed).await), Code::PermissionDenied);
    drop(c);
    server.stop().await.unwrap();
}

/// A TLS service on 127.0.0.1:0 with init-ca certificates, plus the paths of those.
async fn tls_server(dir: &Path) -> (Server, String, PathBuf) {
    let tls = dir.join("tls");
    init_ca(&CaRequest {
        dir: tls.clone(),
        hosts: vec!["web-1".into()],
        approvers: vec!["alice".into()],
        server_names: vec![],
        force: false,
    })
    .unwrap();
    let mut cfg = base_config(dir);
    cfg.listen = vec!["https://127.0.0.1:0".into()];
    cfg.tls = TlsSection {
        cert: Some(tls.join("server.pem")),
        key: Some(tls.join("server.key")),
        client_ca: Some(tls.join("ca.pem")),
    };
    let server = Server::start(cfg, None).await.unwrap();
    let endpoint = server.addresses()[0].to_string();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    (server, endpoint, tls)
}

fn tls_client(endpoint: &str, tls: &Path, identity: Option<&str>) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.to_owned(),
        ca: Some(tls.join("ca.pem")),
        cert: identity.map(|i| tls.join(format!("{i}.pem"))),
        key: identity.map(|i| tls.join(format!("{i}.key"))),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn tls_identities_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (server, endpoint, tls) = tls_server(dir.path()).await;

    let mut host = connect(&tls_client(&endpoint, &tls, Some("host-web-1")))
        .await
        .unwrap();
    let mut alice = connect(&tls_client(&endpoint, &tls, Some("approver-alice")))
        .await
        .unwrap();
    let who = host
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.name.as_str(), who.role.as_str()),
        ("host:web-1", "host")
    );
    let who = alice
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.name.as_str(), who.role.as_str()),
        ("cert:alice", "approver")
    );

    let updates = host
        .updates(pb::UpdatesRequest {
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = host
        .submit(submit_req(1, 3, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.context.as_ref().unwrap().host, "web-1");

    // A host never decides; an approver never submits.
    assert_eq!(
        code(host.decide(approve(r.id)).await),
        Code::PermissionDenied
    );
    // An approver certificate without a host's attestation is refused, whatever it claims
    // about its session (the bypass of issue 21: decider_session = 0 from inside one).
    let mut bypass = approve(r.id);
    bypass.decider_host = "web-1".into();
    bypass.decider_session = 0;
    let e = alice.decide(bypass).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("needs an attestation"), "{e}");
    // An attestation signed by a key web-1 never presented is refused.
    let keys = tempfile::tempdir().unwrap();
    let web1 = super::attest::Attestor::load_or_create(&keys.path().join("web-1.key")).unwrap();
    let rogue = super::attest::Attestor::load_or_create(&keys.path().join("rogue.key")).unwrap();
    let signed = |a: &super::attest::Attestor, d: &mut pb::DecideRequest| {
        let (st, sig) = a.attest("web-1", d.id, d.approve, 99, 0, now_ms()).unwrap();
        d.attestation = st;
        d.attestation_signature = sig;
    };
    let mut forged = approve(r.id);
    signed(&rogue, &mut forged);
    let e = alice.decide(forged).await.unwrap_err();
    assert!(
        e.message().contains("has not presented an attestation key"),
        "{e}"
    );
    // Only a host identity presents a key: an approver's Updates call is refused anyway.
    assert_eq!(
        code(
            alice
                .updates(pb::UpdatesRequest {
                    after_seq: 0,
                    attestation_key: rogue.public_key().to_vec(),
                })
                .await
        ),
        Code::PermissionDenied
    );
    drop(updates);
    let mut updates = host
        .updates(pb::UpdatesRequest {
            after_seq: 0,
            attestation_key: web1.public_key().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut forged = approve(r.id);
    signed(&rogue, &mut forged);
    let e = alice.decide(forged).await.unwrap_err();
    assert!(e.message().contains("does not verify"), "{e}");
    assert_eq!(
        code(host.list_requests(pb::ListRequestsRequest::default()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(alice.submit(submit_req(2, 3, 0, "deny")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            alice
                .updates(pb::UpdatesRequest {
                    after_seq: 0,
                    ..Default::default()
                })
                .await
        ),
        Code::PermissionDenied
    );

    let mut scoped = approve(r.id);
    scoped.scope = pb::GrantScope::Agent as i32;
    scoped.ttl_seconds = 120;
    scoped.path_glob = "/etc/app*.conf".into();
    signed(&web1, &mut scoped);
    let d = alice.decide(scoped.clone()).await.unwrap().into_inner();
    // The same attestation again (a replay) is refused before anything else.
    let e = alice.decide(scoped).await.unwrap_err();
    assert!(e.message().contains("used before"), "{e}");
    let g = d.decision.unwrap().grant.unwrap();
    assert_eq!(
        (
            g.scope,
            g.agent.as_str(),
            g.path_glob.as_str(),
            g.granted_by.as_str()
        ),
        (
            pb::GrantScope::Agent as i32,
            "codex",
            "/etc/app*.conf",
            "cert:alice"
        )
    );
    assert_eq!(g.expires_unix_ms - g.created_unix_ms, 120_000);
    let u = next(&mut updates).await;
    assert!(
        matches!(u.update, Some(pb::host_update::Update::Decision(ref d)) if d.decided_by == "cert:alice")
    );
    // A host reads the grants that apply to it (issue 21), and only those; it revokes none.
    let mine = host
        .list_grants(pb::ListGrantsRequest { all: true })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].host, "web-1");
    assert_eq!(
        code(
            host.revoke_grant(pb::RevokeGrantRequest {
                id: mine[0].id,
                note: String::new()
            })
            .await
        ),
        Code::PermissionDenied
    );

    // A token works without a certificate; a wrong one is refused even with a cert.
    let mut tok = tls_client(&endpoint, &tls, None);
    tok.token = Some(TOKEN.into());
    let mut ops = connect(&tok).await.unwrap();
    let who = ops
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.name.as_str(), who.role.as_str()),
        ("token:ops", "approver")
    );
    ops.list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap();
    tok.token = Some("wrong-token".into());
    let mut wrong = connect(&tok).await.unwrap();
    assert_eq!(
        code(wrong.who_am_i(pb::WhoAmIRequest {}).await),
        Code::Unauthenticated
    );
    let mut host_wrong = tls_client(&endpoint, &tls, Some("host-web-1"));
    host_wrong.token = Some("wrong-token".into());
    let mut hw = connect(&host_wrong).await.unwrap();
    assert_eq!(
        code(hw.submit(submit_req(3, 3, 0, "deny")).await),
        Code::Unauthenticated
    );

    // No certificate and no token: nobody.
    let mut anon = connect(&tls_client(&endpoint, &tls, None)).await.unwrap();
    assert_eq!(
        code(anon.who_am_i(pb::WhoAmIRequest {}).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(anon.submit(submit_req(4, 3, 0, "deny")).await),
        Code::Unauthenticated
    );

    // A certificate from another CA does not get through the handshake.
    let rogue = dir.path().join("rogue");
    init_ca(&CaRequest {
        dir: rogue.clone(),
        hosts: vec!["web-1".into()],
        ..CaRequest::default()
    })
    .unwrap();
    let mut rogue_cfg = tls_client(&endpoint, &tls, None);
    rogue_cfg.cert = Some(rogue.join("host-web-1.pem"));
    rogue_cfg.key = Some(rogue.join("host-web-1.key"));
    match connect(&rogue_cfg).await {
        Err(_) => {}
        Ok(mut c) => assert!(c.who_am_i(pb::WhoAmIRequest {}).await.is_err()),
    }
    // ... and the refused handshake is counted (and logged with the peer's address).
    let refused = |s: &Server| {
        s.counters()
            .into_iter()
            .find(|(n, _)| *n == "approver_tls_handshakes_refused")
            .map_or(0, |(_, v)| v)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refused(&server) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "refused handshake not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client that does not trust the service's CA refuses it.
    let mut distrust = tls_client(&endpoint, &tls, Some("host-web-1"));
    distrust.ca = Some(rogue.join("ca.pem"));
    assert!(connect(&distrust).await.is_err());

    drop(updates);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn plaintext_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path());
    cfg.listen = vec!["http://0.0.0.0:0".into()];
    cfg.allow_plaintext = true;
    match Server::start(cfg.clone(), None).await {
        Err(ApproverError::ConfigFile(e)) => {
            assert!(e.to_string().contains("loopback"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("plaintext on 0.0.0.0 was accepted"),
    }
    cfg.listen = vec!["http://127.0.0.1:0".into()];
    cfg.allow_plaintext = false;
    assert!(Server::start(cfg.clone(), None).await.is_err());

    cfg.allow_plaintext = true;
    let server = Server::start(cfg, None).await.unwrap();
    let endpoint = server.addresses()[0].to_string();
    let mut client_cfg = ClientConfig {
        endpoint,
        allow_plaintext: true,
        token: Some(TOKEN.into()),
        ..ClientConfig::default()
    };
    let mut c = connect(&client_cfg).await.unwrap();
    let who = c.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(who.name, "token:ops");
    assert_eq!(
        code(c.submit(submit_req(1, 1, 0, "deny")).await),
        Code::PermissionDenied
    );
    client_cfg.token = None;
    let mut anon = connect(&client_cfg).await.unwrap();
    assert_eq!(
        code(anon.who_am_i(pb::WhoAmIRequest {}).await),
        Code::Unauthenticated
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path());
    cfg.max_ttl_secs = 600;
    let (server, mut c) = testing::start(cfg).await;

    let mut huge = submit_req(1, 1, 0, "deny");
    huge.context.as_mut().unwrap().path = format!("/{}", "a".repeat(1 << 20));
    assert_eq!(code(c.submit(huge).await), Code::InvalidArgument);
    let mut nl = submit_req(1, 1, 0, "deny");
    nl.context.as_mut().unwrap().reason = "line\nbreak".into();
    assert_eq!(code(c.submit(nl).await), Code::InvalidArgument);
    assert_eq!(
        code(c.submit(submit_req(1, 1, 0, "maybe")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.submit(submit_req(0, 1, 0, "deny")).await),
        Code::InvalidArgument
    );

    let r = c
        .submit(submit_req(1, 1, 0, "deny"))
        .await
        .unwrap()
        .into_inner();
    let mut long = approve(r.id);
    long.ttl_seconds = 601;
    let e = c.decide(long).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max_ttl"), "{e}");
    let mut glob = approve(r.id);
    glob.path_glob = "/etc/[".into();
    assert_eq!(code(c.decide(glob).await), Code::InvalidArgument);
    let mut rel = approve(r.id);
    rel.path_glob = "etc/*".into();
    assert_eq!(code(c.decide(rel).await), Code::InvalidArgument);
    let mut scope = approve(r.id);
    scope.scope = 9;
    assert_eq!(code(c.decide(scope).await), Code::InvalidArgument);
    let mut deny_ttl = deny(r.id);
    deny_ttl.ttl_seconds = 60;
    assert_eq!(code(c.decide(deny_ttl).await), Code::InvalidArgument);
    let mut note = deny(r.id);
    note.note = "x".repeat(100_000);
    assert_eq!(code(c.decide(note).await), Code::InvalidArgument);
    // Still pending after all that.
    let got = c
        .get_request(pb::GetRequestRequest { id: r.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::RequestState::Pending as i32);

    let report = |seq: u64, kind: &str, json: &str| pb::ReportRequest {
        host_seq: seq,
        kind: kind.into(),
        json: json.into(),
        time_unix_ms: now_ms(),
    };
    assert_eq!(
        code(c.report(report(1, "fallback_verdict", "[1]")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.report(report(1, "Bad Kind", "{}")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.report(report(0, "change", "{}")).await),
        Code::InvalidArgument
    );
    c.report(report(1, "fallback_verdict", "{\"path\":\"/etc/x\"}"))
        .await
        .unwrap();
    c.report(report(1, "fallback_verdict", "{\"path\":\"/etc/x\"}"))
        .await
        .unwrap();
    let ledger = crate::ledger::read(&dir.path().join("state/ledger.jsonl"), None).unwrap();
    let reports: Vec<_> = ledger.iter().filter(|r| r.kind == "host_report").collect();
    assert_eq!(reports.len(), 1, "a resent report is recorded once");
    assert_eq!(reports[0].body["record"]["path"], "/etc/x");
    let counters: std::collections::HashMap<_, _> = server.counters().into_iter().collect();
    assert_eq!(counters["approver_invalid_argument"], 13);
    assert_eq!(counters["approver_reports"], 1);
    assert_eq!(counters["approver_reports_duplicate"], 1);
    assert_eq!(counters["approver_submitted"], 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_serves_both_versions_to_authenticated_callers_only() {
    use tonic_reflection::pb::{v1, v1alpha};
    let dir = tempfile::tempdir().unwrap();
    let (server, endpoint, tls) = tls_server(dir.path()).await;
    let alice = super::client::channel(&tls_client(&endpoint, &tls, Some("approver-alice")))
        .await
        .unwrap();
    let want = [
        "confgate.v1.Approver",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let mut c = v1::server_reflection_client::ServerReflectionClient::new(alice.clone());
    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut s = c
        .server_reflection_info(tokio_stream::iter(vec![list.clone()]))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = match next(&mut s).await.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, want, "only what is served here");

    // The v1alpha protocol (Python's grpc_reflection) answers the same.
    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(alice);
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut s = c
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = match next(&mut s).await.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    names.sort();
    assert_eq!(names, want);

    // Without a certificate or token: refused like every other call.
    let anon = super::client::channel(&tls_client(&endpoint, &tls, None))
        .await
        .unwrap();
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(anon);
    let refused = match c
        .server_reflection_info(tokio_stream::iter(vec![list_v1()]))
        .await
    {
        Err(s) => s.code(),
        Ok(r) => match r.into_inner().message().await {
            Err(s) => s.code(),
            Ok(m) => panic!("anonymous reflection answered: {m:?}"),
        },
    };
    assert_eq!(refused, Code::Unauthenticated);
    server.stop().await.unwrap();
}

fn list_v1() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1;
    v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    }
}
