//! `confgate drift`, `confgate revert` and `confgate baseline accept`: the approved
//! baseline, through the running daemon (it owns the baseline and the ledger; without a
//! daemon these commands fail: nothing is compared or restored behind its back).
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::Context as _;
use confgate_proto::v1::BaselineRequest;
use serde_json::Value;

use crate::api::client::{connect, explain};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Absolute paths (relative ones against the current directory; symlinks not resolved).
fn absolute(paths: &[OsString]) -> anyhow::Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| {
            std::path::absolute(Path::new(p))
                .map(|a| a.as_os_str().as_bytes().to_vec())
                .with_context(|| format!("{}", Path::new(p).display()))
        })
        .collect()
}

/// `--to`: `baseline` (0) or a ledger record's sequence number.
pub fn parse_to(s: &str) -> Result<u64, String> {
    if s == "baseline" {
        return Ok(0);
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{s:?} is neither `baseline` nor a ledger record's sequence number (1, 2, ...)"
        )),
    }
}

pub(super) fn call(
    socket: &Path,
    op: &str,
    paths: Vec<Vec<u8>>,
    note: String,
) -> anyhow::Result<Value> {
    call_to(socket, op, paths, note, 0)
}

fn call_to(
    socket: &Path,
    op: &str,
    paths: Vec<Vec<u8>>,
    note: String,
    to_seq: u64,
) -> anyhow::Result<Value> {
    runtime()?.block_on(async {
        let mut c = connect(socket).await?;
        let r = c
            .baseline(BaselineRequest {
                op: op.to_owned(),
                paths,
                note,
                to_seq,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", explain(&s)))?
            .into_inner();
        serde_json::from_str(&r.json).context("the daemon's answer")
    })
}

/// `confgate drift [PATH...] [--json]`: exit 0 when the tree is the baseline, 1 when it
/// differs.
pub fn drift(socket: &Path, paths: &[OsString], json: bool) -> anyhow::Result<i32> {
    let v = call(socket, "drift", absolute(paths)?, String::new())?;
    let items = v.as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else if items.is_empty() {
        writeln!(out, "no drift: the tree is the approved baseline")?;
    } else {
        for it in &items {
            render(&mut out, it)?;
        }
    }
    out.flush()?;
    Ok(if items.is_empty() { 0 } else { 1 })
}

fn render(out: &mut dyn Write, it: &Value) -> anyhow::Result<()> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let what: Vec<String> = it["what"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    write!(out, "{:<9} {}", s(&it["change"]), s(&it["path"]))?;
    if !what.is_empty() {
        write!(out, " ({})", what.join(", "))?;
    }
    if let Some(f) = it["from"].as_str() {
        write!(out, " from {f}")?;
    }
    writeln!(out)?;
    let a = &it["attribution"];
    let mut by = format!("  by: {}", s(&a["by"]));
    if let Some(id) = a["session"].as_u64() {
        by.push_str(&format!(" {id} (agent {})", s(&a["agent"])));
    }
    if let Some(c) = a["command"].as_str() {
        by.push_str(&format!(", command {c:?}"));
    }
    if let Some(p) = a["pid"].as_u64() {
        by.push_str(&format!(", pid {p}"));
    }
    if let Some(t) = a["time"].as_str() {
        by.push_str(&format!(", at {t}"));
    }
    writeln!(out, "{by}")?;
    if a["approved"].as_bool() == Some(true) {
        let exp = a["expires_unix_ms"]
            .as_i64()
            .map(crate::ledger::format_unix_ms)
            .unwrap_or_default();
        writeln!(
            out,
            "  approved: grant {} by {}, expires {exp} (then {})",
            a["grant"],
            s(&a["approved_by"]),
            s(&a["on_expiry"])
        )?;
    } else {
        writeln!(out, "  approved: no")?;
    }
    for side in ["baseline", "live"] {
        let st = &it[side];
        if st.is_object() {
            writeln!(
                out,
                "  {side:<8}: mode {} owner {}:{} size {} sha256 {}",
                s(&st["mode"]),
                st["uid"],
                st["gid"],
                st["size"],
                s(&st["sha256"])
            )?;
        }
    }
    if let Some(d) = it["diff"].as_str() {
        for line in d.lines() {
            writeln!(out, "    {line}")?;
        }
    } else if let Some(n) = it["no_diff"].as_str() {
        writeln!(out, "  (no diff: {n})")?;
    }
    Ok(())
}

/// `confgate revert PATH... [--to baseline|SEQ]`: exit 0 when every path was restored, 1
/// otherwise.
pub fn revert(socket: &Path, paths: &[OsString], to_seq: u64, json: bool) -> anyhow::Result<i32> {
    let v = call_to(socket, "revert", absolute(paths)?, String::new(), to_seq)?;
    let results = v.as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    for r in &results {
        let path = r["path"].as_str().unwrap_or_default();
        match r["error"].as_str() {
            Some(e) => {
                failed = true;
                eprintln!("confgate: cannot revert {path}: {e}");
            }
            None if !json => writeln!(out, "{path}: {}", r["result"].as_str().unwrap_or_default())?,
            None => {}
        }
    }
    out.flush()?;
    Ok(i32::from(failed))
}

/// `confgate baseline accept PATH... --note TEXT`.
pub fn accept(socket: &Path, paths: &[OsString], note: &str, json: bool) -> anyhow::Result<i32> {
    crate::cli::connect::check_note(note)?;
    let v = call(socket, "accept", absolute(paths)?, note.to_owned())?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let files = v["files"].as_array().cloned().unwrap_or_default();
        for f in &files {
            let state = if f["after"].is_null() {
                "removed from the baseline"
            } else {
                "accepted"
            };
            writeln!(out, "{}: {state}", f["path"].as_str().unwrap_or_default())?;
        }
        if files.is_empty() {
            writeln!(out, "nothing to accept: already the baseline")?;
        }
    }
    out.flush()?;
    Ok(0)
}
