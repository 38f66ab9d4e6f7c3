//! Starting, querying and stopping a `confgate daemon` for a measurement.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

/// How a measurement runs the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Mode {
    /// No daemon: the baseline.
    Off,
    /// The default configuration (kernel prefix filter on), plus what scenarios add.
    On,
    /// `kernel.path_filter = false`: processes outside sessions only through fanotify.
    OnNoFilter,
    /// `gate.fanotify = "always"`: the host-wide permission marks from start-up.
    FanAlways,
    /// `gate.fanotify = "off"`: no permission group at all.
    FanOff,
    /// The default configuration with a group of eBPF programs left unattached
    /// (`kernel.skip_programs`): one A/B column per group (scenario 1).
    Skip(Hooks),
    /// The default configuration, its local approval service notifying a webhook and
    /// Slack (`[approval] local_config`, scenario 11).
    Notify,
}

impl Mode {
    /// The modes every build can run.
    pub const ALL: [Mode; 3] = [Mode::Off, Mode::On, Mode::OnNoFilter];
    /// The `gate.fanotify` modes (builds that have the key).
    pub const FANOTIFY: [Mode; 2] = [Mode::FanAlways, Mode::FanOff];

    /// Every mode, in the order a round runs them (before rotation).
    pub fn every() -> Vec<Mode> {
        let mut v: Vec<Mode> = Mode::ALL.into_iter().chain(Mode::FANOTIFY).collect();
        v.extend(Hooks::ALL.map(Mode::Skip));
        v.push(Mode::Notify);
        v
    }

    /// Whether a daemon of this mode needs `gate.fanotify`.
    pub fn needs_fanotify_modes(self) -> bool {
        matches!(self, Mode::FanAlways | Mode::FanOff)
    }

    pub fn name(self) -> String {
        match self {
            Mode::Skip(h) => format!("Skip{h:?}"),
            m => format!("{m:?}"),
        }
    }
}

/// Groups of eBPF programs a [`Mode::Skip`] daemon leaves unattached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Hooks {
    /// `write`, `pwrite64`, `writev`, `pwritev`, `pwritev2`: first write through a tracked fd.
    Writes,
    /// `close`: forgetting a tracked fd.
    Close,
    /// `dup`, `dup2`, `dup3`, `fcntl` (enter and exit): tracking carried to duplicates.
    Dups,
    /// All of the above: no descriptor tracking at all.
    Fds,
    /// `chdir`, `fchdir` (enter and exit): sessions' working directories.
    Chdir,
}

impl Hooks {
    pub const ALL: [Hooks; 5] = [
        Hooks::Writes,
        Hooks::Close,
        Hooks::Dups,
        Hooks::Fds,
        Hooks::Chdir,
    ];

    /// The programs the group names (`monitor_common::programs::PROGRAMS`).
    pub fn programs(self) -> Vec<&'static str> {
        const WRITES: &[&str] = &[
            "sys_enter_write",
            "sys_enter_pwrite64",
            "sys_enter_writev",
            "sys_enter_pwritev",
            "sys_enter_pwritev2",
        ];
        const DUPS: &[&str] = &[
            "sys_enter_dup",
            "sys_exit_dup",
            "sys_enter_dup2",
            "sys_enter_dup3",
            "sys_enter_fcntl",
            "sys_exit_fcntl",
        ];
        match self {
            Hooks::Writes => WRITES.to_vec(),
            Hooks::Close => vec!["sys_enter_close"],
            Hooks::Dups => DUPS.to_vec(),
            Hooks::Fds => [WRITES, &["sys_enter_close"], DUPS].concat(),
            Hooks::Chdir => vec![
                "sys_enter_chdir",
                "sys_exit_chdir",
                "sys_enter_fchdir",
                "sys_exit_fchdir",
            ],
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Hooks::Writes => "write* (5 programs)",
            Hooks::Close => "close",
            Hooks::Dups => "dup*/fcntl (6 programs)",
            Hooks::Fds => "all descriptor tracking (12 programs)",
            Hooks::Chdir => "chdir/fchdir (4 programs)",
        }
    }
}

/// Everything that goes into one daemon's configuration file.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub path_filter: bool,
    pub watch: Vec<PathBuf>,
    /// `kernel.ringbuf_bytes`; None keeps the daemon's default.
    pub ringbuf_bytes: Option<u32>,
    /// `gate.fanotify` (None: the build's default; builds before it have no such key).
    pub fanotify: Option<&'static str>,
    /// `kernel.skip_programs`.
    pub skip_programs: Vec<&'static str>,
    /// Give the daemon its own `daemon.supervise_socket` (builds that confine sessions;
    /// the default path is the host's).
    pub supervise_socket: bool,
    /// TOML tables appended to the file (scenarios' own `[[gate.rule]]` tables).
    pub extra_toml: String,
    /// `approval.local_config`: the local approval service's own settings.
    pub local_config: Option<PathBuf>,
}

impl DaemonSpec {
    fn toml(&self, dir: &Path) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let paths: Vec<String> = self.watch.iter().map(|p| q(p)).collect();
        let ring = self
            .ringbuf_bytes
            .map(|b| format!("ringbuf_bytes = {b}\n"))
            .unwrap_or_default();
        // Only when set: builds before the key would refuse it (A/B runs with --confgate).
        let skip = if self.skip_programs.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = self
                .skip_programs
                .iter()
                .map(|p| format!("{p:?}"))
                .collect();
            format!("skip_programs = [{}]\n", names.join(", "))
        };
        let supervise = if self.supervise_socket {
            format!("supervise_socket = {}\n", q(&dir.join("supervise.sock")))
        } else {
            String::new()
        };
        let local = self
            .local_config
            .as_ref()
            .map(|p| format!("local_config = {}\n", q(p)))
            .unwrap_or_default();
        let gate = self
            .fanotify
            .map(|m| format!("[gate]\nfanotify = {m:?}\n"))
            .unwrap_or_default();
        // Top-level keys (detect) must precede the tables; `[gate]` precedes the scenarios'
        // `[[gate.rule]]` tables, which come last.
        format!(
            "detect = []\n\
             [daemon]\nsocket = {}\nstate_dir = {}\n{supervise}\
             [output]\nevents_file = {}\nstdout = \"off\"\nstats_interval_secs = 1\n\
             [kernel]\npath_filter = {}\n{skip}{ring}\
             [watch]\npaths = [{}]\nproject_roots = []\n\
             [approval]\nlocal_socket = {}\n{local}{gate}{}",
            q(&dir.join("s.sock")),
            q(&dir.join("state")),
            q(&dir.join("events.ndjson")),
            self.path_filter,
            paths.join(", "),
            q(&dir.join("approver.sock")),
            self.extra_toml,
        )
    }
}

/// A running daemon, stopped by [`Daemon::stop`] (or killed when dropped).
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    pub config: PathBuf,
    /// The daemon's local approval service.
    pub approver_socket: PathBuf,
    /// Spawn to the "confgate ready" log line.
    pub ready_after: Duration,
    confgate: PathBuf,
}

impl Daemon {
    /// Start a daemon with its own directory under `scratch` and wait until it is ready.
    pub fn start(confgate: &Path, scratch: &Path, spec: &DaemonSpec) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("d-")
            .tempdir_in(scratch)?
            .keep();
        let config = dir.join("config.toml");
        std::fs::write(&config, spec.toml(&dir))?;
        let log = dir.join("daemon.log");
        let spawned = Instant::now();
        let child = Command::new(confgate)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawning {}", confgate.display()))?;
        let mut d = Daemon {
            child: Some(child),
            log,
            config,
            approver_socket: dir.join("approver.sock"),
            ready_after: Duration::ZERO,
            confgate: confgate.to_owned(),
        };
        d.ready_after = d.wait_ready(spawned)?;
        Ok(d)
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn wait_ready(&mut self, spawned: Instant) -> anyhow::Result<Duration> {
        let deadline = spawned + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.log().contains("confgate ready") {
                return Ok(spawned.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                bail!("daemon exited ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("daemon not ready after 60 s:\n{}", self.log())
    }

    /// `confgate stats --json`: the daemon's counters.
    pub fn stats(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.confgate)
            .arg("--config")
            .arg(&self.config)
            .args(["stats", "--json"])
            .output()?;
        ensure!(
            out.status.success(),
            "confgate stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits (up to 10 s) until the daemon has no host-wide permission marks placed
    /// (`gate.fanotify = "detected"` removes them when the last unconfined session ends);
    /// builds without `gate.fanotify` have no such counter (their marks stay placed).
    pub fn wait_marks_removed(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let placed = self.stats()?["gate_marks_placed"].as_u64();
            if placed.is_none_or(|p| p == 0) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the daemon's host-wide marks stayed placed after its sessions ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User + system CPU time used so far, in clock ticks (USER_HZ).
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        ensure!(f.len() > 12, "/proc/<pid>/stat: too few fields");
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM and wait for the exit (the kernel detaches the programs as it exits, so a
    /// measurement after this one does not pay for them). Returns how long that took.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let st = child.wait()?;
            ensure!(st.success(), "daemon exited with {st}:\n{}", self.log());
        }
        let elapsed = t.elapsed();
        self.keep_log();
        Ok(elapsed)
    }
}

impl Daemon {
    /// With `CONFGATE_BENCH_LOGS=<dir>`, copies the daemon's log there (the scratch
    /// directory goes with the run): set `CONFGATE_LOG` too to see debug lines.
    fn keep_log(&self) {
        let Some(dir) = std::env::var_os("CONFGATE_BENCH_LOGS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let name = self
            .log
            .parent()
            .and_then(|d| d.file_name())
            .map_or_else(|| "daemon".into(), |n| n.to_string_lossy().into_owned());
        let copied = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::copy(&self.log, dir.join(format!("{name}.log"))));
        if let Err(e) = copied {
            eprintln!("cannot keep the daemon log in {}: {e}", dir.display());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
