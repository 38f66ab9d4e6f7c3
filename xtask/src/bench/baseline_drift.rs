//! Scenario 12 (issue 17): the approved baseline and `confgate drift` over the default
//! watch set. Every daemon the run starts in the default mode starts with an empty state
//! directory, so it takes the initial baseline before it is ready: the scenario reads what
//! it took from the daemon's own `baseline_taken` ledger record (files, bytes kept,
//! milliseconds), measures the objects' size on disk, and times `confgate drift --json`
//! (the CLI asking the running daemon to compare the live tree with the baseline), the
//! command an SRE runs.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario},
    stats::Summary,
};

/// `drift` runs per daemon.
const DRIFT_RUNS: usize = 3;

#[derive(Default)]
pub struct BaselineDrift {
    files: Vec<f64>,
    bytes_stored: Vec<f64>,
    bytes_on_disk: Vec<f64>,
    take_ms: Vec<f64>,
    drift_ms: Vec<f64>,
    drift_items: Vec<f64>,
}

/// Bytes of the regular files below `dir` (allocated blocks: what the disk holds).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.blocks() * 512,
                _ => {}
            }
        }
    }
    total
}

fn state_dir(d: &Daemon) -> anyhow::Result<PathBuf> {
    Ok(d.config
        .parent()
        .context("the daemon's config has no directory")?
        .join("state"))
}

impl BaselineDrift {
    fn taken(&mut self, state: &Path) -> anyhow::Result<()> {
        let ledger = monitor::ledger::default_path(state);
        let recs = monitor::ledger::read(&ledger, None)
            .with_context(|| format!("reading {}", ledger.display()))?;
        let Some(t) = recs.iter().find(|r| r.kind == "baseline_taken") else {
            bail!("the daemon recorded no baseline_taken (gate disabled?)");
        };
        let num = |k: &str| t.body[k].as_u64().unwrap_or(0) as f64;
        self.files.push(num("files"));
        self.bytes_stored.push(num("bytes_stored"));
        self.take_ms.push(num("millis"));
        self.bytes_on_disk
            .push(disk_usage(&state.join(monitor::baseline::DIR)) as f64);
        Ok(())
    }

    fn drift(&mut self, cx: &Cx, d: &Daemon) -> anyhow::Result<()> {
        for _ in 0..DRIFT_RUNS {
            let t = Instant::now();
            let out = Command::new(&cx.confgate)
                .arg("--config")
                .arg(&d.config)
                .args(["drift", "--json"])
                .output()
                .context("running confgate drift")?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            // Exit status 1 means "drift found" for scripts; only other failures count.
            ensure!(
                out.status.code().is_some_and(|c| c <= 1),
                "confgate drift failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let items = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(Vec::len)
                        .or_else(|| v["items"].as_array().map(Vec::len))
                })
                .unwrap_or(0);
            self.drift_ms.push(ms);
            self.drift_items.push(items as f64);
        }
        Ok(())
    }
}

impl Scenario for BaselineDrift {
    fn id(&self) -> u32 {
        12
    }

    fn key(&self) -> &'static str {
        "scenario12_baseline_drift"
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
        let Some(d) = daemon else {
            return Ok(());
        };
        let state = state_dir(d)?;
        self.taken(&state)?;
        self.drift(cx, d)
    }

    fn results(&self) -> Value {
        json!({
            "files": Summary::of(self.files.clone()),
            "bytes_stored": Summary::of(self.bytes_stored.clone()),
            "bytes_on_disk": Summary::of(self.bytes_on_disk.clone()),
            "take_ms": Summary::of(self.take_ms.clone()),
            "drift_ms": Summary::of(self.drift_ms.clone()),
            "drift_items": Summary::of(self.drift_items.clone()),
        })
    }

    fn rows(&self) -> Vec<Row> {
        let med = |v: &[f64]| Summary::of(v.to_vec()).median;
        vec![
            Row {
                scenario: "12 baseline of the watch set".into(),
                measure: "taken at first start: files; content kept (disk used by its objects and index, in blocks); ms".into(),
                on: format!(
                    "{:.0} files; {:.1} MB ({:.1} MB used on disk); {}",
                    med(&self.files),
                    med(&self.bytes_stored) / 1e6,
                    med(&self.bytes_on_disk) / 1e6,
                    Summary::of(self.take_ms.clone()).show("ms", 0)
                ),
                ..Row::default()
            },
            Row {
                scenario: "12 `confgate drift --json`".into(),
                measure: "wall time of the command over every root; items reported".into(),
                on: format!(
                    "{}; {:.0} items",
                    Summary::of(self.drift_ms.clone()).show("ms", 0),
                    med(&self.drift_items)
                ),
                ..Row::default()
            },
        ]
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.files.is_empty() && !self.drift_ms.is_empty(),
            "scenario 12: nothing measured"
        );
        Ok(())
    }
}
