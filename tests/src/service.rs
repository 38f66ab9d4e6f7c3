//! `confgate approver serve` as a separate process, a daemon in remote mode against it,
//! and the approvals CLI of an approver: what the approval service's end-to-end tests
//! share.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gate::rule;
use crate::{Daemon, DaemonOptions, confgate_bin, ok};

/// `confgate approver serve` on its own scratch directory; killed when dropped.
pub struct ApprovalService {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// What it listens on (`unix:…` or `https://…`): the approvals CLI's `--approver`.
    pub endpoint: String,
    /// A replica's TLS address ([`ApprovalService::replica`]).
    pub https: Option<String>,
    child: Option<Child>,
}

impl ApprovalService {
    /// Listening on `listen`, with `extra` appended to its approver.toml (TOML); `{dir}`
    /// in either stands for its scratch directory.
    pub fn start(listen: &str, extra: &str) -> ApprovalService {
        Self::start_in(tempfile::tempdir().expect("tempdir"), listen, extra)
    }

    fn start_in(dir: tempfile::TempDir, listen: &str, extra: &str) -> ApprovalService {
        Self::start_on(dir, &[listen], "{dir}/approver.redb", extra)
    }

    /// A replica of a service on a PostgreSQL database (`store`, a URL): on a Unix socket in
    /// its scratch directory (its `endpoint`: root approves there) and on loopback TLS
    /// ([`ApprovalService::https`]) with the certificates in `tls` (an `init-ca` directory
    /// shared by the replicas).
    pub fn replica(tls: &Path, store: &str) -> ApprovalService {
        let t = tls.display();
        let extra = format!(
            "[tls]\ncert = \"{t}/server.pem\"\nkey = \"{t}/server.key\"\nclient_ca = \"{t}/ca.pem\"\n"
        );
        let https = format!("https://127.0.0.1:{}", free_port());
        let listen = ["unix:{dir}/approver.sock", &https];
        let mut s = Self::start_on(
            tempfile::tempdir().expect("tempdir"),
            &listen,
            store,
            &extra,
        );
        s.https = Some(https);
        s
    }

    /// Listening on `listen` (the first is its `endpoint`), on `store`.
    fn start_on(
        dir: tempfile::TempDir,
        listen: &[&str],
        store: &str,
        extra: &str,
    ) -> ApprovalService {
        let d = dir.path().display().to_string();
        let listen: Vec<String> = listen.iter().map(|l| l.replace("{dir}", &d)).collect();
        let endpoint = listen[0].clone();
        let store = store.replace("{dir}", &d);
        let config = dir.path().join("approver.toml");
        std::fs::write(
            &config,
            format!(
                "listen = {listen:?}\nstore = {store:?}\nledger = \"{d}/ledger.jsonl\"\n{}\n",
                extra.replace("{dir}", &d)
            ),
        )
        .expect("write approver.toml");
        let mut s = ApprovalService {
            dir,
            config,
            endpoint,
            https: None,
            child: None,
        };
        s.spawn();
        s
    }

    /// On a Unix socket in its scratch directory.
    pub fn start_unix() -> ApprovalService {
        Self::start("unix:{dir}/approver.sock", "")
    }

    /// On loopback TLS, with its own CA (`approver init-ca` in `<dir>/tls`) and
    /// certificates for this host and the approvers alice and bob. `extra`: top-level keys
    /// of approver.toml (before `[tls]`).
    pub fn start_tls(extra: &str) -> ApprovalService {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(&dir.path().join("tls"), &host_name(), &["alice", "bob"]);
        let endpoint = format!("https://127.0.0.1:{}", free_port());
        let tls = "[tls]\ncert = \"{dir}/tls/server.pem\"\nkey = \"{dir}/tls/server.key\"\nclient_ca = \"{dir}/tls/ca.pem\"\n";
        Self::start_in(dir, &endpoint, &format!("{extra}\n{tls}"))
    }

    /// Starts the service (again, after [`ApprovalService::kill`]) on the same store and
    /// ledger; waits until it listens.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("service.log")).expect("log");
        let child = Command::new(confgate_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["approver", "serve"])
            .env("CONFGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("approver serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("approval service listening") {
            assert!(
                Instant::now() < deadline,
                "approval service not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the service (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// `confgate --config <its approver.toml> <args>` (e.g. `audit verify` of its ledger).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(confgate_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("confgate")
    }

    /// The service's ledger, as text.
    pub fn ledger(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ledger.jsonl")).unwrap_or_default()
    }

    /// A file made by [`ApprovalService::start_tls`]'s `init-ca`.
    pub fn tls(&self, name: &str) -> PathBuf {
        self.dir.path().join("tls").join(name)
    }

    /// `[approval.client]` of this host's daemon ([`ApprovalService::start_tls`]).
    pub fn host_client(&self) -> String {
        let host = host_name();
        format!(
            "endpoint = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}",
            self.endpoint,
            self.tls("ca.pem").display().to_string(),
            self.tls(&format!("host-{host}.pem")).display().to_string(),
            self.tls(&format!("host-{host}.key")).display().to_string(),
        )
    }

    /// The approvals CLI flags of approver `who` (alice or bob) over TLS.
    pub fn approver_flags(&self, who: &str) -> Vec<String> {
        vec![
            "--approver".into(),
            self.endpoint.clone(),
            "--ca".into(),
            self.tls("ca.pem").display().to_string(),
            "--cert".into(),
            self.tls(&format!("approver-{who}.pem"))
                .display()
                .to_string(),
            "--key".into(),
            self.tls(&format!("approver-{who}.key"))
                .display()
                .to_string(),
        ]
    }
}

impl Drop for ApprovalService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `confgate approver init-ca` into `dir`: a CA, a certificate for `host` and one for each
/// of `approvers`.
pub fn init_ca(dir: &Path, host: &str, approvers: &[&str]) {
    let mut c = Command::new(confgate_bin());
    c.args(["approver", "init-ca", "--dir"])
        .arg(dir)
        .args(["--host", host]);
    for a in approvers {
        c.args(["--approver", a]);
    }
    ok(&c.output().expect("init-ca"));
}

/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// This machine's host name (the name in its host certificate).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("host name")
        .trim()
        .to_owned()
}

/// `[gate]` with one rule, `ask`: requests for `<watched>/gated/**`, denied when no answer
/// came within `timeout`.
pub fn gate_asking(watched: &str, timeout: &str) -> String {
    format!(
        "[gate]\n{}",
        rule(
            watched,
            "ask",
            &format!("timeout = \"{timeout}\"\nfail = \"deny\"")
        )
    )
}

/// A daemon in remote mode with `client` as its `[approval.client]` table and `gate` as
/// its `[gate]` TOML (given the watched tree; its `gated/` directory is made).
pub fn remote_daemon(client: String, gate: impl Fn(&str) -> String + 'static) -> Daemon {
    Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |root| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).expect("mkdir gated");
            format!(
                "[approval]\nmode = \"remote\"\n[approval.client]\n{client}\n{}",
                gate(&watched.display().to_string())
            )
        })),
        ..DaemonOptions::default()
    })
}

/// Waits (20 s at most) until `d`'s uplink to `svc` is connected.
pub fn wait_connected(d: &Daemon, svc: &ApprovalService) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.stat("uplink_connected") != 1 {
        assert!(
            Instant::now() < deadline,
            "uplink not connected\n{}\n{}",
            d.log(),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `sh -c script` in a session of agent `claude` (no `--reason`) with `env` added,
/// without waiting.
pub fn spawn_session(d: &Daemon, script: &str, env: &[(&str, &str)]) -> Child {
    d.session_command("claude", None, script)
        .envs(env.iter().copied())
        .spawn()
        .expect("confgate run")
}

/// The approvals CLI on `d`'s host with an approver's connection flags (`--approver` and,
/// over TLS, its credentials).
pub struct Approver<'a> {
    pub d: &'a Daemon,
    pub flags: Vec<String>,
}

impl<'a> Approver<'a> {
    /// Over a plain endpoint (a Unix socket).
    pub fn at(d: &'a Daemon, endpoint: &str) -> Approver<'a> {
        Approver {
            d,
            flags: vec!["--approver".into(), endpoint.into()],
        }
    }

    /// Approver `who` (alice or bob) of a TLS service.
    pub fn tls(d: &'a Daemon, svc: &ApprovalService, who: &str) -> Approver<'a> {
        Approver {
            d,
            flags: svc.approver_flags(who),
        }
    }

    /// `confgate approvals <flags> <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = vec!["approvals"];
        all.extend(self.flags.iter().map(String::as_str));
        all.extend_from_slice(args);
        self.d.cli(&all)
    }

    /// `list --json` (pending requests, or with `all` every request).
    pub fn list(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["list", "--json"];
        if all {
            args.push("--all");
        }
        let o = self.run(&args);
        ok(&o);
        match serde_json::from_slice::<Value>(&o.stdout) {
            Ok(Value::Array(a)) => a,
            other => panic!("approvals list --json: {other:?}"),
        }
    }

    /// Waits (20 s at most) for the pending request about `path`.
    pub fn wait_pending(&self, path: &Path) -> Value {
        let want = path.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = self
                .list(false)
                .into_iter()
                .find(|r| r["context"]["path"] == want.as_str())
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no request for {want}\n{}",
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The state of request `id` (`show --json`).
    pub fn state_of(&self, id: &str) -> String {
        let o = self.run(&["show", id, "--json"]);
        ok(&o);
        let v: Value = serde_json::from_slice(&o.stdout).expect("show json");
        v["state"].as_str().unwrap_or_default().to_owned()
    }
}
