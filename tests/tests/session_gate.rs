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
            name: "write through /proc/self/root",
            setup: |w| seed(w, "gated/pr.conf", "old\n"),
            script: "echo new > /proc/self/root$PWD/gated/pr.conf",
            requests: &["gated/pr.conf"],
            approved: |w| assert_eq!(read(&w.join("gated/pr.conf")), "new\n"),
            denied: |w| assert_eq!(read(&w.join("gated/pr.conf")), "old\n"),
        },
        Case {
            name: "mmap writes through an approved open",
            setup: |w| seed(w, "gated/mm.conf", "aaaa\n"),
            script: "python3 -c 'import mmap,os; fd=os.open(\"gated/mm.conf\", os.O_RDWR); m=mmap.mmap(fd, 5); m[0:4]=b\"bbbb\"; m.flush()'",
            requests: &["gated/mm.conf"],
            approved: |w| assert_eq!(read(&w.join("gated/mm.conf")), "bbbb\n"),
            denied: |w| assert_eq!(read(&w.join("gated/mm.conf")), "aaaa\n"),
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
        let mut child = g.spawn_with_reason("claude", c.name, c.script);
        if approve {
            for rel in c.requests {
                let r = g.wait_request(&w.join(rel));
                ok(&g.cli(&["approvals", "approve", &id_of(&r), "--ttl", "1m"]));
            }
        } else {
            // Deny the first request; a tool that retries another way (mv after a
            // refused rename) asks again and is denied again, until it gives up.
            let r = g.wait_request(&w.join(c.requests[0]));
            ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().expect("wait").is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}: still running",
                    c.name
                );
                for r in g.pending() {
                    let _ = g.cli(&["approvals", "deny", &id_of(&r)]);
                }
                std::thread::sleep(Duration::from_millis(50));
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

/// Nobody decides: each held operation ends with the rule's failure verdict when its
/// hold times out (`fail = "deny"`: nothing changes; `fail = "allow"`: performed once).
fn run_timeouts(fail: &str) {
    let rule_text = format!("mode = \"hold\"\ntimeout = \"1s\"\nfail = \"{fail}\"");
    let g = Gate::start_with(
        |root| {
            let w = root.join("watched");
            std::fs::create_dir_all(w.join("stage")).unwrap();
            for c in cases() {
                (c.setup)(&w);
            }
        },
        move |w| rule(w, "ask-hold", &rule_text),
    );
    let w = g.d.watched.clone();
    for c in cases() {
        let child = g.spawn_with_reason("claude", c.name, c.script);
        let out = wait_child(child, Duration::from_secs(60));
        if fail == "allow" {
            assert!(out.status.success(), "{}: {}", c.name, output_text(&out));
            (c.approved)(&w);
        } else {
            assert!(failed_with_eperm(&out), "{}: {}", c.name, output_text(&out));
            (c.denied)(&w);
        }
    }
    // Each case's hold ended by its failure verdict (the daemon's own timeout or the
    // service expiring the request, whichever came first), at least once per case.
    let fallback = g.stat(&format!("gate_fallback_{fail}"));
    assert!(
        fallback >= cases().len() as u64,
        "every case ended with its failure verdict: {fallback}"
    );
    assert_eq!(
        g.stat(&format!(
            "gate_fallback_{}",
            if fail == "allow" { "deny" } else { "allow" }
        )),
        0
    );
    assert_eq!(g.stat("session_attached"), cases().len() as u64);
}

#[test]
fn every_held_operation_times_out_to_a_deny_verdict_and_changes_nothing() {
    run_timeouts("deny");
}

#[test]
fn every_held_operation_times_out_to_an_allow_verdict_and_is_performed_once() {
    run_timeouts("allow");
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

#[test]
fn a_dead_supervisor_fails_the_sessions_held_operation_and_nothing_else() {
    if !require_root("a_dead_supervisor_fails_the_sessions_held_operation_and_nothing_else") {
        return;
    }
    let mut g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("held.conf");
    std::fs::write(&f, "old\n").unwrap();
    let child = g.spawn_with_reason("claude", "crash", "echo new > gated/held.conf");
    g.wait_request(&f);
    // Without a descriptor store, the listener dies with the daemon: the kernel fails the
    // session's notified syscalls (ENOSYS) instead of letting them through.
    g.d.kill();
    let out = wait_child(child, Duration::from_secs(20));
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Function not implemented"),
        "{}",
        output_text(&out)
    );
    assert_eq!(read(&f), "old\n", "the held write never happened");
    // Other processes on the host are not affected.
    std::fs::write(&f, "admin\n").expect("a process outside the session writes");
    assert_eq!(read(&f), "admin\n");
    // At the next start, the request is closed; nothing changed under the session.
    g.d.start_again();
    let rec = g.wait_ledgered("released_by_crash", |b| {
        b["path"] == f.display().to_string().as_str()
    });
    assert!(rec["changed"] == true || rec["changed"] == false, "{rec}");
}

#[test]
fn a_session_cannot_read_confgates_own_files_or_signal_the_daemon() {
    if !require_root("a_session_cannot_read_confgates_own_files_or_signal_the_daemon") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let state = g.d.state_dir();
    let config_before = std::fs::read(&g.d.config).unwrap();
    let script = format!(
        "cat {config} >/dev/null 2>&1 && echo config-read; \
         ls {state} 2>/dev/null | grep -q redb && echo state-listed; \
         cat {state}/confgate.redb >/dev/null 2>&1 && echo store-read; \
         kill -STOP {pid} 2>/dev/null && echo stopped; \
         kill -0 {pid} 2>/dev/null && echo signalled; \
         python3 -c 'import os; os.truncate(\"{state}/ledger.jsonl\", 0)' 2>/dev/null && echo ledger-truncated; \
         echo x > cfg.new && mv cfg.new {config} 2>/dev/null && echo config-replaced; \
         echo done",
        config = g.d.config.display(),
        state = state.display(),
        pid = g.d.pid(),
    );
    let o = g.d.in_session("claude", "probe", &script);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("done"), "{}", output_text(&o));
    for leak in [
        "config-read",
        "state-listed",
        "store-read",
        "stopped",
        "signalled",
    ] {
        assert!(!out.contains(leak), "{leak}: {}", output_text(&o));
    }
    assert_eq!(std::fs::read(&g.d.config).unwrap(), config_before);
    // The daemon still answers.
    assert!(g.stat("session_attached") >= 1);
}

#[test]
fn a_session_cannot_route_around_its_confinement() {
    if !require_root("a_session_cannot_route_around_its_confinement") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("target.conf");
    std::fs::write(&f, "old\n").unwrap();
    let target = f.display().to_string();
    // Each attempt prints its name only if it wrote; none may.
    let script = format!(
        r#"
python3 - <<'PY'
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
# bpf(2): a root session could otherwise delete itself from the kernel's session map.
r = libc.syscall(321, 0, 0, 0)
print("bpf", r, ctypes.get_errno())
# the 32-bit ABI (int 0x80) is refused by the filter's architecture check: not tested
# from Python; open_by_handle_at is refused outright.
r = libc.syscall(304, -100, 0, 0)
print("open_by_handle_at", r, ctypes.get_errno())
PY
unshare -m sh -c 'mount --bind /dev/null {target}' 2>/dev/null && echo mount-bind
echo done
"#
    );
    let o =
        g.d.session_command("claude", Some("escape"), &script)
            .output()
            .expect("run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("done"), "{}", output_text(&o));
    assert!(
        out.contains("bpf -1 1"),
        "bpf(2) fails with EPERM: {}",
        output_text(&o)
    );
    assert!(
        out.contains("open_by_handle_at -1 1"),
        "open_by_handle_at fails with EPERM: {}",
        output_text(&o)
    );
    assert!(!out.contains("mount-bind"), "{}", output_text(&o));
    assert_eq!(read(&f), "old\n");
}

#[test]
fn a_path_swapped_after_the_check_gains_nothing() {
    if !require_root("a_path_swapped_after_the_check_gains_nothing") {
        return;
    }
    // A deny rule: every open the supervisor sees for the gated path fails at once; the
    // race is between its check and the kernel's own use of the string.
    let g = Gate::start(|w| {
        format!("[[gate.rule]]\nname = \"no\"\npaths = [\"{w}/gated/**\"]\nverdict = \"deny\"\n")
    });
    let f = g.gated("race.conf");
    std::fs::create_dir_all(g.d.watched.join("stage")).unwrap();
    let gated = f.display().to_string();
    let free = g.d.watched.join("stage/race.conf").display().to_string();
    let script = format!(
        r#"python3 - <<'PY'
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
a = b"{free}\0"
b = b"{gated}\0"
n = max(len(a), len(b))
buf = ctypes.create_string_buffer(n)
ctypes.memmove(buf, a, len(a))
stop = False
def swap():
    while not stop:
        ctypes.memmove(buf, b, len(b))
        ctypes.memmove(buf, a, len(a))
t = threading.Thread(target=swap); t.start()
ok = 0
for _ in range(3000):
    fd = libc.open(buf, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if fd >= 0:
        os.write(fd, b"x"); os.close(fd); ok += 1
stop = True; t.join()
print("opened", ok)
PY
"#
    );
    let o = g.d.in_session("claude", "race", &script);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        !f.exists(),
        "the gated path was never created: {}",
        output_text(&o)
    );
}

#[test]
fn processes_outside_sessions_pay_no_permission_events_by_default() {
    if !require_root("processes_outside_sessions_pay_no_permission_events_by_default") {
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let f = g.gated("admin.conf");
    for i in 0..50 {
        std::fs::write(&f, format!("{i}\n")).unwrap();
        let _ = std::fs::read(&f).unwrap();
    }
    // A confined session's own work does not place host-wide marks either.
    ok(&g.d.in_session("claude", "", "echo x > stage-free.txt"));
    assert_eq!(
        g.stat("perm_events"),
        0,
        "no fanotify permission event at all"
    );
    assert_eq!(g.stat("gate_marks_placed"), 0);
}

/// An io_uring open (no path syscall for seccomp to see): prints the open's result, or
/// exits 3 with the errno when the ring cannot be set up.
const URING_OPEN: &str = r#"
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
int main(int argc, char **argv) {
    struct io_uring r;
    int e = io_uring_queue_init(4, &r, 0);
    if (e != 0) { printf("setup %d\n", e); return 3; }
    struct io_uring_sqe *s = io_uring_get_sqe(&r);
    io_uring_prep_openat(s, AT_FDCWD, argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    io_uring_submit(&r);
    struct io_uring_cqe *c;
    if (io_uring_wait_cqe(&r, &c) != 0) { perror("io_uring_wait_cqe"); return 2; }
    printf("%d\n", c->res);
    return 0;
}
"#;

#[test]
fn io_uring_is_refused_in_a_session_and_recorded() {
    const NAME: &str = "io_uring_is_refused_in_a_session_and_recorded";
    if !require_root(NAME) {
        return;
    }
    if !Path::new("/usr/include/liburing.h").exists() {
        skip(
            NAME,
            "liburing-dev is not installed (scripts/bootstrap.sh installs it)",
        );
        return;
    }
    let g = Gate::start(|w| rule(w, "ask-hold", HOLD));
    let src = g.d.dir.path().join("uring.c");
    let bin = g.d.dir.path().join("uring");
    std::fs::write(&src, URING_OPEN).unwrap();
    let cc = std::process::Command::new("gcc")
        .arg("-O2")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .arg("-luring")
        .output()
        .expect("gcc");
    assert!(cc.status.success(), "{}", output_text(&cc));
    std::fs::create_dir_all(g.d.watched.join("stage")).unwrap();
    // Outside any session io_uring works (the host is not affected).
    let outside = std::process::Command::new(&bin)
        .arg(g.d.watched.join("stage/outside.conf"))
        .output()
        .expect("uring outside");
    assert!(outside.status.success(), "{}", output_text(&outside));
    // Inside: no ring at all, whatever the path (a ring's operations pass no notification).
    let script = format!(
        "{b} gated/uring.conf; echo rc=$?; {b} stage/uring.conf; echo rc=$?",
        b = bin.display()
    );
    let o = g.d.in_session("claude", "uring", &script);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let eperm = format!("setup -{}", libc::EPERM);
    assert_eq!(out.matches(&eperm).count(), 2, "{}", output_text(&o));
    assert_eq!(out.matches("rc=3").count(), 2, "{}", output_text(&o));
    assert!(!g.gated("uring.conf").exists());
    assert!(!g.d.watched.join("stage/uring.conf").exists());
    // Counted and logged.
    assert_eq!(g.stat("session_io_uring_refused"), 2, "{}", g.d.log());
    assert!(
        g.d.log().contains("io_uring_setup refused"),
        "{}",
        g.d.log()
    );
}
