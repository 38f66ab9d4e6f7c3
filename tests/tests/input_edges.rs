//! End-to-end: hostile and unusual input at the edges — control characters, invalid UTF-8
//! and long paths in gated requests (the encoding contract between the daemon and the
//! approval service), CLI edge cases, and the watcher's handling of roots and directories.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// A daemon whose `<watched>/gated/**` is gated (ask, hold 20 s, fail deny), with its
/// local approval service in the scratch dir. `setup` runs on the scratch root before the
/// daemon starts (so what it creates under `gated/` is marked at start).
fn gated_daemon(setup: impl Fn(&Path) + 'static) -> Daemon {
    Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |root| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).expect("mkdir gated");
            setup(root);
            format!(
                "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\n\n[gate]\n\
                 [[gate.rule]]\nname = \"edges\"\npaths = [\"{}/gated/**\"]\nverdict = \"ask\"\n\
                 mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"\n",
                root.join("approver.sock").display(),
                watched.display()
            )
        })),
        ..DaemonOptions::default()
    })
}

/// `--json` output: one JSON array, or one object per line.
fn json_list(out: &[u8]) -> Vec<Value> {
    if let Ok(Value::Array(a)) = serde_json::from_slice::<Value>(out) {
        return a;
    }
    out.split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| serde_json::from_slice(l).expect("json line"))
        .collect()
}

/// Polls `approvals list --json` until a pending request matches `pred`.
fn wait_request(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = d.cli(&["approvals", "list", "--json"]);
        ok(&o);
        if let Some(r) = json_list(&o.stdout).into_iter().find(&pred) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no pending request for {what}; list: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&o.stdout),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_child(mut c: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            return c.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let o = c.wait_with_output().expect("output");
            panic!(
                "command did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ledger_kinds(d: &Daemon) -> Vec<String> {
    std::fs::read_to_string(d.dir.path().join("state/ledger.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect()
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
/// visible for people) and can be approved; the write then lands. Before the shared
/// encoding contract the service refused such a request and the list stayed empty.
#[test]
fn control_characters_and_long_paths_reach_the_approvers() {
    if !require_root("control_characters_and_long_paths_reach_the_approvers") {
        return;
    }
    const NAME: &[u8] = b"x\n\x1b[2J.conf";
    const TOTAL: usize = 4000;
    let d = gated_daemon(|root| {
        let dir = long_dir(root, NAME.len(), TOTAL);
        std::fs::create_dir_all(&dir).expect("long dir");
        std::fs::create_dir_all(root.join(OsStr::from_bytes(b"cwd\nwith\x1besc\xff")))
            .expect("hostile cwd");
    });
    let root = d.dir.path().canonicalize().unwrap();
    let target = long_dir(&root, NAME.len(), TOTAL).join(OsStr::from_bytes(NAME));
    assert_eq!(target.as_os_str().len(), TOTAL);
    std::fs::write(&target, "v=1\n").expect("seed");
    let cwd = root.join(OsStr::from_bytes(b"cwd\nwith\x1besc\xff"));

    let script: &[u8] = b"true\n: '\x1b[31m' \"$1\"\nprintf 'v=2\\n' >> \"$T\"";
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
    let r = wait_request(&d, "the long hostile path", |r| {
        r["context"]["path"] == want_path.as_str()
    });
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

    let id = r["id"].as_u64().expect("id").to_string();
    let show = d.cli(&["approvals", "show", &id, "--json"]);
    ok(&show);
    let shown: Value = serde_json::from_slice(&show.stdout).expect("show --json");
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
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v=1\nv=2\n");
    let kinds = ledger_kinds(&d);
    assert!(
        kinds.iter().any(|k| k == "request") && kinds.iter().any(|k| k == "grant"),
        "{kinds:?}"
    );
}
