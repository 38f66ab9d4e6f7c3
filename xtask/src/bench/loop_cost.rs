//! Scenarios 1 and 2: the cost of the daemon for a process outside any session doing
//! open(O_WRONLY|O_CREAT|O_TRUNC) / write 4 KiB / close / rename in a tight loop, on files
//! outside every watched tree (1) or inside one (2). ns per iteration, per mode.
//!
//! Scenario 1 also runs in one [`Mode::Skip`] daemon per group of eBPF programs
//! (`kernel.skip_programs`): one A/B row per removal, against the default daemon of the
//! same round; and it times single system calls (`write`, `close`, `dup`, ...) in every
//! mode: what each attached tracepoint adds to that call for every process on the host.
//! Scenario 2 also runs with `gate.fanotify = "always"` and `"off"` (builds that have
//! it): the default (`"detected"`, no unconfined session live) must cost what off costs.
use std::collections::BTreeMap;

use anyhow::ensure;
use serde_json::{Value, json};

use super::{
    daemon::Hooks,
    scenario::{Cx, Daemon, Mode, Row, Scenario, verdict},
    stats::Summary,
    workload,
};

pub struct LoopCost {
    id: u32,
    key: &'static str,
    title: &'static str,
    watched: bool,
    /// Largest acceptable ratio on/off.
    target: f64,
    samples: BTreeMap<Mode, Vec<f64>>,
    /// Scenario 2: permission decisions per second during the measured run, per mode.
    decisions: BTreeMap<Mode, Vec<f64>>,
    /// Scenario 1: ns per call of single system calls, per (call, mode).
    calls: BTreeMap<(&'static str, Mode), Vec<f64>>,
    /// Scenario 2: the build has `gate.fanotify` (its default then places no marks).
    fanotify_modes: bool,
}

/// The system calls scenario 1 times one by one (`xtask worker --syscall`).
const CALLS: [&str; 6] = ["write", "close", "dup", "fcntl", "chdir", "open-read"];

/// Scenario 1's modes: the three of every build and one per group of programs left out.
const MODES_1: [Mode; 8] = [
    Mode::Off,
    Mode::On,
    Mode::OnNoFilter,
    Mode::Skip(Hooks::Writes),
    Mode::Skip(Hooks::Close),
    Mode::Skip(Hooks::Dups),
    Mode::Skip(Hooks::Fds),
    Mode::Skip(Hooks::Chdir),
];
/// Scenario 2's: those of every build and the `gate.fanotify` ones.
const MODES_2: [Mode; 5] = [
    Mode::Off,
    Mode::On,
    Mode::OnNoFilter,
    Mode::FanAlways,
    Mode::FanOff,
];

/// The call a group of programs is on, for its row.
fn call_of(h: Hooks) -> &'static str {
    match h {
        Hooks::Writes | Hooks::Fds => "write",
        Hooks::Close => "close",
        Hooks::Dups => "dup",
        Hooks::Chdir => "chdir",
    }
}

/// Target of scenario 2's permission decision rate.
const DECISIONS_TARGET: f64 = 200_000.0;

fn perm_events(d: &Daemon) -> anyhow::Result<f64> {
    Ok(d.stats()?["perm_events"].as_f64().unwrap_or(0.0))
}

impl LoopCost {
    pub fn unwatched() -> Self {
        LoopCost {
            id: 1,
            key: "scenario1_unwatched_ns_per_op",
            title: "1 unwatched work",
            watched: false,
            target: 1.01,
            samples: BTreeMap::new(),
            decisions: BTreeMap::new(),
            calls: BTreeMap::new(),
            fanotify_modes: false,
        }
    }

    pub fn watched() -> Self {
        LoopCost {
            id: 2,
            key: "scenario2_watched_outside_session_ns_per_op",
            title: "2 watched, outside session",
            watched: true,
            target: 1.10,
            samples: BTreeMap::new(),
            decisions: BTreeMap::new(),
            calls: BTreeMap::new(),
            fanotify_modes: false,
        }
    }

    fn summary(&self, m: Mode) -> Summary {
        Summary::of(self.samples.get(&m).cloned().unwrap_or_default())
    }

    /// Median of `m` over the median of the baseline.
    pub fn ratio(&self, m: Mode) -> f64 {
        self.summary(m).median / self.summary(Mode::Off).median
    }
}

impl Scenario for LoopCost {
    fn id(&self) -> u32 {
        self.id
    }

    fn key(&self) -> &'static str {
        self.key
    }

    fn modes(&self) -> &'static [Mode] {
        if self.watched { &MODES_2 } else { &MODES_1 }
    }

    fn daemon_toml(&mut self, cx: &Cx) -> Option<String> {
        // Scenario 2's tree is gated (for sessions): every open there by the worker, which
        // is outside any session, passes the permission queue on the fast path.
        self.watched.then(|| {
            format!(
                "[[gate.rule]]\nname = \"bench-loop\"\npaths = [\"{}/**\"]\nverdict = \"ask\"\n",
                cx.watched.join("loop").display()
            )
        })
    }

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        self.fanotify_modes = cx.features.fanotify_modes;
        let dir = cx.dir(self.watched, "loop")?;
        if !self.watched {
            for name in CALLS {
                let ns = workload::syscall(cx, &dir, name, cx.plan.ops * 5)?;
                self.calls.entry((name, mode)).or_default().push(ns);
            }
        }
        // Warm-up (page cache, dentries, the daemon's first sight of the worker), then
        // the measured run.
        workload::run(cx, &dir, cx.plan.ops / 10, None)?;
        let before = match daemon {
            Some(d) if self.watched => Some(perm_events(d)?),
            _ => None,
        };
        let ns = workload::run(cx, &dir, cx.plan.ops, None)?;
        self.samples.entry(mode).or_default().push(ns);
        if let (Some(before), Some(d)) = (before, daemon) {
            // Every open of the loop is one decision; the run took ops * ns.
            let secs = cx.plan.ops as f64 * ns / 1e9;
            let n = perm_events(d)? - before;
            self.decisions.entry(mode).or_default().push(n / secs);
        }
        Ok(())
    }

    fn results(&self) -> Value {
        let per_mode: BTreeMap<String, Summary> = self
            .samples
            .iter()
            .map(|(m, v)| (m.name(), Summary::of(v.clone())))
            .collect();
        let decisions: BTreeMap<String, Summary> = self
            .decisions
            .iter()
            .map(|(m, v)| (m.name(), Summary::of(v.clone())))
            .collect();
        let mut calls: BTreeMap<String, BTreeMap<String, Summary>> = BTreeMap::new();
        for ((name, m), v) in &self.calls {
            calls
                .entry((*name).to_string())
                .or_default()
                .insert(m.name(), Summary::of(v.clone()));
        }
        json!({
            "ns_per_op": per_mode,
            "perm_decisions_per_sec": decisions,
            "ns_per_call": calls,
        })
    }

    fn rows(&self) -> Vec<Row> {
        let on = self.ratio(Mode::On);
        let nf = self.ratio(Mode::OnNoFilter);
        let default = if self.fanotify_modes && self.watched {
            " (gate.fanotify = detected, no unconfined session)"
        } else {
            ""
        };
        let mut rows = vec![Row {
            scenario: format!("{}{default}", self.title),
            measure: "open/write 4K/close/rename".into(),
            off: self.summary(Mode::Off).show("ns/op", 0),
            on: self.summary(Mode::On).show("ns/op", 0),
            on_no_filter: self.summary(Mode::OnNoFilter).show("ns/op", 0),
            ratio: format!("{on:.3} / {nf:.3}"),
            target: format!("<= {}", self.target),
            verdict: verdict(on <= self.target),
        }];
        let d = |m| Summary::of(self.decisions.get(&m).cloned().unwrap_or_default());
        if self.watched {
            for (m, what) in [(Mode::FanAlways, "always"), (Mode::FanOff, "off")] {
                if self.samples.contains_key(&m) {
                    let r = self.ratio(m);
                    rows.push(Row {
                        scenario: format!("2 watched, gate.fanotify = {what}"),
                        measure: format!(
                            "open/write 4K/close/rename; {} permission decisions/s",
                            d(m).median.round()
                        ),
                        off: self.summary(Mode::Off).show("ns/op", 0),
                        on: self.summary(m).show("ns/op", 0),
                        ratio: format!("{r:.3}"),
                        target: format!("<= {}", self.target),
                        verdict: verdict(r <= self.target),
                        ..Row::default()
                    });
                }
            }
            let gated = if self.fanotify_modes {
                Mode::FanAlways
            } else {
                Mode::On
            };
            rows.push(Row {
                scenario: "2 permission decisions".into(),
                measure: if self.fanotify_modes {
                    "FAN_OPEN_PERM events answered per second (one writer): default / always".into()
                } else {
                    "FAN_OPEN_PERM events answered per second (one writer)".into()
                },
                on: if self.fanotify_modes {
                    format!("{} / {}", d(Mode::On).show("/s", 0), d(gated).show("/s", 0))
                } else {
                    d(Mode::On).show("/s", 0)
                },
                on_no_filter: d(Mode::OnNoFilter).show("/s", 0),
                target: if self.fanotify_modes {
                    "0 by default; >= 200000/s when on".into()
                } else {
                    ">= 200000/s".into()
                },
                verdict: verdict(
                    d(gated).median >= DECISIONS_TARGET
                        && (!self.fanotify_modes || d(Mode::On).max == 0.0),
                ),
                ..Row::default()
            });
            return rows;
        }
        let calls = |name: &'static str, m: Mode| {
            Summary::of(self.calls.get(&(name, m)).cloned().unwrap_or_default())
        };
        for h in Hooks::ALL {
            let m = Mode::Skip(h);
            if !self.samples.contains_key(&m) {
                continue;
            }
            let (r, on_ns, skip_ns) = (
                self.ratio(m),
                self.summary(Mode::On).median,
                self.summary(m).median,
            );
            let call = call_of(h);
            rows.push(Row {
                scenario: format!("1 without {}", h.title()),
                measure: format!(
                    "loop: {:+.0} ns/op against on; {call}(2): {:.0} ns/call on, {:.0} without, {:.0} off",
                    skip_ns - on_ns,
                    calls(call, Mode::On).median,
                    calls(call, m).median,
                    calls(call, Mode::Off).median,
                ),
                off: self.summary(Mode::Off).show("ns/op", 0),
                on: self.summary(m).show("ns/op", 0),
                ratio: format!("{r:.3}"),
                target: format!("<= {}", self.target),
                verdict: verdict(r <= self.target),
                ..Row::default()
            });
        }
        for name in CALLS {
            let (off, on, nf) = (
                calls(name, Mode::Off),
                calls(name, Mode::On),
                calls(name, Mode::OnNoFilter),
            );
            if off.is_empty() {
                continue;
            }
            rows.push(Row {
                scenario: format!("1 per call: {name}"),
                measure: format!(
                    "ns per call, outside sessions; added {:.0} ns",
                    on.median - off.median
                ),
                off: off.show("ns", 0),
                on: on.show("ns", 0),
                on_no_filter: nf.show("ns", 0),
                ratio: format!("{:.2}", on.median / off.median),
                ..Row::default()
            });
        }
        rows
    }

    fn check(&self) -> anyhow::Result<()> {
        for (m, v) in &self.samples {
            ensure!(
                !v.is_empty() && v.iter().all(|v| v.is_finite() && *v > 0.0),
                "scenario {}: no valid samples in mode {m:?}",
                self.id
            );
        }
        for m in Mode::ALL {
            ensure!(
                self.samples.contains_key(&m),
                "scenario {}: not measured in mode {m:?}",
                self.id
            );
        }
        // Scenario 2 measures the permission queue too: where the gate is on, each measured
        // run must have had decisions (a gate that marks nothing would pass the loop
        // untouched). With gate.fanotify, only "always" places marks here.
        if self.watched {
            let gated: &[Mode] = if self.fanotify_modes {
                &[Mode::FanAlways]
            } else {
                &[Mode::On, Mode::OnNoFilter]
            };
            for m in gated {
                let d = self.decisions.get(m).map(Vec::as_slice).unwrap_or_default();
                ensure!(
                    !d.is_empty() && d.iter().all(|v| v.is_finite() && *v > 0.0),
                    "scenario 2: no permission decisions in mode {m:?}: {d:?}"
                );
            }
        }
        Ok(())
    }
}
