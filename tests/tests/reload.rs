//! End-to-end: reloading the configuration of a running daemon (`confgate reload`,
//! SIGHUP) while a session writes, a file that does not validate, and the events file
//! rotated by a real `logrotate` run under load.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::gate::{Gate, wait_child};
use e2e::*;
use serde_json::Value;

/// A rule for `<watched>/gated/**` with `verdict`.
fn verdict_rule(watched: &str, verdict: &str) -> String {
    format!(
        "[[gate.rule]]\nname = \"reloaded\"\npaths = [\"{watched}/gated/**\"]\nverdict = \"{verdict}\"\n"
    )
}

fn sha256_of(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    ok(&o);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn reload_swaps_the_policy_for_the_next_write_and_refuses_a_bad_file() {
    if !require_root("reload_swaps_the_policy_for_the_next_write_and_refuses_a_bad_file") {
        return;
    }
    let g = Gate::start(|w| verdict_rule(w, "allow"));
    let root = g.d.watched.parent().unwrap().to_path_buf();
    let log = root.join("writes.log");
    let reloaded = root.join("reloaded");
    let stop = root.join("stop");
    // Each write is to a new file; the line says whether it landed and whether the writer
    // had seen the reload marker before it began (then the new policy must rule on it).
    let script = format!(
        "i=0; while [ ! -e {stop} ]; do i=$((i+1)); \
         if [ -e {rel} ]; then when=after; else when=before; fi; \
         if echo $i > gated/f-$i 2>/dev/null; then echo \"ok $i $when\" >> {log}; \
         else echo \"denied $i $when\" >> {log}; fi; sleep 0.02; done",
        stop = stop.display(),
        rel = reloaded.display(),
        log = log.display(),
    );
    let child = g.spawn_in_session("claude", &script);
    poll("writes before the reload", Duration::from_secs(20), || {
        (lines(&log).len() >= 5).then_some(())
    });

    // A good file: the rule now denies.
    let text = std::fs::read_to_string(&g.d.config).unwrap();
    let denying = text.replace("verdict = \"allow\"", "verdict = \"deny\"");
    assert_ne!(text, denying);
    std::fs::write(&g.d.config, &denying).unwrap();
    let t = Instant::now();
    let o = g.d.cli(&["reload", "--json"]);
    eprintln!("reload took {:?}", t.elapsed());
    ok(&o);
    let answer: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["sha256"], sha256_of(&g.d.config), "{answer}");
    assert_eq!(
        answer["applied"],
        serde_json::json!(["gate policy"]),
        "{answer}"
    );
    assert_eq!(
        answer["restart_required"],
        serde_json::json!([]),
        "{answer}"
    );
    std::fs::write(&reloaded, "").unwrap();
    poll("writes after the reload", Duration::from_secs(20), || {
        (lines(&log).iter().filter(|l| l.ends_with(" after")).count() >= 5).then_some(())
    });

    // A bad file: refused with line and column, the deny rule stays.
    let bad = denying.replace("verdict = \"deny\"", "verdict = \"deny\"\nthis is not toml");
    std::fs::write(&g.d.config, &bad).unwrap();
    let at = format!("{}:", g.d.config.display());
    let bad_line = bad.lines().position(|l| l == "this is not toml").unwrap() + 1;
    // The command cannot read the daemon's socket from a file that is not TOML: it says
    // so, with the position, and asks nobody.
    let o = g.d.cli(&["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was not asked") && err.contains(&format!("{at}{bad_line}:")),
        "{err}"
    );
    // Given the socket, the daemon is asked and refuses the file.
    let socket = g.d.socket.display().to_string();
    let o = g.d.cli(&["--socket", &socket, "reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reload refused") && err.contains(&format!("{at}{bad_line}:")),
        "{err}"
    );
    let bad_sha256 = sha256_of(&g.d.config);
    // SIGHUP reads the same file: refused too, with the position in the log.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    poll(
        "the SIGHUP refusal in the log",
        Duration::from_secs(10),
        || {
            let l = g.d.log();
            (l.matches("configuration reload refused").count() >= 2
                && l.contains(&format!("{at}{bad_line}:")))
            .then_some(())
        },
    );
    let before_bad = lines(&log).len();
    poll(
        "writes after the refused reloads",
        Duration::from_secs(20),
        || (lines(&log).len() >= before_bad + 5).then_some(()),
    );
    std::fs::write(&stop, "").unwrap();
    ok(&wait_child(child, Duration::from_secs(20)));
    // The file the daemon runs with again, for the commands below (they read it too).
    std::fs::write(&g.d.config, &denying).unwrap();

    let written = lines(&log);
    let after: Vec<&String> = written.iter().filter(|l| l.ends_with(" after")).collect();
    assert!(after.len() >= 10, "{written:?}");
    // The new policy ruled on every write begun after the reload answered, and the
    // refused file changed nothing.
    assert!(
        after.iter().all(|l| l.starts_with("denied ")),
        "{written:?}"
    );
    let landed: Vec<&str> = written
        .iter()
        .filter(|l| l.starts_with("ok "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert!(!landed.is_empty(), "{written:?}");
    // Nothing lost: every write that landed, before and across the reload, is an event.
    g.d.settle();
    let events = g.d.events();
    for i in &landed {
        let path = g.d.w(&format!("gated/f-{i}"));
        assert!(
            about(&events, &path)
                .iter()
                .any(|e| e["kind"] == "create" || e["kind"] == "write"),
            "no event for {path}"
        );
        assert!(g.d.watched.join(format!("gated/f-{i}")).exists());
    }
    let reloads = g.ledgered("config_reloaded");
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0]["sha256"], answer["sha256"]);
    let refused = g.ledgered("config_reload_refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["sha256"], bad_sha256);
    assert!(
        refused[1]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{at}{bad_line}:")),
        "{refused:?}"
    );
    assert_eq!(g.d.stat("config_reloads"), 1);
    assert_eq!(g.d.stat("config_reloads_refused"), 2);
    ok(&g.d.cli(&["audit", "verify"]));
}

#[test]
fn restart_only_settings_are_reported_not_applied() {
    if !require_root("restart_only_settings_are_reported_not_applied") {
        return;
    }
    let d = Daemon::start();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let elsewhere = d.dir.path().join("elsewhere-state");
    let changed = text.replace(
        &format!("state_dir = {:?}", d.state_dir().display().to_string()),
        &format!("state_dir = {:?}", elsewhere.display().to_string()),
    );
    assert_ne!(text, changed);
    std::fs::write(&d.config, changed).unwrap();
    let o = d.cli(&["reload"]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("NOT applied (needs a restart; the running value stays): daemon.state_dir"),
        "{out}"
    );
    assert!(d.log().contains("takes effect only on a restart"));
    assert!(!elsewhere.exists());
    // Inside an agent session, reload is refused.
    // (--socket: the configuration is hidden from confined sessions.)
    let o = d.in_session(
        "claude",
        "",
        &format!(
            "{} --socket {} reload",
            confgate_bin().display(),
            d.socket.display()
        ),
    );
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("inside agent session"),
        "{}",
        output_text(&o)
    );
}

/// The events file rotated by `logrotate` (`create`, postrotate `confgate reload`) three
/// times while sessions write: every event the daemon counted is one whole line in the
/// rotated files or the new one.
#[test]
fn logrotate_create_loses_no_line_under_load() {
    if !require_root("logrotate_create_loses_no_line_under_load") {
        return;
    }
    let Some(logrotate) = ["/usr/sbin/logrotate", "/sbin/logrotate"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        skip(
            "logrotate_create_loses_no_line_under_load",
            "logrotate is not installed (scripts/bootstrap.sh installs it)",
        );
        return;
    };
    let d = Daemon::start();
    let root = d.watched.parent().unwrap().to_path_buf();
    let conf = root.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{events} {{\n  create 0640 root root\n  rotate 10\n  missingok\n  nocompress\n  \
             postrotate\n    timeout 30 {bin} --config {cfg} reload >/dev/null\n  endscript\n}}\n",
            events = d.events_file.display(),
            bin = confgate_bin().display(),
            cfg = d.config.display(),
        ),
    )
    .unwrap();
    let state = root.join("logrotate.state");
    let stop = root.join("stop");
    // Writers that run until every rotation is done (20 files, a pause: a load the debug
    // build keeps up with; at most 40000 files each whatever happens).
    let load: Vec<_> = (0..2)
        .map(|n| {
            d.session_command(
                "claude",
                None,
                &format!(
                    "mkdir -p load{n}; i=0; while [ ! -e {stop} ] && [ $i -lt 40000 ]; do \
                     for j in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
                     i=$((i+1)); echo $i > load{n}/f-$i; done; sleep 0.05; done",
                    stop = stop.display()
                ),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // The load is under way: its events reach the file.
    poll("the load's first events", Duration::from_secs(30), || {
        (lines(&d.events_file).len() >= 50).then_some(())
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let o = Command::new(&logrotate)
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .output()
            .unwrap();
        ok(&o);
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    for c in load {
        ok(&wait_child(c, Duration::from_secs(60)));
    }
    d.settle();
    let files: Vec<PathBuf> = std::iter::once(d.events_file.clone())
        .chain((1..=10).map(|n| PathBuf::from(format!("{}.{n}", d.events_file.display()))))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 4, "three rotations: {files:?}");
    let count = || -> usize {
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                assert!(
                    text.is_empty() || text.ends_with('\n'),
                    "{f:?} ends mid-line"
                );
                for l in text.lines() {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("{f:?}: not one event per line ({e}): {l}"));
                }
                text.lines().count()
            })
            .sum()
    };
    // The settle marker's event is written; the counter and the files agree from then on
    // (both are updated by the event loop, the file flushed after each batch).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut emitted, mut written) = (d.stat("events_emitted"), count());
    while emitted != written as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        (emitted, written) = (d.stat("events_emitted"), count());
    }
    assert_eq!(
        emitted, written as u64,
        "events counted vs lines in {files:?}"
    );
    assert!(emitted >= 1000, "the load made {emitted} events");
    assert_eq!(d.stat("sink_errors"), 0);
    assert_eq!(d.stat("config_reloads"), 3);
    // Every rotated file holds part of the load (the daemon wrote to each until reopened).
    for f in &files {
        assert!(!lines(f).is_empty(), "{f:?} is empty");
    }
}
