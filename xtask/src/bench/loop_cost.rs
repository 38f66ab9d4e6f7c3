//! Scenarios 1 and 2: the cost of the daemon for a process outside any session doing
//! open(O_WRONLY|O_CREAT|O_TRUNC) / write 4 KiB / close / rename in a tight loop, on files
//! outside every watched tree (1) or inside one (2). ns per iteration, per mode.
use std::collections::BTreeMap;

use anyhow::ensure;
use serde_json::{Value, json};

use super::{
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
        &Mode::ALL
    }

    fn daemon_toml(&self, cx: &Cx) -> Option<String> {
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
        let dir = cx.dir(self.watched, "loop")?;
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
        let per_mode: BTreeMap<String, Summary> = Mode::ALL
            .iter()
            .map(|m| (format!("{m:?}"), self.summary(*m)))
            .collect();
        let decisions: BTreeMap<String, Summary> = self
            .decisions
            .iter()
            .map(|(m, v)| (format!("{m:?}"), Summary::of(v.clone())))
            .collect();
        json!({ "ns_per_op": per_mode, "perm_decisions_per_sec": decisions })
    }

    fn rows(&self) -> Vec<Row> {
        let on = self.ratio(Mode::On);
        let nf = self.ratio(Mode::OnNoFilter);
        let mut rows = vec![Row {
            scenario: self.title.into(),
            measure: "open/write 4K/close/rename".into(),
            off: self.summary(Mode::Off).show("ns/op", 0),
            on: self.summary(Mode::On).show("ns/op", 0),
            on_no_filter: self.summary(Mode::OnNoFilter).show("ns/op", 0),
            ratio: format!("{on:.3} / {nf:.3}"),
            target: format!("<= {}", self.target),
            verdict: verdict(on <= self.target),
        }];
        if self.watched {
            let d = |m| Summary::of(self.decisions.get(&m).cloned().unwrap_or_default());
            rows.push(Row {
                scenario: "2 permission decisions".into(),
                measure: "FAN_OPEN_PERM events answered per second (one writer)".into(),
                on: d(Mode::On).show("/s", 0),
                on_no_filter: d(Mode::OnNoFilter).show("/s", 0),
                target: ">= 200000/s".into(),
                verdict: verdict(d(Mode::On).median >= DECISIONS_TARGET),
                ..Row::default()
            });
        }
        rows
    }

    fn check(&self) -> anyhow::Result<()> {
        for m in Mode::ALL {
            let s = self.summary(m);
            ensure!(
                !s.is_empty() && s.samples.iter().all(|v| v.is_finite() && *v > 0.0),
                "scenario {}: no valid samples in mode {m:?}",
                self.id
            );
        }
        // Scenario 2 measures the permission queue too: with a daemon, each measured run
        // must have had decisions (a gate that marks nothing would pass the loop untouched).
        if self.watched {
            for m in [Mode::On, Mode::OnNoFilter] {
                let d = self
                    .decisions
                    .get(&m)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                ensure!(
                    !d.is_empty() && d.iter().all(|v| v.is_finite() && *v > 0.0),
                    "scenario 2: no permission decisions in mode {m:?}: {d:?}"
                );
            }
        }
        Ok(())
    }
}
