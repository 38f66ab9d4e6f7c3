//! End-to-end: the Debian package. `cargo xtask deb` builds it (from the debug binaries
//! the other tests use: no release build), `dpkg -i` installs it on this machine, its
//! files, `confgate --version`, `man -w confgate` and the units (`systemd-analyze verify`)
//! are checked, and `dpkg --purge` leaves nothing behind.
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use e2e::*;

const TEST: &str = "the_package_installs_checks_and_purges_cleanly";

fn has(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Purges the package when the test ends, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "confgate"]).output();
    }
}

#[test]
fn the_package_installs_checks_and_purges_cleanly() {
    if !require_root(TEST) {
        return;
    }
    if !has("dpkg", "--version") {
        skip(TEST, "no dpkg (not a Debian system)");
        return;
    }
    if !Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(
            TEST,
            "cargo-deb is not installed (scripts/bootstrap.sh installs it)",
        );
        return;
    }
    if Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "confgate"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
    {
        skip(
            TEST,
            "a confgate package is installed on this machine: not replacing it",
        );
        return;
    }
    // Purging removes these: they must be the package's, not a daemon's already here.
    if let Some(p) = ["/var/lib/confgate", "/var/log/confgate", "/etc/confgate"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        skip(
            TEST,
            &format!("{p} exists on this machine: installing and purging would delete it"),
        );
        return;
    }
    let t = Instant::now();
    // The debug binaries the other tests ran are packaged as they are (a build here could
    // rebuild them with other settings: minutes of CI for nothing).
    let built = ["confgate", "confgate-confine"]
        .iter()
        .all(|b| target_dir().join("debug").join(b).exists());
    let mut xtask = vec!["xtask", "deb"];
    if built {
        xtask.push("--no-build");
    }
    let o = Command::new(env!("CARGO"))
        .args(&xtask)
        .current_dir(workspace())
        .output()
        .unwrap();
    ok(&o);
    eprintln!("cargo xtask deb: {:?}", t.elapsed());
    let version = env!("CARGO_PKG_VERSION");
    let deb = target_dir().join(format!("debian/confgate_{version}_amd64.deb"));
    assert!(deb.exists(), "{deb:?}\n{}", output_text(&o));

    let _purge = Purge;
    ok(&Command::new("dpkg").arg("-i").arg(&deb).output().unwrap());
    for f in [
        "/usr/bin/confgate",
        "/lib/systemd/system/confgate.service",
        "/lib/systemd/system/confgate-approver.service",
        "/etc/confgate/config.toml",
        "/etc/logrotate.d/confgate",
        "/usr/share/man/man8/confgate.8.gz",
        "/usr/share/man/man8/confgate-run.8.gz",
        "/usr/share/man/man8/confgate-reload.8.gz",
        "/usr/share/man/man8/confgate-approvals-approve.8.gz",
        "/usr/share/bash-completion/completions/confgate",
        "/usr/share/zsh/vendor-completions/_confgate",
        "/usr/share/fish/vendor_completions.d/confgate.fish",
        "/usr/share/confgate/approver.toml",
    ] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }
    if workspace().join("deploy/confgate.rules.yml").exists() {
        assert!(Path::new("/usr/share/confgate/confgate.rules.yml").is_file());
    }
    let helper = std::fs::metadata("/usr/libexec/confgate/confgate-confine").unwrap();
    assert_eq!(helper.permissions().mode() & 0o7777, 0o4755);
    let unit = std::fs::read_to_string("/lib/systemd/system/confgate.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/confgate daemon"),
        "{unit}"
    );
    // The configuration is a conffile, identical to the commented default.
    let conffiles = Command::new("dpkg-query")
        .args(["-W", "-f=${Conffiles}", "confgate"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/confgate/config.toml"),
        "{}",
        output_text(&conffiles)
    );
    assert_eq!(
        std::fs::read("/etc/confgate/config.toml").unwrap(),
        std::fs::read(workspace().join("deploy/config.toml")).unwrap()
    );
    // The maintainer scripts made the directories, enabled the unit, started nothing.
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/var/lib/confgate"), 0o700);
    assert_eq!(mode("/var/log/confgate"), 0o750);
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/confgate.service").exists(),
        "confgate.service is not enabled"
    );
    if Path::new("/run/systemd/system").exists() {
        let active = Command::new("systemctl")
            .args(["is-active", "confgate.service"])
            .output()
            .unwrap();
        assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    }
    let v = Command::new("/usr/bin/confgate")
        .arg("--version")
        .output()
        .unwrap();
    ok(&v);
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("confgate {version}")
    );
    if has("man", "--version") {
        let m = Command::new("man")
            .args(["-w", "confgate"])
            .output()
            .unwrap();
        ok(&m);
        assert_eq!(
            String::from_utf8_lossy(&m.stdout).trim(),
            "/usr/share/man/man8/confgate.8.gz"
        );
    } else {
        skip(TEST, "no man (man-db): `man -w confgate` not checked");
    }
    // `verify` loads the units offline: no running systemd needed.
    if has("systemd-analyze", "--version") {
        let o = Command::new("systemd-analyze")
            .args([
                "verify",
                "/lib/systemd/system/confgate.service",
                "/lib/systemd/system/confgate-approver.service",
            ])
            .output()
            .unwrap();
        ok(&o);
    } else {
        skip(
            TEST,
            "systemd-analyze verify not run: no systemd-analyze (package systemd)",
        );
    }

    ok(&Command::new("dpkg")
        .args(["--purge", "confgate"])
        .output()
        .unwrap());
    for p in [
        "/usr/bin/confgate",
        "/usr/libexec/confgate",
        "/lib/systemd/system/confgate.service",
        "/lib/systemd/system/confgate-approver.service",
        "/etc/confgate",
        "/etc/logrotate.d/confgate",
        "/etc/systemd/system/multi-user.target.wants/confgate.service",
        "/var/lib/confgate",
        "/var/log/confgate",
        "/usr/share/man/man8/confgate.8.gz",
        "/usr/share/confgate",
        "/usr/share/doc/confgate",
    ] {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{p} is left after dpkg --purge"
        );
    }
    eprintln!("package test: {:?}", t.elapsed());
}
