//! End-to-end: the one-line notice on a session's controlling terminal. A session started
//! under a real pseudo-terminal (`script`) sees the request id, what waits and how to
//! approve it on that terminal; a session whose output is piped and that has no terminal
//! gets nothing written into its pipes.
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"";
const URL: &str = "https://approve.example.test:8443";

fn gate() -> Gate {
    Gate::start(|w| format!("approvals_url = \"{URL}\"\n{}", rule(w, "tty", HOLD)))
}

/// Single-quoted for `sh`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn a_held_write_is_announced_on_the_sessions_terminal() {
    if !require_root("a_held_write_is_announced_on_the_sessions_terminal") {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        skip(
            "a_held_write_is_announced_on_the_sessions_terminal",
            "util-linux `script` is not installed (it runs the session under a pseudo-terminal)",
        );
        return;
    }
    let g = gate();
    let target = g.gated("t.conf");
    std::fs::write(&target, "old\n").unwrap();
    let run = format!(
        "{} --config {} run --agent tty --reason e2e -- sh -c {}",
        quoted(&confgate_bin().display().to_string()),
        quoted(&g.d.config.display().to_string()),
        quoted("echo new > gated/t.conf"),
    );
    // `script` gives the session a pseudo-terminal as its controlling terminal and copies
    // what is written to it to its own stdout (a pipe here).
    let mut child = Command::new("script")
        .args(["-qfec", &run, "/dev/null"])
        .current_dir(&g.d.watched)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let req = g.wait_request(&target);
    let id = id_of(&req);
    let line = poll(
        "the notice on the terminal",
        Duration::from_secs(10),
        || {
            let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            text.lines()
                .find(|l| l.contains(&format!("[confgate] request {id}:")))
                .map(str::to_owned)
        },
    );
    assert!(line.contains(&target.display().to_string()), "{line}");
    assert!(line.contains("held for up to 20s"), "{line}");
    assert!(
        line.contains(&format!("confgate approvals approve {id}")),
        "{line}"
    );
    assert!(line.contains(&format!("{URL}/web/requests/{id}")), "{line}");
    ok(&g.cli(&["approvals", "approve", &id, "--ttl", "1m"]));
    drop(child.stdin.take());
    let o = wait_child(child, Duration::from_secs(20));
    reader.join().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
    assert_eq!(g.stat("gate_terminal_notices"), 1);
}

#[test]
fn nothing_goes_into_the_pipes_of_a_session_without_a_terminal() {
    if !require_root("nothing_goes_into_the_pipes_of_a_session_without_a_terminal") {
        return;
    }
    let g = gate();
    let target = g.gated("p.conf");
    std::fs::write(&target, "old\n").unwrap();
    // `setsid`: no controlling terminal even when the tests run from one.
    let mut c = Command::new("setsid");
    c.arg(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "pipe", "--reason", "e2e", "--"])
        .args(["sh", "-c", "echo new > gated/p.conf"])
        .current_dir(&g.d.watched)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("setsid confgate run");
    let req = g.wait_request(&target);
    g.d.wait_stat("gate_terminal_notices_no_terminal", |n| n >= 1);
    ok(&g.cli(&["approvals", "deny", &id_of(&req)]));
    let o = wait_child(child, Duration::from_secs(20));
    let text = output_text(&o);
    assert!(!text.contains("[confgate]"), "{text}");
    assert!(!text.contains("approvals approve"), "{text}");
    assert_eq!(g.stat("gate_terminal_notices"), 0);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
}
