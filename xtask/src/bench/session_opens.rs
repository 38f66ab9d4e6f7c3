//! Scenario 8: what a confined session (issue 15: Landlock + the seccomp supervisor) adds
//! to its own opens. The same worker opens the same files outside any session and inside
//! `confgate run --agent bench` of the same daemon, in the same round; added latency =
//! percentile inside minus the same percentile outside.
//!
//! - write opens of a gated file under an `allow` rule, and under an `ask` rule with a live
//!   grant (the worker's first, untimed open obtains it through the auto-approver): the
//!   supervisor opens the file with the caller's credentials and injects the descriptor;
//! - write opens of a file outside every gated tree: the supervisor answers CONTINUE;
//! - read-only opens of a gated file: not notified at all (Landlock allows reads);
//! - write opens of a gated file under a `mode = "review"` rule (issue 17): never held,
//!   performed by the supervisor like an allowed one; each close completes a change that
//!   is reviewed after the fact (the auto-approver approves what is filed): the writer's
//!   cost of review mode per write.
//!
//! A build without the `confgate-confine` helper runs the session unconfined (the
//! fanotify gate); the rows then say so.
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::ensure;
use serde_json::{Value, json};

use super::{
    auto_approver::AutoApprover,
    scenario::{Cx, Daemon, Mode, Row, Scenario, verdict},
    stats::Summary,
    workload::{self, How, Latency},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Allow,
    Grant,
    Ungated,
    Read,
    Review,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Allow,
        Variant::Grant,
        Variant::Ungated,
        Variant::Read,
        Variant::Review,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::Allow => "gated_write_allow_rule",
            Variant::Grant => "gated_write_live_grant",
            Variant::Ungated => "ungated_write",
            Variant::Read => "gated_read_only",
            Variant::Review => "gated_write_review_rule",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Variant::Allow => "write open, gated path, allow rule",
            Variant::Grant => "write open, gated path, live grant",
            Variant::Ungated => "write open, path not gated",
            Variant::Read => "read-only open, gated path",
            Variant::Review => "write open, gated path, review rule",
        }
    }

    /// Added p99 target, µs (`None`: measured, no target set).
    fn target_us(self) -> Option<f64> {
        match self {
            Variant::Allow | Variant::Grant => Some(50.0),
            Variant::Ungated => Some(15.0),
            Variant::Read => Some(1.0),
            Variant::Review => None,
        }
    }

    /// (under the watched tree?, directory name).
    fn dir(self) -> (bool, &'static str) {
        match self {
            Variant::Allow | Variant::Read => (true, "sess-allow"),
            Variant::Grant => (true, "sess-grant"),
            Variant::Ungated => (false, "sess-free"),
            Variant::Review => (true, "sess-review"),
        }
    }
}

#[derive(Default)]
pub struct SessionOpens {
    /// (variant, inside a session) -> one latency per round.
    samples: BTreeMap<(Variant, bool), Vec<Latency>>,
    confined: bool,
    approved: u64,
}

const P50: fn(&Latency) -> f64 = |l| l.p50_ns;
const P99: fn(&Latency) -> f64 = |l| l.p99_ns;
const P999: fn(&Latency) -> f64 = |l| l.p999_ns;

impl SessionOpens {
    fn path(cx: &Cx, v: Variant) -> anyhow::Result<PathBuf> {
        let (watched, name) = v.dir();
        let dir = cx.dir(watched, name)?;
        let f = dir.join("f0");
        if !f.exists() {
            std::fs::write(&f, b"x")?;
        }
        Ok(dir)
    }

    fn get(&self, v: Variant, inside: bool, f: fn(&Latency) -> f64) -> Summary {
        Summary::of(
            self.samples
                .get(&(v, inside))
                .map(|l| l.iter().map(f).collect())
                .unwrap_or_default(),
        )
    }

    /// Median over rounds of (inside - outside) of the percentile `f`, in µs.
    fn added_us(&self, v: Variant, f: fn(&Latency) -> f64) -> Summary {
        let inside = self.samples.get(&(v, true)).cloned().unwrap_or_default();
        let outside = self.samples.get(&(v, false)).cloned().unwrap_or_default();
        Summary::of(
            inside
                .iter()
                .zip(outside.iter())
                .map(|(a, b)| (f(a) - f(b)) / 1000.0)
                .collect(),
        )
    }
}

impl Scenario for SessionOpens {
    fn id(&self) -> u32 {
        8
    }

    fn key(&self) -> &'static str {
        "scenario8_session_opens"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::On]
    }

    fn daemon_toml(&mut self, cx: &Cx) -> Option<String> {
        // The files exist before any daemon starts (see gate_latency).
        for v in Variant::ALL {
            if let Err(e) = Self::path(cx, v) {
                eprintln!("scenario 8: cannot create its files: {e:#}");
            }
        }
        let rule = |name: &str, dir: &str, verdict: &str| {
            format!(
                "[[gate.rule]]\nname = {name:?}\npaths = [\"{}/**\"]\nverdict = {verdict:?}\ntimeout = \"20s\"\n",
                cx.watched.join(dir).display()
            )
        };
        Some(
            rule("bench-session-allow", "sess-allow", "allow")
                + &rule("bench-session-grant", "sess-grant", "ask")
                + &rule("bench-session-review", "sess-review", "ask")
                + "mode = \"review\"\n",
        )
    }

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        _mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let Some(d) = daemon else {
            return Ok(());
        };
        self.confined = cx.features.confine;
        let approver = AutoApprover::start(&d.approver_socket)?;
        let ops = cx.plan.ops;
        // Every baseline first, with no host-wide marks left by an earlier scenario's
        // unconfined sessions ("detected" removes them when the last one ends); then the
        // sessions.
        d.wait_marks_removed()?;
        for inside in [false, true] {
            for v in Variant::ALL {
                let dir = Self::path(cx, v)?;
                let how = How {
                    read: v == Variant::Read,
                    no_confine: false,
                    seccomp: None,
                };
                let warmup = if v == Variant::Grant && inside {
                    1
                } else {
                    ops / 10
                };
                let session = inside.then_some(d);
                let l = workload::latency(cx, &dir, ops, 1, warmup, session, how)?;
                self.samples.entry((v, inside)).or_default().push(l);
            }
        }
        self.approved += approver.stop()?;
        Ok(())
    }

    fn results(&self) -> Value {
        let mut out = json!({ "confined": self.confined, "auto_approved": self.approved });
        for v in Variant::ALL {
            let mut per = json!({});
            for (inside, key) in [(false, "outside"), (true, "inside")] {
                per[key] = json!({
                    "p50_ns": self.get(v, inside, P50),
                    "p99_ns": self.get(v, inside, P99),
                    "p999_ns": self.get(v, inside, P999),
                });
            }
            per["added_us"] = json!({
                "p50": self.added_us(v, P50),
                "p99": self.added_us(v, P99),
                "p999": self.added_us(v, P999),
            });
            out[v.key()] = per;
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        let us = |s: Summary| s.show("µs", 1);
        let how = if self.confined {
            "confined session"
        } else {
            "session NOT confined (build without confgate-confine)"
        };
        Variant::ALL
            .iter()
            .map(|&v| {
                let at = |inside, f| self.get(v, inside, f).median / 1000.0;
                let p99 = self.added_us(v, P99).median;
                Row {
                    scenario: format!("8 {how}: {}", v.title()),
                    measure: "open() p50 / p99 / p99.9: outside a session (off column), inside (on); added".into(),
                    off: format!(
                        "{:.1} / {:.1} / {:.1} µs",
                        at(false, P50),
                        at(false, P99),
                        at(false, P999)
                    ),
                    on: format!(
                        "{:.1} / {:.1} / {:.1} µs; added {} / {} / {}",
                        at(true, P50),
                        at(true, P99),
                        at(true, P999),
                        us(self.added_us(v, P50)),
                        us(self.added_us(v, P99)),
                        us(self.added_us(v, P999)),
                    ),
                    ratio: format!("{:.2}", at(true, P99) / at(false, P99)),
                    target: v
                        .target_us()
                        .map(|t| format!("added p99 < {t} µs"))
                        .unwrap_or_default(),
                    verdict: v.target_us().map(|t| verdict(p99 < t)).unwrap_or_default(),
                    ..Row::default()
                }
            })
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        for v in Variant::ALL {
            for inside in [false, true] {
                let s = self.get(v, inside, P50);
                ensure!(
                    !s.is_empty() && s.samples.iter().all(|x| *x > 0.0),
                    "scenario 8: no samples for {} (inside: {inside})",
                    v.title()
                );
            }
        }
        Ok(())
    }
}
