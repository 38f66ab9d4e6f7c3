//! End-to-end: behaviour the README promises beyond the basic event kinds: project roots,
//! restarts, the event stream, the fanotify-only mode, loss accounting, long paths.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::*;

#[test]
fn env_files_under_project_roots_are_reported_without_marks() {
    if !require_root("env_files_under_project_roots_are_reported_without_marks") {
        return;
    }
    let projects = tempfile::Builder::new()
        .prefix("confgate-projects-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let root = projects.path().canonicalize().expect("canonical");
    std::fs::create_dir_all(root.join("alice/app")).expect("mkdir");
    let d = Daemon::start_with(DaemonOptions {
        project_roots: vec![format!("{}/*", root.display())],
        ..DaemonOptions::default()
    });
    let env = root.join("alice/app/.env");
    let code = root.join("alice/app/main.rs");
    // In a session, relative path: resolved by the daemon, matched by file-name glob.
    let out = d
        .session_command("claude", None, "echo DEBUG=1 >> .env; echo fn > main.rs")
        .current_dir(root.join("alice/app"))
        .output()
        .expect("run");
    ok(&out);
    let envs = env.display().to_string();
    // No fanotify marks here, so whether O_CREAT created the file is unknown: it is an
    // open_write with O_CREAT in details.flags (README, known limits).
    let ev = d.wait_for(".env open", |ev| has(ev, "open_write", &envs));
    let e = ev.iter().find(|e| e["path"] == envs).expect("event");
    assert_eq!(
        (
            e["session"]["agent"].as_str(),
            e["details"]["flags"].as_str()
        ),
        (Some("claude"), Some("O_WRONLY|O_CREAT|O_APPEND"))
    );
    d.wait_for(".env write", |ev| has(ev, "write", &envs));
    // Outside a session, absolute path: the kernel prefix filter sees it.
    ok(&sh(&root, &format!("echo TLS_VERIFY=false >> {envs}")));
    d.wait_for("outside .env append", |ev| {
        ev.iter()
            .any(|e| e["path"] == envs && e["session"].is_null())
    });
    d.settle();
    let ev = d.events();
    assert!(
        ev.iter().all(|e| e["path"] != code.display().to_string()),
        "main.rs does not match the globs"
    );
    let outside = ev
        .iter()
        .find(|e| e["path"] == envs && e["session"].is_null())
        .expect("outside event");
    assert_eq!(
        outside["source"], "ebpf",
        "no fanotify marks under project roots: {outside}"
    );
}

#[test]
fn sessions_survive_a_daemon_restart() {
    if !require_root("sessions_survive_a_daemon_restart") {
        return;
    }
    let mut d = Daemon::start();
    // The host-wide fanotify gate and unconfined sessions (`--no-confine`).
    d.confine_sessions = false;
    let mut agent = d
        .session_command("long-runner", None, "read x; echo after > restarted.conf")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    // Wait until the session exists, then restart the daemon under it.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let out = d.cli(&["sessions", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("long-runner") {
            break;
        }
        assert!(Instant::now() < deadline, "session never listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.restart();
    use std::io::Write as _;
    agent
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    assert!(agent.wait().expect("wait").success());
    let p = d.w("restarted.conf");
    let ev = d.wait_for("write after restart", |ev| has(ev, "create", &p));
    let e = ev.iter().find(|e| e["path"] == p).expect("event");
    assert_eq!(e["session"]["agent"], "long-runner", "{e}");
}

#[test]
fn events_command_streams_ndjson() {
    if !require_root("events_command_streams_ndjson") {
        return;
    }
    let d = Daemon::start();
    let mut child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .expect("events");
    // Lines are read on a thread and handed over with a timeout: a stream that stalls is a
    // failure at the deadline, not a hang.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // When the subscription starts is not observable from outside: write a new file every
    // 200 ms until one of them comes through the stream.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let prefix = d.w("streamed-");
    let mut n = 0;
    let seen = 'outer: loop {
        assert!(Instant::now() < deadline, "no streamed event\n{}", d.log());
        ok(&sh(&d.watched, &format!("echo 1 > streamed-{n}.conf")));
        n += 1;
        let until = Instant::now() + Duration::from_millis(200);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&line).expect("one JSON object per line");
                    if v["path"].as_str().is_some_and(|p| p.starts_with(&prefix)) {
                        break 'outer v;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the event stream ended\n{}", d.log())
                }
            }
        }
    };
    assert_eq!(seen["comm"], "sh", "{seen}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn fanotify_only_mode_still_reports_outside_writes() {
    if !require_root("fanotify_only_mode_still_reports_outside_writes") {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        path_filter: false,
        ..DaemonOptions::default()
    });
    let p = d.w("f.conf");
    ok(&sh(&d.watched, &format!("echo 1 > {p}")));
    let ev = d.wait_for("create", |ev| has(ev, "create", &p));
    let e = ev
        .iter()
        .find(|e| e["path"] == p && e["kind"] == "create")
        .expect("event");
    assert_eq!(e["source"], "fanotify");
    assert_eq!(e["comm"], "sh");
}

#[test]
fn ring_buffer_overflow_is_counted_not_silent() {
    if !require_root("ring_buffer_overflow_is_counted_not_silent") {
        return;
    }
    // The smallest ring buffer (one page) cannot hold a burst of 8 KiB rename records.
    let d = Daemon::start_with(DaemonOptions {
        ringbuf_bytes: 4096,
        ..DaemonOptions::default()
    });
    let script = format!(
        "import os\nfor i in range(3000):\n    open('{w}/a','w').close(); os.rename('{w}/a', '{w}/b')\n",
        w = d.watched.display()
    );
    ok(&d.in_session("burst", "", &format!("python3 -c \"{script}\"")));
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let st = d.cli_json(&["stats", "--json"]);
        // Counted in the stats and, at the next stats tick (1 s here), logged as a warning.
        if st["kernel_ringbuf_drops"].as_u64().is_some_and(|n| n > 0)
            && d.log().contains("kernel events were dropped")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no drop counted: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn long_paths_up_to_path_max() {
    if !require_root("long_paths_up_to_path_max") {
        return;
    }
    let d = Daemon::start();
    // Nested directories of 200-byte names until the path is close to PATH_MAX (4096).
    let mut dir = d.watched.clone();
    while dir.as_os_str().len() < 3800 {
        dir.push("d".repeat(200));
    }
    std::fs::create_dir_all(&dir).expect("deep dirs");
    let file = dir.join("long.conf");
    let rel = file
        .strip_prefix(&d.watched)
        .expect("relative")
        .display()
        .to_string();
    ok(&d.in_session("claude", "", &format!("echo x > {rel}")));
    let p = file.display().to_string();
    assert!(p.len() > 3800);
    d.wait_for("long path create", |ev| has(ev, "create", &p));
}

/// A syscall enter whose exit does not arrive within 5 s (the pipeline's `ENTER_TIMEOUT`)
/// is reported anyway, with `result: null`, and counted in `enters_without_exit` (README,
/// "Nothing lost, nothing silent"). Provoked for real: a session opens a FIFO in the
/// watched tree for writing, which blocks in `open()` until a reader comes. The exit that
/// arrives once a reader opened it finds no enter: it is counted in `exits_without_enter`
/// and reported no second time.
#[test]
fn an_open_that_blocks_past_the_enter_timeout_is_reported_with_result_null() {
    if !require_root("an_open_that_blocks_past_the_enter_timeout_is_reported_with_result_null") {
        return;
    }
    let d = Daemon::start();
    let fifo = d.watched.join("slow.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let path = fifo.display().to_string();
    let enters_before = d.stat("enters_without_exit");
    let writer = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--agent", "claude", "--", "sh", "-c"])
        .arg(format!("echo x > '{path}'"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confgate run");
    let mut writer = KillOnDrop(writer);
    // `confgate run` forks the session's root, which execs the command (the launcher
    // waits for its exit status): the shell that opens the FIFO is the launcher's child.
    let launcher = writer.0.id();
    let by_writer = |ev: &[serde_json::Value]| -> Vec<serde_json::Value> {
        ev.iter()
            .filter(|e| e["path"] == path.as_str() && e["ppid"] == launcher)
            .cloned()
            .collect()
    };
    // Reported after ENTER_TIMEOUT (5 s) while the open is still blocked.
    let started = Instant::now();
    let flushed = poll(
        "the blocked open reported with result null",
        Duration::from_secs(30),
        || {
            by_writer(&d.events())
                .into_iter()
                .find(|e| e.get("result") == Some(&serde_json::Value::Null))
        },
    );
    assert!(
        writer.0.try_wait().expect("try_wait").is_none(),
        "the writer was still blocked in open() when its open was reported: {flushed}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "reported before the enter timeout: {flushed}"
    );
    assert_eq!(flushed["kind"], "open_write", "{flushed}");
    assert_eq!(flushed["session"]["agent"], "claude", "{flushed}");
    d.wait_stat("enters_without_exit", |n| n > enters_before);

    // A reader lets the open complete: its exit now has no enter.
    let exits_before = d.stat("exits_without_enter");
    let read = std::fs::read_to_string(&fifo).expect("read the FIFO");
    assert_eq!(read, "x\n");
    let status = poll("the writer to finish", EVENT_TIMEOUT, || {
        writer.0.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status}");
    d.wait_stat("exits_without_enter", |n| n > exits_before);
    // Everything about the writer's open is in the file once the settle marker is: the
    // open was reported once, with the result it had when it was flushed.
    d.settle();
    let ev = d.events();
    let opens: Vec<_> = by_writer(&ev)
        .into_iter()
        .filter(|e| e["kind"] == "open_write" || e["kind"] == "create")
        .collect();
    assert_eq!(opens.len(), 1, "{opens:#?}");
    assert!(opens[0]["result"].is_null(), "{opens:#?}");
}

/// Kills the child when the test ends (or panics).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
