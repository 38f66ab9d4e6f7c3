//! The PostgreSQL store against a real server (a throwaway cluster, [`super::cluster`]): the
//! embedded store's behaviour where it applies, and what two replicas on one database need.
//! One cluster for the whole module (starting one takes a few seconds); each case has its own
//! database.
use super::cluster::TestCluster;
use super::*;
use crate::approver::store::*;

fn new_request(host: &str, hid: u64, deadline: i64) -> NewRequest {
    NewRequest {
        host_request_id: hid,
        notify: Vec::new(),
        suggested_glob: String::new(),
        suggested_from: Vec::new(),
        context: ContextRec {
            host: host.into(),
            session_id: 7,
            agent: "codex".into(),
            path: "/etc/hosts".into(),
            operations: vec!["write".into()],
            fail_verdict: "deny".into(),
            ..ContextRec::default()
        },
        created_unix_ms: 1,
        deadline_unix_ms: deadline,
    }
}

fn grant_template() -> GrantRec {
    GrantRec {
        id: 0,
        request_id: 0,
        host: String::new(),
        scope: Scope::Session,
        session_id: 7,
        agent: "codex".into(),
        path_glob: "/etc/hosts".into(),
        operations: vec!["write".into()],
        created_unix_ms: 10,
        expires_unix_ms: 1000,
        granted_by: "cert:alice".into(),
        note: "ok".into(),
        revoked_unix_ms: None,
        revoked_by: None,
        session_ended_unix_ms: None,
    }
}

fn approve() -> Resolution {
    Resolution::Approve {
        grant: Box::new(grant_template()),
        note: "fine".into(),
    }
}

/// A throwaway cluster, or `None` with the reason printed (no PostgreSQL here).
fn cluster() -> Option<TestCluster> {
    TestCluster::start()
        .inspect_err(|why| eprintln!("SKIP: no PostgreSQL to test with: {why}"))
        .ok()
}

#[test]
fn the_postgres_store_keeps_the_embedded_stores_rules_across_replicas() {
    let Some(cluster) = cluster() else {
        return;
    };
    let db = |name: &str| cluster.create_db(name).unwrap();
    resolve_once_and_log_updates_per_host(&db("resolve"));
    submit_is_idempotent_and_ids_are_never_reused(&db("submit"));
    approvals_once_per_person(&db("approvals"));
    sessions_releases_and_reports(&db("misc"));
    two_replicas_never_collide(&db("replicas"));
    changes_reach_the_other_replica(&db("fanout"));
    migrations_run_once_and_a_newer_schema_is_refused(&db("schema"));
    odd_input_round_trips(&db("odd"));
}

fn resolve_once_and_log_updates_per_host(url: &str) {
    let s = PgStore::open(url).unwrap();
    let (r1, _) = s.submit(new_request("h1", 1, 100)).unwrap();
    let (r2, _) = s.submit(new_request("h1", 2, 100)).unwrap();
    let (r3, _) = s.submit(new_request("h2", 1, 100)).unwrap();
    let done = s.resolve(r1.id, approve(), 50).unwrap().unwrap();
    assert_eq!(done.request.state, State::Approved);
    let g = done.grant.unwrap();
    assert_eq!((g.request_id, g.host.as_str()), (r1.id, "h1"));
    assert_eq!(done.update_seq, 1);
    assert_eq!(s.request(r1.id).unwrap().unwrap(), done.request);
    assert_eq!(
        s.resolve(r1.id, Resolution::Expire, 60)
            .unwrap()
            .unwrap_err(),
        Refusal::NotPending(State::Approved)
    );
    assert_eq!(
        s.resolve(99_999, Resolution::Expire, 60)
            .unwrap()
            .unwrap_err(),
        Refusal::NotFound
    );
    let exp = s.resolve(r2.id, Resolution::Expire, 70).unwrap().unwrap();
    assert_eq!(exp.update_seq, 2);
    let d = exp.request.decision.unwrap();
    assert_eq!(
        (d.verdict.as_str(), d.decided_by.as_str()),
        ("deny", "timeout")
    );
    let deny = Resolution::Deny {
        by: "token:ops".into(),
        note: "no".into(),
    };
    assert_eq!(s.resolve(r3.id, deny, 80).unwrap().unwrap().update_seq, 1);
    assert!(s.pending().unwrap().is_empty());
    let (revoked, seq) = s.revoke(g.id, "cert:bob", 90).unwrap().unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("cert:bob"));
    assert_eq!(seq, 3);
    assert_eq!(
        s.revoke(g.id, "cert:bob", 91).unwrap().unwrap_err(),
        Refusal::GrantNotLive { revoked: true }
    );
    let ups = s.updates_after("h1", 0, 100).unwrap();
    assert_eq!(ups.iter().map(|u| u.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(ups[2].kind, UpdateKind::Revoked { grant_id: g.id });
    assert_eq!(ups[2].host_request_id, 1);
    assert_eq!(s.updates_after("h1", 2, 100).unwrap().len(), 1);
    assert_eq!(s.updates_after("h1", 0, 2).unwrap().len(), 2);
    assert_eq!(s.updates_after("h1", u64::MAX, 2).unwrap().len(), 0);
    assert_eq!(s.updates_after("h", 0, 100).unwrap().len(), 0);
    assert_eq!(s.last_update_seq("h1").unwrap(), 3);
    assert_eq!(s.last_update_seq("h2").unwrap(), 1);
    assert_eq!(s.last_update_seq("h").unwrap(), 0);
    assert_eq!(s.list_grants(false, 95).unwrap().len(), 0);
    assert_eq!(s.list_grants(true, 95).unwrap().len(), 1);
    assert_eq!(s.grant(g.id).unwrap().unwrap(), revoked);
}

fn submit_is_idempotent_and_ids_are_never_reused(url: &str) {
    let first;
    {
        let s = PgStore::open(url).unwrap();
        let (a, created) = s.submit(new_request("h1", 5, 100)).unwrap();
        assert!(created);
        let (b, created) = s.submit(new_request("h1", 5, 999)).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        let (c, created) = s.submit(new_request("h2", 5, 100)).unwrap();
        assert!(created);
        assert_ne!(a.id, c.id);
        assert_eq!(s.pending().unwrap(), [(a.id, 100), (c.id, 100)]);
        first = a.id;
    }
    let s = PgStore::open(url).unwrap();
    assert_eq!(s.pending().unwrap().len(), 2);
    let (again, created) = s.submit(new_request("h1", 5, 1)).unwrap();
    assert!(!created);
    assert_eq!(again.deadline_unix_ms, 100);
    let (next, _) = s.submit(new_request("h3", 1, 100)).unwrap();
    assert!(next.id > first + 1, "ids continue after a restart");
    assert_eq!(s.request_count(true).unwrap(), 3);
    assert_eq!(s.request_count(false).unwrap(), 3);
    let listed = s.list_requests(false, 10).unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        [next.id, first + 1, first]
    );
    assert_eq!(s.list_requests(true, 1).unwrap().len(), 1);
    assert_eq!(s.by_host_request("h1", 5).unwrap(), Some(first));
    assert_eq!(s.by_host_request("h1", 6).unwrap(), None);
}

fn approvals_once_per_person(url: &str) {
    let s = PgStore::open(url).unwrap();
    let (r, _) = s.submit(new_request("h1", 1, i64::MAX / 2)).unwrap();
    let a = |by: &str, person: &str| ApprovalRec {
        by: by.into(),
        unix_ms: 5,
        note: String::new(),
        person: person.into(),
        terms: None,
    };
    assert!(
        s.add_approval(r.id, a("token:alice", ""))
            .unwrap()
            .unwrap()
            .1
    );
    assert!(
        !s.add_approval(r.id, a("token:alice", ""))
            .unwrap()
            .unwrap()
            .1
    );
    assert!(
        s.add_approval(r.id, a("oidc:a1", "alice"))
            .unwrap()
            .unwrap()
            .1
    );
    let (rec, added) = s
        .add_approval(r.id, a("slack:U1", "alice"))
        .unwrap()
        .unwrap();
    assert!(
        !added,
        "the same person through another channel counts once"
    );
    assert_eq!(rec.approvals.len(), 2);
    assert_eq!(s.request(r.id).unwrap().unwrap(), rec);
    let deny = Resolution::Deny {
        by: "token:carol".into(),
        note: String::new(),
    };
    s.resolve(r.id, deny, 9).unwrap().unwrap();
    assert_eq!(
        s.add_approval(r.id, a("token:dave", "")).unwrap(),
        Err(Refusal::NotPending(State::Denied))
    );
    assert_eq!(
        s.add_approval(999_999, a("x", "")).unwrap(),
        Err(Refusal::NotFound)
    );
}

fn sessions_releases_and_reports(url: &str) {
    let s = PgStore::open(url).unwrap();
    for (host, hid) in [("h1", 1), ("h2", 2)] {
        let (r, _) = s.submit(new_request(host, hid, 100)).unwrap();
        s.resolve(r.id, approve(), 50).unwrap().unwrap();
    }
    assert_eq!(s.note_session_ended("h1", 7, 70).unwrap(), 1);
    assert_eq!(s.note_session_ended("h1", 7, 80).unwrap(), 0);
    let all = s.list_grants(true, 60).unwrap();
    let by_host = |h: &str| all.iter().find(|g| g.host == h).unwrap().clone();
    assert_eq!(by_host("h1").session_ended_unix_ms, Some(70));
    assert_eq!(by_host("h2").session_ended_unix_ms, None);

    let (r1, _) = s.submit(new_request("h1", 7, 100)).unwrap();
    let rel = Resolution::Release {
        by: "host:h1".into(),
        note: "released by a crash".into(),
    };
    let done = s.resolve(r1.id, rel, 50).unwrap().unwrap();
    assert_eq!(done.request.state, State::Released);
    assert!(done.grant.is_none());
    assert_eq!(
        s.resolve(r1.id, Resolution::Expire, 200)
            .unwrap()
            .unwrap_err(),
        Refusal::NotPending(State::Released)
    );

    assert!(s.note_report("h1", 1, 5).unwrap());
    assert!(!s.note_report("h1", 1, 6).unwrap());
    assert!(s.note_report("h2", 1, 6).unwrap());
    s.forget_report("h1", 1).unwrap();
    assert!(s.note_report("h1", 1, 7).unwrap());
}

/// Two replicas filing, deciding and revoking at once for the same hosts: every id once,
/// every host's seqs 1..=n without a hole, every request resolved exactly once.
fn two_replicas_never_collide(url: &str) {
    let a = PgStore::open(url).unwrap();
    let b = PgStore::open(url).unwrap();
    const N: u64 = 40;
    let file = |s: PgStore, base: u64| {
        std::thread::spawn(move || {
            (0..N)
                .map(|i| s.submit(new_request("h1", base + i, 1000)).unwrap().0.id)
                .collect::<Vec<_>>()
        })
    };
    let (ta, tb) = (file(a.clone(), 0), file(b.clone(), 1000));
    let mut ids = ta.join().unwrap();
    ids.extend(tb.join().unwrap());
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no id handed out twice");
    // Both replicas try to resolve every request (one approves, one denies).
    let decide = |s: PgStore, ids: Vec<u64>, approve_it: bool| {
        std::thread::spawn(move || {
            ids.iter()
                .filter(|id| {
                    let how = if approve_it {
                        approve()
                    } else {
                        Resolution::Deny {
                            by: "token:b".into(),
                            note: String::new(),
                        }
                    };
                    s.resolve(**id, how, 10).unwrap().is_ok()
                })
                .count()
        })
    };
    let (da, db) = (
        decide(a.clone(), ids.clone(), true),
        decide(b.clone(), ids.clone(), false),
    );
    let won = da.join().unwrap() + db.join().unwrap();
    assert_eq!(won as u64, 2 * N, "each request resolved exactly once");
    let seqs: Vec<u64> = a
        .updates_after("h1", 0, 1000)
        .unwrap()
        .iter()
        .map(|u| u.seq)
        .collect();
    assert_eq!(seqs, (1..=2 * N).collect::<Vec<_>>());
    assert_eq!(b.last_update_seq("h1").unwrap(), 2 * N);
    assert_eq!(a.hosts().unwrap(), [("h1".to_owned(), 2 * N)]);
}

fn changes_reach_the_other_replica(url: &str) {
    let a = PgStore::open(url).unwrap();
    let b = PgStore::open(url).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut heard = a.listen(false);
    let next = |rx: &mut tokio::sync::mpsc::Receiver<Fanout>| {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await
        })
        .expect("a notification within 10 s")
        .expect("listening")
    };
    assert_eq!(next(&mut heard), Fanout::Resync);
    // A's own changes are not echoed; B's are.
    let (own, _) = a.submit(new_request("h9", 1, 500)).unwrap();
    let (r, _) = b.submit(new_request("h9", 2, 700)).unwrap();
    assert_eq!(
        next(&mut heard),
        Fanout::Created {
            id: r.id,
            deadline: 700
        }
    );
    let done = b.resolve(own.id, approve(), 10).unwrap().unwrap();
    assert_eq!(
        next(&mut heard),
        Fanout::Resolved {
            id: own.id,
            host: "h9".into(),
            seq: done.update_seq
        }
    );
    let g = done.grant.unwrap();
    let (_, seq) = b.revoke(g.id, "cert:bob", 20).unwrap().unwrap();
    assert_eq!(
        next(&mut heard),
        Fanout::Revoked {
            host: "h9".into(),
            seq
        }
    );
    // A refused change announces nothing: the next one heard is the one after it.
    assert!(b.resolve(own.id, Resolution::Expire, 30).unwrap().is_err());
    let (r3, _) = b.submit(new_request("h9", 3, 900)).unwrap();
    assert_eq!(
        next(&mut heard),
        Fanout::Created {
            id: r3.id,
            deadline: 900
        }
    );
}

fn migrations_run_once_and_a_newer_schema_is_refused(url: &str) {
    let a = PgStore::open(url).unwrap();
    drop(PgStore::open(url).unwrap());
    let pool = a.pool();
    let versions: Vec<i32> = a
        .run(async move {
            let c = pool.get().await.map_err(|e| pg_err("connect", e))?;
            let rows = c
                .query(
                    "SELECT version FROM confgate_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(|e| db_err("q", e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .unwrap();
    assert_eq!(versions, (1..=schema::latest()).collect::<Vec<_>>());
    let pool = a.pool();
    a.run(async move {
        let c = pool.get().await.map_err(|e| pg_err("connect", e))?;
        c.execute(
            "INSERT INTO confgate_migrations VALUES (999, 'from the future', 0)",
            &[],
        )
        .await
        .map_err(|e| db_err("q", e))?;
        Ok(())
    })
    .unwrap();
    let err = PgStore::open(url).unwrap_err().to_string();
    assert!(err.contains("schema version 999"), "{err}");
    // A database that cannot be reached is an error naming it, without its password.
    let err = PgStore::open("postgres://u:secret@127.0.0.1:1/x?connect_timeout=2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("secret"),
        "{err}"
    );
}

/// What hosts send is stored as sent: numbers beyond i64, text PostgreSQL's `jsonb` refuses.
fn odd_input_round_trips(url: &str) {
    let s = PgStore::open(url).unwrap();
    let mut n = new_request("h1", u64::MAX, 100);
    n.context.session_id = u64::MAX - 1;
    n.context.reason = "nul \u{0} and \u{1b}[31m".into();
    let (r, created) = s.submit(n).unwrap();
    assert!(created);
    assert_eq!(s.request(r.id).unwrap().unwrap(), r);
    assert_eq!(s.by_host_request("h1", u64::MAX).unwrap(), Some(r.id));
    let grant = GrantRec {
        session_id: u64::MAX - 1,
        ..grant_template()
    };
    let how = Resolution::Approve {
        grant: Box::new(grant),
        note: String::new(),
    };
    let done = s.resolve(r.id, how, 5).unwrap().unwrap();
    assert_eq!(done.request.host_request_id, u64::MAX);
    assert_eq!(s.note_session_ended("h1", u64::MAX - 1, 6).unwrap(), 1);
    let ups = s.updates_after("h1", 0, 10).unwrap();
    assert_eq!(ups[0].host_request_id, u64::MAX);
    assert_eq!(s.host_key("h1").unwrap(), None);
    s.set_host_key("h1", &[1; 32]).unwrap();
    s.set_host_key("h1", &[2; 32]).unwrap();
    assert_eq!(s.host_key("h1").unwrap(), Some(vec![2; 32]));
    assert!(redacted("postgres://u:pw@h:5/d").ends_with("u:***@h:5/d"));
    assert_eq!(redacted("postgres://h/d?x=@"), "postgres://h/d?x=@");
    assert!(url_problem("postgres://h/d?sslmode=require").is_some());
    assert!(url_problem("postgresql://u@h:5432/d").is_none());
}

/// A CA and a server certificate for 127.0.0.1 (PEM): (ca, cert, key).
fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn the_postgres_store_speaks_tls_verified_against_sslrootcert() {
    let Some(cluster) = cluster() else {
        return;
    };
    let (ca, cert, key) = tls_material();
    cluster.enable_tls(&cert, &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let (other_ca, _, _) = tls_material();
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_path, &other_ca).unwrap();
    let base = cluster.url().replace("?sslmode=disable", "");

    // Plain connections are refused now (hostssl only).
    let plain = PgStore::open(&format!("{base}?sslmode=disable")).unwrap_err();
    assert!(plain.to_string().contains("confgate"), "{plain}");

    // TLS, the server verified: the store works, and its connection is encrypted.
    let url = format!("{base}?sslmode=require&sslrootcert={}", ca_path.display());
    let s = PgStore::open(&url).unwrap_or_else(|e| panic!("{e}\n{}", cluster.log()));
    let (r, _) = s.submit(new_request("h1", 1, 100)).unwrap();
    assert!(s.request(r.id).unwrap().is_some());
    let pool = s.pool();
    let ssl: bool = s
        .run(async move {
            let c = pool.get().await.map_err(|e| pg_err("pool", e))?;
            let row = c
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| db_err("query", e))?;
            Ok(row.get::<_, bool>(0))
        })
        .unwrap();
    assert!(ssl, "the store's connection is TLS");
    // Replicas' notifications travel over TLS too.
    let mut rx = s.listen(true);
    assert_eq!(rx.blocking_recv(), Some(Fanout::Resync));

    // A server certificate from another CA is refused, with the reason.
    let bad = format!(
        "{base}?sslmode=require&sslrootcert={}",
        other_path.display()
    );
    let e = PgStore::open(&bad).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // require without a CA to verify against is refused before connecting.
    assert!(
        url_problem(&format!("{base}?sslmode=require"))
            .unwrap()
            .contains("sslrootcert")
    );
}

/// An attestation is used once across the replicas: replayed on the other replica (by
/// another approver, for a request that still needs a second approval) it is refused, as it
/// is on the replica that took it. Two in-process services on one database, over TLS.
#[test]
fn an_attestation_used_on_one_replica_is_refused_on_the_other() {
    use crate::approver::Server;
    use crate::approver::ca::{CaRequest, init_ca};
    use crate::approver::client::{ClientConfig, connect};
    use crate::approver::config::TlsSection;
    use crate::approver::testing;
    use crate::os::clock::now_ms;
    use confgate_proto::v1 as pb;

    let Some(cluster) = cluster() else {
        return;
    };
    let url = cluster.create_db("replay").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    init_ca(&CaRequest {
        dir: tls.clone(),
        hosts: vec!["web-1".into()],
        approvers: vec!["alice".into(), "bob".into()],
        server_names: vec![],
        force: false,
    })
    .unwrap();
    let client = |endpoint: &str, id: &str| ClientConfig {
        endpoint: endpoint.to_owned(),
        ca: Some(tls.join("ca.pem")),
        cert: Some(tls.join(format!("{id}.pem"))),
        key: Some(tls.join(format!("{id}.key"))),
        ..ClientConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut servers = Vec::new();
        for name in ["a", "b"] {
            let sub = dir.path().join(name);
            std::fs::create_dir_all(&sub).unwrap();
            let mut cfg = testing::service_config(&sub);
            cfg.store = url.clone().into();
            cfg.listen = vec!["https://127.0.0.1:0".into()];
            cfg.tls = TlsSection {
                cert: Some(tls.join("server.pem")),
                key: Some(tls.join("server.key")),
                client_ca: Some(tls.join("ca.pem")),
            };
            servers.push(Server::start(cfg, None).await.unwrap());
        }
        let (a, b) = (
            servers[0].addresses()[0].to_string(),
            servers[1].addresses()[0].to_string(),
        );
        let key = dir.path().join("web-1.attest");
        let web1 = crate::approver::attest::Attestor::load_or_create(&key).unwrap();
        let mut host = connect(&client(&a, "host-web-1")).await.unwrap();
        let _updates = host
            .updates(pb::UpdatesRequest {
                after_seq: 0,
                attestation_key: web1.public_key().to_vec(),
            })
            .await
            .unwrap();
        let mut req = testing::request(1, 3).build();
        testing::context(&mut req).quorum = Some(pb::Quorum {
            approvals: 2,
            ..Default::default()
        });
        let r = host.submit(req).await.unwrap().into_inner();
        let mut d = testing::approve(r.id);
        let (st, sig) = web1.attest("web-1", r.id, true, 99, 0, now_ms()).unwrap();
        d.attestation = st;
        d.attestation_signature = sig;
        // Alice's approval, attested, on replica a: one of two.
        let mut alice = connect(&client(&a, "approver-alice")).await.unwrap();
        let first = alice.decide(d.clone()).await.unwrap().into_inner();
        assert_eq!(first.state, pb::RequestState::Pending as i32, "{first:?}");
        // Bob replays the same attestation on replica b, then on a.
        for endpoint in [&b, &a] {
            let mut bob = connect(&client(endpoint, "approver-bob")).await.unwrap();
            let e = bob.decide(d.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
            assert!(e.message().contains("used before"), "{endpoint}: {e}");
        }
        // A fresh attestation for bob completes the quorum.
        let (st, sig) = web1.attest("web-1", r.id, true, 100, 0, now_ms()).unwrap();
        d.attestation = st;
        d.attestation_signature = sig;
        let mut bob = connect(&client(&b, "approver-bob")).await.unwrap();
        let done = bob.decide(d).await.unwrap().into_inner();
        assert_eq!(done.state, pb::RequestState::Approved as i32, "{done:?}");
        for s in servers {
            s.stop().await.unwrap();
        }
    });
}
