//! `cargo xtask bench [--quick]`: confgate's cost against a no-daemon baseline measured in
//! the same run, interleaved (off / on / on / ...) over several rounds; median and spread
//! per mode; results to `bench/results/*.json` and the table in `BENCHMARKS.md`.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Short run for CI smoke use (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario (default: 3 quick, 7 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// Don't rewrite BENCHMARKS.md / bench/results (just print).
    #[arg(long)]
    no_write: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo_build(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
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

struct Env {
    confgate: PathBuf,
    xtask: PathBuf,
    scratch: tempfile::TempDir,
}

impl Env {
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.scratch.path().join(name);
        let _ = std::fs::create_dir_all(&p);
        p
    }
}

/// How the daemon runs in a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Mode {
    Off,
    /// Kernel prefix filter on (default).
    On,
    /// Kernel prefix filter off: non-session processes only through fanotify.
    OnNoFilter,
}

struct Daemon {
    child: Child,
    log: PathBuf,
    config: PathBuf,
    spawned: Instant,
}

impl Daemon {
    fn start(env: &Env, path_filter: bool, watch: &[PathBuf]) -> anyhow::Result<Daemon> {
        let d = tempfile::Builder::new()
            .prefix("d-")
            .tempdir_in(env.scratch.path())?
            .keep();
        let paths: Vec<String> = watch
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let config = d.join("config.toml");
        // Top-level keys (detect) must precede the tables.
        std::fs::write(
            &config,
            format!(
                "detect = []\n[daemon]\nsocket = {:?}\nstate_dir = {:?}\n[output]\nevents_file = {:?}\nstdout = \"off\"\n\
                 stats_interval_secs = 1\n[kernel]\npath_filter = {path_filter}\n[watch]\npaths = [{}]\nproject_roots = []\n",
                d.join("s.sock").display().to_string(),
                d.join("state").display().to_string(),
                d.join("events.ndjson").display().to_string(),
                paths.join(", ")
            ),
        )?;
        let log = d.join("daemon.log");
        let spawned = Instant::now();
        let child = Command::new(&env.confgate)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut daemon = Daemon {
            child,
            log,
            config,
            spawned,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.log().contains("confgate ready") {
                return Ok(self.spawned.elapsed());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("daemon exited ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("daemon not ready:\n{}", self.log())
    }

    fn stats(&self, env: &Env) -> anyhow::Result<Value> {
        let out = Command::new(&env.confgate)
            .arg("--config")
            .arg(&self.config)
            .args(["stats", "--json"])
            .output()?;
        ensure!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

fn worker(env: &Env, dir: &Path, ops: u64, session: Option<&Path>) -> anyhow::Result<f64> {
    let mut cmd = match session {
        Some(config) => {
            let mut c = Command::new(&env.confgate);
            c.arg("--config")
                .arg(config)
                .args(["run", "--agent", "bench", "--"])
                .arg(&env.xtask);
            c
        }
        None => Command::new(&env.xtask),
    };
    let out = cmd
        .arg("worker")
        .arg("--dir")
        .arg(dir)
        .arg("--ops")
        .arg(ops.to_string())
        .output()?;
    ensure!(
        out.status.success(),
        "worker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_op"].as_f64().context("worker output")
}

#[derive(Serialize, Clone)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

fn summary(mut v: Vec<f64>) -> Summary {
    let samples = v.clone();
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    };
    Summary {
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        samples,
    }
}

/// Interleaved A/B: every round runs each mode once, in rotating order.
fn ab(
    env: &Env,
    dir: &Path,
    watch: &[PathBuf],
    rounds: usize,
    ops: u64,
) -> anyhow::Result<Vec<(Mode, Summary)>> {
    let modes = [Mode::Off, Mode::On, Mode::OnNoFilter];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for r in 0..rounds {
        for k in 0..modes.len() {
            let i = (k + r) % modes.len();
            let daemon = match modes[i] {
                Mode::Off => None,
                Mode::On => Some(Daemon::start(env, true, watch)?),
                Mode::OnNoFilter => Some(Daemon::start(env, false, watch)?),
            };
            // Warm-up, then the measured run.
            worker(env, dir, ops / 10, None)?;
            samples[i].push(worker(env, dir, ops, None)?);
            if let Some(d) = daemon {
                d.stop()?;
            }
        }
    }
    Ok(modes
        .into_iter()
        .zip(samples.into_iter().map(summary))
        .collect())
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

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn proc_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("rss")?.parse()?)
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
    json!({ "cpu": cpu, "kernel": kernel, "cores": cores })
}

fn now_utc() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    ensure!(
        nix_is_root(),
        "the benchmark loads eBPF programs: run it as root"
    );
    let rounds = a.rounds.unwrap_or(if a.quick { 3 } else { 7 });
    let ops: u64 = if a.quick { 20_000 } else { 100_000 };
    let idle_secs = if a.quick { 5 } else { 60 };
    eprintln!("building release binaries...");
    cargo_build(&["-p", "monitor", "--bin", "confgate"])?;
    cargo_build(&["-p", "xtask"])?;
    let env = Env {
        confgate: target_dir().join("release/confgate"),
        xtask: target_dir().join("release/xtask"),
        scratch: tempfile::Builder::new()
            .prefix("confgate-bench-")
            .tempdir_in("/var/tmp")?,
    };
    // The workload runs on a tmpfs: on ext4, rename over a truncated file forces a data
    // flush (auto_da_alloc), so disk waits would swamp the CPU cost being measured. The
    // hooks (syscall tracepoints, fanotify) behave the same on tmpfs.
    let fs = env.dir("fs");
    let _tmpfs = Tmpfs::mount(&fs)?;
    let watched = fs.join("watched");
    let unwatched = fs.join("unwatched");
    std::fs::create_dir_all(&watched)?;
    std::fs::create_dir_all(&unwatched)?;
    let watch = vec![watched.clone()];

    eprintln!("scenario 1: unwatched work ({rounds} rounds x 3 modes, {ops} ops)");
    let s1 = ab(&env, &unwatched, &watch, rounds, ops)?;
    eprintln!("scenario 2: watched files, writer outside any session");
    let s2 = ab(&env, &watched, &watch, rounds, ops)?;

    eprintln!("scenario 3: agent-session event rate");
    let mut s3 = Vec::new();
    for _ in 0..rounds {
        let d = Daemon::start(&env, true, &watch)?;
        let before = d.stats(&env)?;
        let t0 = Instant::now();
        let ns = worker(&env, &watched, ops, Some(&d.config))?;
        let worker_secs = t0.elapsed().as_secs_f64();
        // Let the pipeline drain (correlation window + flush).
        std::thread::sleep(Duration::from_millis(800));
        let after = d.stats(&env)?;
        let delta = |k: &str| {
            after[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before[k].as_u64().unwrap_or(0))
        };
        s3.push(json!({
            "worker_ns_per_op": ns,
            "kernel_records": delta("kernel_events_emitted"),
            "kernel_records_per_sec": delta("kernel_events_emitted") as f64 / worker_secs,
            "events_emitted": delta("events_emitted"),
            "events_per_sec": delta("events_emitted") as f64 / worker_secs,
            "kernel_ringbuf_drops": delta("kernel_ringbuf_drops"),
            "writes_coalesced": delta("kernel_writes_coalesced"),
        }));
        d.stop()?;
    }

    eprintln!("scenarios 6 and 7: idle use with the default watch set, start-up time");
    let default_watch: Vec<PathBuf> = [
        "/etc",
        "/var/spool/cron",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    let mut startup = Vec::new();
    for _ in 0..rounds {
        let d = Daemon::start(&env, true, &default_watch)?;
        startup.push(d.spawned.elapsed().as_secs_f64() * 1000.0);
        d.stop()?;
    }
    let d = Daemon::start(&env, true, &default_watch)?;
    std::thread::sleep(Duration::from_secs(1));
    let hz = 100.0; // USER_HZ on Linux x86_64
    let t0 = (Instant::now(), proc_cpu_ticks(d.pid())?);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let cpu_pct =
        (proc_cpu_ticks(d.pid())? - t0.1) as f64 / hz / t0.0.elapsed().as_secs_f64() * 100.0;
    let rss_mib = proc_rss_kib(d.pid())? as f64 / 1024.0;
    d.stop()?;

    let results = json!({
        "date": now_utc(),
        "quick": a.quick,
        "rounds": rounds,
        "ops_per_run": ops,
        "machine": machine(),
        "scenario1_unwatched_ns_per_op": s1.iter().map(|(m, s)| (format!("{m:?}"), s.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        "scenario2_watched_outside_session_ns_per_op": s2.iter().map(|(m, s)| (format!("{m:?}"), s.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        "scenario3_session_rate": s3,
        "scenario6_idle": { "seconds": idle_secs, "cpu_percent_of_one_core": cpu_pct, "rss_mib": rss_mib },
        "scenario7_startup_ms": summary(startup.clone()),
    });
    let table = render(
        &results,
        &s1,
        &s2,
        &s3,
        cpu_pct,
        rss_mib,
        &summary(startup),
        idle_secs,
    );
    println!("{table}");
    if !a.no_write {
        let dir = root().join("bench/results");
        std::fs::create_dir_all(&dir)?;
        let text = serde_json::to_string_pretty(&results)?;
        let name = if a.quick {
            "latest-quick.json"
        } else {
            "latest.json"
        };
        std::fs::write(dir.join(name), &text)?;
        if !a.quick {
            write_benchmarks_md(&table)?;
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ratio(s: &[(Mode, Summary)], m: Mode) -> f64 {
    let base = s
        .iter()
        .find(|(x, _)| *x == Mode::Off)
        .map_or(f64::NAN, |(_, s)| s.median);
    s.iter()
        .find(|(x, _)| *x == m)
        .map_or(f64::NAN, |(_, s)| s.median / base)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

#[allow(clippy::too_many_arguments)]
fn render(
    r: &Value,
    s1: &[(Mode, Summary)],
    s2: &[(Mode, Summary)],
    s3: &[Value],
    cpu: f64,
    rss: f64,
    startup: &Summary,
    idle: u64,
) -> String {
    let m = &r["machine"];
    let mut t = format!(
        "Run: {} on {} ({} cores, kernel {}), {} rounds, {} ops per run.\n\n",
        r["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        r["rounds"],
        r["ops_per_run"]
    );
    t += "| scenario | measure | daemon off | on (kernel path filter) | on (fanotify only) | ratio on/off | target | verdict |\n|---|---|---|---|---|---|---|---|\n";
    for (name, s, target) in [
        ("1 unwatched work", s1, 1.01),
        ("2 watched, outside session", s2, 1.10),
    ] {
        let get = |mode| {
            s.iter()
                .find(|(x, _)| *x == mode)
                .map(|(_, v)| format!("{:.0} ns/op ({:.0}–{:.0})", v.median, v.min, v.max))
                .unwrap_or_default()
        };
        let r_on = ratio(s, Mode::On);
        let r_nf = ratio(s, Mode::OnNoFilter);
        t += &format!(
            "| {name} | open/write 4K/close/rename | {} | {} | {} | {r_on:.3} / {r_nf:.3} | <= {target} | {} |\n",
            get(Mode::Off),
            get(Mode::On),
            get(Mode::OnNoFilter),
            verdict(r_on <= target)
        );
    }
    let rates: Vec<f64> = s3
        .iter()
        .filter_map(|v| v["kernel_records_per_sec"].as_f64())
        .collect();
    let ev: Vec<f64> = s3
        .iter()
        .filter_map(|v| v["events_per_sec"].as_f64())
        .collect();
    let drops: u64 = s3
        .iter()
        .filter_map(|v| v["kernel_ringbuf_drops"].as_u64())
        .sum();
    let rates = summary(rates);
    let ev = summary(ev);
    t += &format!(
        "| 3 session event rate | kernel records/s; events/s out; drops | | {:.0} rec/s; {:.0} ev/s | | | 0 drops at 300k/s | {} drops ({}) |\n",
        rates.median,
        ev.median,
        drops,
        if drops == 0 && rates.median >= 300_000.0 {
            "met"
        } else if drops == 0 {
            "0 drops, but the workload stayed below 300k/s"
        } else {
            "**missed**"
        }
    );
    t += "| 4 gate decision latency | | | | | | p99 < 50 us | n/a: the gate (issue 3) is not built yet |\n";
    t += "| 5 approval round trip | | | | | | p99 < 2 ms | n/a: the approval service (issue 3) is not built yet |\n";
    t += &format!(
        "| 6 idle, default watch set | RSS; CPU over {idle} s | | {rss:.1} MiB; {cpu:.2}% | | | < 25 MiB; < 0.5% | {} |\n",
        verdict(rss < 25.0 && cpu < 0.5)
    );
    t += &format!(
        "| 7 start-up to ready | ms (spawn to `confgate ready`) | | {:.0} ms ({:.0}–{:.0}) | | | | |\n",
        startup.median, startup.min, startup.max
    );
    t
}

fn write_benchmarks_md(table: &str) -> anyhow::Result<()> {
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{BEGIN}\n{table}{}", &text[..b], &text[e..]),
        _ => format!("{text}\n{BEGIN}\n{table}{END}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
