//! A scenario whose subject does not exist yet: a row saying so, nothing measured.
use serde_json::{Value, json};

use super::scenario::{Cx, Daemon, Mode, Row, Scenario};

pub struct NotBuilt {
    pub id: u32,
    pub title: &'static str,
    pub target: &'static str,
    pub why: &'static str,
}

impl Scenario for NotBuilt {
    fn id(&self) -> u32 {
        self.id
    }

    fn key(&self) -> &'static str {
        self.title
    }

    fn modes(&self) -> &'static [Mode] {
        &[]
    }

    fn measure(&mut self, _: &Cx, _: usize, _: Mode, _: Option<&Daemon>) -> anyhow::Result<()> {
        Ok(())
    }

    fn results(&self) -> Value {
        json!({ "measured": false, "why": self.why })
    }

    fn rows(&self) -> Vec<Row> {
        vec![Row {
            scenario: self.title.into(),
            target: self.target.into(),
            verdict: self.why.into(),
            ..Row::default()
        }]
    }
}
