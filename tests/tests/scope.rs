//! A confined session's declared scope (`confgate run --scope GLOB`): writes outside it are
//! refused at once (EACCES, no request, no hold), counted, reported as events and ledgered;
//! inside it the gate's rules apply, and rules can test `within_scope`.
use std::path::Path;
use std::process::{Command, Output, Stdio};

use e2e::gate::Gate;
use e2e::{confgate_bin, output_text, require_root};
use serde_json::Value;

/// Gated: `<w>/gated/**`. `<w>/gated/ok/**` is allowed to sessions writing within their
/// scope; everything else gated is denied. `<w>/elsewhere/**` is gated for agent
/// `someone-else` only.
fn gate() -> Gate {
    Gate::start_with(
        |root| {
            for d in [
                "watched/gated/ok",
                "watched/gated/no",
                "watched/app",
                "watched/other",
                "watched/elsewhere",
            ] {
                std::fs::create_dir_all(root.join(d)).expect("mkdir");
            }
        },
        |w| {
            format!(
                "[[gate.rule]]\nname = \"scoped-ok\"\npaths = [\"{w}/gated/ok/**\"]\nverdict = \"allow\"\nwithin_scope = true\n\
                 [[gate.rule]]\nname = \"no-gated\"\npaths = [\"{w}/gated/**\"]\nverdict = \"deny\"\n\
                 [[gate.rule]]\nname = \"not-for-you\"\npaths = [\"{w}/elsewhere/**\"]\nverdict = \"deny\"\nagents = [\"someone-else\"]\n"
            )
        },
    )
}

/// `confgate run --agent AGENT [--scope G]... -- sh -c SCRIPT` in the watched tree.
fn run(g: &Gate, agent: &str, scope: &[String], script: &str) -> Output {
    let mut c = Command::new(confgate_bin());
    c.arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", agent, "--reason", "e2e"]);
    for s in scope {
        c.args(["--scope", s]);
    }
    c.args(["--", "sh", "-c", script])
        .current_dir(&g.d.watched)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("confgate run")
}

fn p(g: &Gate, rel: &str) -> String {
    g.d.watched.join(rel).display().to_string()
}

fn scope_denied_events(g: &Gate) -> Vec<Value> {
    g.d.events()
        .into_iter()
        .filter(|e| e["details"]["scope_denied"] == true)
        .collect()
}

/// Inside the scope the rules apply (a `within_scope` allow, a deny); outside it, gated or
/// not, the write is refused with EACCES at once: nothing asked, nothing written, recorded
/// (counter, event, ledger). Without a scope the `within_scope` rule does not apply.
#[test]
fn outside_the_scope_is_refused_at_once_and_recorded() {
    if !require_root("outside_the_scope_is_refused_at_once_and_recorded") {
        return;
    }
    let g = gate();
    let scope = vec![
        format!("{}/**", p(&g, "app")),
        format!("{}/**", p(&g, "gated/ok")),
        format!("{}/**", p(&g, "gated/no")),
    ];
    let script = format!(
        r#"set -u
r=0
no() {{ echo "UNEXPECTED: $*"; r=1; }}
eacces() {{ grep -q 'Permission denied' "$1" || no "$2: $(cat "$1")"; }}
echo a > {app}/f || no "inside, not gated"
mkdir {app}/sub && mv {app}/f {app}/sub/f || no "rename inside"
echo b > {ok}/f || no "inside, gated, allowed by the within_scope rule"
e={app}/err
{{ echo c > {gno}/f; }} 2>$e && no "inside, gated, denied"
grep -q 'not permitted' $e || no "deny is EPERM: $(cat $e)"
{{ echo d > {other}/f; }} 2>$e && no "outside, not gated"
eacces $e "outside, not gated"
{{ echo e > {gated}/x; }} 2>$e && no "outside, gated"
eacces $e "outside, gated"
mv {app}/sub/f {other}/moved 2>$e && no "renamed out of the scope"
eacces $e "rename out"
echo f > /dev/null || no "/dev/null"
exit $r
"#,
        app = p(&g, "app"),
        ok = p(&g, "gated/ok"),
        gno = p(&g, "gated/no"),
        other = p(&g, "other"),
        gated = p(&g, "gated"),
    );
    let start = std::time::Instant::now();
    let out = run(&g, "scoped", &scope, &script);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "{text}\n--- daemon log ---\n{}",
        g.d.log()
    );
    // Refusals are answered at once (no hold: the rule's timeout is 30 s).
    assert!(start.elapsed().as_secs() < 15, "{:?}", start.elapsed());
    assert_eq!(std::fs::read_to_string(p(&g, "gated/ok/f")).unwrap(), "b\n");
    for never in ["other/f", "gated/x", "other/moved", "gated/no/f"] {
        assert!(!Path::new(&p(&g, never)).exists(), "{never}");
    }
    assert!(Path::new(&p(&g, "app/sub/f")).exists());
    // Counted, reported, ledgered; nobody asked.
    assert!(g.stat("session_scope_denied") >= 3);
    let refused = [p(&g, "other/f"), p(&g, "gated/x")];
    let events = g.d.wait_for("scope_denied events", |_| {
        let ev = scope_denied_events(&g);
        refused
            .iter()
            .all(|r| ev.iter().any(|e| e["path"] == r.as_str()))
    });
    for e in events
        .iter()
        .filter(|e| e["details"]["scope_denied"] == true)
    {
        assert_eq!(e["result"], -13, "{e}");
        assert_eq!(e["source"], "supervisor", "{e}");
        assert_eq!(e["session"]["agent"], "scoped", "{e}");
    }
    for r in &refused {
        g.wait_ledgered("scope_denied", |b| b["path"] == r.as_str());
    }
    assert!(g.pending().is_empty(), "{:?}", g.pending());
    let policy_denied = g.ledgered("denied_by_policy");
    assert!(
        policy_denied
            .iter()
            .all(|b| b["path"] != p(&g, "gated/x").as_str()),
        "{policy_denied:?}"
    );
    // The session lists its scope.
    let sessions = g.d.cli_json(&["sessions", "--all", "--json"]);
    let mine = sessions
        .as_array()
        .and_then(|a| a.iter().find(|s| s["agent"] == "scoped"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        mine["scope"].as_array().map(Vec::len),
        Some(3),
        "{sessions}"
    );

    // No scope: the within_scope rule does not apply, the deny rule does.
    let out = run(
        &g,
        "unscoped",
        &[],
        &format!("echo x > {}/g", p(&g, "gated/ok")),
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("not permitted"),
        "{}",
        output_text(&out)
    );
    assert!(!Path::new(&p(&g, "gated/ok/g")).exists());
}

/// A scope that is not absolute, or combined with --no-confine, is refused before
/// anything runs (125).
#[test]
fn bad_scopes_are_refused_before_the_command_runs() {
    if !require_root("bad_scopes_are_refused_before_the_command_runs") {
        return;
    }
    let g = gate();
    let marker = g.d.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let out = run(&g, "bad", &["relative/**".into()], &touch);
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    assert!(output_text(&out).contains("not an absolute path"));
    let out = Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args([
            "run",
            "--agent",
            "bad",
            "--no-confine",
            "--scope",
            "/srv/**",
        ])
        .args(["--", "sh", "-c", &touch])
        .output()
        .expect("confgate run");
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    let file = g.d.dir.path().join("scope.txt");
    std::fs::write(&file, "# comment\n\n/srv/app/**\nnot/absolute\n").expect("scope file");
    let out = Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "bad", "--scope-file"])
        .arg(&file)
        .args(["--", "sh", "-c", &touch])
        .output()
        .expect("confgate run");
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("not/absolute"),
        "{}",
        output_text(&out)
    );
    assert!(!marker.exists());
}

/// The session's start record: who, where, what it may write, what is gated, and the names
/// of the credential-like variables it was given, never their values (a planted
/// `API_TOKEN=secret123` appears nowhere: events, ledger, requests, sessions, daemon log).
/// The end record follows with its counts.
#[test]
fn start_record_lists_credential_names_never_values() {
    if !require_root("start_record_lists_credential_names_never_values") {
        return;
    }
    let g = gate();
    let scope = [format!("{}/**", p(&g, "app"))];
    let mut c = Command::new(confgate_bin());
    c.arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "recorded", "--reason", "e2e"])
        .args(["--scope", &scope[0]])
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo $API_TOKEN > {}/f; echo x > {}/f 2>/dev/null; true",
            p(&g, "app"),
            p(&g, "gated/no")
        ))
        .env("API_TOKEN", "secret123")
        .env("AWS_PROFILE", "dev")
        .current_dir(&g.d.watched);
    let out = c.output().expect("confgate run");
    assert!(out.status.success(), "{}", output_text(&out));
    let start = g.wait_ledgered("session_start", |b| b["agent"] == "recorded");
    let id = start["session"].as_u64().expect("session id");
    assert_eq!(start["reason"], "e2e");
    assert_eq!(
        (start["uid"].as_u64(), start["gid"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(start["user"], "root");
    assert!(start["groups"].is_array(), "{start}");
    assert_eq!(start["cwd"], g.d.watched.display().to_string());
    assert!(
        start["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "sh")),
        "{start}"
    );
    assert!(
        start["cgroup"].as_str().is_some_and(|c| c.contains("0::")),
        "{start}"
    );
    assert_eq!(start["scope"][0], scope[0].as_str());
    assert_eq!(start["confined"], true);
    let gated = p(&g, "gated");
    assert!(
        start["gated"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == gated.as_str())),
        "{start}"
    );
    // Only what applies to this agent: not the tree of a rule for another agent.
    let elsewhere = p(&g, "elsewhere");
    assert!(
        start["gated"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|x| x == elsewhere.as_str())),
        "{start}"
    );
    assert_eq!(
        start["rules"],
        serde_json::json!(["scoped-ok", "no-gated"]),
        "{start}"
    );
    let names: Vec<&str> = start["credential_env"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"API_TOKEN") && names.contains(&"AWS_PROFILE"),
        "{start}"
    );
    let end = g.wait_ledgered("session_end", |b| b["session"] == id);
    assert!(end["ended"].is_string(), "{end}");
    // The value was written into a file in scope (the session saw it); nothing confgate
    // keeps or prints has it.
    g.d.wait_for("the session's write", |ev| {
        ev.iter()
            .any(|e| e["path"] == format!("{}/f", p(&g, "app")).as_str())
    });
    assert_eq!(
        std::fs::read_to_string(p(&g, "app/f")).unwrap(),
        "secret123\n"
    );
    let sessions = g.cli(&["sessions", "--all", "--json"]);
    let requests = g.cli(&["approvals", "list", "--json"]);
    for (what, text) in [
        (
            "events",
            std::fs::read_to_string(&g.d.events_file).unwrap_or_default(),
        ),
        (
            "ledger",
            std::fs::read_to_string(g.d.ledger_path()).unwrap_or_default(),
        ),
        ("daemon log", g.d.log()),
        (
            "sessions",
            String::from_utf8_lossy(&sessions.stdout).into_owned(),
        ),
        (
            "requests",
            String::from_utf8_lossy(&requests.stdout).into_owned(),
        ),
    ] {
        assert!(!text.contains("secret123"), "the value is in the {what}");
    }
}

/// `confgate sessions show ID`: after a session that wrote in its scope, was refused
/// outside it, and was approved with a TTL that expired and reverted the change.
#[test]
fn sessions_show_reconstructs_a_session() {
    if !require_root("sessions_show_reconstructs_a_session") {
        return;
    }
    let g = Gate::start_with(
        |root| {
            for d in ["watched/app", "watched/other"] {
                std::fs::create_dir_all(root.join(d)).expect("mkdir");
            }
        },
        |w| {
            e2e::gate::rule(
                w,
                "expiring",
                "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"\non_expiry = \"revert\"",
            )
        },
    );
    let f = g.gated("limits.conf");
    std::fs::write(&f, "max=1\n").expect("gated file");
    let scope = [
        format!("{}/**", p(&g, "app")),
        format!("{}/**", p(&g, "gated")),
    ];
    let child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "reported", "--reason", "incident drill"])
        .args(["--scope", &scope[0], "--scope", &scope[1]])
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo a > {app}/f; echo b > {other}/f 2>/dev/null; echo max=999 > {f}",
            app = p(&g, "app"),
            other = p(&g, "other"),
            f = f.display()
        ))
        .current_dir(&g.d.watched)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confgate run");
    let r = g.wait_request(&f);
    e2e::ok(&g.cli(&["approvals", "approve", &e2e::gate::id_of(&r), "--ttl", "3s"]));
    e2e::ok(&e2e::gate::wait_child(
        child,
        std::time::Duration::from_secs(15),
    ));
    let fs = f.display().to_string();
    g.wait_ledgered("reverted", |b| b["path"] == fs.as_str());
    let id = g.wait_ledgered("session_start", |b| b["agent"] == "reported")["session"]
        .as_u64()
        .expect("session id");
    let end = g.wait_ledgered("session_end", |b| b["session"] == id);
    // Its counts as of its end (the revert came after).
    let c = &end["counts"];
    assert_eq!(
        [
            &c["requests"],
            &c["approved"],
            &c["scope_denied"],
            &end["exit"]["code"]
        ],
        [1, 1, 1, 0],
        "{end}"
    );
    let report =
        g.d.cli_json(&["sessions", "show", &id.to_string(), "--json"]);
    assert_eq!(report["session"]["agent"], "reported", "{report}");
    assert_eq!(report["start"]["reason"], "incident drill", "{report}");
    assert!(report["end"].is_object(), "{report}");
    let events = report["events"].as_array().cloned().unwrap_or_default();
    let at = |path: &str| events.iter().any(|e| e["path"] == path);
    assert!(at(&format!("{}/f", p(&g, "app"))), "{report}");
    assert!(
        events
            .iter()
            .any(|e| e["path"] == format!("{}/f", p(&g, "other")).as_str()
                && e["details"]["scope_denied"] == true),
        "{report}"
    );
    assert!(at(&fs), "{report}");
    let kinds: Vec<&str> = report["ledger"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["kind"].as_str()).collect())
        .unwrap_or_default();
    for k in ["request", "grant", "reverted", "scope_denied"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let grants = report["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(grants.len(), 1, "{report}");
    assert_eq!(grants[0]["live"], false, "{report}");
    assert!(grants[0]["by"].is_string(), "{report}");
    assert_eq!(report["reverted"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["scope_denied"], 1);
    // The diff of the reverted change is in the report.
    assert!(report.to_string().contains("+max=999"), "{report}");
    // The text form says the same.
    let text = g.cli(&["sessions", "show", &id.to_string()]);
    e2e::ok(&text);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("reverted: 1") && text.contains("refused outside scope: 1"),
        "{text}"
    );
    // The list's filters.
    let by_agent =
        g.d.cli_json(&["sessions", "--all", "--json", "--agent", "reported"]);
    assert_eq!(by_agent.as_array().map(Vec::len), Some(1), "{by_agent}");
    let none =
        g.d.cli_json(&["sessions", "--all", "--json", "--agent", "nobody"]);
    assert_eq!(none.as_array().map(Vec::len), Some(0), "{none}");
    let future = g.d.cli_json(&[
        "sessions",
        "--all",
        "--json",
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(future.as_array().map(Vec::len), Some(0), "{future}");
    let recent =
        g.d.cli_json(&["sessions", "--all", "--json", "--since", "1h"]);
    assert_eq!(recent.as_array().map(Vec::len), Some(1), "{recent}");
}

/// Infrastructure as code under a project root is watched by default and labelled
/// `details.class = "iac"`; other project files are not labelled.
#[test]
fn iac_under_a_project_root_is_labelled() {
    if !require_root("iac_under_a_project_root_is_labelled") {
        return;
    }
    let projects = tempfile::Builder::new()
        .prefix("confgate-iac-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let root = projects.path().canonicalize().expect("canonical");
    std::fs::create_dir_all(root.join("alice/infra")).expect("mkdir");
    let d = e2e::Daemon::start_with(e2e::DaemonOptions {
        project_roots: vec![format!("{}/*", root.display())],
        ..e2e::DaemonOptions::default()
    });
    let out = d
        .session_command(
            "claude",
            None,
            "echo 'resource \"x\" \"y\" {}' > main.tf; echo FROM scratch > Dockerfile; echo A=1 > .env",
        )
        .current_dir(root.join("alice/infra"))
        .output()
        .expect("run");
    e2e::ok(&out);
    let at = |name: &str| root.join("alice/infra").join(name).display().to_string();
    let (tf, docker, env) = (at("main.tf"), at("Dockerfile"), at(".env"));
    let ev = d.wait_for("main.tf, Dockerfile and .env events", |ev| {
        [&tf, &docker, &env]
            .iter()
            .all(|p| ev.iter().any(|e| e["path"] == p.as_str()))
    });
    for p in [&tf, &docker] {
        let mine: Vec<&Value> = ev.iter().filter(|e| e["path"] == p.as_str()).collect();
        assert!(
            mine.iter().all(|e| e["details"]["class"] == "iac"),
            "{p}: {mine:?}"
        );
        assert_eq!(mine[0]["session"]["agent"], "claude");
    }
    assert!(
        ev.iter()
            .filter(|e| e["path"] == env.as_str())
            .all(|e| e["details"]["class"].is_null()),
        "{ev:?}"
    );
}

/// `session_end` says how the session's root process ended, as `confgate run` (the
/// launcher, which waits for it) reported it: an exit code, a signal, or not reported when
/// the launcher was killed (the command dies with it). And the session's counts.
#[test]
fn session_end_has_the_exit_status_and_counts() {
    if !require_root("session_end_has_the_exit_status_and_counts") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let g = gate();
    let end_of = |agent: &str| {
        let id = g.wait_ledgered("session_start", |b| b["agent"] == agent)["session"].clone();
        g.wait_ledgered("session_end", |b| b["session"] == id)
    };
    let scope = vec![format!("{}/**", p(&g, "app"))];
    let out = run(
        &g,
        "exits-3",
        &scope,
        &format!("echo x > {}/f 2>/dev/null; exit 3", p(&g, "other")),
    );
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let end = end_of("exits-3");
    assert_eq!(
        end["exit"],
        serde_json::json!({"reported": true, "code": 3})
    );
    let c = &end["counts"];
    assert_eq!(
        (c["scope_denied"].as_u64(), c["complete"].as_bool()),
        (Some(1), Some(true)),
        "{end}"
    );
    assert_eq!(
        (c["requests"].as_u64(), c["denied"].as_u64()),
        (Some(0), Some(0)),
        "{end}"
    );

    // Killed by a signal: `confgate run` ends by the same signal.
    let out = run(&g, "killed", &[], "kill -TERM $$; sleep 5");
    assert_eq!(out.status.signal(), Some(15), "{}", output_text(&out));
    let end = end_of("killed");
    assert_eq!(end["exit"]["signal"], 15, "{end}");
    assert_eq!(end["exit"]["signal_name"], "SIGTERM", "{end}");

    // The launcher killed (SIGKILL, it cannot report): the command (the session's root
    // process; not its descendants) is killed with it and the end record says the status
    // was not reported.
    let mut launcher = Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args([
            "run",
            "--agent",
            "orphaned",
            "--",
            "sh",
            "-c",
            "exec sleep 30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("confgate run");
    g.wait_ledgered("session_start", |b| b["agent"] == "orphaned");
    let _ = launcher.kill();
    let _ = launcher.wait();
    let start = std::time::Instant::now();
    let end = end_of("orphaned");
    assert!(
        start.elapsed().as_secs() < 10,
        "the command outlived its launcher"
    );
    assert_eq!(end["exit"]["reported"], false, "{end}");
    assert!(
        end["exit"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("killed")),
        "{end}"
    );
}

/// A `[[detect]]` rule's `scope`: the detected (unconfined) session records it; a gated
/// path outside it is refused by the fanotify gate before the rules (`scope_denied`), a
/// write outside it nothing can hold is recorded (`out_of_scope`), and inside it the
/// rules apply (a `within_scope = true` allow).
#[test]
fn detected_session_scope_refuses_gated_and_records_the_rest() {
    if !require_root("detected_session_scope_refuses_gated_and_records_the_rest") {
        return;
    }
    // `[[detect]]` needs the scratch directory's path: the rules are written with the
    // gate's (a non-empty `extra_toml` keeps the harness from adding `detect = []`).
    let d = e2e::Daemon::start_with(e2e::DaemonOptions {
        extra_toml: "# [[detect]] follows [gate]\n".into(),
        toml_for_dir: Some(Box::new(|root| {
            for d in ["gated/ok", "gated/no", "app", "other"] {
                std::fs::create_dir_all(root.join("watched").join(d)).expect("mkdir");
            }
            let w = root.join("watched").display().to_string();
            format!(
                "{}\n[gate]\n\
                 [[gate.rule]]\nname = \"scoped-ok\"\npaths = [\"{w}/gated/ok/**\"]\nverdict = \"allow\"\nwithin_scope = true\n\
                 [[gate.rule]]\nname = \"no-gated\"\npaths = [\"{w}/gated/**\"]\nverdict = \"deny\"\n\
                 [[detect]]\nagent = \"scoped-detected\"\ncomm = [\"cg-scoped-agent\"]\nscope = [\"{w}/app/**\", \"{w}/gated/ok/**\"]\n",
                e2e::gate::local_approval(root)
            )
        })),
        ..e2e::DaemonOptions::default()
    });
    let g = Gate { d };
    let flag = g.d.dir.path().join("go");
    let script = format!(
        r#"while [ ! -e {flag} ]; do sleep 0.05; done
r=0
no() {{ echo "UNEXPECTED: $*"; r=1; }}
echo a > {app}/f || no "inside, not gated"
echo b > {ok}/f || no "inside, gated, allowed by the within_scope rule"
{{ echo c > {gno}/f; }} 2>/dev/null && no "outside, gated: not refused"
echo d > {other}/f || no "outside, not gated (observed only)"
exit $r
"#,
        flag = flag.display(),
        app = p(&g, "app"),
        ok = p(&g, "gated/ok"),
        gno = p(&g, "gated/no"),
        other = p(&g, "other"),
    );
    // Detected by its name (its `sleep` children do not match: only the shell is the
    // session's root).
    let agent = g.d.dir.path().join("cg-scoped-agent");
    std::fs::copy("/bin/sh", &agent).expect("copy sh");
    let child = Command::new(&agent)
        .args(["-c", &script])
        .current_dir(&g.d.watched)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let start = g.wait_ledgered("session_start", |b| b["agent"] == "scoped-detected");
    assert_eq!(start["source"], "detect:scoped-detected", "{start}");
    assert_eq!(
        start["scope"][0],
        format!("{}/**", p(&g, "app")).as_str(),
        "{start}"
    );
    g.wait_ledgered("gate_marks_placed", |_| true);
    std::fs::write(&flag, "").expect("flag");
    let out = e2e::gate::wait_child(child, std::time::Duration::from_secs(15));
    assert!(
        out.status.success(),
        "{}\n--- daemon log ---\n{}",
        output_text(&out),
        g.d.log()
    );
    assert_eq!(std::fs::read_to_string(p(&g, "gated/ok/f")).unwrap(), "b\n");
    assert!(
        !Path::new(&p(&g, "gated/no/f")).exists(),
        "refused, and the file it created removed"
    );
    let gno = format!("{}/f", p(&g, "gated/no"));
    let denied = g.wait_ledgered("scope_denied", |b| b["path"] == gno.as_str());
    assert_eq!(
        denied["session"],
        start["session"],
        "{denied}\n{:?}",
        g.ledgered("session_start")
    );
    assert!(
        g.ledgered("denied_by_policy").is_empty(),
        "refused before the rules"
    );
    let other = format!("{}/f", p(&g, "other"));
    let seen = g.wait_ledgered("out_of_scope", |b| b["path"] == other.as_str());
    assert_eq!(seen["session"], start["session"], "{seen}");
    let app = format!("{}/f", p(&g, "app"));
    assert!(
        !g.ledgered("out_of_scope")
            .iter()
            .any(|b| b["path"] == app.as_str()),
        "inside the scope is not out of it"
    );
    assert!(g.stat("gate_scope_denied") >= 1 && g.stat("gate_out_of_scope") >= 1);
    let end = g.wait_ledgered("session_end", |b| b["session"] == start["session"]);
    assert_eq!(
        [
            &end["counts"]["scope_denied"],
            &end["counts"]["out_of_scope"],
            &end["exit"]["reported"]
        ],
        [
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(false)
        ],
        "{end}\n{:?}\n{}",
        g.ledgered("out_of_scope"),
        std::fs::read_to_string(&g.d.events_file).unwrap_or_default()
    );
}
