//! The uplink against the real approval service (`crate::approver::Server`), in process,
//! over a Unix socket, with its real store and ledger: requests reach it, decisions and
//! revocations come back and convert into policy grants, and both sides' restarts lose
//! nothing that was acknowledged.
use std::path::Path;
use std::time::{Duration, SystemTime};

use confgate_proto::v1 as pb;

use super::*;
use crate::approver::testing;
use crate::policy::{Grant, OnExpiry, OpSet};
use crate::store::STORE_FILE;

fn options() -> UplinkOptions {
    UplinkOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..UplinkOptions::default()
    }
}

fn request(id: u64) -> pb::SubmitRequest {
    testing::request(id, 3)
        .path("/etc/hosts")
        .rule("system-config")
        .build()
}

/// An uplink of host `web-1` to the service of [`testing::service_config`]`(dir)`, with its
/// store in `dir`.
fn start_uplink(dir: &Path) -> (Store, UplinkHandle, mpsc::Receiver<UplinkUpdate>) {
    let store = Store::open(&dir.join(STORE_FILE)).unwrap();
    let (h, rx) = Uplink::start_with(
        testing::client_config(dir),
        store.clone(),
        "web-1".into(),
        options(),
    );
    (store, h, rx)
}

/// The service's id of the pending request with `host_request_id`, waiting up to 10 s.
async fn pending_id(approver: &mut testing::Client, host_request_id: u64) -> u64 {
    for _ in 0..500 {
        let list = approver
            .list_requests(pb::ListRequestsRequest {
                all: false,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(r) = list
            .requests
            .iter()
            .find(|r| r.host_request_id == host_request_id)
        {
            return r.id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("request {host_request_id} never reached the service");
}

async fn recv(rx: &mut mpsc::Receiver<UplinkUpdate>) -> UplinkUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an update within 10 s")
        .expect("uplink running")
}

#[tokio::test]
async fn decisions_and_revocations_round_trip_through_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut approver) = testing::start_in(dir.path()).await;
    let (store, h, mut rx) = start_uplink(dir.path());

    // Approve: the decision carries a grant that the gate can use.
    h.submit(request(1)).await.unwrap();
    let id = pending_id(&mut approver, 1).await;
    approver
        .decide(pb::DecideRequest {
            id,
            approve: true,
            ttl_seconds: 3600,
            note: "ok".into(),
            scope: pb::GrantScope::Session as i32,
            ..pb::DecideRequest::default()
        })
        .await
        .unwrap();
    let grant = match recv(&mut rx).await {
        UplinkUpdate::Decision {
            host_request_id,
            decision,
            ..
        } => {
            assert_eq!(host_request_id, 1);
            assert_eq!(decision.state, pb::RequestState::Approved as i32);
            decision.grant.expect("an approval carries its grant")
        }
        other => panic!("{other:?}"),
    };
    let g = Grant::from_proto(&grant, "system-config", OnExpiry::Flag).unwrap();
    let now = SystemTime::now();
    assert!(g.covers(3, "codex", b"/etc/hosts", OpSet::WRITE, now));
    assert!(!g.covers(4, "codex", b"/etc/hosts", OpSet::WRITE, now));

    // The first request's spool entry goes once the service acknowledged it as durable
    // (which may come after its decision): wait for that, so that what the spool holds
    // below is only what was filed during the outage.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !spool::Spool::new(store.clone()).load().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first request leaves the spool");

    // The service goes away; a request filed meanwhile waits in the spool.
    server.stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("uplink notices the outage");
    h.submit(request(2)).await.unwrap();
    assert_eq!(spool::Spool::new(store.clone()).load().unwrap().len(), 1);

    // Back (same store): the spooled request arrives and its denial comes back.
    let (server, mut approver) = testing::start_in(dir.path()).await;
    let id2 = pending_id(&mut approver, 2).await;
    approver.decide(testing::deny(id2)).await.unwrap();
    match recv(&mut rx).await {
        UplinkUpdate::Decision {
            host_request_id,
            decision,
            ..
        } => {
            assert_eq!(host_request_id, 2);
            assert_eq!(decision.state, pb::RequestState::Denied as i32);
        }
        other => panic!("{other:?}"),
    }

    // Revocation of the first grant.
    approver
        .revoke_grant(pb::RevokeGrantRequest {
            id: grant.id,
            note: "enough".into(),
        })
        .await
        .unwrap();
    let revoked_seq = match recv(&mut rx).await {
        UplinkUpdate::Revoked { seq, grant: r } => {
            assert_eq!(r.id, grant.id);
            assert_ne!(r.revoked_unix_ms, 0);
            seq
        }
        other => panic!("{other:?}"),
    };
    assert!(spool::Spool::new(store.clone()).load().unwrap().is_empty());
    tokio::time::timeout(Duration::from_secs(10), async {
        while spool::Spool::new(store.clone()).cursor().unwrap() != revoked_seq {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("cursor stored");
    // Exactly the three updates, none replayed after the reconnect.
    assert_eq!(
        h.counters()
            .into_iter()
            .find(|(n, _)| *n == "uplink_updates_applied"),
        Some(("uplink_updates_applied", 3))
    );
    h.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_reset_service_is_resubscribed_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut approver) = testing::start_in(dir.path()).await;
    let (_store, h, mut rx) = start_uplink(dir.path());
    for hid in [1, 2] {
        h.submit(request(hid)).await.unwrap();
        let id = pending_id(&mut approver, hid).await;
        approver.decide(testing::deny(id)).await.unwrap();
        assert_eq!(recv(&mut rx).await.seq(), hid);
    }
    // The service loses its state: its update log restarts below this host's cursor.
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let (server, mut approver) = testing::start_in(dir.path()).await;
    h.submit(request(3)).await.unwrap();
    let id = pending_id(&mut approver, 3).await;
    approver.decide(testing::deny(id)).await.unwrap();
    match recv(&mut rx).await {
        UplinkUpdate::Decision {
            seq,
            host_request_id,
            ..
        } => assert_eq!((seq, host_request_id), (1, 3)),
        other => panic!("{other:?}"),
    }
    assert!(h.counters().contains(&("uplink_cursor_resets", 1)));
    h.shutdown().await;
    server.stop().await.unwrap();
}

/// Control characters and invalid UTF-8 in a request's byte strings reach the service
/// (the contract both sides share); a request the service still refuses is handed back to
/// the receiver, never only counted; one that breaks the contract is not even spooled.
#[tokio::test]
async fn hostile_bytes_reach_the_service_and_a_refusal_is_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut approver) = testing::start_in(dir.path()).await;
    let (_store, h, mut rx) = start_uplink(dir.path());

    let mut r = request(1);
    let c = testing::context(&mut r);
    let enc = crate::event::escape::encode;
    c.path = enc(b"/etc/a\nb\x1b[2J\xff.conf");
    c.cwd = enc(b"/tmp/new\nline\\\xfe");
    c.command = vec![
        enc(b"sh"),
        enc(b"-c"),
        enc(b"true\necho evil \x1b[31m\xff >> /etc/x"),
    ];
    c.ancestry[0].comm = enc(b"a\nb");
    let sent = r.clone();
    h.submit(r).await.unwrap();
    let id = pending_id(&mut approver, 1).await;
    let got = approver
        .get_request(pb::GetRequestRequest { id })
        .await
        .unwrap()
        .into_inner();
    let (got, sent) = (got.context.unwrap(), sent.context.unwrap());
    assert_eq!(
        (&got.path, &got.cwd, &got.command, &got.ancestry[0].comm),
        (&sent.path, &sent.cwd, &sent.command, &sent.ancestry[0].comm)
    );

    // The service refuses a deadline beyond its 30 days: the receiver learns it.
    let mut far = request(2);
    far.deadline_unix_ms = crate::os::clock::now_ms() + 40 * 24 * 3600 * 1000;
    h.submit(far).await.unwrap();
    match recv(&mut rx).await {
        UplinkUpdate::Rejected {
            host_request_id,
            error,
        } => {
            assert_eq!(host_request_id, 2);
            assert!(error.contains("deadline_unix_ms"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(h.counters().contains(&("uplink_rejected", 1)));

    // A context the service would refuse is refused here, before it is spooled.
    let mut bad = request(3);
    testing::context(&mut bad).path = "/etc/lone\\backslash".into();
    match h.submit(bad).await {
        Err(UplinkError::Invalid(why)) => assert!(why.contains("context.path"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(h.counters().contains(&("uplink_spooled", 2)));
    h.shutdown().await;
    server.stop().await.unwrap();
}
