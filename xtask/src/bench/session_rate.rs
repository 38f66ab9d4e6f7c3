//! Scenario 3: an agent-session process doing watched writes (the loop of scenarios 1-2
//! under `confgate run`), twice per round: paced to the target of 300,000 kernel records
//! per second, then as fast as it can (beyond the target: the degradation must be
//! graceful and counted). Reports the kernel's record rate while the worker runs, the
//! events delivered end to end (worker start to the last event written), the kernel
//! ring-buffer drops and the daemon's CPU per event delivered. The session is started
//! with `--no-confine` on builds that confine (issue 15): the target is the observation
//! pipeline's capacity, and a confined writer waits for the supervisor on every write
//! open and rename, far below the target rate (scenario 8 measures that cost).
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario},
    stats::Summary,
    workload,
};

/// The pipeline counts as drained when `events_emitted` has not moved for this long.
const SETTLED: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(50);
/// CPU ticks (10 ms) a settled daemon may use per [`SETTLED`] (answering `stats`).
const IDLE_TICKS: u64 = 3;
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Records per second the kernel side must deliver without a drop.
const TARGET_RATE: f64 = 300_000.0;
/// Kernel records per loop iteration in a session: enter and exit of the open, the first
/// write, enter and exit of the rename (the close of a reported descriptor adds none).
const RECORDS_PER_OP: f64 = 5.0;

/// Wait until the daemon has decoded every record the kernel wrote and its event count
/// has not moved for [`SETTLED`]. Returns its counters then and when the last event
/// (counted since `since`) was written.
fn settle(d: &Daemon, since: Instant) -> anyhow::Result<(Value, Instant)> {
    let start = Instant::now();
    let mut last = d.stats()?;
    let mut last_event = since;
    // Since when neither an event nor CPU use has been seen.
    let mut quiet_since = start;
    let mut cpu = (start, d.cpu_ticks()?);
    loop {
        // `confgate stats` itself is a process the kernel reports: allow a few records.
        let caught_up = counter(&last, "records") + 64 >= counter(&last, "kernel_events_emitted");
        if caught_up && quiet_since.elapsed() >= SETTLED {
            return Ok((last, last_event));
        }
        ensure!(
            start.elapsed() < DRAIN_LIMIT,
            "the daemon did not settle within {DRAIN_LIMIT:?}: {last}"
        );
        std::thread::sleep(POLL);
        let now = d.stats()?;
        if counter(&now, "events_emitted") != counter(&last, "events_emitted") {
            last_event = Instant::now();
            quiet_since = last_event;
        }
        last = now;
        if cpu.0.elapsed() >= SETTLED {
            let ticks = d.cpu_ticks()?;
            // Busy (e.g. correlating a backlog before it counts events): not settled.
            if ticks > cpu.1 + IDLE_TICKS {
                quiet_since = Instant::now();
            }
            cpu = (Instant::now(), ticks);
        }
    }
}

#[derive(Default)]
pub struct SessionRate {
    /// Runs paced to the target rate.
    paced: Vec<Value>,
    /// Runs as fast as the worker can.
    flat: Vec<Value>,
}

fn counter(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn series(runs: &[Value], k: &str) -> Summary {
    Summary::of(runs.iter().filter_map(|r| r[k].as_f64()).collect())
}

fn drops(runs: &[Value]) -> u64 {
    runs.iter()
        .filter_map(|r| r["kernel_ringbuf_drops"].as_u64())
        .sum()
}

/// One run of the worker in a session; its counters.
fn run_once(cx: &Cx, d: &Daemon, rate: Option<u64>) -> anyhow::Result<Value> {
    let dir = cx.dir(true, "session")?;
    // Start from a quiet daemon (the scenarios before may have left a backlog).
    let (before, _) = settle(d, Instant::now())?;
    let cpu0 = d.cpu_ticks()?;
    let t0 = Instant::now();
    let ns = workload::run_paced(cx, &dir, cx.plan.ops, Some(d), rate)?;
    let worker_secs = t0.elapsed().as_secs_f64();
    let (last, last_event) = settle(d, t0)?;
    // The daemon's CPU per event: what the pipeline costs, whatever else ran.
    let cpu_secs = (d.cpu_ticks()? - cpu0) as f64 / 100.0;
    let end_to_end = (last_event - t0).as_secs_f64().max(worker_secs);
    let delta = |k: &str| counter(&last, k).saturating_sub(counter(&before, k));
    let records = delta("kernel_events_emitted");
    let drops = delta("kernel_ringbuf_drops");
    let events = delta("events_emitted");
    let run = json!({
        "paced_ops_per_sec": rate,
        "worker_ns_per_op": ns,
        "worker_secs": worker_secs,
        "end_to_end_secs": end_to_end,
        "kernel_records_written": records,
        // Produced: written to the ring buffer or dropped because it was full.
        "kernel_records_per_sec": (records + drops) as f64 / worker_secs,
        "records_decoded": delta("records"),
        "events_emitted": events,
        "events_per_sec": events as f64 / end_to_end,
        "daemon_cpu_secs": cpu_secs,
        "daemon_cpu_us_per_event": cpu_secs * 1e6 / events.max(1) as f64,
        "kernel_ringbuf_drops": drops,
        "writes_coalesced": delta("kernel_writes_coalesced"),
        "correlation_forced": delta("correlation_forced"),
    });
    eprintln!("  scenario 3: {run}");
    Ok(run)
}

impl Scenario for SessionRate {
    fn id(&self) -> u32 {
        3
    }

    fn key(&self) -> &'static str {
        "scenario3_session_rate"
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
        let rate = (TARGET_RATE / RECORDS_PER_OP) as u64;
        self.paced.push(run_once(cx, d, Some(rate))?);
        self.flat.push(run_once(cx, d, None)?);
        Ok(())
    }

    fn results(&self) -> Value {
        json!({ "paced": self.paced, "flat_out": self.flat })
    }

    fn rows(&self) -> Vec<Row> {
        let row = |runs: &[Value], name: &str, paced: bool| {
            let rate = series(runs, "kernel_records_per_sec");
            let ev = series(runs, "events_per_sec");
            let cpu = series(runs, "daemon_cpu_us_per_event");
            let drops = drops(runs);
            let verdict = match (paced, drops) {
                // Pacing only holds the rate down; a slow machine may not reach it.
                (true, 0) if rate.median >= 0.97 * TARGET_RATE => "met".to_string(),
                (true, 0) => format!(
                    "0 drops, but only {:.0}k records/s reached",
                    rate.median / 1000.0
                ),
                (true, d) => format!("{d} drops (**missed**)"),
                (false, 0) => "no drops".to_string(),
                (false, d) => format!("{d} drops, counted"),
            };
            Row {
                scenario: name.into(),
                measure:
                    "kernel records/s produced; events/s end to end; drops; daemon CPU per event"
                        .into(),
                on: format!(
                    "{}; {}; {drops} drops; {}",
                    rate.show("rec/s", 0),
                    ev.show("ev/s", 0),
                    cpu.show("µs", 1)
                ),
                target: if paced {
                    "0 drops at 300k rec/s".into()
                } else {
                    "graceful, counted degradation".into()
                },
                verdict,
                ..Row::default()
            }
        };
        vec![
            row(
                &self.paced,
                "3 session event rate, paced to 300k rec/s",
                true,
            ),
            row(&self.flat, "3 session event rate, flat out", false),
        ]
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.paced.is_empty() && !self.flat.is_empty(),
            "scenario 3: not measured"
        );
        for r in self.paced.iter().chain(&self.flat) {
            ensure!(
                r["events_emitted"].as_u64().unwrap_or(0) > 0,
                "scenario 3: the daemon delivered no events for a session's writes: {r}"
            );
        }
        Ok(())
    }
}
