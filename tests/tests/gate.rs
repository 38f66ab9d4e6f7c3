//! End-to-end: the gate holds agent writes to gated files on the real kernel (fanotify
//! FAN_OPEN_PERM), through the real approval service (in-process local mode over its Unix
//! socket, or `confgate approver serve` as a separate process), with the real CLI.
use std::os::unix::process::ExitStatusExt as _;
use std::process::Output;
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;
use serde_json::Value;

fn failed_with_eperm(o: &Output) -> bool {
    !o.status.success()
        && o.status.signal().is_none()
        && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted")
}

const HOLD: &str = "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"";

#[test]
fn held_write_is_approved_and_lands() {
    if !require_root("held_write_is_approved_and_lands") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("app.conf");
    std::fs::write(&f, "pool=10\n").expect("seed");
    // The writer is the session's shell itself (`echo` is a builtin): it says its pid first.
    let pidfile = g.d.dir.path().join("writer.pid");
    let script = format!(
        "echo $$ > {}; echo pool=50 > gated/app.conf && echo written",
        pidfile.display()
    );
    let child = g.spawn_with_reason("claude", "raise the pool", &script);
    let r = g.wait_request(&f);
    // The approver sees the change in context, every field exactly.
    let c = &r["context"];
    let pid: u64 = std::fs::read_to_string(&pidfile)
        .expect("the writer's pid")
        .trim()
        .parse()
        .expect("a pid");
    let sessions = g.d.cli_json(&["sessions", "--json"]);
    let session = sessions
        .as_array()
        .and_then(|a| a.iter().find(|s| s["agent"] == "claude"))
        .unwrap_or_else(|| panic!("the session is listed: {sessions}"));
    assert_eq!(c["session_id"], session["id"], "{r}\n{session}");
    assert_eq!(c["agent"], "claude");
    assert_eq!(c["reason"], "raise the pool");
    assert_eq!(c["path"], f.display().to_string());
    assert_eq!(
        c["operations"],
        serde_json::json!(["write", "truncate"]),
        "{r}"
    );
    assert_eq!(
        (c["uid"].as_u64(), c["user"].as_str()),
        (Some(0), Some("root")),
        "{r}"
    );
    assert_eq!(c["pid"].as_u64(), Some(pid), "{r}");
    let argv = serde_json::json!(["sh", "-c", script]);
    assert_eq!(c["command"], argv, "{r}");
    assert_eq!(c["cwd"], g.d.watched.display().to_string(), "{r}");
    // SHA-256 of "pool=10\n", the content the write is about to replace.
    assert_eq!(
        c["content_sha256"], "55e08e4b8fcf702c4425cf460ceeb2185c3c356eac334d8e2be72b9d4b5ddb37",
        "{r}"
    );
    assert_eq!(
        (
            c["rule"].as_str(),
            c["mode"].as_str(),
            c["fail_verdict"].as_str()
        ),
        (Some("ask-hold"), Some("hold"), Some("deny")),
        "{r}"
    );
    // The ancestry starts at the writer and ends at the session's root process.
    let ancestry = c["ancestry"].as_array().expect("ancestry");
    assert_eq!(
        ancestry.first(),
        Some(&serde_json::json!({"pid": pid, "comm": "sh", "argv": argv})),
        "{r}"
    );
    assert_eq!(
        ancestry.last().map(|a| &a["pid"]),
        Some(&session["root_pid"]),
        "{r}\n{session}"
    );
    // Still held: nothing landed yet.
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "pool=10\n");
    let o = g.cli(&[
        "approvals",
        "approve",
        &id_of(&r),
        "--ttl",
        "1h",
        "--note",
        "ok",
    ]);
    ok(&o);
    let out = wait_child(child, Duration::from_secs(15));
    ok(&out);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "pool=50\n");

    let kinds = g.ledger_kinds();
    assert!(kinds.contains(&"request".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"grant".to_string()), "{kinds:?}");
    // After the close-write, the diff against the pre-image is in the ledger.
    g.wait_ledgered("change", |_| true);
    let ledger = std::fs::read_to_string(g.d.ledger_path()).unwrap();
    assert!(
        ledger.contains("-pool=10") && ledger.contains("+pool=50"),
        "{ledger}"
    );
    let v = g.cli(&["audit", "verify"]);
    ok(&v);
}

#[test]
fn one_approval_covers_the_sessions_later_writes() {
    if !require_root("one_approval_covers_the_sessions_later_writes") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("app.conf");
    std::fs::write(&f, "a\n").expect("seed");
    let child = g.spawn_with_reason(
        "codex",
        "two edits",
        "echo b > gated/app.conf && sleep 0.2 && echo c > gated/app.conf && echo done",
    );
    let r = g.wait_request(&f);
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "1h"]));
    let out = wait_child(child, Duration::from_secs(15));
    ok(&out);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "c\n");
    assert_eq!(
        g.stat("gate_requests"),
        1,
        "the second write passed on the grant"
    );
}

#[test]
fn denied_write_fails_with_eperm_and_leaves_nothing() {
    if !require_root("denied_write_fails_with_eperm_and_leaves_nothing") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("app.conf");
    std::fs::write(&f, "keep\n").expect("seed");
    let child = g.spawn_with_reason("claude", "", "echo evil > gated/app.conf");
    let r = g.wait_request(&f);
    ok(&g.cli(&["approvals", "deny", &id_of(&r), "--note", "no"]));
    let out = wait_child(child, Duration::from_secs(15));
    assert!(failed_with_eperm(&out), "{out:?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep\n");

    // A file the denied open created is removed.
    let n = g.gated("new.conf");
    let child = g.spawn_with_reason("claude", "", "echo x > gated/new.conf");
    let r = g.wait_request(&n);
    ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
    let out = wait_child(child, Duration::from_secs(15));
    assert!(failed_with_eperm(&out), "{out:?}");
    assert!(!n.exists(), "the file the denied open created is gone");
}

#[test]
fn timeout_applies_the_rules_failure_verdict() {
    if !require_root("timeout_applies_the_rules_failure_verdict") {
        return;
    }
    let g = Gate::start(|w| {
        format!(
            "[[gate.rule]]\nname = \"fail-open\"\npaths = [\"{w}/gated/open-*\"]\nverdict = \"ask\"\ntimeout = \"1s\"\nfail = \"allow\"\n\
             [[gate.rule]]\nname = \"fail-closed\"\npaths = [\"{w}/gated/**\"]\nverdict = \"ask\"\ntimeout = \"1s\"\nfail = \"deny\"\n"
        )
    });
    std::fs::write(g.gated("open-a"), "0\n").unwrap();
    std::fs::write(g.gated("closed-a"), "0\n").unwrap();
    let t = Instant::now();
    let o = g.d.in_session("claude", "", "echo 1 > gated/closed-a");
    assert!(failed_with_eperm(&o), "{o:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "held until the timeout"
    );
    assert_eq!(std::fs::read_to_string(g.gated("closed-a")).unwrap(), "0\n");
    let o = g.d.in_session("claude", "", "echo 1 > gated/open-a");
    ok(&o);
    assert_eq!(std::fs::read_to_string(g.gated("open-a")).unwrap(), "1\n");
    // The daemon's own timeout and the service's expiry of the same deadline race: either
    // applies the rule's failure verdict, once per write, and says which in the ledger
    // (gate_hold_timeouts counts only the daemon's own timeouts).
    const TIMED_OUT: &str = "no answer before the rule's timeout";
    const EXPIRED: &str = "the approval service expired the request";
    let fallbacks = wait_records(
        &g,
        "both failure verdicts in the ledger",
        |r| r["kind"] == "fallback_verdict",
        2,
    );
    let one = |name: &str, verdict: &str, rule: &str| {
        let path = g.gated(name).display().to_string();
        let mine: Vec<&Value> = fallbacks
            .iter()
            .filter(|r| r["body"]["path"] == path.as_str())
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "one failure verdict for {name}: {fallbacks:#?}"
        );
        let b = &mine[0]["body"];
        assert_eq!(
            (b["verdict"].as_str(), b["rule"].as_str()),
            (Some(verdict), Some(rule)),
            "{b}"
        );
        assert!(b["why"] == TIMED_OUT || b["why"] == EXPIRED, "{b}");
        u64::from(b["why"] == TIMED_OUT)
    };
    let timeouts = one("closed-a", "deny", "fail-closed") + one("open-a", "allow", "fail-open");
    assert_eq!(g.stat("gate_hold_timeouts"), timeouts, "{fallbacks:#?}");
    assert_eq!(g.stat("gate_fallback_deny"), 1);
    assert_eq!(g.stat("gate_fallback_allow"), 1);
    // Nobody approved the write the failure verdict let through: it is flagged at its
    // close, with its diff.
    let open_a = g.gated("open-a").display().to_string();
    let flagged = poll(
        "the fail-open write flagged",
        Duration::from_secs(15),
        || {
            g.ledger()
                .into_iter()
                .find(|r| r["kind"] == "change_flagged" && r["body"]["path"] == open_a.as_str())
        },
    );
    assert_eq!(
        flagged["body"]["why"], "allowed_by_failure_verdict",
        "{flagged}"
    );
    let diff = flagged["body"]["diff"].to_string();
    assert!(diff.contains("-0") && diff.contains("+1"), "{flagged}");
    assert_eq!(g.stat("gate_changes_flagged"), 1);
}

#[test]
fn deny_and_request_then_approve_then_retry_passes() {
    if !require_root("deny_and_request_then_approve_then_retry_passes") {
        return;
    }
    let g = Gate::start(|w| rule(w, "dar", "mode = \"deny-and-request\"\nfail = \"deny\""));
    let f = g.gated("cron.conf");
    std::fs::write(&f, "old\n").unwrap();
    // One session: try, wait for the approval (signalled by a file), retry.
    let flag = g.d.dir.path().join("approved");
    let script = format!(
        "if echo new > gated/cron.conf; then echo first-passed; exit 3; fi; \
         while [ ! -e {flag} ]; do sleep 0.05; done; echo new > gated/cron.conf && echo retried",
        flag = flag.display()
    );
    let t = Instant::now();
    let child = g.spawn_with_reason("codex", "schedule backup", &script);
    let r = g.wait_request(&f);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r["context"]["mode"], "deny-and-request");
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "10m"]));
    // The grant reaches the daemon asynchronously: retry once the daemon holds it.
    g.d.wait_stat("gate_grants_live", |n| n == 1);
    std::fs::write(&flag, "").unwrap();
    let out = wait_child(child, Duration::from_secs(15));
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("retried"));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "new\n");
}

fn expiry_case(on_expiry: &'static str) -> (Gate, std::path::PathBuf) {
    let g = Gate::start(move |w| {
        rule(
            w,
            "expiring",
            &format!("{HOLD}\non_expiry = \"{on_expiry}\""),
        )
    });
    let f = g.gated("limits.conf");
    std::fs::write(&f, "max=1\n").unwrap();
    let child = g.spawn_with_reason("claude", "", "echo max=999 > gated/limits.conf");
    let r = g.wait_request(&f);
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "3s"]));
    ok(&wait_child(child, Duration::from_secs(15)));
    // No read of the file here: under load the grant may already have ended. The record
    // of its end carries the diff, which shows that the write landed.
    (g, f)
}

/// Waits for the record of `kind` about `f`; checks that its diff is the approved write.
fn wait_settled(g: &Gate, kind: &str, f: &std::path::Path) -> Value {
    let want = f.display().to_string();
    let rec = poll(kind, Duration::from_secs(15), || {
        g.ledger()
            .into_iter()
            .find(|r| r["kind"] == kind && r["body"]["path"] == want.as_str())
    });
    let diff = rec["body"]["diff"].to_string();
    assert!(
        diff.contains("-max=1") && diff.contains("+max=999"),
        "the approved write is in the diff: {rec}"
    );
    assert_eq!(rec["body"]["why"], "expired", "{rec}");
    rec
}

#[test]
fn grant_expiry_reverts_per_rule() {
    if !require_root("grant_expiry_reverts_per_rule") {
        return;
    }
    let (g, f) = expiry_case("revert");
    wait_settled(&g, "reverted", &f);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "max=1\n");
    assert_eq!(g.stat("gate_changes_reverted"), 1);
}

#[test]
fn grant_expiry_flags_per_rule() {
    if !require_root("grant_expiry_flags_per_rule") {
        return;
    }
    let (g, f) = expiry_case("flag");
    wait_settled(&g, "change_flagged", &f);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "max=999\n");
    assert_eq!(g.stat("gate_changes_flagged"), 1);
}

#[test]
fn a_session_cannot_open_confgates_own_config() {
    if !require_root("a_session_cannot_open_confgates_own_config") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let cfg = g.d.config.display().to_string();
    // A confined session: the file is hidden in its mount namespace (read nothing) and
    // any write is refused.
    let o = g.d.in_session("claude", "", &format!("cat {cfg}"));
    assert!(!o.status.success() && o.stdout.is_empty(), "{o:?}");
    let o = g.d.in_session("claude", "", &format!("echo x >> {cfg}"));
    assert!(!o.status.success(), "{o:?}");
    // An unconfined one: the built-in rule of the fanotify gate denies the opens.
    let mut g = g;
    g.d.confine_sessions = false;
    let o = g.d.in_session("claude", "", &format!("cat {cfg}"));
    assert!(failed_with_eperm(&o), "{o:?}");
    let o = g.d.in_session("claude", "", &format!("echo x >> {cfg}"));
    assert!(failed_with_eperm(&o), "{o:?}");
    // confgate's binary is protected from writes only: sessions run it (`confgate propose`,
    // `confgate mcp`), and an exec is an open the gate cannot tell from a read. (`: >>`
    // opens for writing and writes nothing, should the protection fail.)
    let bin = confgate_bin().display().to_string();
    let o = g.d.in_session(
        "claude",
        "",
        &format!("{bin} --version && cat {bin} >/dev/null"),
    );
    assert!(o.status.success(), "{o:?}");
    let o = g.d.in_session("claude", "", &format!(": >> {bin}"));
    assert!(!o.status.success(), "{o:?}");
    // Outside a session, reading it is fine.
    ok(&sh(&g.d.watched, &format!("cat {cfg} >/dev/null")));
    assert!(g.stat("gate_denied_builtin") >= 2);
}

#[test]
fn a_process_outside_any_session_is_not_held() {
    if !require_root("a_process_outside_any_session_is_not_held") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let t = Instant::now();
    for i in 0..50 {
        std::fs::write(g.gated(&format!("f{i}")), "x").unwrap();
    }
    ok(&sh(
        &g.d.watched,
        "echo y > gated/f0 && cat gated/f0 >/dev/null",
    ));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(g.stat("gate_requests"), 0);
}

#[test]
fn a_session_cannot_approve_its_own_request() {
    if !require_root("a_session_cannot_approve_its_own_request") {
        return;
    }
    let g = Gate::start(|w| rule(w, "dar", "mode = \"deny-and-request\""));
    let f = g.gated("sudoers");
    std::fs::write(&f, "root ALL\n").unwrap();
    // The built-in rule denies a session confgate's own binary and configuration, so a
    // session could only try with a copy of the binary and the sockets named explicitly:
    // then the approval service itself must refuse (the caller's session is the kernel's
    // answer, not a claim).
    let copy = g.d.dir.path().join("cg-copy");
    std::fs::copy(confgate_bin(), &copy).expect("copy the binary");
    let bin = copy.display().to_string();
    let sock = g.d.dir.path().join("approver.sock").display().to_string();
    let dsock = g.d.socket.display().to_string();
    let conn = format!("--socket {dsock} approvals --approver unix:{sock}");
    let idfile = g.d.dir.path().join("request-id");
    // The approve's own output and exit status, apart from everything else the script says.
    let approve_out = g.d.dir.path().join("approve.out");
    let approve_rc = g.d.dir.path().join("approve.rc");
    let script = format!(
        "echo agent ALL > gated/sudoers; \
         while [ ! -s {idf} ]; do sleep 0.05; done; id=$(cat {idf}); echo id=$id; \
         {bin} {conn} list --json; \
         {bin} {conn} approve $id --ttl 1h --no-daemon >{out} 2>&1; echo $? >{rc}",
        idf = idfile.display(),
        out = approve_out.display(),
        rc = approve_rc.display(),
    );
    let child = g.spawn_with_reason("claude", "", &script);
    let r = g.wait_request(&f);
    let session = r["context"]["session_id"].to_string();
    std::fs::write(&idfile, id_of(&r)).unwrap();
    let o = wait_child(child, Duration::from_secs(30));
    let out = output_text(&o);
    assert!(out.contains(&format!("id={}", id_of(&r))), "{out}");
    let rc = std::fs::read_to_string(&approve_rc).expect("the approve ran");
    let said = std::fs::read_to_string(&approve_out).expect("the approve's output");
    assert_ne!(
        rc.trim(),
        "0",
        "the session approved its own request: {said}"
    );
    assert!(
        said.contains(&format!("from inside agent session {session} on "))
            && said.contains("(self-approval)")
            && said.contains("approvals must come from outside any agent session"),
        "refused because it is the asking session: {said}"
    );
    // Still pending.
    let r = g.wait_request(&f);
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "root ALL\n");
}

#[test]
fn a_tampered_ledger_fails_verify() {
    if !require_root("a_tampered_ledger_fails_verify") {
        return;
    }
    let g = Gate::start(|w| rule(w, "fast-fail", "timeout = \"200ms\"\nfail = \"deny\""));
    for i in 0..3 {
        std::fs::write(g.gated(&format!("t{i}")), "0").unwrap();
        let _ =
            g.d.in_session("claude", "", &format!("echo 1 > gated/t{i}"));
    }
    ok(&g.cli(&["audit", "verify"]));
    let path = g.d.ledger_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "{text}");
    // The first record with a verdict (the daemon's start and its baseline come first).
    let at = lines
        .iter()
        .position(|l| l.contains("\"deny\""))
        .unwrap_or_else(|| panic!("a record with a verdict to change: {text}"));
    let tampered = lines[at].replacen("\"deny\"", "\"allow\"", 1);
    let mut edited: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    edited[at] = tampered;
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let v = g.cli(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    let msg = output_text(&v);
    let seq = serde_json::from_str::<Value>(lines[at]).expect("a JSON line")["seq"]
        .as_u64()
        .expect("seq");
    let line = at + 1;
    assert!(
        msg.contains(&format!("line {line}: seq {seq}: content changed")),
        "names the changed record: {msg}"
    );
    for other in (1..=lines.len()).filter(|&l| l != line) {
        assert!(
            !msg.contains(&format!("line {other}:")),
            "only line {line} was changed: {msg}"
        );
    }
}

#[test]
fn a_directory_created_in_a_gated_tree_is_gated_too() {
    if !require_root("a_directory_created_in_a_gated_tree_is_gated_too") {
        return;
    }
    let g = Gate::start(|w| rule(w, "fast-fail", "timeout = \"300ms\"\nfail = \"deny\""));
    // Created after the marks were placed: the daemon marks it from the notification.
    std::fs::create_dir_all(g.gated("new/deeper")).unwrap();
    std::fs::write(g.gated("new/deeper/app.conf"), "a\n").unwrap();
    // Probe without changing the file (an append that writes nothing) until the gate
    // refuses; the content is never put back, so a write that got through shows below.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o =
            g.d.in_session("claude", "", ": >> gated/new/deeper/app.conf");
        if failed_with_eperm(&o) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new directory never gated\n{}",
            g.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o =
        g.d.in_session("claude", "", "echo b > gated/new/deeper/app.conf");
    assert!(failed_with_eperm(&o), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(g.gated("new/deeper/app.conf")).unwrap(),
        "a\n"
    );
    // Refused by the rule (its failure verdict, ledgered), not by anything else.
    let want = g.gated("new/deeper/app.conf").display().to_string();
    let fallbacks = wait_records(
        &g,
        "both refusals in the ledger",
        |r| r["kind"] == "fallback_verdict" && r["body"]["path"] == want.as_str(),
        2,
    );
    assert!(
        fallbacks
            .iter()
            .all(|r| r["body"]["verdict"] == "deny" && r["body"]["rule"] == "fast-fail"),
        "{fallbacks:#?}"
    );
}

/// Waits until at least `n` ledger records match `pred` (the ledger line of a decision
/// is appended after the held open was answered), returns them.
fn wait_records(g: &Gate, what: &str, pred: impl Fn(&Value) -> bool, n: usize) -> Vec<Value> {
    poll(what, Duration::from_secs(15), || {
        let found: Vec<Value> = g.ledger().into_iter().filter(|r| pred(r)).collect();
        (found.len() >= n).then_some(found)
    })
}
