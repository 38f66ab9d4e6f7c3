//! End-to-end: nobody approves from inside an agent session in remote mode (issue 21).
//! A real daemon in remote mode against a real `confgate approver serve` on loopback TLS
//! with certificates from `approver init-ca`:
//! - a bare gRPC client inside the session, holding the approver certificate and claiming
//!   `decider_session = 0`, is refused, and the held write is not approved;
//! - approver variables exported to `confgate run` do not reach the agent;
//! - the approvals CLI outside any session on the host (attested by its daemon) approves;
//! - a credential the service marks as a workstation credential decides without an
//!   attestation; an unmarked one cannot.
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, local_approval, rule};
use e2e::service::{
    ApprovalService, Approver, gate_asking, init_ca, remote_daemon, spawn_session, wait_connected,
};
use e2e::*;

/// A daemon in remote mode against `svc` with this host's certificate, asking about
/// `<watched>/gated/**` (deny after `timeout`); connected before it is returned (its
/// attestation key presented before anyone decides).
fn host_of(svc: &ApprovalService, timeout: &'static str) -> Daemon {
    let d = remote_daemon(svc.host_client(), move |w| gate_asking(w, timeout));
    wait_connected(&d, svc);
    d
}

#[test]
fn a_client_inside_the_session_cannot_approve_with_the_approver_certificate() {
    if !require_root("a_client_inside_the_session_cannot_approve_with_the_approver_certificate") {
        return;
    }
    let svc = ApprovalService::start_tls("");
    let d = host_of(&svc, "8s");
    let alice = Approver::tls(&d, &svc, "alice");
    let f = d.watched.join("gated/sudoers");
    std::fs::write(&f, "root ALL\n").unwrap();
    // The agent writes (held), then, from inside the same session, sends Decide with the
    // approver certificate and decider_session = 0 through its own gRPC client, and also
    // tries the approvals CLI (a copy: the built-in rule denies sessions the binary).
    let raw = env!("CARGO_BIN_EXE_raw_decide");
    let copy = d.dir.path().join("cg-copy");
    std::fs::copy(confgate_bin(), &copy).expect("copy the binary");
    let idfile = d.dir.path().join("request-id");
    // The CA certificate is public; the host's own copy is a credential file of its daemon
    // that the built-in rule keeps from sessions, so the agent uses another copy.
    let ca = d.dir.path().join("public-ca.pem");
    std::fs::copy(svc.tls("ca.pem"), &ca).expect("copy the CA certificate");
    let mut flags = svc.approver_flags("alice");
    flags[3] = ca.display().to_string();
    let flags = flags.join(" ");
    let script = format!(
        "echo agent ALL >> gated/sudoers & \
         while [ ! -s {idf} ]; do sleep 0.05; done; id=$(cat {idf}); \
         {raw} {ep} {ca} {cert} {key} $id; echo raw_rc=$?; \
         {copy} --socket {sock} approvals {flags} approve $id --ttl 10m; echo cli_rc=$?; \
         {copy} --socket {sock} approvals {flags} approve $id --ttl 10m --no-daemon; echo nodaemon_rc=$?; \
         wait",
        idf = idfile.display(),
        ep = svc.endpoint,
        ca = ca.display(),
        cert = svc.tls("approver-alice.pem").display(),
        key = svc.tls("approver-alice.key").display(),
        copy = copy.display(),
        sock = d.socket.display(),
    );
    let child = spawn_session(&d, &script, &[]);
    let r = alice.wait_pending(&f);
    let id = id_of(&r);
    std::fs::write(&idfile, &id).unwrap();
    let o = child.wait_with_output().expect("session");
    let out = output_text(&o);
    assert!(
        out.contains("raw_rc=3") && out.contains("refused: PermissionDenied"),
        "the bare client was not refused: {out}\n{}",
        svc.log()
    );
    assert!(out.contains("needs an attestation"), "{out}");
    assert!(
        out.contains("cli_rc=1") && out.contains("refusing to decide"),
        "the daemon attested a session process: {out}"
    );
    assert!(out.contains("nodaemon_rc=1"), "{out}");
    assert_eq!(out.matches("needs an attestation").count(), 2, "{out}");
    // Nothing was approved: the held write got the rule's failure verdict.
    assert!(
        out.contains("Operation not permitted"),
        "the held write went through: {out}"
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "root ALL\n");
    assert_ne!(alice.state_of(&id), "approved");
    assert!(
        !svc.ledger().contains("\"request_approved\""),
        "{}",
        svc.ledger()
    );
    assert!(d.stat("attest_refused") >= 1);
}

#[test]
fn approver_variables_do_not_reach_the_agent() {
    if !require_root("approver_variables_do_not_reach_the_agent") {
        return;
    }
    let d = Daemon::start();
    let o = spawn_session(
        &d,
        "env",
        &[
            ("CONFGATE_APPROVER_TOKEN", "tok-3b1c9e"),
            ("CONFGATE_APPROVER", "https://approver.example:7443"),
            ("CONFGATE_APPROVER_EXTRA", "x"),
            ("CONFGATE_REASON", "kept"),
        ],
    )
    .wait_with_output()
    .expect("session");
    ok(&o);
    let env = String::from_utf8_lossy(&o.stdout);
    assert!(!env.contains("tok-3b1c9e"), "token inherited: {env}");
    assert!(!env.contains("CONFGATE_APPROVER"), "{env}");
    assert!(env.contains("CONFGATE_REASON=kept"), "{env}");
    assert!(env.contains("CONFGATE_SESSION="), "{env}");
}

#[test]
fn the_cli_outside_any_session_approves_with_its_daemons_attestation() {
    if !require_root("the_cli_outside_any_session_approves_with_its_daemons_attestation") {
        return;
    }
    let svc = ApprovalService::start_tls("");
    let d = host_of(&svc, "25s");
    let alice = Approver::tls(&d, &svc, "alice");
    let f = d.watched.join("gated/app.conf");
    std::fs::write(&f, "port=1\n").unwrap();
    let child = spawn_session(&d, "echo port=2 > gated/app.conf", &[]);
    let r = alice.wait_pending(&f);
    let o = alice.run(&["approve", &id_of(&r), "--ttl", "10m"]);
    ok(&o);
    let o = child.wait_with_output().expect("session");
    ok(&o);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "port=2\n");
    let ledger = svc.ledger();
    assert!(
        ledger.contains("\"by\":\"host_attestation\""),
        "the decision was not attested: {ledger}"
    );
    assert!(d.stat("attest_issued") >= 1);
}

#[test]
fn only_a_workstation_credential_decides_without_an_attestation() {
    if !require_root("only_a_workstation_credential_decides_without_an_attestation") {
        return;
    }
    let svc = ApprovalService::start_tls("workstation_approvers = [\"cert:bob\"]");
    let d = host_of(&svc, "25s");
    let (alice, bob) = (
        Approver::tls(&d, &svc, "alice"),
        Approver::tls(&d, &svc, "bob"),
    );
    let f = d.watched.join("gated/w.conf");
    std::fs::write(&f, "a\n").unwrap();
    let child = spawn_session(&d, "echo b > gated/w.conf", &[]);
    let r = alice.wait_pending(&f);
    let id = id_of(&r);
    // alice is not marked: without an attestation she is refused.
    let o = alice.run(&["approve", &id, "--no-daemon"]);
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("needs an attestation"),
        "{}",
        output_text(&o)
    );
    assert_eq!(alice.state_of(&id), "pending");
    // bob is: he decides from a machine without a daemon.
    let o = bob.run(&["approve", &id, "--ttl", "5m", "--no-daemon"]);
    ok(&o);
    ok(&child.wait_with_output().expect("session"));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "b\n");
    assert!(
        svc.ledger().contains("\"by\":\"workstation_credential\""),
        "{}",
        svc.ledger()
    );
}

#[test]
fn a_certificate_from_another_ca_is_logged_and_explained() {
    if !require_root("a_certificate_from_another_ca_is_logged_and_explained") {
        return;
    }
    let svc = ApprovalService::start_tls("");
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path(), "h", &["alice"]);
    let o = std::process::Command::new(confgate_bin())
        .args(["approvals", "--approver", &svc.endpoint, "--ca"])
        .arg(svc.tls("ca.pem"))
        .arg("--cert")
        .arg(other.path().join("approver-alice.pem"))
        .arg("--key")
        .arg(other.path().join("approver-alice.key"))
        .arg("list")
        .output()
        .expect("approvals list");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("client certificate") && err.contains("tls.client_ca"),
        "unclear client error: {err}"
    );
    // The service says who was refused and why.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svc.log().contains("TLS handshake refused") {
        assert!(Instant::now() < deadline, "nothing logged: {}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = svc.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake refused"))
        .unwrap_or_default();
    assert!(line.contains("127.0.0.1:"), "no peer address: {line}");
    assert!(line.contains("reason"), "no reason: {line}");
}

#[test]
fn a_connection_left_by_an_exited_process_gets_no_attestation() {
    if !require_root("a_connection_left_by_an_exited_process_gets_no_attestation") {
        return;
    }
    // The daemon identifies callers by the pid the kernel gave at connect time. A session
    // process that connects, hands the connection to its child and exits leaves a pid the
    // session map no longer knows: that must not read as "outside any session".
    let d = Daemon::start();
    let tool = env!("CARGO_BIN_EXE_inherited_call");
    let o = spawn_session(&d, &format!("{tool} attest {} 1", d.socket.display()), &[])
        .wait_with_output()
        .expect("session");
    let out = output_text(&o);
    assert!(!out.contains("accepted"), "attested a gone process: {out}");
    assert!(
        out.contains("refused: PermissionDenied") && out.contains("is gone"),
        "{out}"
    );
}

#[test]
fn local_mode_a_connection_left_by_an_exited_session_process_cannot_decide() {
    if !require_root("local_mode_a_connection_left_by_an_exited_session_process_cannot_decide") {
        return;
    }
    // The same trick against the local service, which asks the kernel's session map about
    // the caller's pid: the pid must still be the process that connected.
    let g = Gate::start(|w| rule(w, "ask", "timeout = \"8s\"\nfail = \"deny\""));
    let d = &g.d;
    let f = d.watched.join("gated/sudoers");
    std::fs::write(&f, "root ALL\n").unwrap();
    let tool = env!("CARGO_BIN_EXE_inherited_call");
    let sock = d.dir.path().join("approver.sock");
    let idfile = d.dir.path().join("request-id");
    let script = format!(
        "echo agent ALL >> gated/sudoers & \
         while [ ! -s {idf} ]; do sleep 0.05; done; \
         {tool} decide {sock} $(cat {idf}); wait",
        idf = idfile.display(),
        sock = sock.display(),
    );
    let child = spawn_session(d, &script, &[]);
    let id = id_of(&g.wait_request_where("a request", |_| true));
    std::fs::write(&idfile, &id).unwrap();
    let out = output_text(&child.wait_with_output().expect("session"));
    assert!(
        !out.contains("accepted"),
        "approved through a gone pid: {out}"
    );
    assert!(out.contains("refused:") && out.contains("is gone"), "{out}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "root ALL\n");
}

#[test]
fn sessions_cannot_read_approver_credentials_kept_on_the_host() {
    if !require_root("sessions_cannot_read_approver_credentials_kept_on_the_host") {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(|root| {
            let creds = root.join("creds");
            std::fs::create_dir_all(&creds).expect("creds");
            std::fs::write(creds.join("alice.key"), "-----BEGIN PRIVATE KEY-----\n").expect("key");
            format!(
                "{}protected_credentials = [\"{}\"]\n",
                local_approval(root),
                creds.display()
            )
        })),
        ..DaemonOptions::default()
    });
    let key = d.dir.path().join("creds/alice.key");
    let o = d.in_session("claude", "e2e", &format!("cat {}", key.display()));
    assert!(!o.status.success(), "{o:?}");
    // Hidden in a confined session's mount namespace ("No such file"), or refused.
    assert!(
        output_text(&o).contains("Operation not permitted")
            || output_text(&o).contains("denied")
            || output_text(&o).contains("No such file"),
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "{o:?}");
    // Outside any session (the administrator) it reads as usual.
    let o = sh(d.dir.path(), &format!("cat {}", key.display()));
    assert!(o.status.success(), "{o:?}");
    // Refused by the built-in rule (unconfined), or hidden from a confined session.
    assert!(d.stat("gate_denied_builtin") >= 1 || d.stat("session_attached") >= 1);
}
