//! End-to-end checks of README claims about grants that no other test made (issue 13,
//! "Untested claims"): grants and kept pre-images survive a daemon restart, a retry in
//! deny-and-request files no second request, `--scope agent`, `--glob`, the service's
//! `max_ttl_secs`, and the events file's modes.
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;

const HOLD_DENY: &str = "mode = \"hold\"\ntimeout = \"30s\"\nfail = \"deny\"";
const HOLD_REVERT: &str =
    "mode = \"hold\"\ntimeout = \"30s\"\nfail = \"deny\"\non_expiry = \"revert\"";

fn wait_file(path: &std::path::Path, want: &str, g: &Gate) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} is {now:?}, want {want:?}\n{}",
            path.display(),
            g.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gate (`on_expiry = "revert"`) where a session wrote `pool=50` over `pool=10` in
/// `gated/app.conf`, approved for 10 minutes; the writer's output.
fn approved_pool_write() -> (Gate, std::path::PathBuf, std::process::Output) {
    let g = Gate::start(|w| rule(w, "r", HOLD_REVERT));
    let f = g.gated("app.conf");
    std::fs::write(&f, "pool=10\n").expect("seed");
    let child = g.spawn_in_session("claude", "echo pool=50 > gated/app.conf && echo written");
    let r = g.wait_request(&f);
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "10m"]));
    let o = wait_child(child, Duration::from_secs(30));
    (g, f, o)
}

#[test]
fn grants_and_kept_pre_images_survive_a_restart() {
    if !require_root("grants_and_kept_pre_images_survive_a_restart") {
        return;
    }
    let (mut g, f, o) = approved_pool_write();
    assert!(o.status.success(), "{o:?}");
    let rec = g.wait_ledgered("grant", |_| true);
    let grant = rec["grant"].as_u64().expect("grant");
    // The scope is a documented JSON object, not Rust debug text.
    assert_eq!(rec["scope"]["kind"], "session", "{rec}");
    assert!(rec["scope"]["session_id"].as_u64().is_some(), "{rec}");
    g.wait_ledgered("change", |b| b["grant"].as_u64() == Some(grant));
    g.d.restart();
    assert_eq!(g.stat("gate_grants_live"), 1, "the grant came back");
    // Revoking it after the restart reverts from the pre-image kept before it.
    ok(&g.cli(&["grants", "revoke", &grant.to_string()]));
    wait_file(&f, "pool=10\n", &g);
    let rev = g.wait_ledgered("reverted", |b| b["grant"].as_u64() == Some(grant));
    assert_eq!(rev["why"], "revoked", "{rev}");
}

#[test]
fn a_retry_while_a_deny_and_request_is_pending_files_no_second_request() {
    if !require_root("a_retry_while_a_deny_and_request_is_pending_files_no_second_request") {
        return;
    }
    let g = Gate::start(|w| rule(w, "dar", "mode = \"deny-and-request\"\nfail = \"deny\""));
    let f = g.gated("app.env");
    std::fs::write(&f, "DEBUG=false\n").expect("seed");
    let go = g.d.dir.path().join("go");
    // Three attempts at once, then (after approval) a retry in the same session.
    let script = format!(
        "for i in 1 2 3; do echo DEBUG=true > gated/app.env; done; \
         while [ ! -e {go} ]; do sleep 0.05; done; echo DEBUG=true > gated/app.env",
        go = go.display()
    );
    let child = g.spawn_in_session("claude", &script);
    g.wait_request(&f);
    // Let the three attempts all be decided before counting.
    g.d.wait_stat("gate_denied", |n| n >= 3);
    let pending: Vec<_> = g
        .pending()
        .into_iter()
        .filter(|r| r["context"]["path"] == f.display().to_string().as_str())
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(g.stat("gate_requests"), 1);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=false\n");
    // After approval, the retry passes under the grant.
    ok(&g.cli(&["approvals", "approve", &id_of(&pending[0]), "--ttl", "10m"]));
    g.wait_ledgered("grant", |_| true);
    std::fs::write(&go, "").expect("go");
    let o = wait_child(child, Duration::from_secs(30));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=true\n");
}

#[test]
fn agent_scope_and_glob_widen_a_grant_as_documented() {
    if !require_root("agent_scope_and_glob_widen_a_grant_as_documented") {
        return;
    }
    let g = Gate::start(|w| rule(w, "r", HOLD_DENY));
    let a = g.gated("a.conf");
    // Existing files: a grant covers the operations asked about (write), not creation.
    for n in ["a.conf", "b.conf", "c.conf", "d.txt"] {
        std::fs::write(g.gated(n), "x=0\n").expect("seed");
    }
    let child = g.spawn_in_session("claude", "echo x=1 >> gated/a.conf");
    let r = g.wait_request(&a);
    let glob = format!(
        "{}/*.conf",
        g.gated("").display().to_string().trim_end_matches('/')
    );
    ok(&g.cli(&[
        "approvals",
        "approve",
        &id_of(&r),
        "--ttl",
        "10m",
        "--scope",
        "agent",
        "--glob",
        &glob,
    ]));
    assert!(wait_child(child, Duration::from_secs(30)).status.success());
    // Another session of the same agent, another file in the glob: no request.
    let o = wait_child(
        g.spawn_in_session("claude", "echo y=1 >> gated/b.conf"),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(g.gated("b.conf")).unwrap(),
        "x=0\ny=1\n"
    );
    assert_eq!(g.stat("gate_requests"), 1);
    // Outside the glob, or another agent: asked again.
    let other = g.spawn_in_session("codex", "echo z=1 >> gated/c.conf");
    g.wait_request(&g.gated("c.conf"));
    let outside = g.spawn_in_session("claude", "echo z=1 >> gated/d.txt");
    let r2 = g.wait_request(&g.gated("d.txt"));
    ok(&g.cli(&["approvals", "deny", &id_of(&r2)]));
    assert!(
        !wait_child(outside, Duration::from_secs(30))
            .status
            .success()
    );
    let rc = g
        .pending()
        .into_iter()
        .find(|r| r["context"]["path"] == g.gated("c.conf").display().to_string().as_str())
        .expect("c.conf request");
    ok(&g.cli(&["approvals", "deny", &id_of(&rc)]));
    assert!(!wait_child(other, Duration::from_secs(30)).status.success());
}

#[test]
fn a_ttl_over_the_services_maximum_is_refused() {
    if !require_root("a_ttl_over_the_services_maximum_is_refused") {
        return;
    }
    let g = Gate::start(|w| rule(w, "r", HOLD_DENY));
    let a = g.gated("a.conf");
    std::fs::write(&a, "x=0\n").expect("seed");
    let child = g.spawn_in_session("claude", "echo x=1 >> gated/a.conf");
    let r = g.wait_request(&a);
    // The default max_ttl_secs is 7 days.
    let o = g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "8d"]);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("ttl") || err.contains("max"), "{err}");
    assert!(
        g.pending().iter().any(|p| p["id"] == r["id"]),
        "still pending"
    );
    ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
    assert!(!wait_child(child, Duration::from_secs(30)).status.success());
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "x=0\n");
}

#[test]
fn the_events_file_is_0640_in_a_0750_directory() {
    if !require_root("the_events_file_is_0640_in_a_0750_directory") {
        return;
    }
    let d = Daemon::start();
    ok(&sh(&d.watched, "echo x > f.conf"));
    d.wait_for("an event", |ev| !ev.is_empty());
    let file = std::fs::metadata(&d.events_file).expect("events file");
    let dir = std::fs::metadata(d.events_file.parent().expect("dir")).expect("dir");
    assert_eq!(file.permissions().mode() & 0o7777, 0o640);
    assert_eq!(dir.permissions().mode() & 0o7777, 0o750);
}

#[test]
fn audit_follows_an_approver_config_given_with_config() {
    // No root needed: only files are read.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("approver.toml");
    let ledger = dir.path().join("svc-ledger.jsonl");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"unix:{}\"]\nstore = {:?}\nledger = {:?}\n",
            dir.path().join("a.sock").display(),
            dir.path().join("a.redb").display().to_string(),
            ledger.display().to_string()
        ),
    )
    .expect("approver.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(confgate_bin())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("confgate")
    };
    // Before the service wrote anything: the error names the service's ledger.
    let o = run(&["audit", "log"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("svc-ledger.jsonl"), "{o:?}");
    assert!(!err.contains("unknown field"), "{o:?}");
    // And check-config recognises the file.
    let o = run(&["check-config"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("approval service"),
        "{o:?}"
    );
}

#[test]
fn grants_of_an_ended_session_are_listed_as_ended() {
    if !require_root("grants_of_an_ended_session_are_listed_as_ended") {
        return;
    }
    let g = Gate::start(|w| rule(w, "r", HOLD_DENY));
    let a = g.gated("a.conf");
    std::fs::write(&a, "x=0\n").expect("seed");
    let child = g.spawn_in_session("claude", "echo x=1 >> gated/a.conf");
    let r = g.wait_request(&a);
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "10m"]));
    // The session's only process exits: the session ends.
    assert!(wait_child(child, Duration::from_secs(30)).status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = g.cli(&["grants", "list", "--json"]);
        ok(&o);
        let list = e2e::gate::parse_json_list(&o.stdout);
        assert_eq!(list.len(), 1, "{list:?}");
        if list[0]["state"] == "session_ended" {
            assert!(list[0]["session_ended_unix_ms"].as_i64().unwrap_or(0) > 0);
            break;
        }
        assert_eq!(list[0]["state"], "live", "{list:?}");
        assert!(Instant::now() < deadline, "still {list:?}\n{}", g.d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = g.cli(&["grants", "list"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("session ended"),
        "{table:?}"
    );
    g.wait_ledgered("session_ended", |b| b["session"].as_u64().is_some());
}

#[test]
fn an_approval_survives_a_crash_right_after_the_write_it_let_through() {
    if !require_root("an_approval_survives_a_crash_right_after_the_write_it_let_through") {
        return;
    }
    // The held open proceeds only once the grant, its kept pre-image and its ledger line
    // are durable: kill -9 the daemon the moment the writer is through.
    let (mut g, f, o) = approved_pool_write();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("written"),
        "{o:?}"
    );
    g.d.kill();
    let grant = g.wait_ledgered("grant", |_| true)["grant"]
        .as_u64()
        .expect("grant in the ledger before the writer was released");
    g.d.start_again();
    assert_eq!(
        g.stat("gate_grants_live"),
        1,
        "the grant survived the crash"
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "pool=50\n");
    // Its pre-image too: revoking it reverts.
    ok(&g.cli(&["grants", "revoke", &grant.to_string()]));
    wait_file(&f, "pool=10\n", &g);
    let o = g.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn an_undecided_request_survives_a_restart_and_its_approval_then_applies() {
    if !require_root("an_undecided_request_survives_a_restart_and_its_approval_then_applies") {
        return;
    }
    let mut g = Gate::start(|w| {
        rule(
            w,
            "dar",
            "mode = \"deny-and-request\"\nfail = \"deny\"\non_expiry = \"revert\"",
        )
    });
    // The host-wide fanotify gate and unconfined sessions (`--no-confine`).
    g.d.confine_sessions = false;
    let f = g.gated("app.env");
    std::fs::write(&f, "DEBUG=false\n").expect("seed");
    let go = g.d.dir.path().join("go");
    let child = g.spawn_in_session(
        "claude",
        &format!(
            "echo DEBUG=true > gated/app.env; while [ ! -e {go} ]; do sleep 0.05; done; \
             echo DEBUG=true > gated/app.env && echo retried",
            go = go.display()
        ),
    );
    let r = g.wait_request(&f);
    // The daemon restarts while the request waits; the approval comes after.
    g.d.restart();
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "10m"]));
    g.d.wait_stat("gate_grants_live", |n| n == 1);
    std::fs::write(&go, "").expect("go");
    let o = wait_child(child, Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("retried"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "DEBUG=true\n");
    // The grant carries the rule's on_expiry (from the request kept in the store).
    let grant = g.wait_ledgered("grant", |_| true);
    assert_eq!(grant["on_expiry"], "revert", "{grant}");
}
