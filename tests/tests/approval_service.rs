//! End-to-end: the daemon in remote mode against `confgate approver serve` as a separate
//! process: the service killed mid-request, its restart, TLS host identities, and renames
//! and reasons that reach the approver.
use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use e2e::gate::{id_of, rule};
use e2e::service::{
    ApprovalService, Approver, free_port, gate_asking, init_ca, remote_daemon, spawn_session,
    wait_connected,
};
use e2e::*;
use serde_json::Value;

fn finish(c: Child) -> Output {
    c.wait_with_output().expect("session output")
}

fn eperm(o: &Output) -> bool {
    !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted")
}

#[test]
fn service_killed_mid_request_fails_closed_and_keeps_acknowledged_decisions() {
    if !require_root("service_killed_mid_request_fails_closed_and_keeps_acknowledged_decisions") {
        return;
    }
    let mut svc = ApprovalService::start_unix();
    let ep = svc.endpoint.clone();
    let d = remote_daemon(format!("endpoint = {ep:?}"), |w| gate_asking(w, "4s"));
    let approver = Approver::at(&d, &ep);
    let first = d.watched.join("gated/first.conf");
    let second = d.watched.join("gated/second.conf");
    std::fs::write(&first, "a\n").unwrap();
    std::fs::write(&second, "a\n").unwrap();

    // An acknowledged decision: approved, and the held write lands.
    let c = spawn_session(&d, "echo b > gated/first.conf", &[]);
    let r1 = approver.wait_pending(&first);
    ok(&approver.run(&["approve", &id_of(&r1), "--ttl", "1h"]));
    ok(&finish(c));
    assert_eq!(std::fs::read_to_string(&first).unwrap(), "b\n");

    // The service dies while the second write is held: the rule's failure verdict.
    let c = spawn_session(&d, "echo b > gated/second.conf", &[]);
    let r2 = approver.wait_pending(&second);
    svc.kill();
    let o = finish(c);
    assert!(eperm(&o), "{o:?}\n{}", d.log());
    assert_eq!(std::fs::read_to_string(&second).unwrap(), "a\n");
    assert!(d.stat("gate_fallback_deny") >= 1);

    // After a restart, the approval is still there with its grant, and the request that
    // outlived its deadline is resolved by its failure verdict.
    svc.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = approver.list(true);
        let state = |id: &str| {
            all.iter()
                .find(|r| id_of(r) == id)
                .map(|r| r["state"].as_str().unwrap_or("").to_string())
        };
        let (s1, s2) = (state(&id_of(&r1)), state(&id_of(&r2)));
        if s1.as_deref() == Some("approved") && s2.as_deref() == Some("expired") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after restart: {s1:?} {s2:?}\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let g = d.cli(&["grants", "--approver", &ep, "list", "--json"]);
    ok(&g);
    let grants = String::from_utf8_lossy(&g.stdout);
    assert!(grants.contains("first.conf"), "{grants}");
    // The daemon reconnects by itself.
    wait_connected(&d, &svc);
}

#[test]
fn a_host_without_a_valid_client_certificate_is_refused() {
    if !require_root("a_host_without_a_valid_client_certificate_is_refused") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    for (dir, host) in [(pki.path(), "web-1"), (other.path(), "intruder")] {
        init_ca(dir, host, &["alice"]);
    }
    let p = pki.path().display().to_string();
    let svc = ApprovalService::start(
        &format!("https://127.0.0.1:{}", free_port()),
        &format!(
            "[tls]\ncert = \"{p}/server.pem\"\nkey = \"{p}/server.key\"\nclient_ca = \"{p}/ca.pem\"\n"
        ),
    );
    let ep = svc.endpoint.clone();
    // A certificate from another CA: the handshake is refused, nothing is submitted, and
    // the held write gets the failure verdict.
    let o = other.path().display().to_string();
    let bad = remote_daemon(
        format!(
            "endpoint = {ep:?}\nca = \"{p}/ca.pem\"\ncert = \"{o}/host-intruder.pem\"\nkey = \"{o}/host-intruder.key\""
        ),
        |w| gate_asking(w, "2s"),
    );
    std::fs::write(bad.watched.join("gated/x.conf"), "a\n").unwrap();
    let out = bad.in_session("claude", "", "echo b > gated/x.conf");
    assert!(eperm(&out), "{out:?}");
    // The handshake fails at the first call: a connect or send failure, never connected,
    // and the request stays in the daemon's spool.
    assert!(
        bad.stat("uplink_connect_failures") + bad.stat("uplink_send_errors") >= 1,
        "{}",
        bad.log()
    );
    assert_eq!(bad.stat("uplink_connected"), 0);
    assert!(bad.stat("uplink_spool_pending") >= 1);
    drop(bad);

    // The host's own certificate works, and an approver certificate decides.
    let good = remote_daemon(
        format!(
            "endpoint = {ep:?}\nca = \"{p}/ca.pem\"\ncert = \"{p}/host-web-1.pem\"\nkey = \"{p}/host-web-1.key\""
        ),
        |w| gate_asking(w, "20s"),
    );
    let f = good.watched.join("gated/x.conf");
    std::fs::write(&f, "a\n").unwrap();
    let c = spawn_session(&good, "echo b > gated/x.conf", &[]);
    let alice = Approver {
        d: &good,
        flags: [
            "--approver",
            &ep,
            "--ca",
            &format!("{p}/ca.pem"),
            "--cert",
            &format!("{p}/approver-alice.pem"),
            "--key",
            &format!("{p}/approver-alice.key"),
        ]
        .map(String::from)
        .to_vec(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let Some(r) = alice.list(false).first() {
            assert_eq!(
                r["context"]["host"], "web-1",
                "the host is named by its certificate"
            );
            break id_of(r);
        }
        assert!(Instant::now() < deadline, "{}\n{}", good.log(), svc.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    // Outside any session on the host: its daemon attests the decision.
    ok(&alice.run(&["approve", &id, "--ttl", "10m"]));
    ok(&finish(c));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "b\n");
}

/// The reason and rename scenario: session A's deny-and-request write (reason from the
/// environment), approved, then written under A's grant (pre-image kept); session B renames
/// a file from outside onto it. Returns the daemon (and service) and the first
/// `unapproved_rename` ledger record about the file.
fn rename_over_an_approved_change() -> (ApprovalService, Daemon, PathBuf, Value) {
    let svc = ApprovalService::start_unix();
    let d = remote_daemon(format!("endpoint = {:?}", svc.endpoint), |w| {
        format!(
            "[gate]\n{}",
            rule(
                w,
                "dar",
                "mode = \"deny-and-request\"\non_expiry = \"revert\""
            )
        )
    });
    let approver = Approver::at(&d, &svc.endpoint);
    let f = d.watched.join("gated/app.env");
    std::fs::write(&f, "DEBUG=false\n").unwrap();
    // Session A tries (refused at once, the request filed), waits for the approval (a flag
    // from the test), and writes again under its grant: the gate keeps the pre-image.
    let flag = d.dir.path().join("approved");
    let c = spawn_session(
        &d,
        &format!(
            "echo DEBUG=true > gated/app.env && exit 3; \
             while [ ! -e {flag} ]; do sleep 0.05; done; \
             echo DEBUG=true > gated/app.env && echo retried",
            flag = flag.display()
        ),
        &[("CONFGATE_REASON", "turn on debug to chase a 500")],
    );
    let r = approver.wait_pending(&f);
    assert_eq!(r["context"]["reason"], "turn on debug to chase a 500");
    assert_eq!(r["context"]["mode"], "deny-and-request");
    ok(&approver.run(&["approve", &id_of(&r), "--ttl", "1h"]));
    d.wait_stat("gate_grants_live", |n| n == 1);
    std::fs::write(&flag, "").unwrap();
    let o = finish(c);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "deny-and-request refused the first try: {o:?}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "retried\n");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=true\n");
    // The approved write's diff is recorded (100 ms after its close), and with it the
    // content it left.
    poll(
        "the approved change in the ledger",
        Duration::from_secs(15),
        || d.ledger().into_iter().find(|r| r["kind"] == "change"),
    );

    // Session B writes a file outside the tree and renames it in: the gate could not hold
    // it and B has no grant, so it is detected, attributed and (rule: revert) undone: the
    // newest approved content is put back and the renamed-in file kept in quarantine.
    let outside = d.dir.path().join("staging.env");
    let script = format!(
        "printf 'DEBUG=evil\\n' > {o} && mv {o} gated/app.env",
        o = outside.display()
    );
    ok(&finish(spawn_session(&d, &script, &[])));
    let want = f.display().to_string();
    let rec = poll(
        "the unapproved rename in the ledger",
        Duration::from_secs(15),
        || {
            d.ledger()
                .into_iter()
                .find(|r| r["kind"] == "unapproved_rename" && r["body"]["path"] == want.as_str())
        },
    );
    (svc, d, f, rec)
}

#[test]
fn reason_from_the_environment_reaches_the_approver_and_renames_are_reverted() {
    if !require_root("reason_from_the_environment_reaches_the_approver_and_renames_are_reverted") {
        return;
    }
    let (_svc, d, f, rec) = rename_over_an_approved_change();
    let body = &rec["body"];
    assert_eq!(
        (body["action"].as_str(), body["agent"].as_str()),
        (Some("revert"), Some("claude")),
        "{rec}"
    );
    assert!(
        !body["restored"].is_null(),
        "the pre-image was restored: {rec}"
    );
    assert_eq!(
        std::fs::read_to_string(&f).ok().as_deref(),
        Some("DEBUG=true\n"),
        "{rec}\n{}",
        d.log()
    );
    let q = body["quarantined_as"].as_str().expect("quarantined_as");
    assert_eq!(
        std::fs::read_to_string(q).ok().as_deref(),
        Some("DEBUG=evil\n"),
        "the renamed-in file is kept in quarantine: {rec}"
    );
    assert!(d.stat("gate_unapproved_renames") >= 1);
}

#[test]
fn a_rename_is_handled_once() {
    if !require_root("a_rename_is_handled_once") {
        return;
    }
    let (_svc, d, f, _) = rename_over_an_approved_change();
    // A barrier: a later rename by the same session onto another gated file. The engine
    // handles renames in order, so once its record is in the ledger, any second record of
    // the first rename would be too.
    let outside = d.dir.path().join("staging2.env");
    let script = format!(
        "printf 'x\\n' > {o} && mv {o} gated/other.env",
        o = outside.display()
    );
    ok(&finish(spawn_session(&d, &script, &[])));
    let renames = |path: &str| -> Vec<Value> {
        d.ledger()
            .into_iter()
            .filter(|r| r["kind"] == "unapproved_rename" && r["body"]["path"] == path)
            .collect()
    };
    let other = d.watched.join("gated/other.env").display().to_string();
    poll(
        "the barrier rename in the ledger",
        Duration::from_secs(15),
        || (!renames(&other).is_empty()).then_some(()),
    );
    let records = renames(&f.display().to_string());
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(d.stat("gate_unapproved_renames"), 2);
}
