//! Scenario 10: the gate mechanisms' own costs, re-measured with the project's code
//! (`../shared/research/gate-mechanisms.md` had them from C spikes), daemon off:
//!
//! - `FAN_OPEN_PERM`: read-only open + close of one file, without a mark and with the
//!   project's permission listener (`monitor::gate::{PermGroup, Marks, Listener}`) marking
//!   its directory and answering at once (a process outside sessions: the fast path);
//! - seccomp user notification: write open + close by a thread whose filter notifies
//!   write opens (the product's filter), answered by a supervisor thread with `monitor::os::seccomp::notify`
//!   (CONTINUE, CONTINUE with `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, and ADDFD of a file
//!   the supervisor opened, with sync wake-up), against the same worker without a filter.
use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context as _, ensure};
use monitor::gate::{Decider, FastVerdict, IntentSource, Listener, Marks, PermEvent, PermGroup};
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario},
    stats::Summary,
    workload::{self, How, Latency},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// Read-only opens, no mark.
    ReadPlain,
    /// Read-only opens, FAN_OPEN_PERM mark answered by the project's listener.
    ReadFanPerm,
    /// Write opens, no filter.
    WritePlain,
    WriteContinue,
    WriteContinueSync,
    WriteAddfdSync,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::ReadPlain,
        Variant::ReadFanPerm,
        Variant::WritePlain,
        Variant::WriteContinue,
        Variant::WriteContinueSync,
        Variant::WriteAddfdSync,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::ReadPlain => "read_open_no_mark",
            Variant::ReadFanPerm => "read_open_fan_open_perm",
            Variant::WritePlain => "write_open_no_filter",
            Variant::WriteContinue => "write_open_notify_continue",
            Variant::WriteContinueSync => "write_open_notify_continue_sync_wake_up",
            Variant::WriteAddfdSync => "write_open_notify_addfd_sync_wake_up",
        }
    }

    fn seccomp(self) -> Option<&'static str> {
        match self {
            Variant::WriteContinue => Some("continue"),
            Variant::WriteContinueSync => Some("continue-sync"),
            Variant::WriteAddfdSync => Some("addfd-sync"),
            _ => None,
        }
    }

    /// The baseline a variant is compared with.
    fn base(self) -> Variant {
        match self {
            Variant::ReadPlain | Variant::ReadFanPerm => Variant::ReadPlain,
            _ => Variant::WritePlain,
        }
    }
}

/// Allows every open at once (the listener asks only for session members anyway).
struct AllowAll;

impl Decider for AllowAll {
    fn decide(&self, _event: &PermEvent) -> FastVerdict {
        FastVerdict::Allow
    }
}

#[derive(Default)]
pub struct Mechanisms {
    samples: BTreeMap<Variant, Vec<Latency>>,
}

const P50: fn(&Latency) -> f64 = |l| l.p50_ns;
const P99: fn(&Latency) -> f64 = |l| l.p99_ns;

impl Mechanisms {
    fn get(&self, v: Variant, f: fn(&Latency) -> f64) -> Summary {
        Summary::of(
            self.samples
                .get(&v)
                .map(|l| l.iter().map(|x| f(x) / 1000.0).collect())
                .unwrap_or_default(),
        )
    }

    /// Mean per open (ns_per_op of the worker is not kept: p50 stands for it).
    fn added(&self, v: Variant, f: fn(&Latency) -> f64) -> Summary {
        let a = self.samples.get(&v).cloned().unwrap_or_default();
        let b = self.samples.get(&v.base()).cloned().unwrap_or_default();
        Summary::of(
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (f(x) - f(y)) / 1000.0)
                .collect(),
        )
    }
}

impl Scenario for Mechanisms {
    fn id(&self) -> u32 {
        10
    }

    fn key(&self) -> &'static str {
        "scenario10_gate_mechanisms"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Off]
    }

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        _mode: Mode,
        _daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let ops = cx.plan.ops;
        let dir = cx.dir(false, "mechanisms")?;
        for v in Variant::ALL {
            let how = How {
                read: matches!(v, Variant::ReadPlain | Variant::ReadFanPerm),
                no_confine: false,
                seccomp: v.seccomp(),
            };
            let listener = if v == Variant::ReadFanPerm {
                let group = Arc::new(PermGroup::new().context("fanotify permission group")?);
                Marks::new(group.clone())
                    .mark_tree(&dir)
                    .context("marking the directory")?;
                let (tx, _rx) = tokio::sync::mpsc::channel(16);
                Some(
                    Listener::start(
                        group,
                        Arc::new(IntentSource::proc_only()),
                        Arc::new(AllowAll),
                        tx,
                    )
                    .context("starting the permission listener")?,
                )
            } else {
                None
            };
            let l = workload::latency(cx, &dir, ops, 1, ops / 10, None, how);
            if let Some(mut listener) = listener {
                listener.stop();
            }
            self.samples.entry(v).or_default().push(l?);
        }
        Ok(())
    }

    fn results(&self) -> Value {
        let mut out = json!({});
        for v in Variant::ALL {
            out[v.key()] = json!({
                "p50_us": self.get(v, P50),
                "p99_us": self.get(v, P99),
                "added_p50_us": self.added(v, P50),
                "added_p99_us": self.added(v, P99),
            });
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        let us = |s: Summary| s.show("µs", 1);
        [
            (
                Variant::ReadFanPerm,
                "FAN_OPEN_PERM mark, gate listener answers at once",
                "read-only open + close",
            ),
            (
                Variant::WriteContinue,
                "seccomp notify, CONTINUE",
                "write open + close",
            ),
            (
                Variant::WriteContinueSync,
                "seccomp notify, CONTINUE, SYNC_WAKE_UP",
                "write open + close",
            ),
            (
                Variant::WriteAddfdSync,
                "seccomp notify, supervisor opens + ADDFD, SYNC_WAKE_UP",
                "write open + close",
            ),
        ]
        .into_iter()
        .map(|(v, title, what)| Row {
            scenario: format!("10 mechanism: {title}"),
            measure: format!("{what} p50 / p99 (off: without the mechanism); added p50 / p99"),
            off: format!(
                "{} / {}",
                us(self.get(v.base(), P50)),
                us(self.get(v.base(), P99))
            ),
            on: format!(
                "{} / {}; added {} / {}",
                us(self.get(v, P50)),
                us(self.get(v, P99)),
                us(self.added(v, P50)),
                us(self.added(v, P99))
            ),
            ratio: format!(
                "{:.2}",
                self.get(v, P50).median / self.get(v.base(), P50).median
            ),
            ..Row::default()
        })
        .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        for v in Variant::ALL {
            let s = self.get(v, P50);
            ensure!(
                !s.is_empty() && s.samples.iter().all(|x| *x > 0.0),
                "scenario 10: no samples for {}",
                v.key()
            );
        }
        Ok(())
    }
}
