//! End-to-end: the session gate on the real kernel. Sessions started with `confgate run`
//! are confined (Landlock + a seccomp user-notification filter) and every path operation
//! on a gated path is held by the daemon's supervisor, decided by the policy and the
//! approval service, and performed by the daemon on the writer's behalf: exactly once
//! when approved, never when denied, by the rule's failure verdict when nobody answers.
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"";

fn failed_with_eperm(o: &Output) -> bool {
    !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted")
}

/// One operation of a session on the gated tree, with what must hold after it was
/// approved and after it was denied.
struct Case {
    name: &'static str,
    /// Makes what the operation works on (in `gated/` and `stage/`), before the session.
    setup: fn(&Path),
    /// The session's shell script (cwd: the watched tree).
    script: &'static str,
    /// The paths of the requests it makes, in order (relative to the watched tree).
    requests: &'static [&'static str],
    approved: fn(&Path),
    denied: fn(&Path),
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

fn seed(w: &Path, rel: &str, content: &str) {
    let p = w.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "write",
            setup: |w| seed(w, "gated/w.conf", "old\n"),
            script: "echo new > gated/w.conf",
            requests: &["gated/w.conf"],
            approved: |w| assert_eq!(read(&w.join("gated/w.conf")), "new\n"),
            denied: |w| assert_eq!(read(&w.join("gated/w.conf")), "old\n"),
        },
        Case {
            name: "rename onto",
            setup: |w| {
                seed(w, "gated/onto.conf", "old\n");
                seed(w, "stage/onto.new", "new\n");
            },
            script: "mv stage/onto.new gated/onto.conf",
            requests: &["gated/onto.conf"],
            approved: |w| {
                assert_eq!(read(&w.join("gated/onto.conf")), "new\n");
                assert!(!w.join("stage/onto.new").exists());
            },
            denied: |w| {
                assert_eq!(read(&w.join("gated/onto.conf")), "old\n");
                assert_eq!(read(&w.join("stage/onto.new")), "new\n");
            },
        },
        Case {
            name: "rename away",
            setup: |w| seed(w, "gated/away.conf", "old\n"),
            script: "mv gated/away.conf stage/away.conf",
            requests: &["gated/away.conf"],
            approved: |w| {
                assert!(!w.join("gated/away.conf").exists());
                assert_eq!(read(&w.join("stage/away.conf")), "old\n");
            },
            denied: |w| {
                assert_eq!(read(&w.join("gated/away.conf")), "old\n");
                assert!(!w.join("stage/away.conf").exists());
            },
        },
        Case {
            name: "unlink",
            setup: |w| seed(w, "gated/rm.conf", "old\n"),
            script: "rm gated/rm.conf",
            requests: &["gated/rm.conf"],
            approved: |w| assert!(!w.join("gated/rm.conf").exists()),
            denied: |w| assert_eq!(read(&w.join("gated/rm.conf")), "old\n"),
        },
        Case {
            name: "rmdir",
            setup: |w| std::fs::create_dir_all(w.join("gated/dir")).unwrap(),
            script: "rmdir gated/dir",
            requests: &["gated/dir"],
            approved: |w| assert!(!w.join("gated/dir").exists()),
            denied: |w| assert!(w.join("gated/dir").is_dir()),
        },
        Case {
            name: "truncate(2)",
            setup: |w| seed(w, "gated/t.conf", "old\n"),
            script: "python3 -c 'import os; os.truncate(\"gated/t.conf\", 1)'",
            requests: &["gated/t.conf"],
            approved: |w| assert_eq!(read(&w.join("gated/t.conf")), "o"),
            denied: |w| assert_eq!(read(&w.join("gated/t.conf")), "old\n"),
        },
        Case {
            name: "chmod",
            setup: |w| seed(w, "gated/mode.conf", "x\n"),
            script: "chmod 600 gated/mode.conf",
            requests: &["gated/mode.conf"],
            approved: |w| {
                let m = std::fs::metadata(w.join("gated/mode.conf")).unwrap();
                assert_eq!(m.mode() & 0o7777, 0o600);
            },
            denied: |w| {
                let m = std::fs::metadata(w.join("gated/mode.conf")).unwrap();
                assert_eq!(m.mode() & 0o7777, 0o644);
            },
        },
        Case {
            name: "chown",
            setup: |w| seed(w, "gated/own.conf", "x\n"),
            script: "chown 65534 gated/own.conf",
            requests: &["gated/own.conf"],
            approved: |w| {
                assert_eq!(
                    std::fs::metadata(w.join("gated/own.conf")).unwrap().uid(),
                    65534
                )
            },
            denied: |w| {
                assert_eq!(
                    std::fs::metadata(w.join("gated/own.conf")).unwrap().uid(),
                    0
                )
            },
        },
        Case {
            name: "hard link of a gated file",
            setup: |w| seed(w, "gated/l.conf", "x\n"),
            script: "ln gated/l.conf stage/l.link",
            requests: &["gated/l.conf"],
            approved: |w| {
                assert_eq!(
                    std::fs::metadata(w.join("gated/l.conf")).unwrap().nlink(),
                    2
                )
            },
            denied: |w| {
                assert!(!w.join("stage/l.link").exists());
                assert_eq!(
                    std::fs::metadata(w.join("gated/l.conf")).unwrap().nlink(),
                    1
                );
            },
        },
        Case {
            name: "symlink",
            setup: |_| {},
            script: "ln -s /etc/passwd gated/sym",
            requests: &["gated/sym"],
            approved: |w| assert!(w.join("gated/sym").symlink_metadata().unwrap().is_symlink()),
            denied: |w| assert!(w.join("gated/sym").symlink_metadata().is_err()),
        },
        Case {
            name: "mkdir -p d && echo x > d/f",
            setup: |_| {},
            script: "mkdir -p gated/d && echo x > gated/d/f",
            requests: &["gated/d", "gated/d/f"],
            approved: |w| assert_eq!(read(&w.join("gated/d/f")), "x\n"),
            denied: |w| assert!(!w.join("gated/d").exists()),
        },
        Case {
            name: "write through a hard link made before the session",
            setup: |w| {
                seed(w, "gated/hl.conf", "old\n");
                std::fs::create_dir_all(w.join("stage")).unwrap();
                std::fs::hard_link(w.join("gated/hl.conf"), w.join("stage/hl.alias")).unwrap();
            },
            script: "echo new > stage/hl.alias",
            requests: &["gated/hl.conf"],
            approved: |w| assert_eq!(read(&w.join("gated/hl.conf")), "new\n"),
            denied: |w| assert_eq!(read(&w.join("gated/hl.conf")), "old\n"),
        },
    ]
}

fn run_cases(approve: bool) {
    let g = Gate::start_with(
        |root| {
            let w = root.join("watched");
            std::fs::create_dir_all(w.join("stage")).unwrap();
            for c in cases() {
                (c.setup)(&w);
            }
        },
        |w| rule(w, "ask-hold", HOLD),
    );
    let w = g.d.watched.clone();
    for c in cases() {
        let child = g.spawn_with_reason("claude", c.name, c.script);
        for rel in c.requests {
            let r = g.wait_request(&w.join(rel));
            if approve {
                ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "1m"]));
            } else {
                ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
                break;
            }
        }
        let out = wait_child(child, Duration::from_secs(20));
        if approve {
            assert!(out.status.success(), "{}: {}", c.name, output_text(&out));
            (c.approved)(&w);
        } else {
            assert!(failed_with_eperm(&out), "{}: {}", c.name, output_text(&out));
            (c.denied)(&w);
        }
    }
    assert_eq!(
        g.stat("session_attached"),
        cases().len() as u64,
        "every session was confined"
    );
}

#[test]
fn every_operation_on_a_gated_path_is_held_and_performed_once_approved() {
    if !require_root("every_operation_on_a_gated_path_is_held_and_performed_once_approved") {
        return;
    }
    run_cases(true);
}

#[test]
fn every_operation_on_a_gated_path_is_held_and_changes_nothing_when_denied() {
    if !require_root("every_operation_on_a_gated_path_is_held_and_changes_nothing_when_denied") {
        return;
    }
    run_cases(false);
}
