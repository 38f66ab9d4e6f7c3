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
    let mut d = remote_daemon(format!("endpoint = {:?}", svc.endpoint), |w| {
        format!(
            "[gate]\n{}",
            rule(
                w,
                "dar",
                "mode = \"deny-and-request\"\non_expiry = \"revert\""
            )
        )
    });
    // Renames are detected (not held) for unconfined sessions: what these tests cover.
    d.confine_sessions = false;
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

/// The records of a JSON-lines ledger.
fn ledger_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn host_ledger(d: &Daemon) -> Vec<Value> {
    ledger_lines(
        &std::fs::read_to_string(d.dir.path().join("state/ledger.jsonl")).unwrap_or_default(),
    )
}

/// Host ledger records of `kind` about host request `host_request_id`.
fn host_records(d: &Daemon, kind: &str, host_request_id: u64) -> Vec<Value> {
    host_ledger(d)
        .into_iter()
        .filter(|r| r["kind"] == kind && r["body"]["host_request_id"] == host_request_id)
        .collect()
}

/// `approve`/`deny` straight at the service: its Unix socket is a standalone service's, whose
/// callers need no daemon's attestation (`--no-daemon`: the daemon may be stopped or dead).
fn decide_at_service(d: &Daemon, ep: &str, verb: &str, id: &str) {
    let mut args = vec![verb, id, "--no-daemon"];
    if verb == "approve" {
        args.extend(["--ttl", "1h"]);
    }
    ok(&Approver::at(d, ep).run(&args));
}

/// The state the service reports for request `id`.
fn service_state(d: &Daemon, ep: &str, id: &str) -> String {
    Approver::at(d, ep)
        .list(true)
        .iter()
        .find(|r| id_of(r) == id)
        .map(|r| r["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// `audit verify` of the host ledger and of the service's own: both chains verify.
fn both_ledgers_verify(d: &Daemon, svc: &ApprovalService) {
    let o = d.cli(&["audit", "verify"]);
    assert!(o.status.success(), "host ledger: {o:?}");
    let o = svc.cli(&["audit", "verify"]);
    assert!(o.status.success(), "service ledger: {o:?}");
}

/// What neither ledger may say about a request of `rule` that was approved once: a second
/// grant, a grant not tied to its rule, or an end it did not have (denied, expired,
/// released by a crash, rejected).
fn approved_exactly_once(d: &Daemon, svc: &ApprovalService, r: &Value, rule: &str) {
    let host_id = r["host_request_id"].as_u64().expect("host_request_id");
    let grants = host_records(d, "grant", host_id);
    assert_eq!(grants.len(), 1, "one grant for the request: {grants:#?}");
    assert_eq!(grants[0]["body"]["rule"], rule, "{grants:#?}");
    for kind in ["decision", "released_by_crash", "request_rejected"] {
        let other = host_records(d, kind, host_id);
        assert!(other.is_empty(), "the host ledger says {kind}: {other:#?}");
    }
    assert_eq!(
        service_state(d, &svc.endpoint, &id_of(r)),
        "approved",
        "{}",
        svc.log()
    );
    let g = d.cli(&["grants", "--approver", &svc.endpoint, "list", "--json"]);
    ok(&g);
    let listed: Value = serde_json::from_slice(&g.stdout).expect("grants json");
    let ours: Vec<&Value> = listed
        .as_array()
        .expect("grants list")
        .iter()
        .filter(|g| g["request_id"] == r["id"])
        .collect();
    assert_eq!(ours.len(), 1, "one grant at the service: {listed:#}");
    let grant_id = grants[0]["body"]["grant"].clone();
    assert_eq!(ours[0]["id"], grant_id, "the host's grant is the service's");
    // The service's ledger: one resolution, an approval, and one grant.
    let service_ledger = ledger_lines(&svc.ledger());
    let ends: Vec<&Value> = service_ledger
        .iter()
        .filter(|x| {
            x["body"]["request_id"] == r["id"]
                && x["kind"].as_str().is_some_and(|k| {
                    [
                        "request_approved",
                        "request_denied",
                        "request_expired",
                        "request_released",
                    ]
                    .contains(&k)
                })
        })
        .collect();
    assert_eq!(ends.len(), 1, "one resolution at the service: {ends:#?}");
    assert_eq!(ends[0]["kind"], "request_approved", "{ends:#?}");
    let created: Vec<&Value> = service_ledger
        .iter()
        .filter(|x| x["kind"] == "grant_created" && x["body"]["request_id"] == r["id"])
        .collect();
    assert_eq!(created.len(), 1, "one grant_created: {created:#?}");
    both_ledgers_verify(d, svc);
}

/// Fault suite (issue 13): kill -9 of the approval service at each step of a round trip of
/// a deny-and-request request, with the daemon crashing too: the request filed (the
/// service dies; the daemon's spool re-sends it, and it is filed once); the decision
/// committed at the service while the daemon is dead, then the service killed before
/// anything delivered it (it reaches the daemon at its restart, from the service's update
/// log); the grant committed on the host (both killed again). The approval applies exactly
/// once, nothing is recorded as something it was not, both ledgers verify.
#[test]
fn a_decision_committed_before_a_service_crash_applies_once_after_both_restart() {
    if !require_root("a_decision_committed_before_a_service_crash_applies_once_after_both_restart")
    {
        return;
    }
    let mut svc = ApprovalService::start_unix();
    let ep = svc.endpoint.clone();
    let mut d = remote_daemon(format!("endpoint = {ep:?}"), |w| {
        format!(
            "[gate]\n[[gate.rule]]\nname = \"dar\"\npaths = [\"{w}/gated/**\"]\nverdict = \"ask\"\nmode = \"deny-and-request\"\nfail = \"deny\"\n"
        )
    });
    // The host-wide fanotify gate: an unconfined session's writes survive a restart.
    d.confine_sessions = false;
    let f = d.watched.join("gated/app.env");
    std::fs::write(&f, "DEBUG=false\n").unwrap();
    let go = d.dir.path().join("go");
    let c = spawn_session(
        &d,
        &format!(
            "echo DEBUG=true > gated/app.env && exit 3; \
             while [ ! -e {go} ]; do sleep 0.05; done; \
             echo DEBUG=true > gated/app.env && echo retried",
            go = go.display()
        ),
        &[],
    );
    let c = KillOnDrop(Some(c));

    // Request filed: the service dies at once; after its restart the request is there once.
    let r = Approver::at(&d, &ep).wait_pending(&f);
    svc.kill();
    svc.spawn();
    let want = f.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let filed = loop {
        let all = Approver::at(&d, &ep).list(true);
        let ours: Vec<Value> = all
            .into_iter()
            .filter(|x| x["context"]["path"] == want.as_str())
            .collect();
        if !ours.is_empty() && d.stat("uplink_spool_pending") == 0 {
            break ours;
        }
        assert!(Instant::now() < deadline, "{}\n{}", d.log(), svc.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    // Filed once, under the same host request id (the service's own id may be new: a
    // request it had not yet made durable is lost with the crash and filed again from
    // the daemon's spool; README, "Durability of an approval round trip").
    assert_eq!(filed.len(), 1, "filed once: {filed:#?}");
    assert_eq!(filed[0]["host_request_id"], r["host_request_id"]);
    assert_eq!(filed[0]["state"], "pending");
    let r = filed[0].clone();

    // Decision committed at the service while the daemon is dead, then the service dies
    // before anything delivered it. Service first, then the daemon, come back.
    d.kill();
    decide_at_service(&d, &ep, "approve", &id_of(&r));
    assert_eq!(service_state(&d, &ep, &id_of(&r)), "approved");
    svc.kill();
    svc.spawn();
    d.start_again();
    d.wait_stat("gate_grants_live", |n| n == 1);
    std::fs::write(&go, "").unwrap();
    let mut c = c;
    let o = finish(c.0.take().expect("session"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "retried\n", "{o:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=true\n");
    approved_exactly_once(&d, &svc, &r, "dar");

    // Grant committed on the host: both die and come back; the decision is not applied a
    // second time (the update log is replayed from the host's cursor only).
    svc.kill();
    d.kill();
    svc.spawn();
    d.start_again();
    // A barrier: a later request, denied. Updates arrive in order, so once its denial is
    // in the host ledger, a replay of the approval would have been handed over before it
    // (and counted in this daemon's `uplink_updates_applied`).
    let barrier = d.watched.join("gated/barrier.env");
    let o = finish(spawn_session(&d, "echo x > gated/barrier.env", &[]));
    assert!(eperm(&o), "{o:?}");
    let b = Approver::at(&d, &ep).wait_pending(&barrier);
    decide_at_service(&d, &ep, "deny", &id_of(&b));
    let barrier_id = b["host_request_id"].as_u64().expect("host_request_id");
    poll(
        "the barrier's denial on the host",
        Duration::from_secs(20),
        || (!host_records(&d, "decision", barrier_id).is_empty()).then_some(()),
    );
    assert_eq!(
        d.stat("uplink_updates_applied"),
        1,
        "only the barrier's update reached the restarted daemon"
    );
    assert_eq!(d.stat("gate_grants_live"), 1);
    approved_exactly_once(&d, &svc, &r, "dar");
}

/// Kills the child when the test ends (or panics).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A held write released by a daemon crash, approved at the service while the daemon was
/// down: at the restart the hold is closed as `released_by_crash` and its change reverted;
/// the approval that then arrives makes no grant (nothing would be left for it to cover but
/// later writes nobody approved), and says so in the ledger and the counters.
#[test]
fn an_approval_for_a_hold_a_crash_released_makes_no_grant() {
    if !require_root("an_approval_for_a_hold_a_crash_released_makes_no_grant") {
        return;
    }
    let svc = ApprovalService::start_unix();
    let ep = svc.endpoint.clone();
    let mut d = remote_daemon(format!("endpoint = {ep:?}"), |w| {
        format!(
            "[gate]\n[[gate.rule]]\nname = \"held\"\npaths = [\"{w}/gated/**\"]\nverdict = \"ask\"\nmode = \"hold\"\ntimeout = \"60s\"\nfail = \"deny\"\non_expiry = \"revert\"\n"
        )
    });
    // The host-wide fanotify gate: a crash lets an unconfined session's held write through.
    d.confine_sessions = false;
    let f = d.watched.join("gated/app.env");
    std::fs::write(&f, "DEBUG=false\n").unwrap();
    let c = spawn_session(&d, "echo DEBUG=true > gated/app.env && echo written", &[]);
    let r = Approver::at(&d, &ep).wait_pending(&f);
    let host_id = r["host_request_id"].as_u64().expect("host_request_id");
    // The host's record of the request is made durable by the next durable commit (or
    // after a 50 ms grace): registering a session is one. Without it the crash could lose
    // the request on the host, a case the same rule covers (no record: no grant).
    let o = d
        .session_command("other", None, "true")
        .output()
        .expect("confgate run");
    assert!(o.status.success(), "{o:?}");
    // kill -9: the kernel answers the held open with allow, and the shell writes.
    d.kill();
    let o = finish(c);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "written\n", "{o:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=true\n");
    decide_at_service(&d, &ep, "approve", &id_of(&r));
    d.start_again();
    poll(
        "the approval ignored on the host",
        Duration::from_secs(30),
        || (!host_records(&d, "decision_ignored", host_id).is_empty()).then_some(()),
    );
    // The release is settled (ledgered, reverted) by its own task, maybe after the approval.
    poll(
        "the hold closed as released_by_crash",
        Duration::from_secs(30),
        || (!host_records(&d, "released_by_crash", host_id).is_empty()).then_some(()),
    );
    poll("the change reverted", Duration::from_secs(30), || {
        (std::fs::read_to_string(&f).unwrap_or_default() == "DEBUG=false\n").then_some(())
    });
    assert_eq!(host_records(&d, "released_by_crash", host_id).len(), 1);
    assert!(host_records(&d, "grant", host_id).is_empty());
    assert_eq!(d.stat("gate_grants_live"), 0);
    assert_eq!(d.stat("gate_decisions_for_closed_requests"), 1);
    // A later write by a session is held again (no grant covers it).
    let c = spawn_session(&d, "echo DEBUG=1 > gated/app.env", &[]);
    let again = Approver::at(&d, &ep).wait_pending(&f);
    assert_ne!(again["host_request_id"], r["host_request_id"]);
    decide_at_service(&d, &ep, "deny", &id_of(&again));
    let o = finish(c);
    assert!(eperm(&o), "{o:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=false\n");
}
