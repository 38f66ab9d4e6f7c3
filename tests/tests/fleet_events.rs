//! End-to-end: every event names its host and boot; the gate's outcomes (a request and its
//! decision) are `audit` events in the events file, matching the ledger record for record;
//! with `output.format = "ocsf"` the same file holds OCSF File System Activities and Base
//! Events.
use std::path::Path;
use std::time::Duration;

use e2e::gate::{Gate, id_of, local_approval, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"";

fn gate(output_toml: &str) -> Gate {
    let d = Daemon::start_with(DaemonOptions {
        output_toml: output_toml.to_owned(),
        toml_for_dir: Some(Box::new(|root: &Path| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).expect("mkdir gated");
            format!(
                "{}\n[gate]\n{}",
                local_approval(root),
                rule(&watched.display().to_string(), "ask-hold", HOLD)
            )
        })),
        ..DaemonOptions::default()
    });
    Gate { d }
}

/// A session's write to `notes.conf` (not gated), then to `gated/app.conf`, held and
/// denied: a request and a decision.
fn denied_write(g: &Gate) {
    let f = g.gated("app.conf");
    std::fs::write(&f, "keep\n").expect("seed");
    let child = g.spawn_with_reason(
        "claude",
        "tune",
        "echo ok > notes.conf; echo evil > gated/app.conf",
    );
    let r = g.wait_request(&f);
    ok(&g.cli(&["approvals", "deny", &id_of(&r), "--note", "no"]));
    let out = wait_child(child, Duration::from_secs(15));
    assert!(!out.status.success(), "{out:?}");
    g.wait_ledgered("decision", |_| true);
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_owned()
}

fn host() -> String {
    let o = std::process::Command::new("hostname")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn gate_outcomes_are_audit_events_and_every_event_names_its_host() {
    if !require_root("gate_outcomes_are_audit_events_and_every_event_names_its_host") {
        return;
    }
    let mut g = gate("");
    denied_write(&g);
    let path = g.d.w("notes.conf");
    g.d.wait_for("the session's write of notes.conf", |ev| {
        ev.iter()
            .any(|e| e["path"] == path && e["session"]["agent"] == "claude")
    });
    let ledger = g.ledger();
    let audit = poll(
        "every ledger record as an audit event",
        Duration::from_secs(10),
        || {
            let a = g.d.audit_events();
            (a.len() >= ledger.len()).then_some(a)
        },
    );
    for e in g.d.all_events() {
        assert_eq!(e["v"], 2, "{e}");
        assert_eq!(e["host"], host(), "{e}");
        assert_eq!(e["boot_id"], boot_id(), "{e}");
        assert!(e["class"] == "file" || e["class"] == "audit", "{e}");
    }
    // Record for record, in the ledger's order.
    for (rec, ev) in ledger.iter().zip(&audit) {
        assert_eq!(ev["kind"], rec["kind"]);
        assert_eq!(ev["ledger"]["seq"], rec["seq"]);
        assert_eq!(ev["ledger"]["hash"], rec["hash"]);
        assert_eq!(ev["body"], rec["body"]);
        assert_eq!(ev["time"], rec["time"]);
    }
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["daemon_started", "request", "decision"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    // Every line is counted (the counter moves just before its line is flushed).
    poll("events_emitted = lines", Duration::from_secs(10), || {
        (g.stat("events_emitted") as usize == g.d.all_events().len()).then_some(())
    });
    assert_eq!(g.stat("audit_events_dropped"), 0);
    // The last record, written as the daemon stops, is still written out.
    g.d.shut_down();
    let last = g.d.audit_events().pop().expect("audit events");
    assert_eq!(last["kind"], "daemon_stopped", "{last}");
    assert_eq!(
        g.ledger().last().map(|r| r["hash"].clone()),
        Some(last["ledger"]["hash"].clone())
    );
}

#[test]
fn ocsf_output_holds_file_activities_and_base_events() {
    if !require_root("ocsf_output_holds_file_activities_and_base_events") {
        return;
    }
    let g = gate("format = \"ocsf\"\n");
    denied_write(&g);
    let path = g.d.w("notes.conf");
    // The session's write and the decision (written out after its ledger record).
    let lines = poll(
        "the session's write and the decision in OCSF",
        Duration::from_secs(10),
        || {
            let all = g.d.all_events();
            let write = all.iter().any(|e| {
                e["class_uid"] == 1001
                    && e["file"]["path"] == path
                    && e["actor"]["session"].is_object()
            });
            let decision = all
                .iter()
                .any(|e| e["class_uid"] == 0 && e["activity_name"] == "decision");
            (write && decision).then_some(all)
        },
    );
    let mut classes = std::collections::BTreeSet::new();
    for e in &lines {
        let class = e["class_uid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no class_uid: {e}"));
        classes.insert(class);
        let activity = e["activity_id"].as_u64().expect("activity_id");
        assert_eq!(e["type_uid"].as_u64(), Some(class * 100 + activity), "{e}");
        assert!(
            e["time"].as_i64().is_some_and(|t| t > 1_700_000_000_000),
            "{e}"
        );
        assert_eq!(e["metadata"]["version"], "1.8.0");
        assert_eq!(e["metadata"]["product"]["name"], "confgate");
        assert_eq!(e["device"]["hostname"], host());
        assert!(e["severity_id"].is_u64());
        match class {
            1001 => {
                assert_eq!(e["category_uid"], 1);
                assert!(e["actor"]["process"]["pid"].is_u64(), "{e}");
                assert!(
                    e["file"]["name"].is_string() && e["file"]["type_id"].is_u64(),
                    "{e}"
                );
                assert_eq!(e["unmapped"]["confgate"]["boot_id"], boot_id());
            }
            0 => {
                assert_eq!(e["activity_id"], 99);
                assert_eq!(e["unmapped"]["confgate"]["class"], "audit");
                assert_eq!(e["metadata"]["profiles"][0], "host");
            }
            other => panic!("class {other}: {e}"),
        }
    }
    assert_eq!(classes.into_iter().collect::<Vec<_>>(), [0, 1001]);
    // The session's write.
    let open = lines
        .iter()
        .find(|e| {
            e["class_uid"] == 1001 && e["file"]["path"] == path && e["actor"]["session"].is_object()
        })
        .unwrap_or_else(|| panic!("the session's open of {path}: {lines:#?}"));
    assert_eq!(
        open["actor"]["session"]["uid"].as_str().map(str::is_empty),
        Some(false)
    );
    assert_eq!(open["actor"]["app_name"], "claude");
    assert!(
        open["actor"]["process"]["ancestry"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{open}"
    );
    let decision = lines
        .iter()
        .find(|e| e["class_uid"] == 0 && e["activity_name"] == "decision")
        .expect("the decision as a Base Event");
    assert_eq!(
        decision["unmapped"]["confgate"]["body"]["state"], "denied",
        "{decision}"
    );
}
