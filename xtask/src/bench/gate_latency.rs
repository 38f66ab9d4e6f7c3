//! Scenarios 4 and 5: what the gate adds to an agent's `open()`.
//!
//! 4. Decision latency without a human: a session process opens a gated file under an
//!    `allow` rule, and under an `ask` rule with a live grant (obtained by the worker's
//!    first, untimed open, approved by the auto-approver). Added latency per open =
//!    percentile with the daemon minus the same percentile without it (same files, same
//!    worker, same round).
//!
//!    Next to it, in the daemon-off part of each round, the machine's wake-up floor: one
//!    byte through pipes to an echoing child process and back (`xtask worker --pingpong`),
//!    with both processes on one CPU and free to run on any. A permission round trip is
//!    such a hand-off (the opener wakes the listener, the listener wakes the opener), so
//!    on a machine where the hand-off alone costs more than the target, no permission
//!    daemon can meet it; the table shows both in the same run.
//! 5. Approval round trip: every timed open is of a new gated file, so each one is held
//!    while the request goes through the real approval service (the daemon's local one,
//!    over its Unix socket) to the auto-approver and the decision comes back. Builds with
//!    the `confgate-confine` helper measure it twice: in a confined session (the seccomp
//!    supervisor holds the open, then performs it and injects the descriptor) and in a
//!    `--no-confine` session (the fanotify gate). Scenario 4 and scenario 5's first row
//!    stay on the fanotify gate (`--no-confine`) there, so that they compare across
//!    builds; scenario 8 measures the confined session's opens.
use std::collections::BTreeMap;

use anyhow::ensure;
use serde_json::{Value, json};

use super::{
    auto_approver::AutoApprover,
    scenario::{Cx, Daemon, Mode, Row, Scenario, verdict},
    stats::Summary,
    workload::{self, How, Latency},
};

/// Which gate path a variant measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// Scenario 4, `allow` rule.
    Allow,
    /// Scenario 4, `ask` rule with a live grant.
    Grant,
    /// Scenario 5, one approval per open.
    RoundTrip,
    /// Scenario 5 in a confined session (builds with the helper).
    RoundTripConfined,
}

impl Variant {
    fn dir(self) -> &'static str {
        match self {
            Variant::Allow => "gate-allow",
            Variant::Grant => "gate-grant",
            Variant::RoundTrip => "gate-ask",
            Variant::RoundTripConfined => "gate-ask-confined",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Allow => "allow rule",
            Variant::Grant => "live grant",
            Variant::RoundTrip => "approval round trip",
            Variant::RoundTripConfined => "approval round trip, confined session (supervisor)",
        }
    }
}

/// The percentile `f` of each round's latencies, over the rounds.
fn summary(rounds: Option<&Vec<Latency>>, f: fn(&Latency) -> f64) -> Summary {
    Summary::of(
        rounds
            .map(|l| l.iter().map(f).collect())
            .unwrap_or_default(),
    )
}

/// Percentile samples (ns) per (variant, mode).
#[derive(Default)]
struct Samples(BTreeMap<(Variant, Mode), Vec<Latency>>);

impl Samples {
    fn get(&self, v: Variant, m: Mode, f: fn(&Latency) -> f64) -> Summary {
        summary(self.0.get(&(v, m)), f)
    }

    /// Median over rounds of (on - off) of the percentile `f`, in µs.
    fn added_us(&self, v: Variant, f: fn(&Latency) -> f64) -> Summary {
        let on = self.0.get(&(v, Mode::On)).cloned().unwrap_or_default();
        let off = self.0.get(&(v, Mode::Off)).cloned().unwrap_or_default();
        Summary::of(
            on.iter()
                .zip(off.iter())
                .map(|(a, b)| (f(a) - f(b)) / 1000.0)
                .collect(),
        )
    }
}

const P50: fn(&Latency) -> f64 = |l| l.p50_ns;
const P99: fn(&Latency) -> f64 = |l| l.p99_ns;
const P999: fn(&Latency) -> f64 = |l| l.p999_ns;

/// The rule a variant's files are gated by.
fn rule(cx: &Cx, v: Variant) -> String {
    let (name, verdict) = match v {
        Variant::Allow => ("bench-allow", "allow"),
        Variant::Grant => ("bench-grant", "ask"),
        Variant::RoundTrip => ("bench-ask", "ask"),
        Variant::RoundTripConfined => ("bench-ask-confined", "ask"),
    };
    format!(
        "[[gate.rule]]\nname = {name:?}\npaths = [\"{}/**\"]\nverdict = {verdict:?}\ntimeout = \"20s\"\n",
        cx.watched.join(v.dir()).display()
    )
}

pub struct GateLatency {
    id: u32,
    samples: Samples,
    /// Scenario 4: pipe round trips per round, keyed by "pinned to one CPU".
    floor: BTreeMap<bool, Vec<Latency>>,
    approved: u64,
    /// The build confines `confgate run` sessions.
    confine: bool,
}

impl GateLatency {
    pub fn decision() -> Self {
        GateLatency {
            id: 4,
            samples: Samples::default(),
            floor: BTreeMap::new(),
            approved: 0,
            confine: false,
        }
    }

    pub fn round_trip() -> Self {
        GateLatency {
            id: 5,
            samples: Samples::default(),
            floor: BTreeMap::new(),
            approved: 0,
            confine: false,
        }
    }

    fn variants(&self) -> &'static [Variant] {
        if self.id == 4 {
            &[Variant::Allow, Variant::Grant]
        } else if self.confine {
            &[Variant::RoundTrip, Variant::RoundTripConfined]
        } else {
            &[Variant::RoundTrip]
        }
    }

    /// (timed opens, files, untimed first opens) of a variant.
    fn sizes(&self, cx: &Cx, v: Variant, round: usize) -> (u64, u64, u64) {
        let opens = cx.plan.ops;
        match v {
            Variant::Allow => (opens, 1, opens / 10),
            Variant::Grant => (opens, 1, 1),
            // A fresh set of files per round: each open needs its own approval.
            Variant::RoundTrip | Variant::RoundTripConfined => {
                let n = if cx.plan.quick { 50 } else { 300 };
                let _ = round;
                (n, n, 0)
            }
        }
    }
}

impl GateLatency {
    /// Creates (once) the directory and files of a variant's round, as the harness: outside
    /// any session, so not gated. Created by the worker inside its session, the creation
    /// itself went through the gate and obtained the grants, and the timed opens of that
    /// round measured the live-grant path instead of round trips.
    fn files(&self, cx: &Cx, v: Variant, round: usize) -> anyhow::Result<std::path::PathBuf> {
        // Round trips need files no grant covers yet: one directory per round (the same
        // for both modes of the round).
        let sub = if matches!(v, Variant::RoundTrip | Variant::RoundTripConfined) {
            format!("{}/r{round}", v.dir())
        } else {
            v.dir().to_string()
        };
        let dir = cx.dir(true, &sub)?;
        let (_, files, _) = self.sizes(cx, v, round);
        for i in 0..files {
            let p = dir.join(format!("f{i}"));
            if !p.exists() {
                std::fs::write(&p, b"x")?;
            }
        }
        Ok(dir)
    }

    /// Scenario 4's wake-up floor: the percentile `f` over rounds.
    fn floor_of(&self, same_cpu: bool, f: fn(&Latency) -> f64) -> Summary {
        summary(self.floor.get(&same_cpu), f)
    }
}

impl Scenario for GateLatency {
    fn id(&self) -> u32 {
        self.id
    }

    fn key(&self) -> &'static str {
        if self.id == 4 {
            "scenario4_gate_decision_latency"
        } else {
            "scenario5_approval_round_trip"
        }
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Off, Mode::On]
    }

    fn daemon_toml(&mut self, cx: &Cx) -> Option<String> {
        // Every round's files exist before any daemon starts: a directory created inside a
        // gated tree while the daemon runs is marked only once the daemon has seen it
        // appear, and opens in it before that are not held (a round measured 2 µs "round
        // trips" that way).
        self.confine = cx.features.confine;
        for &v in self.variants() {
            for round in 0..cx.plan.rounds {
                if let Err(e) = self.files(cx, v, round) {
                    eprintln!("scenario {}: cannot create its files: {e:#}", self.id);
                }
            }
        }
        Some(self.variants().iter().map(|&v| rule(cx, v)).collect())
    }

    fn measure(
        &mut self,
        cx: &Cx,
        round: usize,
        mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let approver = match daemon {
            Some(d) => Some(AutoApprover::start(&d.approver_socket)?),
            None => None,
        };
        for &v in self.variants() {
            let dir = self.files(cx, v, round)?;
            let (ops, files, warmup) = self.sizes(cx, v, round);
            let how = How {
                read: false,
                no_confine: v != Variant::RoundTripConfined,
                seccomp: None,
            };
            let l = workload::latency(cx, &dir, ops, files, warmup, daemon, how)?;
            self.samples.0.entry((v, mode)).or_default().push(l);
        }
        if let Some(a) = approver {
            self.approved += a.stop()?;
        }
        if self.id == 4 && mode == Mode::Off {
            for same_cpu in [true, false] {
                let l = workload::pingpong(cx, cx.plan.ops, same_cpu)?;
                self.floor.entry(same_cpu).or_default().push(l);
            }
        }
        Ok(())
    }

    fn results(&self) -> Value {
        let mut out = json!({ "auto_approved": self.approved });
        for &v in self.variants() {
            let mut per = json!({});
            for m in [Mode::Off, Mode::On] {
                per[format!("{m:?}")] = json!({
                    "p50_ns": self.samples.get(v, m, P50),
                    "p99_ns": self.samples.get(v, m, P99),
                    "p999_ns": self.samples.get(v, m, P999),
                });
            }
            per["added_us"] = json!({
                "p50": self.samples.added_us(v, P50),
                "p99": self.samples.added_us(v, P99),
                "p999": self.samples.added_us(v, P999),
            });
            out[v.dir()] = per;
        }
        for (same_cpu, key) in [(true, "floor_same_cpu"), (false, "floor_any_cpu")] {
            if self.floor.contains_key(&same_cpu) {
                out[key] = json!({
                    "p50_ns": self.floor_of(same_cpu, P50),
                    "p99_ns": self.floor_of(same_cpu, P99),
                    "p999_ns": self.floor_of(same_cpu, P999),
                });
            }
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        let us = |s: Summary| s.show("µs", 1);
        let floor = [(true, "one CPU"), (false, "any CPU")]
            .into_iter()
            .filter(|(same_cpu, _)| self.floor.contains_key(same_cpu))
            .map(|(same_cpu, cpus)| Row {
                scenario: format!("4 reference: wake-up floor, {cpus}"),
                measure: "pipe round trip to another process, p50 / p99 / p99.9 (no daemon)".into(),
                off: format!(
                    "{} / {} / {}",
                    us(self.floor_of(same_cpu, |l| l.p50_ns / 1000.0)),
                    us(self.floor_of(same_cpu, |l| l.p99_ns / 1000.0)),
                    us(self.floor_of(same_cpu, |l| l.p999_ns / 1000.0)),
                ),
                ..Row::default()
            });
        self.variants()
            .iter()
            .map(|&v| {
                let off = |f| self.samples.get(v, Mode::Off, f).median / 1000.0;
                let on = |f| self.samples.get(v, Mode::On, f).median / 1000.0;
                let (title, target, ok) = if self.id == 4 {
                    let p99 = self.samples.added_us(v, P99).median;
                    (
                        format!("4 gate decision, {}", v.name()),
                        "added p99 < 50 µs",
                        p99 < 50.0,
                    )
                } else {
                    (format!("5 {}", v.name()), "p99 < 2 ms", on(P99) < 2000.0)
                };
                Row {
                    scenario: title,
                    measure: "open() latency p50 / p99 / p99.9; added by the daemon".into(),
                    off: format!("{:.1} / {:.1} / {:.1} µs", off(P50), off(P99), off(P999)),
                    on: format!(
                        "{:.1} / {:.1} / {:.1} µs; added {} / {} / {}",
                        on(P50),
                        on(P99),
                        on(P999),
                        us(self.samples.added_us(v, P50)),
                        us(self.samples.added_us(v, P99)),
                        us(self.samples.added_us(v, P999)),
                    ),
                    on_no_filter: String::new(),
                    ratio: format!("{:.2}", on(P99) / off(P99)),
                    target: target.into(),
                    verdict: verdict(ok),
                }
            })
            .chain(floor)
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        for &v in self.variants() {
            for m in [Mode::Off, Mode::On] {
                let s = self.samples.get(v, m, P50);
                ensure!(
                    !s.is_empty() && s.samples.iter().all(|x| *x > 0.0),
                    "scenario {}: no latency samples for {} in mode {m:?}",
                    self.id,
                    v.name()
                );
            }
        }
        ensure!(
            self.id != 4
                || self
                    .floor
                    .values()
                    .all(|l| l.iter().all(|x| x.p50_ns > 0.0)),
            "scenario 4: no wake-up floor samples"
        );
        ensure!(
            self.id == 4 || self.approved > 0,
            "scenario 5: the auto-approver approved nothing"
        );
        Ok(())
    }
}
