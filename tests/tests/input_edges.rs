//! End-to-end: hostile and unusual input at the edges — control characters, invalid UTF-8
//! and long paths in gated requests (the encoding contract between the daemon and the
//! approval service), CLI edge cases, and the watcher's handling of roots and directories.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, local_approval, parse_json_list, rule, wait_child};
use e2e::*;

/// A daemon whose `<watched>/gated/**` is gated (ask, hold 20 s, fail deny), with its
/// local approval service in the scratch dir. `setup` runs on the scratch root before the
/// daemon starts (so what it creates under `gated/` is marked at start).
fn gated_daemon(setup: impl Fn(&Path) + 'static) -> Gate {
    Gate::start_with(setup, |w| {
        rule(
            w,
            "edges",
            "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"",
        )
    })
}

/// Directories under `gated/` deep enough that `<dir>/<name>` is `total` bytes long.
fn long_dir(root: &Path, name_len: usize, total: usize) -> PathBuf {
    let mut dir = root.join("watched/gated");
    loop {
        let left = total - dir.as_os_str().len() - 1 - name_len;
        if left == 0 {
            break;
        }
        // Components of at most 200 bytes plus a slash, never leaving a 1-byte rest.
        assert!(left >= 2, "cannot make a path of exactly {total} bytes");
        let n = match left {
            2..=201 => left - 1,
            203 => 199,
            _ => 200,
        };
        dir = dir.join("d".repeat(n));
    }
    dir
}

/// Issue 13 item 3: a held write whose command line holds a newline, an ESC and invalid
/// UTF-8, from a cwd with the same, to a path near 4 KiB with a newline and an ESC in its
/// name, reaches the approvers (list and show, human and JSON, control characters
/// visible for people) and can be approved; the write then lands, and the grant (an exact
/// glob of the encoded path) covers the session's next write to that path. Before the
/// shared encoding contract the service refused such a request and the list stayed empty.
#[test]
fn control_characters_and_long_paths_reach_the_approvers() {
    if !require_root("control_characters_and_long_paths_reach_the_approvers") {
        return;
    }
    const NAME: &[u8] = b"x\n\x1b[2J\\x41\xff*.conf";
    const TOTAL: usize = 4000;
    let g = gated_daemon(|root| {
        let dir = long_dir(root, NAME.len(), TOTAL);
        std::fs::create_dir_all(&dir).expect("long dir");
        std::fs::create_dir_all(root.join(OsStr::from_bytes(b"cwd\nwith\x1besc\xff")))
            .expect("hostile cwd");
    });
    let d = &g.d;
    let root = d.dir.path().canonicalize().unwrap();
    let target = long_dir(&root, NAME.len(), TOTAL).join(OsStr::from_bytes(NAME));
    assert_eq!(target.as_os_str().len(), TOTAL);
    std::fs::write(&target, "v=1\n").expect("seed");
    let cwd = root.join(OsStr::from_bytes(b"cwd\nwith\x1besc\xff"));

    // Two writes: the first is held until approved, the second passes under the grant.
    let script: &[u8] =
        b"true\n: '\x1b[31m' \"$1\"\nprintf 'v=2\\n' >> \"$T\"\nprintf 'v=3\\n' >> \"$T\"";
    let arg: &[u8] = b"arg\xff\xfe\x1b";
    let child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--agent", "edges", "--reason", "hostile names", "--"])
        .args(["sh", "-c"])
        .arg(OsStr::from_bytes(script))
        .arg("sh")
        .arg(OsStr::from_bytes(arg))
        .env("T", &target)
        .current_dir(&cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confgate run");

    let want_path = encoded(path_bytes(&target));
    let r = g.wait_request_where("the long hostile path", |p| p == want_path);
    let c = &r["context"];
    let command: Vec<&str> = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("argv entry"))
        .collect();
    assert_eq!(
        command,
        [
            "sh".to_string(),
            "-c".into(),
            encoded(script),
            "sh".into(),
            encoded(arg)
        ],
        "{r}"
    );
    assert_eq!(c["cwd"], encoded(path_bytes(&cwd)).as_str(), "{r}");
    assert_eq!(c["agent"], "edges");
    assert_eq!(c["reason"], "hostile names");
    // Still held.
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v=1\n");

    let id = id_of(&r);
    let shown = d.cli_json(&["approvals", "show", &id, "--json"]);
    assert_eq!(shown["context"]["path"], want_path.as_str());
    assert_eq!(shown["context"]["command"][2], encoded(script).as_str());

    // For people: no raw control character reaches the terminal, each on its line.
    for args in [vec!["approvals", "list"], vec!["approvals", "show", &id]] {
        let o = d.cli(&args);
        ok(&o);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!text.contains('\u{1b}'), "raw ESC in {args:?}:\n{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(": '") || l.starts_with("printf")),
            "the script's newline forged a line in {args:?}:\n{text}"
        );
    }
    let o = d.cli(&["approvals", "show", &id]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("true\\n: "), "newline made visible:\n{text}");

    let o = d.cli(&["approvals", "approve", &id, "--ttl", "10m"]);
    ok(&o);
    let out = wait_child(child, Duration::from_secs(20));
    ok(&out);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v=1\nv=2\nv=3\n");
    let kinds = g.ledger_kinds();
    assert_eq!(
        kinds.iter().filter(|k| *k == "request").count(),
        1,
        "the grant of the hostile path covers the second write: {kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "grant"), "{kinds:?}");
}

/// Runs `confgate --config <d> <args>` with stdout a pipe whose reader is already gone.
fn into_closed_pipe(d: &Daemon, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run confgate")
}

/// Issue 13 item 7: `confgate stats | head` panicked ("failed printing to stdout: Broken
/// pipe", exit 101). Every command that prints exits quietly (0, nothing on stderr) when
/// its reader is gone.
#[test]
fn commands_exit_quietly_on_a_closed_pipe() {
    if !require_root("commands_exit_quietly_on_a_closed_pipe") {
        return;
    }
    let g = gated_daemon(|_| {});
    let d = &g.d;
    ok(&d.in_session("pipes", "fill the lists", "true"));
    // A denied request fills the ledger (and the approvals list).
    assert!(write_is_held(d, &d.watched.join("gated/p.conf")));
    let config = d.config.display().to_string();
    for args in [
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["sessions", "--all"],
        vec!["sessions", "--all", "--json"],
        vec!["approvals", "list", "--all"],
        vec!["grants", "list", "--all"],
        vec!["audit", "log"],
        vec!["check-config", config.as_str()],
    ] {
        let o = into_closed_pipe(d, &args);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "confgate {args:?} into a closed pipe: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The same commands print something when the reader is there (so the pipe mattered).
    for args in [
        vec!["stats"],
        vec!["sessions", "--all"],
        vec!["audit", "log"],
    ] {
        let o = d.cli(&args);
        ok(&o);
        assert!(!o.stdout.is_empty(), "confgate {args:?} printed nothing");
    }
}

/// Issue 13 item 7: an `--agent` (or `--reason`) that is not UTF-8 was refused by the
/// argument parser with exit 2; `confgate run` exits 125 whenever the session could not be
/// registered, and the command does not run.
#[test]
fn non_utf8_agent_or_reason_exits_125_without_running_the_command() {
    if !require_root("non_utf8_agent_or_reason_exits_125_without_running_the_command") {
        return;
    }
    let d = Daemon::start();
    let marker = d.dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    for (agent, reason) in [
        (OsStr::from_bytes(b"bad\xffagent"), OsStr::new("ok")),
        (OsStr::new("agent"), OsStr::from_bytes(b"bad\xfereason")),
    ] {
        let o = Command::new(confgate_bin())
            .arg("--config")
            .arg(&d.config)
            .arg("run")
            .arg("--agent")
            .arg(agent)
            .arg("--reason")
            .arg(reason)
            .args(["--", "sh", "-c", &script])
            .output()
            .expect("confgate run");
        assert_eq!(
            o.status.code(),
            Some(125),
            "{agent:?}/{reason:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("UTF-8"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!marker.exists(), "the command ran");
    }
}

/// Issue 13 item 7: a session could read `/proc/<daemon pid>/environ`. The daemon makes
/// itself non-dumpable at start: a non-root session cannot read it, and a root session
/// without CAP_SYS_PTRACE cannot either where the kernel applies dumpability to that file
/// (checked first on a reference process that made itself non-dumpable; some kernels let
/// such a reader through, and then that half says so instead of passing silently). A root
/// session with CAP_SYS_PTRACE still can (README, Known limits).
#[test]
fn sessions_cannot_read_the_daemons_environment() {
    if !require_root("sessions_cannot_read_the_daemons_environment") {
        return;
    }
    let d = Daemon::start();
    let pid = d.pid();
    let read_as = |who: &[&str], target: u32| -> Output {
        Command::new(confgate_bin())
            .arg("--config")
            .arg(&d.config)
            .args(["run", "--agent", "snoop", "--", "setpriv"])
            .args(who)
            .args(["cat", &format!("/proc/{target}/environ")])
            .output()
            .expect("confgate run")
    };
    let denied = |o: &Output| {
        !o.status.success()
            && o.stdout.is_empty()
            && String::from_utf8_lossy(&o.stderr).contains("Permission denied")
    };
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let o = read_as(&nobody, pid);
    assert!(
        denied(&o),
        "a non-root session read the daemon's environment: {o:?}"
    );

    let no_ptrace = ["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"];
    let reference = Command::new("python3")
        .args([
            "-c",
            "import ctypes,sys,time\nctypes.CDLL(None).prctl(4,0,0,0,0)\nprint(1,flush=True)\ntime.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut reference) = reference else {
        println!(
            "NOTE sessions_cannot_read_the_daemons_environment: no python3; the root half is not checked"
        );
        return;
    };
    let mut ready = [0u8; 2];
    let _ = std::io::Read::read(reference.stdout.as_mut().expect("stdout"), &mut ready);
    let enforced = denied(&read_as(&no_ptrace, reference.id()));
    let _ = reference.kill();
    let _ = reference.wait();
    if enforced {
        let o = read_as(&no_ptrace, pid);
        assert!(
            denied(&o),
            "a root session without CAP_SYS_PTRACE read the daemon's environment: {o:?}"
        );
    } else {
        println!(
            "NOTE sessions_cannot_read_the_daemons_environment: this kernel lets a root process \
             without CAP_SYS_PTRACE read a non-dumpable process's environ; the root half is \
             not checked"
        );
    }
}

/// Whether a session's append to `file` is held: a request for it shows up (then denied,
/// and the writer fails) — or the writer finishes first, unheld.
fn write_is_held(d: &Daemon, file: &Path) -> bool {
    let child = d
        .session_command(
            "edges",
            Some("test"),
            &format!("echo x >> '{}'", file.display()),
        )
        .spawn()
        .expect("confgate run");
    let mut child = Some(child);
    let want = file.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let o = d.cli(&["approvals", "list", "--json"]);
        ok(&o);
        if let Some(r) = parse_json_list(&o.stdout)
            .into_iter()
            .find(|r| r["context"]["path"] == want.as_str())
        {
            ok(&d.cli(&["approvals", "deny", &id_of(&r)]));
            let out = wait_child(child.take().expect("child"), Duration::from_secs(10));
            assert!(!out.status.success(), "a denied write succeeded");
            return true;
        }
        if let Some(c) = child.as_mut()
            && let Ok(Some(_)) = c.try_wait()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the write to {want} neither finished nor was held\n{}",
        d.log()
    );
}

/// Issue 13 item 7: a gated root that is also a watch root, deleted and made again
/// (`rm -rf /etc/app && mkdir /etc/app`), was no longer marked: session writes into it
/// passed unheld. It is marked again when it reappears.
#[test]
fn a_recreated_gated_root_is_gated_again() {
    if !require_root("a_recreated_gated_root_is_gated_again") {
        return;
    }
    let outer = tempfile::Builder::new()
        .prefix("confgate-e2e-root-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let app = outer.path().canonicalize().unwrap().join("app");
    std::fs::create_dir(&app).expect("mkdir app");
    let rule_root = app.clone();
    let d = Daemon::start_with(DaemonOptions {
        extra_watch: vec![app.clone()],
        toml_for_dir: Some(Box::new(move |root| {
            format!(
                "{}\n[gate]\n\
                 [[gate.rule]]\nname = \"app\"\npaths = [\"{}/**\"]\nverdict = \"ask\"\n\
                 mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"\n",
                local_approval(root),
                rule_root.display()
            )
        })),
        ..DaemonOptions::default()
    });
    assert!(
        write_is_held(&d, &app.join("before.conf")),
        "gated at start"
    );

    std::fs::remove_dir_all(&app).expect("rm -rf app");
    std::fs::create_dir(&app).expect("mkdir app");
    // Marking follows the directory's appearance (a notification): retry until the
    // deadline rather than guess how long that takes.
    let target = app.join("after.conf");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if write_is_held(&d, &target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes into the recreated root are not held\n{}",
            d.log()
        );
        let _ = std::fs::remove_file(&target);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!target.exists() || std::fs::read(&target).unwrap().is_empty());
    // A file made inside the new root is watched again too (events come back). An
    // unconfined session: a confined one's mkdir in the gated root would be held.
    ok(&d
        .unconfined_session_command(
            "edges",
            Some("test"),
            &format!("mkdir '{}/sub'", app.display()),
        )
        .output()
        .expect("confgate run"));
    let sub = app.join("sub").display().to_string();
    d.wait_for("the mkdir in the recreated root", |ev| {
        has(ev, "mkdir", &sub)
    });
}

/// Issue 13 item 7: `mkdir -p a/b` produced a second, wrong event for `b`: it does
/// `mkdir("a")`, opens `a` read-only, `fchdir`s into it and `mkdir("b")`, then exits. The
/// daemon could not follow the `fchdir` (the descriptor was not tracked, the process was
/// gone), kept the old working directory, and reported `mkdir <cwd>/b` from eBPF besides
/// fanotify's `mkdir <cwd>/a/b`. Exactly two events now, each seen by both sources.
#[test]
fn mkdir_p_reports_exactly_its_directories() {
    if !require_root("mkdir_p_reports_exactly_its_directories") {
        return;
    }
    let d = Daemon::start();
    ok(&d.in_session("probe", "mkdir", "mkdir -p a/b && mkdir -p c/d/e"));
    let want = [d.w("a"), d.w("a/b"), d.w("c"), d.w("c/d"), d.w("c/d/e")];
    d.wait_for("every mkdir seen by both sources", |ev| {
        want.iter().all(|p| {
            ev.iter()
                .any(|e| e["kind"] == "mkdir" && e["path"] == p.as_str() && e["source"] == "both")
        })
    });
    // Nothing else may follow: poll until the daemon has flushed a later marker event.
    ok(&d.in_session("probe", "marker", "mkdir marker"));
    let marker = d.w("marker");
    let ev = d.wait_for("the marker", |ev| has(ev, "mkdir", &marker));
    let mine: Vec<String> = foreign(&ev)
        .iter()
        .filter(|e| e["path"] != marker.as_str())
        .map(|e| format!("{} {} {}", e["kind"], e["path"], e["source"]))
        .collect();
    let expected: Vec<String> = want
        .iter()
        .map(|p| format!("\"mkdir\" {:?} \"both\"", p))
        .collect();
    assert_eq!(mine, expected, "all events: {ev:#?}");
    for e in foreign(&ev) {
        assert_eq!(e["comm"], "mkdir", "{e}");
        assert!(e["session"].is_object(), "{e}");
    }
}

/// Issue 13 item 7: an open made before its process joined a session was attributed to
/// the session (the event took the process's session when it was emitted, after the
/// correlation window). The session a syscall record carries — the one at the time of
/// the call — decides. A shell opens the file, then `exec`s a command that a detection
/// rule tags at once (in the same batch of records as the open); what it does afterwards
/// belongs to the session.
#[test]
fn an_open_before_the_session_is_not_attributed_to_it() {
    if !require_root("an_open_before_the_session_is_not_attributed_to_it") {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        extra_toml: "[[detect]]\nagent = \"late\"\nargv = [\"confgate-late-marker\"]\n".into(),
        ..DaemonOptions::default()
    });
    let file = d.w("early.conf");
    let late = d.w("late.conf");
    for round in 0..3 {
        let script = format!(
            "exec 3>>'{file}'; exec sh -c 'sleep 0.3; echo x >> \"$1\"' confgate-late-marker '{late}'"
        );
        ok(&sh(&d.watched, &script));
        let ev = d.wait_for("both opens", |ev| {
            about(ev, &file).len() > round && about(ev, &late).len() > round
        });
        let early = about(&ev, &file);
        assert!(
            early.iter().all(|e| e["session"].is_null()),
            "the open before the session is attributed to it: {early:#?}"
        );
        // The process did join the session: what it did there is attributed.
        let after = about(&ev, &late);
        assert!(
            after.iter().all(|e| e["session"]["agent"] == "late"),
            "{after:#?}"
        );
    }
}

/// A value nobody else has, to look for in what a reader got.
fn unique_secret(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("confgate-e2e-{what}-{}-{nanos}", std::process::id())
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// What `/proc/<pid>/environ` and each of its threads' copies show a plain root process
/// (this test: root with every capability).
fn environ_of(pid: u32) -> Vec<Vec<u8>> {
    let mut all = vec![std::fs::read(format!("/proc/{pid}/environ")).expect("read environ")];
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let t = t.expect("task").path().join("environ");
        // A thread may end meanwhile.
        if let Ok(b) = std::fs::read(&t) {
            all.push(b);
        }
    }
    all
}

/// Issue 13 item 7, the root half: a secret in the daemon's start-up environment was
/// readable in `/proc/<pid>/environ` by a root agent session and by any root process
/// (CAP_SYS_PTRACE passes non-dumpable). The daemon now copies its environment and zeroes
/// the block that file shows, before any thread starts; it keeps working with the values
/// (its log filter comes from CONFGATE_LOG), and gates and reports as before.
#[test]
fn the_daemons_start_up_environment_is_not_readable_through_proc() {
    if !require_root("the_daemons_start_up_environment_is_not_readable_through_proc") {
        return;
    }
    let mut g =
        e2e::gate::Gate::start(|w| e2e::gate::rule(w, "ask", "timeout = \"20s\"\nfail = \"deny\""));
    let secret = unique_secret("daemon-secret");
    g.d.restart_with_env(&[("CONFGATE_E2E_SECRET", &secret)]);
    let pid = g.d.pid();
    for seen in environ_of(pid) {
        assert!(
            !holds(&seen, &secret),
            "a root process read the secret in /proc/{pid}/environ"
        );
        assert!(
            seen.iter().all(|&b| b == 0),
            "/proc/{pid}/environ shows something: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    let o = g.d.in_session(
        "snoop",
        "e2e",
        // The threads' copies too (one may end meanwhile: only the first read must work).
        &format!(
            "cat /proc/{pid}/environ && {{ cat /proc/{pid}/task/*/environ 2>/dev/null; true; }}"
        ),
    );
    ok(&o);
    assert!(
        !holds(&o.stdout, &secret),
        "a root agent session read the secret in /proc/{pid}/environ"
    );
    // The values stay in use: CONFGATE_LOG (`monitor=debug`) still applies after the
    // restart (a debug line every start writes).
    poll("the restarted daemon's debug lines", EVENT_TIMEOUT, || {
        (g.d.log().matches("state directory is 0700").count() == 2).then_some(())
    });
    assert!(
        g.d.log()
            .contains("start-up environment copied and hidden from /proc/self/environ"),
        "{}",
        g.d.log()
    );
    // And it gates and reports as before.
    let f = g.gated("app.conf");
    std::fs::write(&f, "a\n").expect("seed");
    let c = g.spawn_in_session("claude", "echo b >> gated/app.conf");
    let r = g.wait_request(&f);
    ok(&g.cli(&[
        "approvals",
        "approve",
        &e2e::gate::id_of(&r),
        "--ttl",
        "10m",
    ]));
    ok(&wait_child(c, Duration::from_secs(30)));
    assert_eq!(std::fs::read_to_string(&f).expect("read"), "a\nb\n");
    let want = f.display().to_string();
    g.d.wait_for("the approved write's event", |ev| {
        ev.iter().any(|e| {
            e["kind"] == "write" && e["path"] == want.as_str() && e["session"]["agent"] == "claude"
        })
    });
}

/// The same for `confgate approver serve`: a secret in its environment is not in
/// `/proc/<pid>/environ`, and the service answers afterwards.
#[test]
fn the_approval_services_start_up_environment_is_not_readable_through_proc() {
    if !require_root("the_approval_services_start_up_environment_is_not_readable_through_proc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let config = dir.path().join("approver.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"unix:{d}/approver.sock\"]\nstore = \"{d}/approver.redb\"\nledger = \"{d}/ledger.jsonl\"\n"
        ),
    )
    .expect("approver.toml");
    let log = dir.path().join("service.log");
    let secret = unique_secret("service-secret");
    let child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&config)
        .args(["approver", "serve"])
        .env("CONFGATE_E2E_SECRET", &secret)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("approver serve");
    let mut child = KillOnDrop(child);
    poll("the approval service", Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "approver serve exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("approval service listening")
            .then_some(())
    });
    let pid = child.0.id();
    for seen in environ_of(pid) {
        assert!(
            !holds(&seen, &secret),
            "a root process read the secret in /proc/{pid}/environ"
        );
    }
    let o = Command::new(confgate_bin())
        .args([
            "approvals",
            "--approver",
            &format!("unix:{d}/approver.sock"),
        ])
        .args(["list", "--json"])
        .output()
        .expect("approvals list");
    ok(&o);
}

/// Kills the child when the test ends (or panics).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
