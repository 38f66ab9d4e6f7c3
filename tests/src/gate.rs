//! A daemon whose scratch tree's `gated/` directory is gated, with the approval service
//! in-process (local mode), and the helpers the gate's end-to-end tests share.
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Daemon, DaemonOptions, ok};

/// A gate rule named `name` for `<watched>/gated/**`, with `extra` TOML lines.
pub fn rule(watched: &str, name: &str, extra: &str) -> String {
    format!(
        "[[gate.rule]]\nname = {name:?}\npaths = [\"{watched}/gated/**\"]\nverdict = \"ask\"\n{extra}\n"
    )
}

/// The `[approval]` table of a daemon whose approval service runs in-process (local mode)
/// on a socket in its scratch directory `root`.
pub fn local_approval(root: &Path) -> String {
    format!(
        "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\n",
        root.join("approver.sock").display()
    )
}

/// A daemon with a gate and its local approval service, and the helpers to drive them.
/// [`Gate::start`] makes one whose `gated/` directory is gated; any other daemon in local
/// mode can be wrapped as `Gate { d }` for the helpers.
pub struct Gate {
    pub d: Daemon,
}

impl Gate {
    /// `rules` gets the watched tree's path and returns `[[gate.rule]]` TOML.
    pub fn start(rules: impl Fn(&str) -> String + 'static) -> Gate {
        Self::start_with(|_| {}, rules)
    }

    /// [`Gate::start`], with `setup` run on the scratch root (after `gated/` is made) before
    /// the daemon starts, so what it makes there is marked at start.
    pub fn start_with(
        setup: impl Fn(&Path) + 'static,
        rules: impl Fn(&str) -> String + 'static,
    ) -> Gate {
        let d = Daemon::start_with(DaemonOptions {
            toml_for_dir: Some(Box::new(move |root| {
                let watched = root.join("watched");
                std::fs::create_dir_all(watched.join("gated")).expect("mkdir gated");
                setup(root);
                format!(
                    "{}\n[gate]\n{}",
                    local_approval(root),
                    rules(&watched.display().to_string())
                )
            })),
            ..DaemonOptions::default()
        });
        Gate { d }
    }

    pub fn gated(&self, name: &str) -> PathBuf {
        self.d.watched.join("gated").join(name)
    }

    /// Starts `sh -c script` in a session of `agent` (reason "e2e") without waiting.
    pub fn spawn_in_session(&self, agent: &str, script: &str) -> Child {
        self.spawn_with_reason(agent, "e2e", script)
    }

    /// Starts `sh -c script` in a session (cwd: the watched tree) without waiting.
    pub fn spawn_with_reason(&self, agent: &str, reason: &str, script: &str) -> Child {
        self.d
            .session_command(agent, Some(reason), script)
            .spawn()
            .expect("confgate run")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.d.cli(args)
    }

    /// Pending requests as `approvals list --json` reports them.
    pub fn pending(&self) -> Vec<Value> {
        let o = self.cli(&["approvals", "list", "--json"]);
        ok(&o);
        parse_json_list(&o.stdout)
    }

    /// Waits (20 s at most) for a pending request whose path satisfies `pred`.
    pub fn wait_request_where(&self, what: &str, pred: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = self.pending();
            if let Some(r) = pending
                .iter()
                .find(|r| r["context"]["path"].as_str().is_some_and(&pred))
            {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no request for {what}; pending: {pending:?}\n--- daemon log ---\n{}",
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_request(&self, path: &Path) -> Value {
        let want = path.display().to_string();
        self.wait_request_where(&want, |p| p == want)
    }

    /// The host ledger's records.
    pub fn ledger(&self) -> Vec<Value> {
        self.d.ledger()
    }

    /// The kinds of the host ledger's records, in order.
    pub fn ledger_kinds(&self) -> Vec<String> {
        self.ledger()
            .iter()
            .filter_map(|v| v["kind"].as_str().map(str::to_string))
            .collect()
    }

    /// Ledger records of `kind`, their bodies.
    pub fn ledgered(&self, kind: &str) -> Vec<Value> {
        self.ledger()
            .into_iter()
            .filter(|v| v["kind"] == kind)
            .map(|v| v["body"].clone())
            .collect()
    }

    /// Waits (15 s at most) until the ledger holds a `kind` record satisfying `pred`.
    pub fn wait_ledgered(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self.ledgered(kind).into_iter().find(&pred) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} record as expected in the ledger:\n{}\n--- daemon log ---\n{}",
                std::fs::read_to_string(self.d.ledger_path()).unwrap_or_default(),
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.d.stat(name)
    }
}

/// `--json` output: one JSON array, or one object per line.
pub fn parse_json_list(out: &[u8]) -> Vec<Value> {
    if let Ok(Value::Array(a)) = serde_json::from_slice::<Value>(out) {
        return a;
    }
    out.split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| serde_json::from_slice(l).expect("json line"))
        .collect()
}

/// A request's id as the CLI takes it.
pub fn id_of(r: &Value) -> String {
    r["id"].as_u64().expect("request id").to_string()
}

/// Waits for a child (at most `limit`), returns its output.
pub fn wait_child(mut c: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            return c.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let o = c.wait_with_output().expect("output");
            panic!(
                "session command did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
