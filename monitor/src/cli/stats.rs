//! `confgate stats`: the running daemon's counters (`confgate events` is in `events.rs`).
use std::path::Path;

use anyhow::Context as _;
use confgate_proto::v1::GetStatsRequest;

use crate::api::client::connect;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Print the daemon's counters; `json` prints one object `{name: value}`.
pub fn stats(socket: &Path, json: bool) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    runtime()?.block_on(async {
        let mut client = connect(socket).await?;
        let stats = client
            .get_stats(GetStatsRequest {})
            .await
            .context("GetStats")?
            .into_inner();
        if json {
            let map: serde_json::Map<String, serde_json::Value> = stats
                .counters
                .iter()
                .map(|c| (c.name.clone(), c.value.into()))
                .collect();
            writeln!(out, "{}", serde_json::Value::Object(map))?;
        } else {
            let width = stats
                .counters
                .iter()
                .map(|c| c.name.len())
                .max()
                .unwrap_or(0);
            for c in &stats.counters {
                writeln!(out, "{:<width$}  {}", c.name, c.value)?;
            }
        }
        out.flush()?;
        Ok(0)
    })
}
