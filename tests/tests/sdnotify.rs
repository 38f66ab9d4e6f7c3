//! The daemon under systemd's `Type=notify` protocol, with the test as the service
//! manager: `NOTIFY_SOCKET` names a datagram socket the test owns, which receives
//! `READY=1`, `WATCHDOG=1` and `STOPPING=1`; a restart gets descriptors passed back as
//! systemd does (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on).
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{Daemon, confgate_bin, require_root};
use monitor::gate::session::{ConfineSpec, resume};

/// The test's end of `NOTIFY_SOCKET`, and every message it received so far.
struct Manager {
    sock: UnixDatagram,
    messages: Vec<String>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        Manager {
            sock,
            messages: Vec::new(),
        }
    }

    /// Receives until `pred` holds for the messages so far, for at most `limit`; panics
    /// with what arrived (and `log()`) when it never does.
    fn until(
        &mut self,
        what: &str,
        limit: Duration,
        log: impl Fn() -> String,
        pred: impl Fn(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        while !pred(&self.messages) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {:?}\n--- daemon log ---\n{}",
                self.messages,
                log()
            );
            match monitor::os::sdnotify::recv_with_fds(&self.sock, &mut buf) {
                Ok((n, fds)) => {
                    assert!(fds.is_empty(), "unexpected descriptors with a notification");
                    self.messages
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("receiving a notification: {e}"),
            }
        }
    }
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[test]
fn ready_watchdog_and_stopping_reach_the_service_manager() {
    if !require_root("ready_watchdog_and_stopping_reach_the_service_manager") {
        return;
    }
    let mut d = Daemon::start();
    let path = d.dir.path().join("notify.sock");
    let mut m = Manager::bind(&path);
    let notify = path.to_str().expect("UTF-8 path").to_owned();
    // A watchdog of 1 s: pings every 500 ms while the event loop answers.
    d.restart_with_env(&[
        ("NOTIFY_SOCKET", notify.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    m.until(
        "READY=1",
        Duration::from_secs(30),
        || d.log(),
        |ms| count(ms, "READY=1") == 1,
    );
    let ready = m
        .messages
        .iter()
        .position(|x| x.lines().any(|l| l == "READY=1"))
        .expect("READY=1");
    assert!(
        m.messages[ready]
            .lines()
            .any(|l| l.starts_with("STATUS=ready")),
        "READY=1 comes with a status: {:?}",
        m.messages[ready]
    );
    assert_eq!(
        count(&m.messages[..ready], "WATCHDOG=1"),
        0,
        "no watchdog ping before READY=1: {:?}",
        m.messages
    );
    // Several pings: the task keeps pinging while the loop answers its probes.
    m.until(
        "three WATCHDOG=1 pings",
        Duration::from_secs(15),
        || d.log(),
        |ms| count(ms, "WATCHDOG=1") >= 3,
    );
    d.shut_down();
    m.until(
        "STOPPING=1",
        Duration::from_secs(15),
        || d.log(),
        |ms| count(ms, "STOPPING=1") == 1,
    );
    assert_eq!(count(&m.messages, "READY=1"), 1, "{:?}", m.messages);
}

#[test]
fn without_watchdog_usec_there_are_no_pings() {
    if !require_root("without_watchdog_usec_there_are_no_pings") {
        return;
    }
    let mut d = Daemon::start();
    let path = d.dir.path().join("notify.sock");
    let mut m = Manager::bind(&path);
    let notify = path.to_str().expect("UTF-8 path").to_owned();
    d.restart_with_env(&[("NOTIFY_SOCKET", notify.as_str())]);
    m.until(
        "READY=1",
        Duration::from_secs(30),
        || d.log(),
        |ms| count(ms, "READY=1") == 1,
    );
    // The stats period (1 s in the test daemons) sends a STATUS line: two of them prove
    // that more than a second passed with the loop running, long enough for a ping.
    m.until(
        "two STATUS lines after READY",
        Duration::from_secs(15),
        || d.log(),
        |ms| {
            ms.iter()
                .filter(|x| {
                    x.lines()
                        .any(|l| l.starts_with("STATUS=") && l.contains("live sessions ("))
                })
                .count()
                >= 2
        },
    );
    assert_eq!(count(&m.messages, "WATCHDOG=1"), 0, "{:?}", m.messages);
}

/// A pipe: the read end goes to the daemon, the write end tells whether every read end
/// was closed (a write fails with EPIPE).
fn pipe() -> (OwnedFd, std::io::PipeWriter) {
    let (r, w) = std::io::pipe().expect("pipe");
    (OwnedFd::from(r), w)
}

fn closed(w: &mut std::io::PipeWriter) -> bool {
    matches!(w.write(b"x"), Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Starts the daemon of `d`'s configuration as systemd restarts a service with a
/// descriptor store: `fds` at 3, 4, ... named by `LISTEN_FDNAMES`, `LISTEN_PID` the
/// daemon's own pid (a shell sets it to `$$` and execs the daemon).
fn spawn_with_fds(d: &Daemon, notify: &str, fds: &[(String, &OwnedFd)], log: &Path) -> Child {
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    let raw: Vec<i32> = fds.iter().map(|(_, f)| f.as_raw_fd()).collect();
    let logf = std::fs::File::create(log).expect("log file");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$@\"")
        .arg("sh")
        .arg(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .arg("daemon")
        .env("LISTEN_FDS", raw.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", notify)
        .env("CONFGATE_LOG", "info,monitor=debug")
        .stdout(Stdio::null())
        .stderr(logf);
    // SAFETY: between fork and exec the closure only calls fcntl and dup2 (async-signal
    // safe) on descriptors the parent keeps open until spawn returns.
    unsafe {
        c.pre_exec(move || {
            // Out of the way first (a source may already sit at 3, 4, ...), then in place;
            // dup2 clears close-on-exec on the copy.
            let mut high = Vec::with_capacity(raw.len());
            for fd in &raw {
                let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn the daemon")
}

#[test]
fn a_restart_takes_back_the_listeners_of_live_sessions_only() {
    if !require_root("a_restart_takes_back_the_listeners_of_live_sessions_only") {
        return;
    }
    let mut d = Daemon::start();
    let mut agent = d
        .session_command("fdstore-agent", None, "sleep 300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the session");
    let session = e2e::poll("the session", Duration::from_secs(10), || {
        let v = d.cli_json(&["sessions", "--json"]);
        v.as_array()?
            .iter()
            .find(|s| s["agent"] == "fdstore-agent")
            .and_then(|s| s["id"].as_u64())
    });
    d.shut_down();
    // What the daemon kept when it attached the session's listener: its spec.
    {
        let store = monitor::store::Store::open(&d.state_dir().join("confgate.redb"))
            .expect("open the store");
        let spec = ConfineSpec {
            write_allowed: vec!["/tmp".into()],
            hidden: vec![],
            ..ConfineSpec::default()
        };
        resume::remember_spec(&store, session, &spec).expect("keep the spec");
    }

    let path = d.dir.path().join("notify.sock");
    let mut m = Manager::bind(&path);
    let notify = path.to_str().expect("UTF-8 path").to_owned();
    let (live_r, _live_w) = pipe();
    let (unknown_r, mut unknown_w) = pipe();
    let (foreign_r, mut foreign_w) = pipe();
    let fds = [
        (resume::fd_name(session), &live_r),
        (resume::fd_name(999_999), &unknown_r),
        ("stored".to_string(), &foreign_r),
    ];
    let log = d.dir.path().join("fdstore-daemon.log");
    let mut child = spawn_with_fds(&d, &notify, &fds, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    m.until("READY=1", Duration::from_secs(60), log_text, |ms| {
        count(ms, "READY=1") == 1
    });
    drop((live_r, unknown_r, foreign_r));

    // The session's listener was paired with its live session and spec; the others closed.
    let stats = d.cli_json(&["stats", "--json"]);
    assert_eq!(stats["fdstore_restored"], 1, "{stats}\n{}", log_text());
    assert_eq!(stats["fdstore_discarded"], 2, "{stats}\n{}", log_text());
    assert!(
        closed(&mut unknown_w),
        "the unknown session's descriptor is closed"
    );
    assert!(
        closed(&mut foreign_w),
        "a descriptor not named session-<id> is closed"
    );
    // ... and taken out of the service manager's store.
    for name in ["session-999999", "stored"] {
        let line = format!("FDNAME={name}");
        m.until(
            &format!("FDSTOREREMOVE of {name}"),
            Duration::from_secs(5),
            log_text,
            |ms| {
                ms.iter().any(|x| {
                    x.lines().any(|l| l == "FDSTOREREMOVE=1") && x.lines().any(|l| l == line)
                })
            },
        );
    }
    // A pipe is no seccomp listener: attaching it fails (until the supervisor exists, every
    // attach does), which is counted, and the listener leaves the store so that the
    // session fails closed instead of waiting for a supervisor.
    assert_eq!(stats["fdstore_attach_errors"], 1, "{stats}\n{}", log_text());
    let line = format!("FDNAME={}", resume::fd_name(session));
    m.until(
        "FDSTOREREMOVE of the unattachable listener",
        Duration::from_secs(5),
        log_text,
        |ms| {
            ms.iter()
                .any(|x| x.lines().any(|l| l == "FDSTOREREMOVE=1") && x.lines().any(|l| l == line))
        },
    );

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().expect("wait for the daemon");
    assert!(status.success(), "daemon exit {status}\n{}", log_text());
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Receives until an `FDSTORE=1` message for `name` arrives with its descriptor.
fn take_stored(
    sock: &UnixDatagram,
    name: &str,
    limit: Duration,
    log: impl Fn() -> String,
) -> OwnedFd {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    let want = format!("FDNAME={name}");
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no FDSTORE for {name}; received {seen:?}\n--- daemon log ---\n{}",
            log()
        );
        match monitor::os::sdnotify::recv_with_fds(sock, &mut buf) {
            Ok((n, mut fds)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.lines().any(|l| l == "FDSTORE=1") && text.lines().any(|l| l == want) {
                    assert_eq!(fds.len(), 1, "{text}");
                    return fds.remove(0);
                }
                seen.push(text);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("receiving a notification: {e}"),
        }
    }
}

#[test]
fn a_held_operation_survives_a_daemon_crash_with_the_descriptor_store() {
    if !require_root("a_held_operation_survives_a_daemon_crash_with_the_descriptor_store") {
        return;
    }
    let g = e2e::gate::Gate::start(|w| {
        e2e::gate::rule(
            w,
            "ask-hold",
            "mode = \"hold\"\ntimeout = \"60s\"\nfail = \"deny\"",
        )
    });
    let mut d = g.d;
    let path = d.dir.path().join("notify.sock");
    let m = Manager::bind(&path);
    let notify = path.to_str().expect("UTF-8 path").to_owned();
    d.restart_with_env(&[("NOTIFY_SOCKET", notify.as_str())]);
    let f = d.watched.join("gated/kept.conf");
    std::fs::write(&f, "old\n").unwrap();
    let child = d
        .session_command(
            "claude",
            Some("survive"),
            "echo new > gated/kept.conf && echo written",
        )
        .spawn()
        .expect("spawn the session");
    let g = e2e::gate::Gate { d };
    let r = g.wait_request(&f);
    let session = r["context"]["session_id"].as_u64().expect("session id");
    let listener = take_stored(
        &m.sock,
        &resume::fd_name(session),
        Duration::from_secs(10),
        || g.d.log(),
    );
    // A crash while the write is held; systemd keeps the listener and passes it back.
    let mut d = g.d;
    d.kill();
    let log = d.dir.path().join("fdstore-daemon.log");
    let mut daemon = spawn_with_fds(&d, &notify, &[(resume::fd_name(session), &listener)], &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut m = m;
    m.until("READY=1", Duration::from_secs(60), log_text, |ms| {
        count(ms, "READY=1") >= 1
    });
    drop(listener);
    let g = e2e::gate::Gate { d };
    // The request is still pending and its approval completes the held write, once.
    e2e::ok(&g.cli(&["approvals", "approve", &e2e::gate::id_of(&r), "--ttl", "1m"]));
    let out = e2e::gate::wait_child(child, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}\n{}",
        e2e::output_text(&out),
        log_text()
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "new\n");
    assert!(
        g.ledger().iter().any(|r| r["kind"] == "hold_resumed"),
        "{}",
        log_text()
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
}
