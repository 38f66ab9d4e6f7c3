//! What a benchmark scenario is, and the table of them.
//!
//! The driver ([`super::run`]) runs rounds; in each round every [`Mode`] once, in rotating
//! order (off / on / on-without-filter, then on-without-filter / off / on, ...), so that
//! the shared, noisy machine affects all modes alike. One daemon serves every scenario of
//! a (round, mode): it is started once, each scenario that measures in that mode runs in
//! table order, then it is stopped. (Starting and stopping a daemon costs seconds: the
//! kernel waits for RCU grace periods as it detaches each tracepoint program.)
//!
//! Adding a scenario: implement [`Scenario`], put it in [`all`]; if it needs daemon
//! configuration (e.g. `[[gate.rule]]` tables), return it from [`Scenario::daemon_toml`]: it
//! is part of every daemon the run starts, so the other scenarios then measure the product
//! with that configuration too.
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use super::daemon::{Daemon, Mode};

/// Sizes of the run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    /// Loop iterations per workload run.
    pub ops: u64,
    /// Length of the idle measurement (scenario 6).
    pub idle_secs: u64,
}

/// What scenarios measure with.
pub struct Cx {
    pub plan: Plan,
    pub confgate: PathBuf,
    /// This harness's release binary (runs the workloads: `xtask worker`).
    pub xtask: PathBuf,
    /// On a tmpfs: a directory in the daemon's watch set, and one outside it.
    pub watched: PathBuf,
    pub unwatched: PathBuf,
    /// What the measured build supports (probed at the start of the run).
    pub features: Features,
}

/// Parts of the product that builds before issue 15 lack: scenarios that need them
/// measure what the build has and say so.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// `gate.fanotify = "off" | "detected" | "always"`.
    pub fanotify_modes: bool,
    /// `confgate run` confines sessions (the `confgate-confine` helper beside the binary).
    pub confine: bool,
}

impl Features {
    pub fn probe(confgate: &Path, scratch: &Path) -> Features {
        let file = scratch.join("probe.toml");
        let fanotify_modes = std::fs::write(&file, "[gate]\nfanotify = \"off\"\n").is_ok()
            && std::process::Command::new(confgate)
                .arg("check-config")
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let confine = confgate.with_file_name("confgate-confine").exists();
        Features {
            fanotify_modes,
            confine,
        }
    }
}

impl Cx {
    /// A fresh directory for `name` under the (watched or unwatched) tree.
    pub fn dir(&self, watched: bool, name: &str) -> anyhow::Result<PathBuf> {
        let base: &Path = if watched {
            &self.watched
        } else {
            &self.unwatched
        };
        let p = base.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

/// One line of the results table. Empty cells stay empty.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub off: String,
    pub on: String,
    pub on_no_filter: String,
    pub ratio: String,
    pub target: String,
    pub verdict: String,
}

pub fn verdict(ok: bool) -> String {
    if ok {
        "met".into()
    } else {
        "**missed**".into()
    }
}

/// One measured scenario of issue 4.
pub trait Scenario {
    /// Its number in the issue (the table is sorted by it).
    fn id(&self) -> u32;
    /// Key of its results in the JSON file.
    fn key(&self) -> &'static str;
    /// Modes it measures in (empty: not measured, e.g. not built yet).
    fn modes(&self) -> &'static [Mode];
    /// TOML tables it needs in the daemon's configuration file. Called once, before the
    /// first daemon starts (scenarios also prepare their files here).
    fn daemon_toml(&mut self, _cx: &Cx) -> Option<String> {
        None
    }
    /// The local approval service's settings file for [`Mode::Notify`] daemons (written by
    /// `daemon_toml`).
    fn approval_config(&self) -> Option<PathBuf> {
        None
    }
    /// Measure once in `round` with the daemon of `mode` (None when off).
    fn measure(
        &mut self,
        cx: &Cx,
        round: usize,
        mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()>;
    /// A daemon of `mode` took `took_ms` to stop (after every scenario of its round).
    fn daemon_stopped(&mut self, _mode: Mode, _took_ms: f64) {}
    /// Its results for the JSON file.
    fn results(&self) -> Value;
    /// Its lines of the table.
    fn rows(&self) -> Vec<Row>;
    /// Fail the run if the measurement itself did not work (no samples, nothing
    /// delivered). Targets missed are not failures: this machine is shared and noisy.
    fn check(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Every scenario, in the order they run within one daemon's life: the idle measurement
/// first (a fresh daemon), then start-up, then the workloads.
pub fn all() -> Vec<Box<dyn Scenario>> {
    use super::{
        approvers::Approvers, baseline_drift::BaselineDrift, fleet::Fleet,
        gate_latency::GateLatency, idle::Idle, loop_cost::LoopCost, macro_build::MacroBuild,
        mechanisms::Mechanisms, session_opens::SessionOpens, session_rate::SessionRate,
        startup::Startup,
    };
    vec![
        Box::new(Idle::default()),
        Box::new(Startup::default()),
        // Before the workloads: drift then compares the baseline with an untouched tree.
        Box::new(BaselineDrift::default()),
        Box::new(LoopCost::unwatched()),
        Box::new(LoopCost::watched()),
        Box::new(SessionRate::default()),
        Box::new(GateLatency::decision()),
        Box::new(GateLatency::round_trip()),
        Box::new(SessionOpens::default()),
        Box::new(MacroBuild::default()),
        Box::new(Mechanisms::default()),
        Box::new(Approvers::default()),
        Box::new(Fleet::default()),
    ]
}
