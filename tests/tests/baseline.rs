//! End-to-end: the approved baseline (issue 17, items 1-3) on the real kernel, with the
//! real CLI and the in-process approval service, on a scratch tree:
//! - taken at the first start, and equal to the tree;
//! - `drift` attributes a change by a process outside any session to it, and a change
//!   made while the daemon was stopped to "daemon down"; the periodic check ledgers each
//!   drift once;
//! - `revert` of a modified, a chmod-ed, a deleted and a created file;
//! - an approved session change with a short TTL, at its expiry under
//!   `on_expiry = "revert"`, and an unapproved `mv` onto a gated file nobody wrote before,
//!   both land on the baseline.
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;
use serde_json::Value;

const REVERT: &str = "mode = \"hold\"\ntimeout = \"30s\"\nfail = \"deny\"\non_expiry = \"revert\"";

fn drift(g: &Gate, paths: &[&Path]) -> (Vec<Value>, i32) {
    let mut args: Vec<String> = vec!["drift".into(), "--json".into()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = g.cli(&args);
    let code = o.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "drift failed: {}", output_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("drift --json: {e}: {}", output_text(&o)));
    (v.as_array().cloned().unwrap_or_default(), code)
}

fn item<'a>(items: &'a [Value], p: &Path) -> &'a Value {
    let want = p.display().to_string();
    items
        .iter()
        .find(|i| i["path"] == want.as_str())
        .unwrap_or_else(|| panic!("no drift item for {want}: {items:#?}"))
}

#[test]
fn baseline_drift_attribution_and_revert() {
    if !require_root("baseline_drift_attribution_and_revert") {
        return;
    }
    let mut g = Gate::start_with(
        |root| {
            let w = root.join("watched");
            std::fs::write(w.join("gated/a.conf"), "a=1\nb=2\n").unwrap();
            std::fs::write(w.join("gated/b.conf"), "b=1\n").unwrap();
            std::fs::write(w.join("gated/c.conf"), "c=1\n").unwrap();
            std::fs::write(w.join("plain.conf"), "p=1\n").unwrap();
            std::fs::write(w.join("down.conf"), "d=1\n").unwrap();
        },
        |w| format!("{}\n[drift]\ninterval = \"1s\"\n", rule(w, "ask", REVERT)),
    );
    let w = g.d.watched.clone();
    // 1. Taken at the first start, ledgered, equal to the tree.
    let taken = g.wait_ledgered("baseline_taken", |_| true);
    assert_eq!(taken["files"], 5, "{taken}");
    assert!(taken["bytes_stored"].as_u64().unwrap() > 0, "{taken}");
    let (items, code) = drift(&g, &[]);
    assert!(items.is_empty(), "{items:#?}");
    assert_eq!(code, 0);
    assert_eq!(g.stat("baseline_files"), 5);

    // 2. A change by a process outside any session (this test): attributed to it.
    //    Its drift is also an event: in the events file and on `confgate events`.
    let mut stream = std::process::Command::new(confgate_bin())
        .args(["--config", &g.d.config.display().to_string()])
        .args(["events", "--kind", "drift_detected"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("confgate events");
    std::thread::sleep(Duration::from_millis(300));
    let plain = w.join("plain.conf");
    std::fs::write(&plain, "p=2\n").unwrap();
    let plain_s = g.d.w("plain.conf");
    g.d.wait_for("plain.conf's write", |ev| has(ev, "write", &plain_s));
    let (items, code) = drift(&g, &[&plain]);
    assert_eq!(code, 1);
    let it = item(&items, &plain);
    assert_eq!(it["change"], "modified", "{it}");
    assert_eq!(it["what"], serde_json::json!(["content"]), "{it}");
    assert_eq!(it["attribution"]["by"], "process", "{it}");
    assert_eq!(it["attribution"]["pid"], std::process::id(), "{it}");
    assert_eq!(it["attribution"]["approved"], false, "{it}");
    assert!(
        it["diff"].as_str().unwrap().contains("-p=1\n+p=2\n"),
        "{it}"
    );
    // The periodic check (every second) ledgers it, once.
    let rec = g.wait_ledgered("drift_detected", |b| b["path"] == plain_s.as_str());
    assert_eq!(rec["attribution"]["by"], "process", "{rec}");
    // As every ledger record, an `audit` event (h19b's tap), once per drift.
    let is_it = |e: &Value| e["kind"] == "drift_detected" && e["body"]["path"] == plain_s.as_str();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ev = loop {
        if let Some(e) = g.d.audit_events().into_iter().find(|e| is_it(e)) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no drift_detected event"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ev["v"], 2, "{ev}");
    assert_eq!(ev["class"], "audit", "{ev}");
    assert_eq!(ev["body"]["key"], rec["key"], "{ev}");
    assert_eq!(ev["body"]["diff"], rec["diff"], "{ev}");
    assert_eq!(ev["body"]["attribution"]["pid"], std::process::id(), "{ev}");
    // The same line reached the gRPC stream (`confgate events`).
    std::thread::sleep(Duration::from_millis(300));
    let _ = stream.kill();
    let out = stream.wait_with_output().expect("events output");
    let streamed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    assert!(
        streamed
            .iter()
            .any(|e| e["body"]["path"] == plain_s.as_str() && e["id"] == ev["id"]),
        "{streamed:?}"
    );
    assert!(streamed.iter().all(|e| e["kind"] == "drift_detected"));
    std::thread::sleep(Duration::from_millis(2500));
    let n = g
        .ledgered("drift_detected")
        .iter()
        .filter(|b| b["path"] == plain_s.as_str())
        .count();
    assert_eq!(n, 1, "each distinct drift once");

    // 3. Revert: modified (same inode), chmod-ed, deleted, created.
    let a = g.gated("a.conf");
    let b = g.gated("b.conf");
    let c = g.gated("c.conf");
    let new = g.gated("new.conf");
    let ino = std::fs::metadata(&a).unwrap().ino();
    std::fs::write(&a, "a=1\nb=3\n").unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&c).unwrap();
    std::fs::write(&new, "new=1\n").unwrap();
    let (items, _) = drift(&g, &[&g.gated("")]);
    assert_eq!(item(&items, &a)["what"], serde_json::json!(["content"]));
    assert_eq!(item(&items, &b)["what"], serde_json::json!(["mode"]));
    assert_eq!(item(&items, &c)["change"], "deleted");
    assert_eq!(item(&items, &new)["change"], "created");
    assert_eq!(items.len(), 4, "{items:#?}");
    let args: Vec<String> = ["revert".to_string()]
        .into_iter()
        .chain([&a, &b, &c, &new].iter().map(|p| p.display().to_string()))
        .collect();
    let o = g.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&o);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "a=1\nb=2\n");
    assert_eq!(
        std::fs::metadata(&a).unwrap().ino(),
        ino,
        "restored in place"
    );
    assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "c=1\n");
    assert!(!new.exists());
    let (items, _) = drift(&g, &[&g.gated("")]);
    assert!(items.is_empty(), "{items:#?}");
    let reverts = g.ledgered("baseline_revert");
    assert_eq!(reverts.len(), 4, "{reverts:?}");
    assert!(
        reverts
            .iter()
            .all(|r| r["by"]["uid"] == 0 && r["by"]["session"] == 0)
    );
    let res: Vec<&str> = reverts
        .iter()
        .filter_map(|r| r["result"].as_str())
        .collect();
    assert_eq!(res, ["restored", "metadata", "recreated", "removed"]);
    // A path outside the baseline is refused.
    let o = g.cli(&["revert", "/nonexistent-confgate/x"]);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("not in the baseline"),
        "{}",
        output_text(&o)
    );

    // 4. A change made while the daemon was stopped: "daemon down".
    g.d.shut_down();
    let down = w.join("down.conf");
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(&down, "d=2\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    g.d.start_again();
    let (items, _) = drift(&g, &[&down]);
    let it = item(&items, &down);
    assert_eq!(it["attribution"]["by"], "daemon down", "{it}");
    // Not taken again at the second start.
    assert_eq!(g.ledgered("baseline_taken").len(), 1);
    // Accepted: the baseline moves (ledgered, with the note), no drift left there.
    ok(&g.cli(&[
        "baseline",
        "accept",
        &down.display().to_string(),
        "--note",
        "ops change",
    ]));
    let moved = g.wait_ledgered("baseline_moved", |b| b["source"] == "accept");
    assert_eq!(moved["note"], "ops change", "{moved}");
    let (items, code) = drift(&g, &[&down]);
    assert!(items.is_empty() && code == 0, "{items:#?}");

    // 5. `revert --to SEQ`: the state a ledger record left the path in, not the baseline.
    let seq_of = |kind: &str, pred: &dyn Fn(&Value) -> bool| -> String {
        g.ledger()
            .iter()
            .rfind(|r| r["kind"] == kind && pred(&r["body"]))
            .map(|r| r["seq"].as_u64().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {kind} record"))
    };
    let down_s = down.display().to_string();
    let d2 = seq_of("baseline_moved", &|b| b["note"] == "ops change");
    std::fs::write(&down, "d=3\n").unwrap();
    ok(&g.cli(&["baseline", "accept", &down_s, "--note", "d=3"]));
    g.wait_ledgered("baseline_moved", |b| b["note"] == "d=3");
    let o = g.cli(&["revert", &down_s, "--to", &d2]);
    ok(&o);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "d=2\n");
    let d2n: u64 = d2.parse().unwrap();
    let rec = g.wait_ledgered("baseline_revert", |b| b["to_seq"] == d2n);
    assert_eq!(rec["result"], "restored", "{rec}");
    let (items, _) = drift(&g, &[&down]);
    assert_eq!(item(&items, &down)["what"], serde_json::json!(["content"]));
    // Refused, nothing changed: a drift whose content was never in the baseline, and a
    // record that does not name the path.
    let p2 = seq_of("drift_detected", &|b| b["path"] == plain_s.as_str());
    let o = g.cli(&["revert", &plain_s, &down_s, "--to", &p2]);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("is not kept"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "d=2\n");
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "p=2\n");
    let o = g.cli(&["revert", &down_s, "--to", &p2]);
    assert!(
        output_text(&o).contains("records no state of this path"),
        "{}",
        output_text(&o)
    );
    let o = g.cli(&["revert", &down_s, "--to", "nope"]);
    assert!(!o.status.success());
}

#[test]
fn expiry_and_an_unapproved_rename_land_on_the_baseline() {
    if !require_root("expiry_and_an_unapproved_rename_land_on_the_baseline") {
        return;
    }
    let mut g = Gate::start_with(
        |root| {
            let w = root.join("watched");
            std::fs::write(w.join("gated/x.conf"), "x=base\n").unwrap();
            std::fs::write(w.join("gated/y.conf"), "y=base\n").unwrap();
        },
        |w| rule(w, "revert", REVERT),
    );
    // The host-wide fanotify gate and unconfined sessions: a rename is not held.
    g.d.confine_sessions = false;
    let x = g.gated("x.conf");
    let y = g.gated("y.conf");
    // 1. Approved for 3 s, changed twice (the second edit under the same grant), then
    //    expired: back to the baseline, not to a pre-image of the last write.
    let child = g.spawn_in_session(
        "claude",
        "echo x=new > gated/x.conf; echo x=newer >> gated/x.conf",
    );
    let r = g.wait_request(&x);
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "3s"]));
    ok(&wait_child(child, Duration::from_secs(15)));
    let want = x.display().to_string();
    // Its diff is ledgered after the close: the change is known as approved from then on.
    g.wait_ledgered("change", |b| b["diff"]["path"] == want.as_str());
    let (items, _) = drift(&g, &[&x]);
    if let Some(it) = items.first() {
        // Before the expiry: an approved change, with its grant and expiry.
        assert_eq!(it["attribution"]["approved"], true, "{it}");
        assert_eq!(it["attribution"]["by"], "session", "{it}");
        assert_eq!(it["attribution"]["agent"], "claude", "{it}");
        assert!(
            it["attribution"]["expires_unix_ms"].as_i64().is_some(),
            "{it}"
        );
    }
    let rec = g.wait_ledgered("baseline_revert", |b| b["path"] == want.as_str());
    assert_eq!(rec["why"], "expired", "{rec}");
    assert_eq!(std::fs::read_to_string(&x).unwrap(), "x=base\n");
    g.wait_ledgered("reverted", |b| b["path"] == want.as_str());

    // 2. An unapproved `mv` onto y.conf, which no session wrote before (no pre-image).
    let evil = g.d.dir.path().join("evil");
    std::fs::write(&evil, "y=evil\n").unwrap();
    let o = wait_child(
        g.spawn_in_session("redteam", &format!("mv {} gated/y.conf", evil.display())),
        Duration::from_secs(15),
    );
    assert!(o.status.success(), "{o:?}");
    let ys = y.display().to_string();
    let rec = g.wait_ledgered("unapproved_rename", |b| b["path"] == ys.as_str());
    assert_eq!(rec["restored"], "baseline", "{rec}");
    assert_eq!(std::fs::read_to_string(&y).unwrap(), "y=base\n");
    let q = rec["quarantined_as"].as_str().expect("quarantined");
    assert_eq!(std::fs::read_to_string(q).unwrap(), "y=evil\n");
}

#[test]
fn approved_operations_that_write_no_content_move_the_baseline() {
    if !require_root("approved_operations_that_write_no_content_move_the_baseline") {
        return;
    }
    // A rule that keeps approved changes (`on_expiry = "flag"`): an approved chmod and an
    // approved unlink, performed by the supervisor for a confined session, are approved
    // states, as an approved write closed is.
    let keep = "mode = \"hold\"\ntimeout = \"30s\"\nfail = \"deny\"\non_expiry = \"flag\"";
    let g = Gate::start_with(
        |root| {
            let w = root.join("watched");
            std::fs::write(w.join("gated/m.conf"), "m=1\n").unwrap();
            std::fs::write(w.join("gated/u.conf"), "u=1\n").unwrap();
        },
        |w| rule(w, "keep", keep),
    );
    g.wait_ledgered("baseline_taken", |_| true);
    let m = g.gated("m.conf");
    let u = g.gated("u.conf");
    let child = g.spawn_in_session("claude", "chmod 600 gated/m.conf && rm gated/u.conf");
    let r = g.wait_request(&m);
    ok(&g.cli(&["approvals", "approve", &id_of(&r)]));
    let r = g.wait_request(&u);
    ok(&g.cli(&["approvals", "approve", &id_of(&r)]));
    ok(&wait_child(child, Duration::from_secs(15)));
    assert_eq!(std::fs::metadata(&m).unwrap().mode() & 0o777, 0o600);
    assert!(!u.exists());
    for p in [&m, &u] {
        let want = p.display().to_string();
        let rec = g.wait_ledgered("baseline_moved", |b| {
            b["paths"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x == want.as_str()))
        });
        assert!(
            rec["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("grant ")),
            "{rec}"
        );
    }
    // Nothing left to drift: the approved states are the baseline.
    let (items, code) = drift(&g, &[&m, &u]);
    assert!(items.is_empty(), "{items:#?}");
    assert_eq!(code, 0);
}
