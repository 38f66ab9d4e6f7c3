//! End-to-end: a daemon whose stdout and stderr are systemd's journal stream
//! (`JOURNAL_STREAM` names their device and inode, as systemd sets it) writes no events to
//! stdout with `stdout = "auto"` (the events file is the record), and logs to the
//! journal's native socket with its fields when journald runs; a `JOURNAL_STREAM`
//! inherited by a redirected stdout changes nothing.
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::*;
use serde_json::Value;

/// A daemon on `dir` with `stdout = "auto"`, stdout and stderr to `out`, `journal_stream`
/// as its `JOURNAL_STREAM`; returns once one of its events is in the events file.
fn start(dir: &Path, out: &Path, journal_stream: &str) -> Child {
    let w = dir.join("w");
    std::fs::create_dir_all(&w).unwrap();
    // The events file must not exist yet: its first event is this daemon's.
    assert!(!dir.join("events.ndjson").exists());
    let p = |n: &str| dir.join(n).display().to_string();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "detect = []\n[daemon]\nsocket = {:?}\nstate_dir = {:?}\nsupervise_socket = {:?}\n\
             [output]\nevents_file = {:?}\nstdout = \"auto\"\n[watch]\npaths = [{:?}]\nproject_roots = []\n\
             [approval]\nlocal_socket = {:?}\n",
            p("d.sock"),
            p("state"),
            p("sup.sock"),
            p("events.ndjson"),
            p("w"),
            p("a.sock"),
        ),
    )
    .unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    let child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .env("CONFGATE_LOG", "info")
        .env("JOURNAL_STREAM", journal_stream)
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .expect("confgate daemon");
    // Ready once a write in the watched tree comes out as an event.
    let events = dir.join("events.ndjson");
    let mut n = 0;
    poll("the daemon's first event", Duration::from_secs(60), || {
        n += 1;
        let _ = std::fs::write(w.join(format!("probe-{n}.conf")), "x\n");
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .contains("probe-")
            .then_some(())
    });
    child
}

fn stop(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = c.wait();
}

/// Lines of `text` that are events (JSON objects with a `kind`).
fn event_lines(text: &str) -> usize {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"].is_string())
        .count()
}

#[test]
fn under_the_journal_stream_events_stay_out_of_stdout() {
    if !require_root("under_the_journal_stream_events_stay_out_of_stdout") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("confgate-e2e-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().canonicalize().unwrap();

    // JOURNAL_STREAM inherited by a process whose stdout is a file: NDJSON there as before.
    let (first, second) = (root.join("redirected"), root.join("journal"));
    let redirected = root.join("redirected.out");
    std::fs::write(&redirected, "").unwrap();
    stop(start(&first, &redirected, "1:1"));
    let text = std::fs::read_to_string(&redirected).unwrap();
    assert!(
        event_lines(&text) > 0,
        "events on a non-journal stdout:\n{text}"
    );
    assert!(text.contains("confgate ready"), "logs on stderr:\n{text}");

    // stdout and stderr are the journal stream: no event on stdout.
    let stream = root.join("journal.out");
    std::fs::write(&stream, "").unwrap();
    let m = std::fs::metadata(&stream).unwrap();
    let child = start(&second, &stream, &format!("{}:{}", m.dev(), m.ino()));
    let pid = child.id();
    stop(child);
    let text = std::fs::read_to_string(&stream).unwrap();
    assert_eq!(
        event_lines(&text),
        0,
        "events written to the journal stream:\n{text}"
    );

    // journald answers (as tracing-journald checks: an empty datagram is accepted).
    let journald = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.send_to(&[], "/run/systemd/journal/socket"))
        .is_ok();
    if !journald {
        // Without journald the logs stay on stderr.
        assert!(text.contains("confgate ready"), "{text}");
        skip(
            "under_the_journal_stream_events_stay_out_of_stdout (journal fields)",
            "journald is not running (nothing answers on /run/systemd/journal/socket): logging through the journal socket not checked",
        );
        return;
    }
    assert!(
        !text.contains("confgate ready"),
        "logs went to the journal socket, not the stream:\n{text}"
    );
    // The start-up line, with its fields as journal fields.
    let ready = poll(
        "the ready line in the journal",
        Duration::from_secs(10),
        || {
            let o = Command::new("journalctl")
                .args(["--no-pager", "-o", "json", &format!("_PID={pid}")])
                .output()
                .ok()?;
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["MESSAGE"] == "confgate ready")
        },
    );
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "confgate", "{ready}");
    assert!(ready["CONFGATE_STARTUP_MS"].is_string(), "{ready}");
    assert!(ready["CONFGATE_EVENTS_FILE"].is_string(), "{ready}");
}
