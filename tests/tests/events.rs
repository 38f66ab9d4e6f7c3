//! End-to-end: real programs write to a watched tree; the daemon must report each
//! operation once, with the right kind, canonical path and session.
use std::{os::unix::ffi::OsStrExt, process::Command};

use e2e::*;
use serde_json::Value;

fn session_agent(e: &Value) -> Option<&str> {
    e["session"]["agent"].as_str()
}

#[test]
fn sed_in_place_inside_a_session() {
    if !require_root("sed_in_place_inside_a_session") {
        return;
    }
    let d = Daemon::start();
    std::fs::write(d.watched.join("app.conf"), "debug=false\n").expect("seed");
    ok(&d.in_session("claude", "turn on debug", "sed -i s/false/true/ app.conf"));
    let target = d.w("app.conf");
    let _ev = d.wait_for("rename onto app.conf", |ev| {
        ev.iter()
            .any(|e| e["kind"] == "rename" && e["target"] == target)
    });
    d.settle();
    let ev = d.events();
    let on_target = about(&ev, &target);
    assert_eq!(
        kinds(&on_target),
        ["rename"],
        "exactly one operation replaced app.conf: {on_target:#?}"
    );
    let r = on_target[0];
    assert_eq!(r["comm"], "sed");
    assert_eq!(session_agent(r), Some("claude"));
    assert_eq!(r["session"]["reason"], "turn on debug");
    assert_eq!(r["result"], 0);
    assert!(
        r["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "s/false/true/")),
        "argv recorded: {r}"
    );
    // The temp file sed wrote is reported as created and written, in the same session.
    let tmp = r["path"].as_str().expect("rename source");
    assert!(
        tmp.starts_with(&d.w("sed")),
        "temp file in the same dir: {tmp}"
    );
    let tmp_kinds = kinds(&ev.iter().filter(|e| e["path"] == tmp).collect::<Vec<_>>());
    assert!(
        tmp_kinds.contains(&"create".to_string()) && tmp_kinds.contains(&"write".to_string()),
        "{tmp_kinds:?}"
    );
    assert_eq!(
        std::fs::read_to_string(d.watched.join("app.conf"))
            .ok()
            .as_deref(),
        Some("debug=true\n")
    );
    assert!(
        foreign(&ev)
            .iter()
            .all(|e| session_agent(e) == Some("claude")),
        "nothing else wrote: {ev:#?}"
    );
}

#[test]
fn relative_append_from_another_cwd() {
    if !require_root("relative_append_from_another_cwd") {
        return;
    }
    let d = Daemon::start();
    std::fs::create_dir(d.watched.join("proj")).expect("mkdir");
    std::fs::write(d.watched.join("proj/.env"), "A=1\n").expect("seed");
    // cwd is the watched dir's parent's child: path is relative to it, through "..".
    std::fs::create_dir(d.dir.path().join("elsewhere")).expect("mkdir");
    let out = d
        .session_command("codex", None, "echo DEBUG=true >> ../watched/proj/.env")
        .current_dir(d.dir.path().join("elsewhere"))
        .output()
        .expect("run");
    ok(&out);
    let env = d.w("proj/.env");
    let _ev = d.wait_for("open_write and write on .env", |ev| {
        has(ev, "open_write", &env) && has(ev, "write", &env)
    });
    d.settle();
    let ev = d.events();
    assert_eq!(kinds(&about(&ev, &env)), ["open_write", "write"]);
    for e in about(&ev, &env) {
        assert_eq!(session_agent(e), Some("codex"));
        assert_eq!(e["comm"], "sh");
        assert_eq!(
            e["cwd"],
            format!(
                "{}/elsewhere",
                d.dir.path().canonicalize().expect("c").display()
            )
        );
    }
    assert_eq!(
        about(&ev, &env)[0]["details"]["flags"],
        "O_WRONLY|O_CREAT|O_APPEND"
    );
}

#[test]
fn python_script_creates_a_file() {
    if !require_root("python_script_creates_a_file") {
        return;
    }
    let d = Daemon::start();
    ok(&d.in_session(
        "aider",
        "",
        "python3 -c \"open('settings.json','w').write('{\\\"tls_verify\\\": false}')\"",
    ));
    let p = d.w("settings.json");
    d.wait_for("create + write", |ev| {
        has(ev, "create", &p) && has(ev, "write", &p)
    });
    d.settle();
    let ev = d.events();
    let mine = about(&ev, &p);
    assert_eq!(kinds(&mine), ["create", "write"]);
    assert!(
        mine.iter()
            .all(|e| e["comm"] == "python3" && session_agent(e) == Some("aider"))
    );
    assert_eq!(
        mine[0]["source"], "both",
        "seen by eBPF and fanotify: {}",
        mine[0]
    );
}

#[test]
fn mv_temp_file_over_watched_file_same_dir_and_from_tmp() {
    if !require_root("mv_temp_file_over_watched_file_same_dir_and_from_tmp") {
        return;
    }
    let d = Daemon::start();
    std::fs::write(d.watched.join("pool.conf"), "size=10\n").expect("seed");
    std::fs::write(d.watched.join("other.conf"), "x\n").expect("seed");
    // Same directory, inside a session.
    ok(&d.in_session(
        "claude",
        "",
        "printf 'size=100\\n' > .pool.tmp && mv .pool.tmp pool.conf",
    ));
    let target = d.w("pool.conf");
    let ev = d.wait_for("rename onto pool.conf", |ev| {
        ev.iter()
            .any(|e| e["kind"] == "rename" && e["target"] == target)
    });
    let r = ev
        .iter()
        .find(|e| e["kind"] == "rename" && e["target"] == target)
        .expect("rename");
    assert_eq!(
        (r["path"].as_str(), r["comm"].as_str(), session_agent(r)),
        (Some(d.w(".pool.tmp").as_str()), Some("mv"), Some("claude"))
    );

    // From /tmp (same filesystem), outside any session.
    let tmp = tempfile::NamedTempFile::new_in("/tmp").expect("tmp file");
    std::fs::write(tmp.path(), "x=2\n").expect("write tmp");
    let (_, tmp_path) = tmp.keep().expect("keep");
    let target2 = d.w("other.conf");
    ok(&sh(
        d.dir.path(),
        &format!("mv {} {target2}", tmp_path.display()),
    ));
    let _ev = d.wait_for("rename from /tmp", |ev| {
        ev.iter()
            .any(|e| e["kind"] == "rename" && e["target"] == target2)
    });
    d.settle();
    let ev = d.events();
    // mv first tries renameat2(RENAME_NOREPLACE), which fails with EEXIST: that attempt is
    // reported too (result -17). Exactly one rename succeeded.
    let on: Vec<&Value> = about(&ev, &target2)
        .into_iter()
        .filter(|e| e["result"].as_i64().is_none_or(|r| r >= 0))
        .collect();
    assert_eq!(kinds(&on), ["rename"], "{on:#?}");
    assert!(
        about(&ev, &target2)
            .iter()
            .all(|e| e["result"].as_i64().is_none_or(|r| r >= 0 || r == -17))
    );
    assert_eq!(on[0]["path"], tmp_path.display().to_string());
    assert!(on[0]["session"].is_null());
    assert_eq!(on[0]["comm"], "mv");
    assert_eq!(on[0]["source"], "both");
}

#[test]
fn crontab_writes_the_spool() {
    if !require_root("crontab_writes_the_spool") {
        return;
    }
    let Ok(crontab) = which("crontab") else {
        skip(
            "crontab_writes_the_spool",
            "crontab(1) not installed (scripts/bootstrap.sh installs cron)",
        );
        return;
    };
    let spool = std::path::Path::new("/var/spool/cron/crontabs");
    if !spool.is_dir() {
        skip(
            "crontab_writes_the_spool",
            &format!("{} missing", spool.display()),
        );
        return;
    }
    // Use a dedicated user's crontab so that root's is never touched.
    let user = "confgate-e2e";
    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
        ok(&Command::new("useradd")
            .args(["--system", "--no-create-home", user])
            .output()
            .expect("useradd"));
    }
    // The shipped gate rules hold a session's crontab write for an approver (tests/gate.rs
    // covers that); this test is about the events, so the spool is allowed here.
    let d = Daemon::start_with(DaemonOptions {
        extra_watch: vec!["/var/spool/cron".into()],
        toml_for_dir: Some(Box::new(|_| {
            "[gate]\n[[gate.rule]]\nname = \"spool-observed\"\npaths = [\"/var/spool/cron/**\"]\nverdict = \"allow\"\n".into()
        })),
        ..DaemonOptions::default()
    });
    std::fs::write(d.watched.join("job"), "*/5 * * * * /usr/bin/true\n").expect("crontab file");
    ok(&d.in_session(
        "ops-agent",
        "schedule cleanup",
        &format!("{} -u {user} job", crontab.display()),
    ));
    let spool_file = format!("/var/spool/cron/crontabs/{user}");
    let ev = d.wait_for("crontab spool write", |ev| {
        ev.iter()
            .any(|e| e["target"] == spool_file || (e["path"] == spool_file && e["kind"] != "chmod"))
    });
    let e = ev
        .iter()
        .find(|e| e["target"] == spool_file || e["path"] == spool_file)
        .expect("event");
    assert_eq!(e["comm"], "crontab");
    assert_eq!(session_agent(e), Some("ops-agent"));
    let _ = Command::new(&crontab).args(["-u", user, "-r"]).output();
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn truncate_and_chmod() {
    if !require_root("truncate_and_chmod") {
        return;
    }
    let d = Daemon::start();
    std::fs::write(d.watched.join("t.conf"), "long content\n").expect("seed");
    std::fs::write(d.watched.join("c.conf"), "x\n").expect("seed");
    std::fs::write(d.watched.join("r.conf"), "x\n").expect("seed");
    ok(&d.in_session("claude", "", "truncate -s 0 t.conf"));
    let t = d.w("t.conf");
    let ev = d.wait_for("truncate", |ev| has(ev, "truncate", &t));
    let e = ev
        .iter()
        .find(|e| e["kind"] == "truncate" && e["path"] == t)
        .expect("truncate");
    assert_eq!(
        (e["comm"].as_str(), e["details"]["length"].as_u64()),
        (Some("truncate"), Some(0))
    );
    // Absolute chmod outside a session: seen by the kernel prefix filter and fanotify.
    let c = d.w("c.conf");
    ok(&sh(&d.watched, &format!("chmod 600 {c}")));
    let ev = d.wait_for("chmod", |ev| has(ev, "chmod", &c));
    let e = ev
        .iter()
        .find(|e| e["kind"] == "chmod" && e["path"] == c)
        .expect("chmod");
    assert_eq!(
        (e["details"]["mode"].as_str(), e["source"].as_str()),
        (Some("0600"), Some("both"))
    );
    assert!(e["session"].is_null());
    // Relative chmod outside a session: only fanotify sees it; still classified as chmod.
    let r = d.w("r.conf");
    ok(&sh(&d.watched, "chmod 640 r.conf"));
    let ev = d.wait_for("relative chmod", |ev| has(ev, "chmod", &r));
    let e = ev
        .iter()
        .find(|e| e["kind"] == "chmod" && e["path"] == r)
        .expect("chmod");
    assert_eq!(
        (e["source"].as_str(), e["comm"].as_str()),
        (Some("fanotify"), Some("chmod"))
    );
    d.settle();
    assert_eq!(
        kinds(&about(&d.events(), &c)),
        ["chmod"],
        "one event per operation"
    );
}

#[test]
fn symlink_to_watched_file_and_hardlink() {
    if !require_root("symlink_to_watched_file_and_hardlink") {
        return;
    }
    let d = Daemon::start();
    std::fs::write(d.watched.join("s.conf"), "a\n").expect("seed");
    std::fs::write(d.watched.join("h.conf"), "a\n").expect("seed");
    let link = d.dir.path().join("link-to-s");
    std::os::unix::fs::symlink(d.watched.join("s.conf"), &link).expect("symlink");
    // Writer in a session writes through the symlink: resolved to the real file. The seed
    // writes above are the test process's own (also `write` events on s.conf): wait for
    // the shell's.
    let me = std::process::id();
    ok(&d.in_session("claude", "", &format!("echo b > {}", link.display())));
    let s = d.w("s.conf");
    d.wait_for("the session's write through the symlink", |ev| {
        ev.iter()
            .any(|e| e["kind"] == "write" && e["path"] == s && e["pid"] != me)
    });
    d.settle();
    let ev = d.events();
    let through = about(&ev, &s);
    assert!(
        kinds(&through).contains(&"write".to_string()),
        "{through:#?}"
    );
    assert!(
        through
            .iter()
            .all(|e| session_agent(e) == Some("claude") && e["comm"] == "sh"),
        "only the session wrote s.conf: {through:#?}"
    );
    let session_events = through.len();
    // Outside a session through the symlink: only fanotify can see it, canonical path.
    ok(&sh(d.dir.path(), &format!("echo c >> {}", link.display())));
    d.wait_for("outside write through symlink", |ev| {
        ev.iter().any(|e| {
            e["path"] == s && e["session"].is_null() && e["kind"] == "write" && e["pid"] != me
        })
    });
    d.settle();
    let ev = d.events();
    let outside: Vec<&Value> = about(&ev, &s).into_iter().skip(session_events).collect();
    assert!(!outside.is_empty(), "{ev:#?}");
    for e in &outside {
        assert!(e["session"].is_null(), "{e}");
        assert_eq!(
            (e["comm"].as_str(), e["source"].as_str()),
            (Some("sh"), Some("fanotify")),
            "{e}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.watched.join("s.conf")).expect("read s.conf"),
        "b\nc\n"
    );
    // A hard link to a watched file.
    let hl = d.dir.path().join("hl");
    ok(&sh(
        d.dir.path(),
        &format!("ln {} {}", d.w("h.conf"), hl.display()),
    ));
    let h = d.w("h.conf");
    let ev = d.wait_for("link", |ev| has(ev, "link", &h));
    let e = ev
        .iter()
        .find(|e| e["kind"] == "link" && e["path"] == h)
        .expect("link");
    assert_eq!(
        (e["target"].as_str(), e["comm"].as_str()),
        (Some(hl.display().to_string().as_str()), Some("ln"))
    );
}

#[test]
fn names_with_newline_and_invalid_utf8() {
    if !require_root("names_with_newline_and_invalid_utf8") {
        return;
    }
    let d = Daemon::start();
    let script = "import os\nfor n in [b'new\\nline.conf', b'bad\\xff\\xfe.conf']:\n    f = os.open(n, os.O_WRONLY | os.O_CREAT, 0o644); os.write(f, b'x'); os.close(f)\n";
    std::fs::write(d.watched.join("w.py"), script).expect("script");
    ok(&d.in_session("claude", "", "python3 w.py"));
    let nl = d.w("new\nline.conf");
    let bad = encoded(&[d.watched.as_os_str().as_bytes(), b"/bad\xff\xfe.conf"].concat());
    let ev = d.wait_for("odd names", |ev| {
        has(ev, "create", &nl) && has(ev, "create", &bad)
    });
    assert!(bad.ends_with("/bad\\xff\\xfe.conf"), "{bad}");
    assert!(has(&ev, "write", &nl) && has(&ev, "write", &bad));
    // Every line of the file is one valid JSON object (checked by events()).
}

#[test]
fn double_fork_and_setsid_stay_in_the_session() {
    if !require_root("double_fork_and_setsid_stay_in_the_session") {
        return;
    }
    let d = Daemon::start();
    let script = "import os, time\n\
if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(0.5)\n        open('escaped.conf', 'w').write('x')\n        os._exit(0)\n    os._exit(0)\n\
os._exit(0)\n";
    std::fs::write(d.watched.join("df.py"), script).expect("script");
    ok(&d.in_session("sneaky", "", "nohup python3 df.py >/dev/null 2>&1"));
    let p = d.w("escaped.conf");
    let ev = d.wait_for("daemonized write", |ev| has(ev, "create", &p));
    let e = ev.iter().find(|e| e["path"] == p).expect("event");
    assert_eq!(session_agent(e), Some("sneaky"), "{e}");
    assert_eq!(e["comm"], "python3");
}

#[test]
fn writer_outside_any_session() {
    if !require_root("writer_outside_any_session") {
        return;
    }
    let d = Daemon::start();
    ok(&sh(&d.watched, "echo x > plain.conf"));
    let p = d.w("plain.conf");
    d.wait_for("create", |ev| has(ev, "create", &p));
    d.settle();
    let ev = d.events();
    let mine = about(&ev, &p);
    assert_eq!(kinds(&mine), ["create", "write"]);
    for e in mine {
        assert!(e["session"].is_null());
        assert_eq!(e["comm"], "sh");
        assert!(e["ancestors"].as_array().is_some_and(|a| !a.is_empty()));
    }
}

#[test]
fn agent_detected_by_rule_without_wrapper() {
    if !require_root("agent_detected_by_rule_without_wrapper") {
        return;
    }
    let d = Daemon::start_with(DaemonOptions {
        extra_toml: "[[detect]]\nagent = \"fake-agent\"\ncomm = [\"cg-fake-agent\"]\n".into(),
        ..DaemonOptions::default()
    });
    let agent = d.dir.path().join("cg-fake-agent");
    std::fs::copy("/bin/sh", &agent).expect("copy sh");
    // The detected agent starts, waits until the daemon has opened its session (the test
    // sees it in `confgate sessions` and drops a flag), then writes via a child.
    let flag = d.dir.path().join("detected");
    let child = Command::new(&agent)
        .arg("-c")
        .arg(format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo 1 > detected.conf",
            flag.display()
        ))
        .current_dir(&d.watched)
        .spawn()
        .expect("start the fake agent");
    let mut child = scopeguard(child);
    poll("the detected agent's session", EVENT_TIMEOUT, || {
        let o = d.cli(&["sessions", "--json"]);
        ok(&o);
        String::from_utf8_lossy(&o.stdout)
            .contains("fake-agent")
            .then_some(())
    });
    std::fs::write(&flag, "").expect("flag");
    let status = poll("the fake agent to finish", EVENT_TIMEOUT, || {
        child.0.try_wait().expect("wait")
    });
    assert!(status.success(), "{status}");
    let p = d.w("detected.conf");
    let ev = d.wait_for("detected write", |ev| has(ev, "create", &p));
    let e = ev.iter().find(|e| e["path"] == p).expect("event");
    assert_eq!(session_agent(e), Some("fake-agent"), "{e}");
}

/// Kills the child if the test panics before it ends.
struct Guard(std::process::Child);

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `confgate events` with a filter, its lines collected on a thread; killed when dropped.
struct Stream {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Stream {
    fn start(d: &Daemon, args: &[&str]) -> Stream {
        use std::io::BufRead as _;
        let mut child = Command::new(confgate_bin())
            .arg("--config")
            .arg(&d.config)
            .arg("events")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("confgate events");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        Stream { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `pred` (the stream has processed every event before it).
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        poll(what, EVENT_TIMEOUT, || {
            self.lines().iter().any(|l| pred(l)).then_some(())
        });
    }

    fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ends(e: &Value, suffix: &str) -> bool {
    e["path"].as_str().is_some_and(|p| p.ends_with(suffix))
}

#[test]
fn events_command_filters_and_compact_view() {
    if !require_root("events_command_filters_and_compact_view") {
        return;
    }
    let d = Daemon::start();
    let root = d.dir.path().canonicalize().unwrap();
    let (flag, ready, flag2) = (root.join("go"), root.join("ready"), root.join("end"));
    std::fs::write(d.watched.join("gone.conf"), "x\n").unwrap();
    // Session alpha probes (a .yaml file created and chmod-ed every 100 ms) until every
    // stream is subscribed, then makes its changes, then one last change when told.
    let script = format!(
        "n=0; while [ ! -e {flag} ]; do echo p > probe-$n.yaml; chmod 600 probe-$n.yaml; n=$((n+1)); sleep 0.1; done; \
         echo a > real.conf; echo b > real.yaml; rm gone.conf; touch {ready}; \
         while [ ! -e {flag2} ]; do sleep 0.05; done; echo z > end.yaml; chmod 600 end.yaml",
        flag = flag.display(),
        ready = ready.display(),
        flag2 = flag2.display()
    );
    let alpha = d
        .session_command("alpha", None, &script)
        .spawn()
        .expect("session alpha");
    let alpha = scopeguard(alpha);
    let sessions = poll("session alpha", EVENT_TIMEOUT, || {
        let v = d.cli_json(&["sessions", "--json"]);
        v.as_array()?
            .iter()
            .find(|s| s["agent"] == "alpha")
            .and_then(|s| s["id"].as_u64())
    });
    let s1 = sessions.to_string();
    let by_agent = Stream::start(&d, &["--agent", "alpha"]);
    let by_session = Stream::start(&d, &["--session", &s1]);
    let by_path = Stream::start(&d, &["--path", "**/*.yaml"]);
    let by_kind = Stream::start(&d, &["--kind", "unlink,chmod"]);
    let compact = Stream::start(&d, &["-o", "compact", "--kind", "chmod"]);
    for (s, what) in [
        (&by_agent, "agent"),
        (&by_session, "session"),
        (&by_path, "path"),
        (&by_kind, "kind"),
        (&compact, "compact"),
    ] {
        s.wait_line(&format!("a probe through the {what} stream"), |l| {
            l.contains("/probe-")
        });
    }
    std::fs::write(&flag, "").unwrap();
    poll("alpha's changes", EVENT_TIMEOUT, || {
        ready.exists().then_some(())
    });
    ok(&d.in_session("beta", "", "echo c > beta.conf && chmod 600 beta.conf"));
    ok(&sh(&d.watched, "echo d > outside.yaml"));
    let (beta_conf, outside) = (d.w("beta.conf"), d.w("outside.yaml"));
    d.wait_for("beta's chmod and the outside write", |ev| {
        has(ev, "chmod", &beta_conf) && has(ev, "write", &outside)
    });
    std::fs::write(&flag2, "").unwrap();
    let mut alpha = alpha;
    assert!(alpha.0.wait().expect("wait").success());
    // Every stream has handled each event before alpha's last chmod once it printed it.
    for s in [&by_agent, &by_session, &by_path, &by_kind, &compact] {
        s.wait_line("alpha's last change", |l| {
            l.contains("/end.yaml") && l.contains("chmod")
        });
    }

    let ev = by_agent.json();
    assert!(
        ev.iter().all(|e| e["session"]["agent"] == "alpha"),
        "{ev:#?}"
    );
    assert!(ev.iter().any(|e| ends(e, "/real.conf")) && ev.iter().any(|e| ends(e, "/real.yaml")));
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "unlink" && ends(e, "/gone.conf"))
    );

    let ev = by_session.json();
    assert!(ev.iter().all(|e| e["session"]["id"] == sessions), "{ev:#?}");
    assert!(ev.iter().any(|e| ends(e, "/real.conf")));

    let ev = by_path.json();
    assert!(ev.iter().all(|e| ends(e, ".yaml")), "{ev:#?}");
    assert!(ev.iter().any(|e| ends(e, "/real.yaml")));
    assert!(
        ev.iter()
            .any(|e| ends(e, "/outside.yaml") && e["session"].is_null()),
        "writes outside sessions pass a path filter: {ev:#?}"
    );

    let ev = by_kind.json();
    assert!(
        ev.iter()
            .all(|e| e["kind"] == "unlink" || e["kind"] == "chmod"),
        "{ev:#?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "unlink" && ends(e, "/gone.conf"))
    );
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "chmod" && e["path"] == beta_conf.as_str())
    );

    let lines = compact.lines();
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.split_whitespace().nth(1) == Some("chmod")),
        "{lines:#?}"
    );
    let beta_line = lines
        .iter()
        .find(|l| l.contains(&beta_conf))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        beta_line.contains(" by chmod[") && beta_line.contains(" session=beta#"),
        "{beta_line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/end.yaml") && l.contains(&format!("session=alpha#{s1} "))),
        "{lines:#?}"
    );

    // A filter that cannot match is refused before connecting.
    let bad = d.cli(&["events", "--kind", "delete"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not an event kind"),
        "{bad:?}"
    );
}
