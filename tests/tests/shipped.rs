//! End-to-end checks of what ships and what the README promises about the events file
//! (issue 13, "Untested claims"): the default gate rules as shipped hold a session's write
//! to `/etc`, a crontab and a systemd unit; repeated writes through one descriptor are
//! folded into one event and counted; the events file survives `copytruncate` rotation.
//!
//! The default-rules test writes under the real `/etc` and `/var/spool/cron` (denied, so
//! nothing lands; it removes what it made either way).
use std::time::Duration;

use e2e::gate::{Gate, id_of, local_approval, wait_child};
use e2e::*;

/// A daemon with no `[gate]` section: the shipped rules apply.
fn daemon_with_default_rules() -> Gate {
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(local_approval)),
        ..DaemonOptions::default()
    });
    Gate { d }
}

struct Cleanup(Vec<std::path::PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn the_shipped_rules_hold_etc_crontabs_and_units() {
    if !require_root("the_shipped_rules_hold_etc_crontabs_and_units") {
        return;
    }
    let g = daemon_with_default_rules();
    let tag = std::process::id();
    let etc = std::path::PathBuf::from(format!("/etc/confgate-e2e-{tag}.conf"));
    let unit_dir = std::path::Path::new("/etc/systemd/system");
    std::fs::create_dir_all(unit_dir).expect("unit dir");
    let unit = unit_dir.join(format!("confgate-e2e-{tag}.service"));
    let _cleanup = Cleanup(vec![etc.clone(), unit.clone()]);
    for (target, script) in [
        (etc.clone(), format!("echo DEBUG=true >> {}", etc.display())),
        (
            unit.clone(),
            format!(
                "printf '[Service]\\nExecStart=/bin/true\\n' > {}",
                unit.display()
            ),
        ),
    ] {
        let child = g.spawn_in_session("claude", &script);
        let r = g.wait_request(&target);
        assert_eq!(r["context"]["mode"], "hold", "{r}");
        assert_eq!(r["context"]["fail_verdict"], "deny", "{r}");
        ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
        let o = wait_child(child, Duration::from_secs(30));
        assert!(!o.status.success(), "{o:?}");
        // The open created the file before it was held: the denied open's file is removed.
        assert!(!target.exists(), "{} left behind", target.display());
    }
    // crontab(1) writes its temp file in the spool directory, which the rules hold.
    if std::process::Command::new("crontab")
        .arg("-V")
        .output()
        .is_ok()
    {
        let child = g.spawn_in_session("claude", "echo '* * * * * true' | crontab -");
        let r = g.wait_request_where("the crontab spool", |p| p.starts_with("/var/spool/cron/"));
        ok(&g.cli(&["approvals", "deny", &id_of(&r)]));
        let o = wait_child(child, Duration::from_secs(30));
        assert!(!o.status.success(), "{o:?}");
    } else {
        skip(
            "the_shipped_rules_hold_etc_crontabs_and_units (crontab part)",
            "no crontab(1) on this machine",
        );
    }
}

#[test]
fn writes_through_one_descriptor_are_one_event_and_counted() {
    if !require_root("writes_through_one_descriptor_are_one_event_and_counted") {
        return;
    }
    let d = Daemon::start();
    let before = d.stat("kernel_writes_coalesced");
    let o = d.in_session(
        "claude",
        "e2e",
        "python3 -c 'import os\nfd = os.open(\"loop.conf\", os.O_WRONLY | os.O_CREAT | os.O_APPEND)\nfor i in range(50): os.write(fd, b\"line\\n\")\nos.close(fd)'",
    );
    ok(&o);
    let path = d.w("loop.conf");
    let ev = d.wait_for("the write", |ev| has(ev, "write", &path));
    let writes: Vec<_> = about(&ev, &path)
        .into_iter()
        .filter(|e| e["kind"] == "write")
        .collect();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let after = d.wait_stat("kernel_writes_coalesced", |n| n >= before + 49);
    assert!(after >= before + 49, "{after}");
}

#[test]
fn the_events_file_survives_copytruncate_rotation() {
    if !require_root("the_events_file_survives_copytruncate_rotation") {
        return;
    }
    let d = Daemon::start();
    ok(&sh(&d.watched, "echo a > before.conf"));
    let before = d.w("before.conf");
    d.wait_for("the first write", |ev| !about(ev, &before).is_empty());
    // logrotate's copytruncate: copy, then truncate in place.
    let copy = d.dir.path().join("events.1");
    std::fs::copy(&d.events_file, &copy).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&d.events_file)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    ok(&sh(&d.watched, "echo b > after.conf"));
    let after = d.w("after.conf");
    // `events()` fails the test on any line that is not JSON (a hole of NULs would be).
    let ev = d.wait_for("the write after rotation", |ev| {
        !about(ev, &after).is_empty()
    });
    let raw = std::fs::read(&d.events_file).expect("read");
    assert!(
        !raw.contains(&0),
        "the file has a hole of NUL bytes after rotation"
    );
    assert!(
        about(&ev, &before).is_empty(),
        "old events were not cut: {ev:?}"
    );
    let old = std::fs::read_to_string(&copy).expect("copy");
    assert!(old.contains("before.conf"), "{old}");
}
