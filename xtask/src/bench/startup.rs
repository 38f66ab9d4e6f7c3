//! Scenario 7: start-up time to "ready" (programs attached, marks placed), measured on
//! every daemon the run starts in the default mode; and, for the record, how long the
//! daemon takes to stop.
use anyhow::ensure;
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario},
    stats::Summary,
};

#[derive(Default)]
pub struct Startup {
    ready_ms: Vec<f64>,
    stop_ms: Vec<f64>,
}

impl Scenario for Startup {
    fn id(&self) -> u32 {
        7
    }

    fn key(&self) -> &'static str {
        "scenario7_startup_ms"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::On]
    }

    fn measure(
        &mut self,
        _cx: &Cx,
        _round: usize,
        _mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        if let Some(d) = daemon {
            self.ready_ms.push(d.ready_after.as_secs_f64() * 1000.0);
        }
        Ok(())
    }

    fn daemon_stopped(&mut self, _mode: Mode, took_ms: f64) {
        self.stop_ms.push(took_ms);
    }

    fn results(&self) -> Value {
        let mut v = json!(Summary::of(self.ready_ms.clone()));
        v["stop_ms"] = json!(Summary::of(self.stop_ms.clone()));
        v
    }

    fn rows(&self) -> Vec<Row> {
        vec![Row {
            scenario: "7 start-up to ready".into(),
            measure: "ms (spawn to `confgate ready`); stop (SIGTERM to exit)".into(),
            on: format!(
                "{}; stop {}",
                Summary::of(self.ready_ms.clone()).show("ms", 0),
                Summary::of(self.stop_ms.clone()).show("ms", 0)
            ),
            ..Row::default()
        }]
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.ready_ms.is_empty(),
            "scenario 7: no start-up measured"
        );
        Ok(())
    }
}
