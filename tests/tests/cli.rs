//! End-to-end: the commands people type.
use e2e::*;

#[test]
fn run_passes_the_exit_code_and_sessions_lists_it() {
    if !require_root("run_passes_the_exit_code_and_sessions_lists_it") {
        return;
    }
    let d = Daemon::start();
    let out = d.in_session("claude", "exit code check", "echo x > s.conf; exit 7");
    assert_eq!(out.status.code(), Some(7));
    let s = d.w("s.conf");
    d.wait_for("event", |ev| has(ev, "create", &s));
    let v = d.cli_json(&["sessions", "--all", "--json"]);
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["agent"] == "claude"))
        .expect("session listed");
    assert_eq!(s["reason"], "exit code check");
    let st = d.cli_json(&["stats", "--json"]);
    assert_eq!(st["kernel_ringbuf_drops"], 0, "{st}");
    assert!(
        st["events_emitted"].as_u64().is_some_and(|n| n >= 1),
        "{st}"
    );
}

/// Without a reachable daemon (no socket, or a config that cannot be read) `confgate run`
/// exits 125 and never starts the command unmonitored.
#[test]
fn run_refuses_to_start_unmonitored() {
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("ran");
    for (flag, value) in [
        ("--socket", "/nonexistent/confgate.sock"),
        ("--config", "/nonexistent/confgate.toml"),
    ] {
        let out = std::process::Command::new(confgate_bin())
            .args([flag, value, "run", "--agent", "a", "--", "touch"])
            .arg(&marker)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(125),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !marker.exists(),
            "{flag}: the command must not run unmonitored"
        );
    }
}

#[test]
fn check_config_reports_line_and_column() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kernel]\nringbuf_bytes = \"big\"\n").expect("write");
    let out = std::process::Command::new(confgate_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2:", bad.display())),
        "line reported: {err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[watch]\npaths = [\"/etc\"]\n").expect("write");
    let out = std::process::Command::new(confgate_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
