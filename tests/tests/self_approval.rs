//! End-to-end: nobody approves from inside an agent session in remote mode (issue 21).
//! A real daemon in remote mode against a real `confgate approver serve` on loopback TLS
//! with certificates from `approver init-ca`:
//! - a bare gRPC client inside the session, holding the approver certificate and claiming
//!   `decider_session = 0`, is refused, and the held write is not approved;
//! - approver variables exported to `confgate run` do not reach the agent;
//! - the approvals CLI outside any session on the host (attested by its daemon) approves;
//! - a credential the service marks as a workstation credential decides without an
//!   attestation; an unmarked one cannot.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// `confgate approver serve` on loopback TLS, with its own CA and certificates.
struct Service {
    dir: tempfile::TempDir,
    endpoint: String,
    child: Option<Child>,
}

impl Service {
    /// `extra`: top-level keys of approver.toml (before `[tls]`).
    fn start(extra: &str) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let o = Command::new(confgate_bin())
            .args(["approver", "init-ca", "--dir"])
            .arg(dir.path().join("tls"))
            .args(["--host", &host_name(), "--approver", "alice"])
            .args(["--approver", "bob"])
            .output()
            .expect("init-ca");
        ok(&o);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let endpoint = format!("https://127.0.0.1:{port}");
        let config = dir.path().join("approver.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [{endpoint:?}]\nstore = \"{d}/approver.redb\"\nledger = \"{d}/ledger.jsonl\"\n{extra}\n\
                 [tls]\ncert = \"{d}/tls/server.pem\"\nkey = \"{d}/tls/server.key\"\nclient_ca = \"{d}/tls/ca.pem\"\n"
            ),
        )
        .expect("write approver.toml");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("log");
        let child = Command::new(confgate_bin())
            .arg("--config")
            .arg(&config)
            .args(["approver", "serve"])
            .env("CONFGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("approver serve");
        let s = Service {
            dir,
            endpoint,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.log().contains("approval service listening") {
            assert!(
                Instant::now() < deadline,
                "approval service not ready: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn tls(&self, name: &str) -> PathBuf {
        self.dir.path().join("tls").join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    fn ledger(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ledger.jsonl")).unwrap_or_default()
    }

    /// `[approval.client]` of a host daemon.
    fn host_client(&self) -> String {
        let host = host_name();
        format!(
            "endpoint = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}",
            self.endpoint,
            self.tls("ca.pem").display().to_string(),
            self.tls(&format!("host-{host}.pem")).display().to_string(),
            self.tls(&format!("host-{host}.key")).display().to_string(),
        )
    }

    /// The approvals CLI flags of approver `who` (alice or bob).
    fn approver_flags(&self, who: &str) -> Vec<String> {
        vec![
            "--approver".into(),
            self.endpoint.clone(),
            "--ca".into(),
            self.tls("ca.pem").display().to_string(),
            "--cert".into(),
            self.tls(&format!("approver-{who}.pem"))
                .display()
                .to_string(),
            "--key".into(),
            self.tls(&format!("approver-{who}.key"))
                .display()
                .to_string(),
        ]
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("host name")
        .trim()
        .to_owned()
}

fn remote_daemon(svc: &Service, timeout: &'static str) -> Daemon {
    let client = svc.host_client();
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |root| {
            let w = root.join("watched");
            std::fs::create_dir_all(w.join("gated")).expect("mkdir gated");
            format!(
                "[approval]\nmode = \"remote\"\n[approval.client]\n{client}\n\
                 [gate]\n[[gate.rule]]\nname = \"ask\"\npaths = [\"{}/gated/**\"]\nverdict = \"ask\"\n\
                 timeout = \"{timeout}\"\nfail = \"deny\"\n",
                w.display()
            )
        })),
        ..DaemonOptions::default()
    });
    // Connected (its attestation key presented) before anyone decides.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat(&d, "uplink_connected") != 1 {
        assert!(
            Instant::now() < deadline,
            "uplink not connected\n{}\n{}",
            d.log(),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn stat(d: &Daemon, name: &str) -> u64 {
    let o = d.cli(&["stats", "--json"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).expect("stats json");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn approvals(d: &Daemon, svc: &Service, who: &str, args: &[&str]) -> Output {
    let flags = svc.approver_flags(who);
    let mut all: Vec<&str> = vec!["approvals"];
    all.extend(flags.iter().map(String::as_str));
    all.extend_from_slice(args);
    d.cli(&all)
}

/// The pending request for `path`, waited for.
fn wait_pending(d: &Daemon, svc: &Service, path: &Path) -> Value {
    let want = path.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = approvals(d, svc, "alice", &["list", "--json"]);
        ok(&o);
        if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&o.stdout)
            && let Some(r) = list
                .into_iter()
                .find(|r| r["context"]["path"] == want.as_str())
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no request for {want}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_of(d: &Daemon, svc: &Service, id: &str) -> String {
    let o = approvals(d, svc, "alice", &["show", id, "--json"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).expect("show json");
    v["state"].as_str().unwrap_or_default().to_owned()
}

fn session(d: &Daemon, script: &str, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(confgate_bin());
    c.arg("--config")
        .arg(&d.config)
        .args(["run", "--agent", "claude", "--", "sh", "-c", script])
        .current_dir(&d.watched)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("confgate run")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn id_of(r: &Value) -> String {
    r["id"].as_u64().expect("request id").to_string()
}

#[test]
fn a_client_inside_the_session_cannot_approve_with_the_approver_certificate() {
    if !require_root("a_client_inside_the_session_cannot_approve_with_the_approver_certificate") {
        return;
    }
    let svc = Service::start("");
    let d = remote_daemon(&svc, "8s");
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
    let child = session(&d, &script, &[]);
    let r = wait_pending(&d, &svc, &f);
    let id = id_of(&r);
    std::fs::write(&idfile, &id).unwrap();
    let o = child.wait_with_output().expect("session");
    let out = text(&o);
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
    assert_ne!(state_of(&d, &svc, &id), "approved");
    assert!(
        !svc.ledger().contains("\"request_approved\""),
        "{}",
        svc.ledger()
    );
    assert!(stat(&d, "attest_refused") >= 1);
}

#[test]
fn approver_variables_do_not_reach_the_agent() {
    if !require_root("approver_variables_do_not_reach_the_agent") {
        return;
    }
    let d = Daemon::start();
    let o = session(
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
    let svc = Service::start("");
    let d = remote_daemon(&svc, "25s");
    let f = d.watched.join("gated/app.conf");
    std::fs::write(&f, "port=1\n").unwrap();
    let child = session(&d, "echo port=2 > gated/app.conf", &[]);
    let r = wait_pending(&d, &svc, &f);
    let o = approvals(&d, &svc, "alice", &["approve", &id_of(&r), "--ttl", "10m"]);
    ok(&o);
    let o = child.wait_with_output().expect("session");
    ok(&o);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "port=2\n");
    let ledger = svc.ledger();
    assert!(
        ledger.contains("\"by\":\"host_attestation\""),
        "the decision was not attested: {ledger}"
    );
    assert!(stat(&d, "attest_issued") >= 1);
}

#[test]
fn only_a_workstation_credential_decides_without_an_attestation() {
    if !require_root("only_a_workstation_credential_decides_without_an_attestation") {
        return;
    }
    let svc = Service::start("workstation_approvers = [\"cert:bob\"]");
    let d = remote_daemon(&svc, "25s");
    let f = d.watched.join("gated/w.conf");
    std::fs::write(&f, "a\n").unwrap();
    let child = session(&d, "echo b > gated/w.conf", &[]);
    let r = wait_pending(&d, &svc, &f);
    let id = id_of(&r);
    // alice is not marked: without an attestation she is refused.
    let o = approvals(&d, &svc, "alice", &["approve", &id, "--no-daemon"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("needs an attestation"), "{}", text(&o));
    assert_eq!(state_of(&d, &svc, &id), "pending");
    // bob is: he decides from a machine without a daemon.
    let o = approvals(
        &d,
        &svc,
        "bob",
        &["approve", &id, "--ttl", "5m", "--no-daemon"],
    );
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
    let svc = Service::start("");
    let other = tempfile::tempdir().unwrap();
    ok(&Command::new(confgate_bin())
        .args(["approver", "init-ca", "--dir"])
        .arg(other.path())
        .args(["--host", "h", "--approver", "alice"])
        .output()
        .expect("init-ca"));
    let o = Command::new(confgate_bin())
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
    let o = session(&d, &format!("{tool} attest {} 1", d.socket.display()), &[])
        .wait_with_output()
        .expect("session");
    let out = text(&o);
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
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(|root| {
            let w = root.join("watched");
            std::fs::create_dir_all(w.join("gated")).expect("mkdir gated");
            format!(
                "[gate]\n[[gate.rule]]\nname = \"ask\"\npaths = [\"{}/gated/**\"]\nverdict = \"ask\"\n\
                 timeout = \"8s\"\nfail = \"deny\"\n",
                w.display()
            )
        })),
        ..DaemonOptions::default()
    });
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
    let child = session(&d, &script, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let o = d.cli(&["approvals", "list", "--json"]);
        ok(&o);
        if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&o.stdout)
            && let Some(r) = list.first()
        {
            break id_of(r);
        }
        assert!(Instant::now() < deadline, "no request\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::write(&idfile, &id).unwrap();
    let out = text(&child.wait_with_output().expect("session"));
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
                "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\nprotected_credentials = [\"{}\"]\n",
                root.join("approver.sock").display(),
                creds.display()
            )
        })),
        ..DaemonOptions::default()
    });
    let key = d.dir.path().join("creds/alice.key");
    let o = d.in_session("claude", "e2e", &format!("cat {}", key.display()));
    assert!(!o.status.success(), "{o:?}");
    assert!(
        text(&o).contains("Operation not permitted") || text(&o).contains("denied"),
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "{o:?}");
    // Outside any session (the administrator) it reads as usual.
    let o = sh(d.dir.path(), &format!("cat {}", key.display()));
    assert!(o.status.success(), "{o:?}");
    assert!(d.stat("gate_denied_builtin") >= 1);
}
