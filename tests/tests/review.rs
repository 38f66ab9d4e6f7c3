//! End-to-end: `mode = "review"` (issue 17, item 4) on the real kernel, with the real CLI
//! and the in-process approval service: a session's write returns at once; at its close
//! the change is sent for approval with its unified diff against the baseline (checked
//! exactly, masked; also for a chmod and a rename onto the path); approve moves the
//! baseline, deny and no answer restore it; a second
//! write before the decision replaces the request (one request, the latest diff); a
//! review undecided at a restart is filed again.
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;
use serde_json::Value;

const REVIEW: &str = "mode = \"review\"\ntimeout = \"5s\"\non_expiry = \"flag\"";

/// Runs `script` in a session of `agent` and checks that it finished at once (its
/// writes were not held): nothing has been decided yet when it returns.
fn write_unheld(g: &Gate, agent: &str, script: &str) {
    let t = Instant::now();
    let o = wait_child(g.spawn_in_session(agent, script), Duration::from_secs(10));
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the session's write waited {:?}",
        t.elapsed()
    );
}

fn excerpt(r: &Value) -> &str {
    assert_eq!(r["context"]["excerpt_kind"], "diff", "{r}");
    assert_eq!(r["context"]["mode"], "review", "{r}");
    r["context"]["excerpt"].as_str().unwrap_or_default()
}

fn requests_for(g: &Gate, p: &Path) -> Vec<Value> {
    let want = p.display().to_string();
    g.pending()
        .into_iter()
        .filter(|r| r["context"]["path"] == want.as_str())
        .collect()
}

#[test]
fn review_approve_deny_supersede_and_timeout() {
    if !require_root("review_approve_deny_supersede_and_timeout") {
        return;
    }
    let mut g = Gate::start_with(
        |root| {
            let w = root.join("watched/gated");
            std::fs::write(w.join("app.env"), "A=1\nB=2\nAPI_TOKEN=old-secret\n").unwrap();
            std::fs::write(w.join("deny.conf"), "d=1\n").unwrap();
            std::fs::write(w.join("late.conf"), "l=1\n").unwrap();
            std::fs::write(w.join("mv.conf"), "m=1\n").unwrap();
            std::fs::create_dir(w.join("rv")).unwrap();
            std::fs::write(w.join("rv/x.conf"), "x=1\n").unwrap();
        },
        |w| {
            format!(
                "[[gate.rule]]\nname = \"review-revert\"\npaths = [\"{w}/gated/rv/**\"]\nverdict = \"ask\"\nmode = \"review\"\ntimeout = \"5s\"\non_expiry = \"revert\"\n{}",
                rule(w, "review", REVIEW)
            )
        },
    );
    g.wait_ledgered("baseline_taken", |_| true);
    let env = g.gated("app.env");
    let deny = g.gated("deny.conf");
    let late = g.gated("late.conf");
    let created = g.gated("new.conf");

    // 1. Approve: the write returned at once; the request shows the exact diff against
    //    the baseline, the secret's values masked; approving moves the baseline.
    write_unheld(
        &g,
        "claude",
        "printf 'A=1\\nB=3\\nAPI_TOKEN=new-secret\\n' > gated/app.env",
    );
    let r = g.wait_request(&env);
    assert_eq!(
        excerpt(&r),
        "--- before\n+++ after\n@@ -1,3 +1,3 @@\n A=1\n-B=2\n-API_TOKEN=********\n+B=3\n+API_TOKEN=********\n",
        "{r}"
    );
    assert!(!excerpt(&r).contains("secret"), "{r}");
    // Nor anywhere else in the request: the writer's command line carried the value too
    // (`printf ... API_TOKEN=new-secret ...`), masked by key name like the excerpt.
    assert!(!r.to_string().contains("new-secret"), "{r}");
    assert!(
        r["context"]["command"]
            .to_string()
            .contains("API_TOKEN=********"),
        "{r}"
    );
    assert_eq!(r["context"]["agent"], "claude", "{r}");
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--note", "ok"]));
    let envs = env.display().to_string();
    let rec = g.wait_ledgered("review_approved", |b| b["path"] == envs.as_str());
    assert_eq!(rec["baseline"], "moved", "{rec}");
    g.wait_ledgered("baseline_moved", |b| {
        b["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("review "))
    });
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "A=1\nB=3\nAPI_TOKEN=new-secret\n"
    );
    let o = g.cli(&["drift", "--json", &envs]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    // 1b. Under `on_expiry = "revert"` an approval holds for its grant's lifetime: the
    //     agent's next write is covered (no new review), and at the grant's end the
    //     path is back at the baseline.
    let rvx = g.gated("rv/x.conf");
    write_unheld(&g, "claude", "echo x=2 > gated/rv/x.conf");
    let r = g.wait_request(&rvx);
    ok(&g.cli(&[
        "approvals",
        "approve",
        &id_of(&r),
        "--ttl",
        "3s",
        "--scope",
        "agent",
    ]));
    let rvs = rvx.display().to_string();
    let rec = g.wait_ledgered("review_approved", |b| b["path"] == rvs.as_str());
    assert_eq!(rec["baseline"], "kept until the grant ends", "{rec}");
    write_unheld(&g, "claude", "echo x=3 >> gated/rv/x.conf");
    g.wait_ledgered("change", |b| b["diff"]["path"] == rvs.as_str());
    assert!(requests_for(&g, &rvx).is_empty(), "covered by the grant");
    let rec = g.wait_ledgered("baseline_revert", |b| {
        b["path"] == rvs.as_str() && b["why"] == "expired"
    });
    assert_eq!(rec["result"], "restored", "{rec}");
    assert_eq!(std::fs::read_to_string(&rvx).unwrap(), "x=1\n");

    // 2. Two writes before a decision: one request, showing the latest diff; denied,
    //    the file is restored to the baseline in place.
    let ino = std::fs::metadata(&deny).unwrap().ino();
    write_unheld(&g, "claude", "echo d=2 > gated/deny.conf");
    let first = g.wait_request(&deny);
    assert_eq!(
        excerpt(&first),
        "--- before\n+++ after\n@@ -1 +1 @@\n-d=1\n+d=2\n"
    );
    write_unheld(&g, "claude", "echo d=3 >> gated/deny.conf");
    let latest = poll("the replacing request", Duration::from_secs(15), || {
        let rs = requests_for(&g, &deny);
        (rs.len() == 1 && rs[0]["id"] != first["id"]).then(|| rs[0].clone())
    });
    assert_eq!(
        excerpt(&latest),
        "--- before\n+++ after\n@@ -1 +1,2 @@\n-d=1\n+d=2\n+d=3\n"
    );
    let denys = deny.display().to_string();
    g.wait_ledgered("review_superseded", |b| b["path"] == denys.as_str());
    // The replaced request can no longer be decided.
    let o = g.cli(&["approvals", "approve", &id_of(&first)]);
    assert!(!o.status.success(), "{}", output_text(&o));
    ok(&g.cli(&["approvals", "deny", &id_of(&latest), "--note", "no"]));
    let rec = g.wait_ledgered("review_reverted", |b| b["path"] == denys.as_str());
    assert_eq!(rec["why"], "denied", "{rec}");
    assert_eq!(rec["result"], "restored", "{rec}");
    assert_eq!(std::fs::read_to_string(&deny).unwrap(), "d=1\n");
    assert_eq!(std::fs::metadata(&deny).unwrap().ino(), ino, "in place");

    // 3. A created file, denied: removed.
    write_unheld(&g, "codex", "echo n=1 > gated/new.conf");
    let r = g.wait_request(&created);
    let mode = std::fs::metadata(&created).unwrap().mode() & 0o7777;
    assert_eq!(
        excerpt(&r),
        format!("new file mode {mode:04o}\n--- before\n+++ after\n@@ -0,0 +1 @@\n+n=1\n")
    );
    ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
    let cs = created.display().to_string();
    let rec = g.wait_ledgered("review_reverted", |b| b["path"] == cs.as_str());
    assert_eq!(rec["result"], "removed", "{rec}");
    assert!(!created.exists());

    // 3b. A chmod completes at once: reviewed (its header lines), denied, mode restored.
    write_unheld(&g, "claude", "chmod 600 gated/deny.conf");
    let r = g.wait_request(&deny);
    assert_eq!(excerpt(&r), "old mode 0644\nnew mode 0600\n");
    ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
    let id = r["host_request_id"].clone();
    let rec = g.wait_ledgered("review_reverted", |b| b["host_request_id"] == id);
    assert_eq!(rec["result"], "metadata", "{rec}");
    assert_eq!(std::fs::metadata(&deny).unwrap().mode() & 0o7777, 0o644);

    // 3c. A rename onto a reviewed path: reviewed against the baseline, denied, restored.
    let mvp = g.gated("mv.conf");
    let evil = g.d.dir.path().join("evil");
    std::fs::write(&evil, "m=evil\n").unwrap();
    write_unheld(
        &g,
        "claude",
        &format!("mv {} gated/mv.conf", evil.display()),
    );
    let r = g.wait_request(&mvp);
    assert_eq!(
        excerpt(&r),
        "--- before\n+++ after\n@@ -1 +1 @@\n-m=1\n+m=evil\n"
    );
    ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
    let id = r["host_request_id"].clone();
    g.wait_ledgered("review_reverted", |b| b["host_request_id"] == id);
    assert_eq!(std::fs::read_to_string(&mvp).unwrap(), "m=1\n");

    // 4. No answer before the rule's timeout (5 s), an unconfined session (the host-wide
    //    fanotify gate): restored.
    g.d.confine_sessions = false;
    write_unheld(&g, "claude", "echo l=2 > gated/late.conf");
    let r = g.wait_request(&late);
    assert_eq!(
        excerpt(&r),
        "--- before\n+++ after\n@@ -1 +1 @@\n-l=1\n+l=2\n"
    );
    let ls = late.display().to_string();
    let rec = g.wait_ledgered("review_reverted", |b| b["path"] == ls.as_str());
    assert_eq!(rec["why"], "no answer before the rule's timeout", "{rec}");
    assert_eq!(std::fs::read_to_string(&late).unwrap(), "l=1\n");

    assert_eq!(g.stat("gate_reviews_filed"), 8);
    assert_eq!(g.stat("gate_reviews_approved"), 2);
    assert_eq!(g.stat("gate_reviews_denied"), 4);
    assert_eq!(g.stat("gate_reviews_superseded"), 1);
    assert_eq!(g.stat("gate_reviews_timed_out"), 1);
    assert_eq!(g.stat("gate_review_errors"), 0);

    // 5. Undecided when the daemon restarts: closed, and reviewed again with the diff the
    //    path has then; denied, restored.
    g.d.confine_sessions = true;
    write_unheld(&g, "claude", "echo d=9 > gated/deny.conf");
    let before = g.wait_request(&deny);
    g.d.restart();
    let again = poll("the review filed again", Duration::from_secs(20), || {
        requests_for(&g, &deny)
            .into_iter()
            .find(|r| r["id"] != before["id"])
    });
    assert_eq!(
        excerpt(&again),
        "--- before\n+++ after\n@@ -1 +1 @@\n-d=1\n+d=9\n"
    );
    let old = before["host_request_id"].clone();
    let rec = g.wait_ledgered("review_superseded", |b| b["host_request_id"] == old);
    assert_eq!(rec["reviewed_again"], true, "{rec}");
    ok(&g.cli(&["approvals", "deny", &id_of(&again)]));
    let new = again["host_request_id"].clone();
    g.wait_ledgered("review_reverted", |b| b["host_request_id"] == new);
    assert_eq!(std::fs::read_to_string(&deny).unwrap(), "d=1\n");
}
