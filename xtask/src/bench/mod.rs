//! `cargo xtask bench [--quick]`: confgate's cost against a no-daemon baseline measured in
//! the same run, interleaved over several rounds (see [`scenario`]); median and spread per
//! mode; results to `bench/results/*.json` and, for a full run, the table in
//! `BENCHMARKS.md`.
mod approvers;
mod auto_approver;
mod baseline_drift;
mod daemon;
mod fleet;
mod gate_latency;
mod idle;
mod loop_cost;
mod macro_build;
mod mechanisms;
mod report;
mod scenario;
mod session_opens;
mod session_rate;
mod startup;
mod stats;
mod workload;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};

use daemon::{Daemon, DaemonSpec, Mode};
use scenario::{Cx, Features, Plan};

#[derive(clap::Args)]
pub struct Args {
    /// Short run for CI smoke use (under two minutes with a warm build): every scenario
    /// and mode, fewer rounds and iterations; writes bench/results/latest-quick.json only.
    #[arg(long)]
    quick: bool,
    /// Rounds (default: 2 quick, 7 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// Loop iterations per workload run (default: 20000 quick, 100000 full).
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of the idle measurement (default: 3 quick, 60 full).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Run the daemon with this `kernel.ringbuf_bytes` instead of its default.
    #[arg(long)]
    ringbuf_bytes: Option<u32>,
    /// Measure this daemon binary instead of building one (e.g. to compare builds);
    /// implies --no-write.
    #[arg(long)]
    confgate: Option<PathBuf>,
    /// Run only these scenarios (numbers, comma-separated); implies --no-write.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Print only: don't write bench/results or BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Directory for the daemons' own directories (state store, ledger, sockets; default
    /// /var/tmp). A tmpfs here (e.g. /dev/shm) takes the disk's fsync latency out of the
    /// approval round trip, to see how much of it is the disk; implies --no-write.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Measure the debug build (`cargo build`, target/debug) instead of building optimized
    /// binaries: CI runs the quick bench this way so that the harness is exercised without
    /// a second, optimized build of the workspace (~9 min on 2 cores). Its figures are
    /// not the project's; implies --no-write.
    #[arg(long)]
    debug_build: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo_build(release: bool, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(release.then_some("--release"))
        .args(args)
        .current_dir(root())
        .status()?;
    ensure!(st.success(), "cargo build {args:?} failed");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` off for the duration of the run (restored after): with it on
/// the kernel times every BPF program run, which here added ~0.5 us to each iteration of
/// the loop of scenarios 1-3 (two clock reads per program run in this VM).
struct BpfStatsOff(Option<String>);

impl BpfStatsOff {
    fn new() -> BpfStatsOff {
        let previous = std::fs::read_to_string(BPF_STATS).ok();
        if previous.as_deref().map(str::trim) == Some("1") {
            if std::fs::write(BPF_STATS, "0").is_ok() {
                eprintln!("kernel.bpf_stats_enabled was 1: off for the run (restored after)");
                return BpfStatsOff(previous);
            }
            eprintln!("warning: kernel.bpf_stats_enabled is 1 and could not be turned off");
        }
        BpfStatsOff(None)
    }
}

impl Drop for BpfStatsOff {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = std::fs::write(BPF_STATS, v.trim());
        }
    }
}

/// A tmpfs mounted for the duration of the run.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> anyhow::Result<Tmpfs> {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "confgate-bench"])
            .arg(at)
            .status()?;
        ensure!(st.success(), "mounting a tmpfs at {}", at.display());
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = loadavg();
    let bpf_stats = std::fs::read_to_string(BPF_STATS)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "kernel": kernel,
        "cores": cores,
        "loadavg_1m_at_start": load,
        "bpf_stats_enabled_before_run": bpf_stats,
    })
}

/// The 1-minute load average (the machine is shared: other builds run meanwhile).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The default watch set of the daemon's configuration (the paths that exist here).
fn default_watch_set() -> Vec<PathBuf> {
    [
        "/etc",
        "/var/spool/cron",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

/// `[[gate.rule]]` tables of the daemon's default rules.
fn shipped_gate_rules() -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Gate {
        rule: Vec<monitor::policy::RuleConfig>,
    }
    #[derive(serde::Serialize)]
    struct File {
        gate: Gate,
    }
    Ok(toml::to_string(&File {
        gate: Gate {
            rule: monitor::policy::default_gate_rules(),
        },
    })?)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "the benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    let (date, machine) = (now_utc(), machine());
    let plan = Plan {
        quick: a.quick,
        rounds: a.rounds.unwrap_or(if a.quick { 2 } else { 7 }).max(1),
        ops: a.ops.unwrap_or(if a.quick { 20_000 } else { 100_000 }),
        idle_secs: a.idle_secs.unwrap_or(if a.quick { 3 } else { 60 }),
    };
    let (release, profile) = if a.debug_build {
        (false, "debug")
    } else {
        (true, "release")
    };
    eprintln!("building {profile} binaries...");
    if a.confgate.is_none() {
        // Every binary of the crate: `confgate` and, where the build has it, the
        // `confgate-confine` helper that `confgate run` execs.
        cargo_build(release, &["-p", "monitor", "--bins"])?;
    }
    cargo_build(release, &["-p", "xtask"])?;
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
    let scratch = tempfile::Builder::new()
        .prefix("confgate-bench-")
        .tempdir_in(a.scratch.as_deref().unwrap_or(Path::new("/var/tmp")))?;
    // The workload runs on a tmpfs: on ext4, rename over a truncated file forces a data
    // flush (auto_da_alloc), so disk waits would swamp the CPU cost being measured. The
    // hooks (syscall tracepoints, fanotify) behave the same on tmpfs.
    let fs = scratch.path().join("fs");
    std::fs::create_dir_all(&fs)?;
    let _tmpfs = Tmpfs::mount(&fs)?;
    let _bpf_stats = BpfStatsOff::new();
    let cx = Cx {
        plan: plan.clone(),
        confgate: a
            .confgate
            .clone()
            .unwrap_or_else(|| target_dir().join(profile).join("confgate")),
        xtask: target_dir().join(profile).join("xtask"),
        watched: fs.join("watched"),
        unwatched: fs.join("unwatched"),
        features: Features::default(),
    };
    let cx = Cx {
        features: Features::probe(&cx.confgate, scratch.path()),
        ..cx
    };
    eprintln!("daemon build: {:?}", cx.features);
    // The approval services scenario 13 starts are this binary too.
    e2e::use_confgate_bin(cx.confgate.clone());
    for d in [&cx.watched, &cx.unwatched] {
        std::fs::create_dir_all(d)?;
    }

    let mut scenarios = scenario::all();
    if !a.only.is_empty() {
        scenarios.retain(|s| a.only.contains(&s.id()));
    }
    let write = !a.no_write
        && !a.debug_build
        && a.only.is_empty()
        && a.confgate.is_none()
        && a.scratch.is_none();
    // Every daemon watches the default set plus the benchmark's watched tree, with what
    // the scenarios add.
    let mut watch = default_watch_set();
    watch.push(cx.watched.clone());
    // The shipped gate rules, then the scenarios' own (writing any rule replaces the
    // default list, so the defaults are written out).
    let extra_toml: String = shipped_gate_rules()?
        + &scenarios
            .iter_mut()
            .filter_map(|s| s.daemon_toml(&cx))
            .collect::<String>();
    let local_config = scenarios.iter().find_map(|s| s.approval_config());
    let spec = |mode: Mode| DaemonSpec {
        path_filter: mode != Mode::OnNoFilter,
        watch: watch.clone(),
        ringbuf_bytes: a.ringbuf_bytes,
        fanotify: match mode {
            Mode::FanAlways => Some("always"),
            Mode::FanOff => Some("off"),
            _ => None,
        },
        skip_programs: match mode {
            Mode::Skip(h) => h.programs(),
            _ => Vec::new(),
        },
        supervise_socket: cx.features.confine,
        extra_toml: extra_toml.clone(),
        local_config: match mode {
            Mode::Notify => local_config.clone(),
            _ => None,
        },
    };
    let modes: Vec<Mode> = Mode::every()
        .into_iter()
        .filter(|m| cx.features.fanotify_modes || !m.needs_fanotify_modes())
        .filter(|m| scenarios.iter().any(|s| s.modes().contains(m)))
        .collect();

    for round in 0..plan.rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            let t = Instant::now();
            let daemon = match mode {
                Mode::Off => None,
                m => Some(Daemon::start(&cx.confgate, scratch.path(), &spec(m))?),
            };
            for s in scenarios.iter_mut().filter(|s| s.modes().contains(&mode)) {
                s.measure(&cx, round, mode, daemon.as_ref())
                    .with_context(|| format!("scenario {} ({mode:?}, round {round})", s.id()))?;
            }
            let stop_ms = match daemon {
                Some(d) => d.stop()?.as_secs_f64() * 1000.0,
                None => 0.0,
            };
            if mode != Mode::Off {
                scenarios
                    .iter_mut()
                    .for_each(|s| s.daemon_stopped(mode, stop_ms));
            }
            eprintln!(
                "round {}/{} {mode:?}: {:.1} s (daemon stop {:.1} s); {:.0} s so far",
                round + 1,
                plan.rounds,
                t.elapsed().as_secs_f64(),
                stop_ms / 1000.0,
                started.elapsed().as_secs_f64()
            );
        }
    }

    scenarios.sort_by_key(|s| s.id());
    let mut results = json!({
        "date": date,
        "quick": plan.quick,
        "build": profile,
        "rounds": plan.rounds,
        "ops_per_run": plan.ops,
        "ringbuf_bytes": a.ringbuf_bytes,
        "machine": machine,
        "daemon_build": {
            "gate_fanotify_modes": cx.features.fanotify_modes,
            "confine_helper": cx.features.confine,
        },
    });
    for s in &scenarios {
        results[s.key()] = s.results();
    }
    results["wall_secs"] = json!(started.elapsed().as_secs_f64());
    results["machine"]["loadavg_1m_at_end"] = json!(loadavg());
    let rows: Vec<_> = scenarios.iter().flat_map(|s| s.rows()).collect();
    let table = report::render(&results, &rows);
    println!("{table}");
    if write {
        let dir = root().join("bench/results");
        std::fs::create_dir_all(&dir)?;
        let name = if plan.quick {
            "latest-quick.json"
        } else {
            "latest.json"
        };
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&results)?)?;
        // Only a full run rewrites the table: a quick run is a smoke test.
        if !plan.quick {
            report::write_into(&root().join("BENCHMARKS.md"), &table)?;
        }
    }
    for s in &scenarios {
        s.check()?;
    }
    eprintln!("bench done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
