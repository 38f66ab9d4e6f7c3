//! End-to-end: bursts of requests from one session, as installers make them.
//! - A dpkg-like session (temp files `*.dpkg-new` renamed onto their final names) in a gated
//!   tree: its first request names the likely final file and a session-scoped glob;
//!   approving it with `--suggested` lets the rest of the burst through with no further
//!   request, nothing flagged, nothing reverted.
//! - The real thing: `apt-get install -y` of a small Debian package with conffiles in
//!   `/etc`, inside a confined session under the shipped rules, approved on the web page
//!   (headless Chromium signed in at the test OpenID provider) with one click on the
//!   session's set and its suggested glob when a request appears: one or two decisions,
//!   the package works, nothing flagged or reverted. Skipped (with the reason) when apt
//!   cannot reach the archive, the package is installed already, or the browser's
//!   prerequisites are missing.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::browser::{Browser, free_port, local_web_approval, missing_prerequisites, start_oidc};
use e2e::gate::{Gate, id_of, parse_json_list, rule, wait_child};
use e2e::*;

const HOLD: &str = "mode = \"hold\"\ntimeout = \"25s\"\nfail = \"deny\"";

#[test]
fn a_dpkg_like_burst_is_approved_once_with_the_suggested_glob() {
    if !require_root("a_dpkg_like_burst_is_approved_once_with_the_suggested_glob") {
        return;
    }
    let g = Gate::start_with(
        |root| std::fs::create_dir_all(root.join("watched/gated/app/conf.d")).unwrap(),
        |w| rule(w, "burst", HOLD),
    );
    let app = g.gated("app");
    let script = "set -e; for f in app.conf conf.d/a.conf conf.d/b.conf; do \
                  printf 'x\\n' > gated/app/$f.dpkg-new; mv gated/app/$f.dpkg-new gated/app/$f; done";
    let child = g.spawn_in_session("installer", script);
    let first = app.join("app.conf.dpkg-new");
    let r = g.wait_request(&first);
    let id = id_of(&r);
    let likely = r["context"]["likely_final"].as_str().unwrap_or_default();
    assert!(
        likely.starts_with(&format!("{}/app.conf (", app.display())) && likely.contains("dpkg"),
        "{r}"
    );
    let glob = format!("{}/**", app.display());
    assert_eq!(r["suggested_glob"], glob.as_str(), "{r}");
    let view = g.cli(&["approvals", "show", &id]);
    let text = output_text(&view);
    assert!(
        text.contains("likely final") && text.contains(&glob),
        "{text}"
    );
    let list = output_text(&g.cli(&["approvals", "list"]));
    assert!(list.contains(" -> ") && list.contains("dpkg"), "{list}");
    // A set approval needs the glob the approver reviewed.
    let unreviewed = g.cli(&["approvals", "approve", "--session-set", &id]);
    assert!(!unreviewed.status.success(), "{}", output_text(&unreviewed));
    assert!(output_text(&unreviewed).contains("--expect-glob"));
    let other = g.cli(&[
        "approvals",
        "approve",
        "--session-set",
        &id,
        "--expect-glob",
        "/etc/**",
    ]);
    assert!(!other.status.success(), "{}", output_text(&other));
    ok(&g.cli(&[
        "approvals",
        "approve",
        &id,
        "--suggested",
        "--expect-glob",
        &glob,
        "--ttl",
        "10m",
    ]));
    let o = wait_child(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", output_text(&o));
    for f in ["app.conf", "conf.d/a.conf", "conf.d/b.conf"] {
        assert_eq!(std::fs::read_to_string(app.join(f)).unwrap(), "x\n");
    }
    // One decision for the whole burst.
    assert_eq!(g.stat("gate_requests"), 1, "{}", g.d.log());
    assert_eq!(g.stat("gate_changes_flagged"), 0);
    assert_eq!(g.stat("gate_changes_reverted"), 0);
    assert_eq!(g.stat("gate_unapproved_renames"), 0);
}

/// A small package with a conffile in `/etc` (`/etc/nanorc`) whose maintainer scripts
/// also write there (`update-alternatives`: `/etc/alternatives/editor`, through a temp
/// name renamed into place). (`nginx-light` also installs a systemd unit under
/// `/usr/lib/systemd/system`, another gated tree: three decisions at least.)
const PACKAGE: &str = "nano";

fn apt_reaches_the_archive(pkg: &str) -> Result<(), String> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout).contains("install ok installed") {
        return Err(format!(
            "{pkg} is installed already (purge it to run this test)"
        ));
    }
    let o = Command::new("apt-get")
        .args(["install", "-y", "--download-only", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "apt-get cannot fetch {pkg} from the archive: {}",
            output_text(&o).lines().last().unwrap_or("")
        ));
    }
    Ok(())
}

/// A daemon under the shipped rules whose local approval service serves the web page on
/// `http://127.0.0.1:web_port`, with sign-in at the test provider on `oidc_port`.
fn gate_with_page(web_port: u16, oidc_port: u16) -> Gate {
    Gate {
        d: Daemon::start_with(DaemonOptions {
            toml_for_dir: Some(Box::new(move |root| {
                // The shipped rules (ask about every session write under /etc).
                format!(
                    "{}\n[gate]\ndefault_timeout = \"60s\"\n",
                    local_web_approval(root, web_port, oidc_port)
                )
            })),
            ..DaemonOptions::default()
        }),
    }
}

#[test]
fn apt_get_install_in_a_session_ends_with_one_or_two_decisions() {
    let test = "apt_get_install_in_a_session_ends_with_one_or_two_decisions";
    if !require_root(test) {
        return;
    }
    if let Some(why) = missing_prerequisites() {
        skip(test, &why);
        return;
    }
    if let Err(why) = apt_reaches_the_archive(PACKAGE) {
        skip(test, &why);
        return;
    }
    let (web_port, oidc_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{web_port}");
    let g = gate_with_page(web_port, oidc_port);
    let logs = g.d.dir.path().to_owned();
    let _idp = start_oidc(
        oidc_port,
        &format!("{base}/web/callback"),
        &logs.join("oidc.log"),
    );
    // A person signs in to the page (a real browser, a real OpenID provider).
    let b = Browser::start(&logs.join("chromedriver.log"));
    b.goto(&format!("{base}/"));
    b.click("#sign-in");
    b.type_into("#username", "alice");
    b.click("#idp-submit");
    b.wait_for("#none", Duration::from_secs(30));

    let mut c = Command::new(confgate_bin());
    c.arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "a", "--reason", "install an editor", "--"])
        .args([
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            PACKAGE,
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("confgate run apt-get");
    // Each request that appears is opened on the page, and its session's set approved
    // there with the suggested glob in one click (the request alone when it has no set).
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut decisions = 0;
    let mut set_clicks = 0;
    let mut seen = Vec::new();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "apt-get did not finish");
        let o = g.cli(&["approvals", "list", "--json"]);
        ok(&o);
        let list = parse_json_list(&o.stdout);
        if let Some(r) = list.iter().find(|r| !seen.contains(&id_of(r))) {
            let id = id_of(r);
            seen.push(id.clone());
            eprintln!(
                "request {id}: {} ({}); suggested {}",
                r["context"]["path"], r["context"]["likely_final"], r["suggested_glob"]
            );
            b.goto(&format!("{base}/web/requests/{id}"));
            b.wait_for("#approve-form", Duration::from_secs(15));
            let page = b.source();
            if b.find_all("#approve-set").is_empty() {
                b.click("#approve");
            } else {
                // The set shows its glob (never `/etc/**`) and its requests.
                let glob = r["suggested_glob"].as_str().unwrap_or_default();
                assert!(!glob.is_empty() && page.contains(glob), "{page}");
                assert!(!page.contains("<code id=\"set-glob\">/etc/**</code>"));
                b.click("#approve-set");
                set_clicks += 1;
            }
            decisions += 1;
            b.wait_for("dl.ctx", Duration::from_secs(15));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let o = child.wait_with_output().unwrap();
    let out = output_text(&o);
    let purge = || {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
    };
    if !status.success() {
        purge();
        panic!("apt-get failed: {out}\n--- daemon log ---\n{}", g.d.log());
    }
    let works = Command::new("nano").arg("--version").output();
    let flagged = g.stat("gate_changes_flagged");
    let reverted = g.stat("gate_changes_reverted");
    let unapproved = g.stat("gate_unapproved_renames");
    let requests = g.stat("gate_requests");
    // Every decision was the signed-in person's, made on the page.
    let all = g.cli(&["approvals", "list", "--all", "--json"]);
    ok(&all);
    let approved: Vec<_> = parse_json_list(&all.stdout)
        .into_iter()
        .filter(|r| r["state"] == "approved")
        .collect();
    purge();
    let works = works.expect("nano --version");
    assert!(
        works.status.success(),
        "nano --version: {}",
        output_text(&works)
    );
    assert!(
        (1..=2).contains(&decisions),
        "{decisions} decisions ({requests} requests): {out}"
    );
    assert!(!approved.is_empty());
    assert!(set_clicks >= 1, "the page offered no session set");
    for r in &approved {
        assert_eq!(r["decision"]["decided_by"], "oidc:alice", "{r}");
    }
    assert_eq!((flagged, reverted, unapproved), (0, 0, 0), "{}", g.d.log());
}

#[test]
fn creating_dot_in_a_confined_session_fails_with_eexist_as_tar_expects() {
    if !require_root("creating_dot_in_a_confined_session_fails_with_eexist_as_tar_expects") {
        return;
    }
    let d = Daemon::start();
    // What `dpkg-deb --control` does: tar extracting an archive of `.` into a directory.
    let o = d.in_session(
        "installer",
        "e2e",
        "set -e; mkdir -p src/d out; echo x > src/d/f; tar -C src -cf a.tar .; tar -C out -xf a.tar; \
         python3 -c 'import os\ntry:\n os.mkdir(\".\")\nexcept OSError as e: print(\"errno\", e.errno)'; cat out/d/f",
    );
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("errno 17") && out.contains('x'), "{out}");
}
