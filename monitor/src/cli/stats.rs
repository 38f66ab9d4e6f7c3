//! `confgate stats` and `confgate events`: read-only views of the running daemon.
use std::path::Path;

use anyhow::Context as _;
use confgate_proto::v1::{GetStatsRequest, SubscribeEventsRequest};

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

/// Stream events as NDJSON until the daemon stops or the pipe closes.
pub fn events(socket: &Path) -> anyhow::Result<i32> {
    use std::io::Write as _;
    runtime()?.block_on(async {
        let mut client = connect(socket).await?;
        let mut stream = client
            .subscribe_events(SubscribeEventsRequest {})
            .await
            .context("SubscribeEvents")?
            .into_inner();
        let mut out = std::io::stdout().lock();
        while let Some(rec) = stream.message().await.context("event stream")? {
            if writeln!(out, "{}", rec.json)
                .and_then(|()| out.flush())
                .is_err()
            {
                break;
            }
        }
        Ok(0)
    })
}
