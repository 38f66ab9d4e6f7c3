//! Scenario 6: the daemon's resident memory and CPU use while idle with the default watch
//! set, measured once, on the first daemon of the run (fresh, before any workload), with
//! where the resident memory is (from `/proc/<pid>/smaps`).
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Value, json};

use super::scenario::{Cx, Daemon, Mode, Row, Scenario, verdict};

/// Time after "ready" before measuring (the tail of start-up).
const SETTLE: Duration = Duration::from_secs(1);
/// USER_HZ on Linux x86_64 (units of /proc/<pid>/stat times).
const USER_HZ: f64 = 100.0;
const RSS_TARGET_MIB: f64 = 25.0;
const CPU_TARGET_PCT: f64 = 0.5;

#[derive(Default)]
pub struct Idle {
    result: Option<Value>,
}

/// Resident KiB by kind of mapping: the BPF maps (ring buffer), the binary, heap and
/// anonymous memory, the rest (libraries, stacks, vdso).
pub fn rss_breakdown(pid: u32) -> anyhow::Result<Value> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut bpf, mut binary, mut anon, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut name = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [name]".
            name = line.split_whitespace().nth(5).unwrap_or("").to_string();
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            if name.contains("bpf") {
                bpf += kib;
            } else if name.ends_with("/confgate") {
                binary += kib;
            } else if name.is_empty() || name == "[heap]" || name.starts_with("[anon") {
                anon += kib;
            } else {
                other += kib;
            }
        }
    }
    Ok(json!({
        "bpf_maps_kib": bpf,
        "binary_kib": binary,
        "heap_and_anon_kib": anon,
        "other_kib": other,
        "total_kib": bpf + binary + anon + other,
    }))
}

impl Scenario for Idle {
    fn id(&self) -> u32 {
        6
    }

    fn key(&self) -> &'static str {
        "scenario6_idle"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::On]
    }

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        _mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let Some(d) = daemon else { return Ok(()) };
        if self.result.is_some() {
            return Ok(());
        }
        std::thread::sleep(SETTLE);
        let pid = d.pid();
        let (t0, c0) = (Instant::now(), d.cpu_ticks()?);
        std::thread::sleep(Duration::from_secs(cx.plan.idle_secs));
        let cpu_pct = (d.cpu_ticks()? - c0) as f64 / USER_HZ / t0.elapsed().as_secs_f64() * 100.0;
        let breakdown = rss_breakdown(pid)?;
        let rss_mib = breakdown["total_kib"].as_u64().unwrap_or(0) as f64 / 1024.0;
        self.result = Some(json!({
            "seconds": cx.plan.idle_secs,
            "cpu_percent_of_one_core": cpu_pct,
            "rss_mib": rss_mib,
            "rss_breakdown": breakdown,
        }));
        Ok(())
    }

    fn results(&self) -> Value {
        self.result.clone().unwrap_or(Value::Null)
    }

    fn rows(&self) -> Vec<Row> {
        let r = self.results();
        let rss = r["rss_mib"].as_f64().unwrap_or(f64::NAN);
        let cpu = r["cpu_percent_of_one_core"].as_f64().unwrap_or(f64::NAN);
        let b = &r["rss_breakdown"];
        let mib = |k: &str| b[k].as_u64().unwrap_or(0) as f64 / 1024.0;
        vec![Row {
            scenario: "6 idle, default watch set".into(),
            measure: format!(
                "RSS (ring buffer + maps / binary / heap / other); CPU over {} s",
                r["seconds"]
            ),
            on: format!(
                "{rss:.1} MiB ({:.1} / {:.1} / {:.1} / {:.1}); {cpu:.2}%",
                mib("bpf_maps_kib"),
                mib("binary_kib"),
                mib("heap_and_anon_kib"),
                mib("other_kib")
            ),
            target: format!("< {RSS_TARGET_MIB} MiB; < {CPU_TARGET_PCT}%"),
            verdict: verdict(rss < RSS_TARGET_MIB && cpu < CPU_TARGET_PCT),
            ..Row::default()
        }]
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.result.is_some(), "scenario 6: not measured");
        Ok(())
    }
}
