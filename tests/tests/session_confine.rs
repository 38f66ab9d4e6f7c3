//! Confined sessions (`confgate run` without `--no-confine`): the setuid helper, the
//! supervise socket, and what a confined session can no longer do.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::gate::Gate;
use e2e::{confgate_bin, output_text, require_root, skip};

/// A gate with one denying rule on `<watched>/gated/**`.
fn gate() -> Gate {
    Gate::start(|w| {
        format!(
            "[[gate.rule]]\nname = \"no-gated\"\npaths = [\"{w}/gated/**\"]\nverdict = \"deny\"\n"
        )
    })
}

fn confined(g: &Gate, script: &str) -> Output {
    g.d.confined_session_command("confined", Some("e2e"), script)
        .output()
        .expect("confgate run")
}

/// The helper beside the confgate binary the tests run.
fn helper() -> PathBuf {
    confgate_bin().with_file_name("confgate-confine")
}

#[test]
fn no_supervise_socket_is_125_and_nothing_runs() {
    if !require_root("no_supervise_socket_is_125_and_nothing_runs") {
        return;
    }
    let g = gate();
    // The supervise socket is gone (a daemon that could not bind it): closed, not open.
    let sock = g.d.dir.path().join("supervise.sock");
    std::fs::remove_file(&sock).expect("the daemon made its supervise socket");
    let marker = g.d.dir.path().join("ran");
    let out = confined(&g, &format!("touch {}", marker.display()));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(125), "{text}");
    assert!(text.contains("supervise socket"), "{text}");
    assert!(!marker.exists());
    // --no-confine still runs it (observation only).
    let out =
        g.d.unconfined_session_command("free", Some("e2e"), &format!("touch {}", marker.display()))
            .output()
            .expect("confgate run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(marker.exists());
}

#[test]
fn helper_refuses_a_fake_supervisor_and_unknown_sessions() {
    if !require_root("helper_refuses_a_fake_supervisor_and_unknown_sessions") {
        return;
    }
    let g = gate();
    // Not the session's root process (the helper runs directly, no registration).
    let out = Command::new(helper())
        .args(["--socket"])
        .arg(g.d.dir.path().join("supervise.sock"))
        .args(["--session", "999999", "--", "true"])
        .output()
        .expect("run helper");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(125), "{text}");
    assert!(text.contains("no live session 999999"), "{text}");
}

#[test]
fn unprivileged_caller_needs_a_setuid_helper() {
    if !require_root("unprivileged_caller_needs_a_setuid_helper") {
        return;
    }
    let g = gate();
    // confgate and a helper that is not setuid, in a directory nobody can write.
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let bin = dir.path().join("confgate");
    std::fs::copy(confgate_bin(), &bin).expect("copy confgate");
    std::fs::copy(helper(), dir.path().join("confgate-confine")).expect("copy helper");
    chmod(dir.path(), 0o755);
    chmod(&bin, 0o755);
    chmod(&dir.path().join("confgate-confine"), 0o755);
    chmod(g.d.dir.path(), 0o755);
    chmod(&g.d.config, 0o644);
    let marker = dir.path().join("ran");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "nobody-agent", "--", "touch"])
        .arg(&marker)
        .output()
        .expect("setpriv");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(125), "{text}");
    assert!(text.contains("not setuid root"), "{text}");
    assert!(!marker.exists());
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The bpf(2) number of this architecture.
#[cfg(target_arch = "x86_64")]
const SYS_BPF: u32 = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: u32 = 280;

/// Needs the supervisor: a confined root session cannot write the gated tree by itself,
/// cannot read confgate's configuration or state, cannot stop the daemon, cannot call
/// bpf(2), cannot mount; ordinary writes elsewhere work.
#[test]
fn confined_session_cannot_route_around_the_gate() {
    if !require_root("confined_session_cannot_route_around_the_gate") {
        return;
    }
    let g = gate();
    std::fs::write(g.gated("f"), "old\n").expect("gated file");
    let state = g.d.state_dir();
    let scratch = g.d.dir.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    let script = format!(
        r#"set -u
r=0
no() {{ echo "UNEXPECTED: $*"; r=1; }}
echo new > {gated} 2>/dev/null && no "wrote the gated file"
mv {gated} {gated}.moved 2>/dev/null && no "renamed the gated file"
cat {config} >/dev/null 2>&1 && no "read the config"
ls {state} 2>/dev/null | grep -q . && no "listed the state dir"
kill -STOP {daemon} 2>/dev/null && {{ kill -CONT {daemon}; no "stopped the daemon"; }}
python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.syscall({bpf},0,0,0); sys.exit(0 if r==-1 and ctypes.get_errno()==1 else 1)' || no "bpf not EPERM"
mkdir -p {scratch}/m && unshare -m mount --bind {gated} {scratch}/m 2>/dev/null && no "mounted"
echo ok > {scratch}/out || no "could not write outside the gate"
exit $r
"#,
        gated = g.gated("f").display(),
        config = g.d.config.display(),
        state = state.display(),
        daemon = g.d.pid(),
        bpf = SYS_BPF,
        scratch = scratch.display(),
    );
    let out = confined(&g, &script);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(std::fs::read_to_string(g.gated("f")).unwrap(), "old\n");
    assert_eq!(
        std::fs::read_to_string(scratch.join("out")).unwrap(),
        "ok\n"
    );
}

/// Needs the supervisor: `sudo -n` still gains root inside a confined session started by
/// an unprivileged user (no `no_new_privs`), and the root it gets is confined too.
#[test]
fn sudo_works_inside_a_confined_session() {
    if !require_root("sudo_works_inside_a_confined_session") {
        return;
    }
    if Command::new("sudo").arg("-V").output().is_err() {
        skip(
            "sudo_works_inside_a_confined_session",
            "sudo is not installed",
        );
        return;
    }
    // A hold rule: the write sudo's root shell makes is held and performed once approved.
    let g = Gate::start(|w| {
        e2e::gate::rule(
            w,
            "ask-hold",
            "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\"",
        )
    });
    let user = format!("cgconf{}", std::process::id() % 100_000);
    let added = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/bin/sh", &user])
        .status()
        .expect("useradd");
    assert!(added.success());
    let sudoers = PathBuf::from(format!("/etc/sudoers.d/{user}"));
    std::fs::write(&sudoers, format!("{user} ALL=(ALL) NOPASSWD: ALL\n")).expect("sudoers");
    chmod(&sudoers, 0o440);
    let _cleanup = Cleanup(user.clone(), sudoers.clone());
    // An installed-like helper: setuid root beside a copy of confgate.
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let bin = dir.path().join("confgate");
    let helper_copy = dir.path().join("confgate-confine");
    std::fs::copy(confgate_bin(), &bin).expect("copy confgate");
    std::fs::copy(helper(), &helper_copy).expect("copy helper");
    chmod(dir.path(), 0o755);
    chmod(&bin, 0o755);
    chmod(&helper_copy, 0o4755);
    chmod(g.d.dir.path(), 0o755);
    chmod(&g.d.config, 0o644);
    chmod(&g.d.watched, 0o755);
    chmod(&g.d.watched.join("gated"), 0o755);
    let script = format!(
        "test \"$(sudo -n id -u)\" = 0 || exit 3; sudo -n sh -c 'echo x > {}' || exit 4; exit 0",
        g.gated("f").display()
    );
    let uid = nix::unistd::User::from_name(&user)
        .expect("getpwnam")
        .expect("user exists")
        .uid
        .to_string();
    let child = Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &uid, "--init-groups"])
        .arg(&bin)
        .arg("--config")
        .arg(&g.d.config)
        .args(["run", "--agent", "sudoer", "--", "sh", "-c", &script])
        .current_dir("/")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    // The write by sudo's root shell is held like any other of the session's.
    let r = g.wait_request(&g.gated("f"));
    assert_eq!(r["context"]["agent"], "sudoer", "{r}");
    assert_eq!(
        r["context"]["uid"].as_u64(),
        Some(0),
        "sudo's root writes: {r}"
    );
    e2e::ok(&g.cli(&["approvals", "approve", &e2e::gate::id_of(&r)]));
    let out = e2e::gate::wait_child(child, std::time::Duration::from_secs(20));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(std::fs::read_to_string(g.gated("f")).unwrap(), "x\n");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(g.gated("f")).unwrap().uid(),
        0,
        "created as root"
    );
}

/// Removes the test user and its sudoers entry.
struct Cleanup(String, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// In local mode, the secret files the approval service's settings name (and the action
/// link key it generates beside its store) cannot be read from a confined session: with
/// them an agent could sign chat callbacks or action links.
#[test]
fn confined_session_cannot_read_the_approval_services_secrets() {
    const NAME: &str = "confined_session_cannot_read_the_approval_services_secrets";
    if !require_root(NAME) {
        return;
    }
    let d = e2e::Daemon::start_with(e2e::DaemonOptions {
        toml_for_dir: Some(Box::new(|root| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).unwrap();
            let secrets = root.join("secrets");
            std::fs::create_dir_all(&secrets).unwrap();
            std::fs::write(secrets.join("oidc-secret"), "oidc-secret-value\n").unwrap();
            std::fs::write(secrets.join("link.key"), [7u8; 32]).unwrap();
            let approver = root.join("approver.toml");
            let sock = root.join("approver.sock");
            std::fs::write(
                &approver,
                format!(
                    "listen = [\"unix:{sock}\"]\nallow_plaintext = true\n\
                     store = \"{state}/approver.redb\"\nledger = \"{state}/ledger.jsonl\"\n\
                     [http]\nlisten = \"http://127.0.0.1:0\"\n\
                     [web]\nlink_key_file = \"{secrets}/link.key\"\n\
                     [web.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"confgate\"\n\
                     client_secret_file = \"{secrets}/oidc-secret\"\napprovers = [\"alice\"]\n",
                    sock = sock.display(),
                    state = root.join("approver-state").display(),
                    secrets = secrets.display(),
                ),
            )
            .unwrap();
            format!(
                "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\nlocal_config = \"{}\"\n\n[gate]\n\
                 [[gate.rule]]\nname = \"no-gated\"\npaths = [\"{}/gated/**\"]\nverdict = \"deny\"\n",
                sock.display(),
                approver.display(),
                watched.display(),
            )
        })),
        ..e2e::DaemonOptions::default()
    });
    let secrets = d.dir.path().join("secrets");
    let script = format!(
        r#"r=0
for f in {s}/oidc-secret {s}/link.key; do
  if cat "$f" 2>/dev/null | grep -q .; then echo "UNEXPECTED: read $f"; r=1; fi
  if echo x 2>/dev/null > "$f"; then echo "UNEXPECTED: wrote $f"; r=1; fi
done
exit $r
"#,
        s = secrets.display()
    );
    let out = d
        .confined_session_command("confined", Some("e2e"), &script)
        .output()
        .expect("confgate run");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "{text}\n--- daemon log ---\n{}",
        d.log()
    );
    // Outside the session they are as written.
    assert_eq!(
        std::fs::read_to_string(secrets.join("oidc-secret")).unwrap(),
        "oidc-secret-value\n"
    );
}
