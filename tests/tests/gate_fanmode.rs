//! End-to-end: `gate.fanotify` places the host-wide permission marks only while an
//! unconfined session is live ("detected", the default), never ("off"), or always.
use std::time::Duration;

use e2e::gate::{Gate, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"";

#[test]
fn detected_mode_marks_only_while_an_unconfined_session_is_live() {
    if !require_root("detected_mode_marks_only_while_an_unconfined_session_is_live") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("app.conf");
    std::fs::write(&f, "a\n").expect("seed");
    assert_eq!(g.stat("gate_marks_placed"), 0);
    assert_eq!(g.stat("gate_marks_placements"), 0);
    // Outside any session nothing is marked: no permission events at all.
    std::fs::read(&f).expect("read");
    std::fs::write(&f, "b\n").expect("write outside sessions");
    assert_eq!(g.stat("perm_events"), 0);

    // A session (not confined: nothing attaches a confinement here) places the marks
    // before its first command runs; its write is held, then denied.
    let stop = g.d.dir.path().join("stop");
    let script = format!(
        "echo c > gated/app.conf; while [ ! -e {} ]; do sleep 0.05; done",
        stop.display()
    );
    let child = g.spawn_in_session("claude", &script);
    let r = g.wait_request(&f);
    assert_eq!(g.stat("gate_marks_placed"), 1);
    let id = e2e::gate::id_of(&r);
    ok(&g.cli(&["approvals", "deny", &id]));
    let placed = g.wait_ledgered("gate_marks_placed", |_| true);
    assert_eq!(placed["reason"], "unconfined sessions are live", "{placed}");
    assert_eq!(placed["sessions"][0]["agent"], "claude", "{placed}");
    std::fs::write(&stop, "").expect("stop");
    let o = wait_child(child, Duration::from_secs(20));
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(std::fs::read_to_string(&f).expect("read"), "b\n");

    // The last unconfined session ended: the marks go.
    g.d.wait_stat("gate_marks_placed", |v| v == 0);
    let removed = g.wait_ledgered("gate_marks_removed", |_| true);
    assert_eq!(removed["reason"], "no unconfined session is live");
    assert_eq!(g.stat("gate_marks_removals"), 1);
    let before = g.stat("perm_events");
    std::fs::write(&f, "d\n").expect("write outside sessions");
    assert_eq!(g.stat("perm_events"), before);
}

#[test]
fn off_mode_has_no_permission_group() {
    if !require_root("off_mode_has_no_permission_group") {
        return;
    }
    let g = Gate::start(|w| format!("fanotify = \"off\"\n{}", rule(w, "ask-hold", HOLD)));
    let f = g.gated("app.conf");
    std::fs::write(&f, "a\n").expect("seed");
    // Not held: the session's write lands at once (observed only).
    let o = g.d.in_session("claude", "e2e", "echo b > gated/app.conf");
    ok(&o);
    assert_eq!(std::fs::read_to_string(&f).expect("read"), "b\n");
    let o = g.d.cli(&["stats"]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("perm_events"), "{text}");
    assert!(!text.contains("gate_marks_placed"), "{text}");
}

#[test]
fn always_mode_marks_from_start() {
    if !require_root("always_mode_marks_from_start") {
        return;
    }
    let g = Gate::start(|w| format!("fanotify = \"always\"\n{}", rule(w, "ask-hold", HOLD)));
    assert_eq!(g.stat("gate_marks_placed"), 1);
    let placed = g.wait_ledgered("gate_marks_placed", |_| true);
    assert_eq!(placed["reason"], "gate.fanotify = \"always\"");
    std::fs::write(g.gated("x"), "x").expect("write outside sessions");
    g.d.wait_stat("perm_events", |v| v > 0);
}
