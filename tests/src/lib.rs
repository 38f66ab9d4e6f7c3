//! Harness for confgate's end-to-end tests: each test starts a real `confgate daemon`
//! (real eBPF programs, real fanotify) on a scratch watched tree with its own socket,
//! store and events file, drives real programs, and reads the NDJSON events it wrote.
//!
//! The tests need root. Without it they record why they are skipped ([`skip`]) and return:
//! `cargo test` shows a skipped test as `ok`, so every skip is also appended to
//! [`skips_file`], which `scripts/test.sh` prints and counts at the end of a run.
use std::{
    io::Read as _,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod browser;
pub mod gate;
pub mod nats;
pub mod receiver;
pub mod service;
pub mod slack;

pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `correlation.window_ms` of the test daemons. The window only caps how long an
/// observation waits for its twin (releases follow the drained sources, not a timer); a
/// generous cap keeps `source: both` from depending on scheduling on a loaded machine.
pub const CORRELATION_WINDOW_MS: u64 = 2000;

/// Whether the test can run; records the skip when it cannot.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        skip(test, "needs root (loads eBPF programs, fanotify)");
        false
    }
}

/// Where skips are recorded: `$CONFGATE_E2E_SKIPS`, or `e2e-skips.txt` in the target
/// directory. `scripts/test.sh` empties it before the tests and reports it after them.
pub fn skips_file() -> PathBuf {
    std::env::var_os("CONFGATE_E2E_SKIPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("e2e-skips.txt"))
}

/// Records that `test` did not run and why: one line `test: reason` appended to
/// [`skips_file`] (one `write` per line, so parallel tests do not interleave), and on
/// stderr. Panics if the skip cannot be recorded: an unrecorded skip would be a silent pass.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("{test}: {reason}\n");
    eprint!("SKIP {line}");
    let file = skips_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| {
            panic!(
                "cannot record the skip of {test} in {}: {e}",
                file.display()
            )
        });
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Calls `f` every 50 ms until it returns `Some`, for at most `limit`; panics naming
/// `what` when it never does.
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `confgate` binary: $CONFGATE_BIN, or the workspace's debug build (built on demand).
static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`confgate_bin`] return `path` (the benchmark measures the binary it is given).
/// False when [`confgate_bin`] had already decided.
pub fn use_confgate_bin(path: PathBuf) -> bool {
    BIN.set(path).is_ok()
}

pub fn confgate_bin() -> PathBuf {
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CONFGATE_BIN") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            // --bins: the confinement helper (confgate-confine) is found beside confgate.
            .args(["build", "--quiet", "-p", "monitor", "--bins"])
            .current_dir(workspace())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building confgate failed");
        target_dir().join("debug/confgate")
    })
    .clone()
}

pub struct DaemonOptions {
    /// Extra watched paths besides the scratch tree.
    pub extra_watch: Vec<PathBuf>,
    /// Extra TOML appended to the config (e.g. `[[detect]]` rules).
    pub extra_toml: String,
    pub path_filter: bool,
    /// `watch.project_roots` (none by default).
    pub project_roots: Vec<String>,
    pub ringbuf_bytes: u32,
    /// More TOML, made from the scratch directory (the watched tree is `<dir>/watched`):
    /// for sections that name paths inside it.
    pub toml_for_dir: Option<TomlForDir>,
    /// More keys of `[output]` (e.g. `format = "ocsf"`).
    pub output_toml: String,
}

/// Makes TOML from the daemon's scratch directory.
pub type TomlForDir = Box<dyn Fn(&Path) -> String>;

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            extra_watch: Vec::new(),
            extra_toml: String::new(),
            path_filter: true,
            project_roots: Vec::new(),
            ringbuf_bytes: 4 << 20,
            toml_for_dir: None,
            output_toml: String::new(),
        }
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    /// The watched scratch tree (canonical).
    pub watched: PathBuf,
    pub socket: PathBuf,
    pub events_file: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// "confgate ready" lines in the log before the current daemon was spawned.
    ready_marks: usize,
    /// Whether [`Daemon::session_command`] confines (the default of `confgate run`);
    /// tests of the host-wide fanotify gate and of unconfined sessions set it false.
    pub confine_sessions: bool,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(DaemonOptions::default())
    }

    pub fn start_with(opts: DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("confgate-e2e-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
        let watched = root.join("watched");
        std::fs::create_dir(&watched).expect("mkdir watched");
        let socket = root.join("confgate.sock");
        let events_file = root.join("out/events.ndjson");
        let log = root.join("daemon.log");
        let mut paths = vec![watched.clone()];
        paths.extend(opts.extra_watch);
        let paths: Vec<String> = paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let config = root.join("config.toml");
        let toml = format!(
            "{top}[daemon]\nsocket = {socket:?}\nstate_dir = {state:?}\nsupervise_socket = {supervise:?}\n\n[output]\nevents_file = {events:?}\nstdout = \"off\"\nstats_interval_secs = 1\n{output}\n\
             [kernel]\npath_filter = {pf}\nringbuf_bytes = {rb}\n\n[watch]\npaths = [{paths}]\nproject_roots = [{roots}]\n\n[correlation]\nwindow_ms = {CORRELATION_WINDOW_MS}\n\n{extra}\n",
            socket = socket.display().to_string(),
            state = root.join("state").display().to_string(),
            supervise = root.join("supervise.sock").display().to_string(),
            events = events_file.display().to_string(),
            pf = opts.path_filter,
            rb = opts.ringbuf_bytes,
            roots = opts
                .project_roots
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            paths = paths.join(", "),
            // Without test rules, no detection at all (top-level keys precede the tables).
            top = if opts.extra_toml.is_empty() {
                "detect = []\n"
            } else {
                ""
            },
            extra = opts.extra_toml,
            output = opts.output_toml,
        );
        let for_dir = opts
            .toml_for_dir
            .as_ref()
            .map(|f| f(&root))
            .unwrap_or_default();
        // Each daemon runs its own local approval service on a socket in its scratch dir
        // (unless the test configures `[approval]` itself).
        let approval = if for_dir.contains("[approval]") || opts.extra_toml.contains("[approval]") {
            String::new()
        } else {
            format!(
                "\n[approval]\nlocal_socket = {:?}\n",
                root.join("approver.sock").display().to_string()
            )
        };
        let toml = toml + &approval + &for_dir;
        std::fs::write(&config, toml).expect("write config");
        let mut d = Daemon {
            dir,
            watched,
            socket,
            events_file,
            config,
            log,
            child: None,
            ready_marks: 0,
            confine_sessions: true,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Kill the daemon with SIGKILL (a crash), leaving its state as it is.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the daemon (SIGTERM) without starting it again.
    pub fn shut_down(&mut self) {
        self.stop();
    }

    /// Start the daemon again after [`Daemon::kill`] / [`Daemon::shut_down`]; panics with
    /// its log if it exits or is not ready within 60 s.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.watched.parent().expect("scratch root").join("state")
    }

    /// Stop the daemon (SIGTERM) and start it again on the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.log().matches("confgate ready").count() > self.ready_marks
                && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("daemon exited early ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not ready after 60 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `confgate <args>` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(confgate_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run confgate")
    }

    /// `confgate run --agent <agent> [--reason <reason>] -- sh -c <script>` in the watched
    /// tree, stdout and stderr piped, not started yet (add `.env(..)`, then `.spawn()` or
    /// `.output()`). Without a reason, `--reason` is left out (`CONFGATE_REASON` applies).
    ///
    /// Confined, as `confgate run` is by default (Landlock + the daemon's supervisor);
    /// [`Daemon::unconfined_session_command`] starts one with `--no-confine`, as a detected
    /// agent is: observed, and gated by the host-wide fanotify gate.
    pub fn session_command(&self, agent: &str, reason: Option<&str>, script: &str) -> Command {
        self.run_command(agent, reason, script, self.confine_sessions)
    }

    /// [`Daemon::session_command`], the same.
    pub fn confined_session_command(
        &self,
        agent: &str,
        reason: Option<&str>,
        script: &str,
    ) -> Command {
        self.run_command(agent, reason, script, true)
    }

    /// [`Daemon::session_command`] with `--no-confine`.
    pub fn unconfined_session_command(
        &self,
        agent: &str,
        reason: Option<&str>,
        script: &str,
    ) -> Command {
        self.run_command(agent, reason, script, false)
    }

    fn run_command(
        &self,
        agent: &str,
        reason: Option<&str>,
        script: &str,
        confine: bool,
    ) -> Command {
        let mut c = Command::new(confgate_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(["run", "--agent", agent]);
        if !confine {
            c.arg("--no-confine");
        }
        if let Some(reason) = reason {
            c.args(["--reason", reason]);
        }
        c.args(["--", "sh", "-c", script])
            .current_dir(&self.watched)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run `sh -c script` in an agent session (cwd = the watched tree).
    pub fn in_session(&self, agent: &str, reason: &str, script: &str) -> Output {
        self.session_command(agent, Some(reason), script)
            .output()
            .expect("confgate run")
    }

    /// `confgate <args>` (a `--json` command) against this daemon: must succeed; its
    /// stdout parsed as one JSON value.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let o = self.cli(args);
        ok(&o);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "confgate {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    }

    /// The daemon's ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir().join("ledger.jsonl")
    }

    /// The daemon's ledger records, every complete line parsed (a line the daemon is
    /// still appending, without its newline yet, is left out).
    pub fn ledger(&self) -> Vec<Value> {
        std::fs::read_to_string(self.ledger_path())
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a ledger line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    /// All events written so far.
    pub fn events(&self) -> Vec<Value> {
        self.all_events()
            .into_iter()
            .filter(|e| e["class"] != "audit")
            .collect()
    }

    /// The ledger records' events (`class: "audit"`) in the events file.
    pub fn audit_events(&self) -> Vec<Value> {
        self.all_events()
            .into_iter()
            .filter(|e| e["class"] == "audit")
            .collect()
    }

    /// Every line of the events file, parsed (any line that is not JSON fails the test).
    pub fn all_events(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read(&self.events_file) else {
            return Vec::new();
        };
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).unwrap_or_else(|e| {
                    panic!("bad NDJSON line {:?}: {e}", String::from_utf8_lossy(l))
                })
            })
            .collect()
    }

    /// Wait until `pred` holds for the events, returning them.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; events:\n{}\n--- daemon log ---\n{}",
                    ev.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every event of the operations finished so far has been written: the
    /// test process writes a marker file in the watched tree and waits for its `write`
    /// event. Both observers deliver in order (ring buffer, fanotify queue) and the daemon
    /// releases an observation only after draining both sources past it, so once the
    /// marker's event is in the file, so is every earlier operation's (a late duplicate
    /// too). The marker is the test process's own write: [`about`] and [`foreign`] leave it
    /// out.
    pub fn settle(&self) {
        static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(".settle-{}-{n}", std::process::id());
        std::fs::write(self.watched.join(&name), "settle\n").expect("write the settle marker");
        let marker = self.w(&name);
        self.wait_for("the settle marker's write", |ev| has(ev, "write", &marker));
    }

    /// One counter from `confgate stats --json`.
    pub fn stat(&self, name: &str) -> u64 {
        let v = self.cli_json(&["stats", "--json"]);
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    }

    /// Waits until counter `name` satisfies `pred`, returns its value.
    pub fn wait_stat(&self, name: &str, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let v = self.stat(name);
            if pred(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "counter {name} stuck at {v}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Path inside the watched tree, as the event contract encodes it.
    pub fn w(&self, rel: &str) -> String {
        format!("{}/{rel}", self.watched.display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Daemon {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `sh -c script` outside any session.
pub fn sh(cwd: &Path, script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .expect("sh")
}

/// A command's stdout, then its stderr, as text.
pub fn output_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Events about `path` (as `path` or as `target`), leaving out the test process's own
/// setup writes (seeding files in the watched tree).
pub fn about<'a>(events: &'a [Value], path: &str) -> Vec<&'a Value> {
    let me = std::process::id();
    events
        .iter()
        .filter(|e| (e["path"] == path || e["target"] == path) && e["pid"] != me)
        .collect()
}

/// Events not caused by the test process itself.
pub fn foreign(events: &[Value]) -> Vec<&Value> {
    let me = std::process::id();
    events.iter().filter(|e| e["pid"] != me).collect()
}

pub fn kinds(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn has(events: &[Value], kind: &str, path: &str) -> bool {
    events
        .iter()
        .any(|e| e["kind"] == kind && e["path"] == path)
}

/// Encode bytes like the event contract does (`\\` and `\xNN`).
pub fn encoded(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

impl Daemon {
    /// Stops the daemon (SIGTERM) and starts it again on the same state with `env` added
    /// to its environment.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.spawn_with_env(env);
    }

    fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.ready_marks = self.log().matches("confgate ready").count();
        let child = Command::new(confgate_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .env("CONFGATE_LOG", "info,monitor=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn confgate daemon");
        self.child = Some(child);
        self.wait_ready();
    }
}
