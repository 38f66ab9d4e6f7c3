//! End-to-end: `confgate shim install` puts a PATH shim that starts the agent under
//! `confgate run`; `confgate shim remove` takes it away.
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::*;

#[test]
fn a_shimmed_agent_runs_as_a_session() {
    if !require_root("a_shimmed_agent_runs_as_a_session") {
        return;
    }
    let d = Daemon::start();
    let root = d.dir.path();
    let (bin, shims) = (root.join("bin"), root.join("shims"));
    std::fs::create_dir(&bin).expect("mkdir bin");
    let stop = root.join("stop");
    // A fake `aider`: says its arguments, then waits to be told to stop.
    let fake = bin.join("aider");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"args: $*\"\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            stop.display()
        ),
    )
    .expect("write the fake agent");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}:/usr/bin:/bin", shims.display(), bin.display());

    let o = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["shim", "install", "aider", "--dir"])
        .arg(&shims)
        .env("PATH", &path)
        .output()
        .expect("shim install");
    ok(&o);
    let text = output_text(&o);
    assert!(
        text.contains(&format!("export PATH={}:$PATH", shims.display())),
        "{text}"
    );

    // `aider` found through PATH is the shim; it runs the fake as a session.
    let child = Command::new("aider")
        .args(["--yes", "fix it"])
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the shimmed agent");
    let session = poll(
        "the shimmed agent's session",
        Duration::from_secs(15),
        || {
            let list = d.cli_json(&["sessions", "--json"]);
            list.as_array()?
                .iter()
                .find(|s| s["agent"] == "aider")
                .cloned()
        },
    );
    assert_eq!(session["source"], "wrapper", "{session}");
    let command = session["command"].to_string();
    assert!(command.contains(&fake.display().to_string()), "{session}");
    std::fs::write(&stop, "").expect("stop");
    let out = e2e::gate::wait_child(child, Duration::from_secs(15));
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "args: --yes fix it\n");

    let o = Command::new(confgate_bin())
        .args(["shim", "remove", "--dir"])
        .arg(&shims)
        .output()
        .expect("shim remove");
    ok(&o);
    assert!(!shims.join("aider").exists());
}
