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

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        mode: Mode,
        _daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let dir = cx.dir(self.watched, "loop")?;
        // Warm-up (page cache, dentries, the daemon's first sight of the worker), then
        // the measured run.
        workload::run(cx, &dir, cx.plan.ops / 10, None)?;
        let ns = workload::run(cx, &dir, cx.plan.ops, None)?;
        self.samples.entry(mode).or_default().push(ns);
        Ok(())
    }

    fn results(&self) -> Value {
        let per_mode: BTreeMap<String, Summary> = Mode::ALL
            .iter()
            .map(|m| (format!("{m:?}"), self.summary(*m)))
            .collect();
        json!(per_mode)
    }

    fn rows(&self) -> Vec<Row> {
        let on = self.ratio(Mode::On);
        let nf = self.ratio(Mode::OnNoFilter);
        vec![Row {
            scenario: self.title.into(),
            measure: "open/write 4K/close/rename".into(),
            off: self.summary(Mode::Off).show("ns/op", 0),
            on: self.summary(Mode::On).show("ns/op", 0),
            on_no_filter: self.summary(Mode::OnNoFilter).show("ns/op", 0),
            ratio: format!("{on:.3} / {nf:.3}"),
            target: format!("<= {}", self.target),
            verdict: verdict(on <= self.target),
        }]
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
        Ok(())
    }
}
