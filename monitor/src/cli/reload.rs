//! `confgate reload`: asks the running daemon to re-read its configuration (as SIGHUP
//! does) and prints what took effect, what needs a restart, and why a file was refused.
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use confgate_proto::v1::{ReloadRequest, ReloadResponse};

use crate::api::client::{connect, explain};

/// Exit status when the daemon refused the file (the running configuration stays).
pub const EXIT_REFUSED: i32 = 1;

/// Asks the daemon at `socket` to reload; `json` prints the answer as one object.
pub fn reload(socket: &Path, json: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let answer = rt.block_on(async {
        let mut client = connect(socket).await?;
        anyhow::Ok(client.reload(ReloadRequest {}).await)
    })?;
    let mut out = std::io::stdout().lock();
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                writeln!(out, "{}", to_json(&r))?;
            } else {
                write_text(&mut out, &r)?;
            }
            out.flush()?;
            Ok(0)
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            eprintln!(
                "confgate: reload refused, the running configuration stays: {}",
                status.message()
            );
            Ok(EXIT_REFUSED)
        }
        Err(status) => anyhow::bail!("reload: {}", explain(&status)),
    }
}

fn to_json(r: &ReloadResponse) -> serde_json::Value {
    serde_json::json!({
        "path": r.path,
        "sha256": r.sha256,
        "applied": r.applied,
        "restart_required": r.restart_required,
        "notes": r.notes,
    })
}

/// The answer for people: one line per change, restart-only setting and caveat.
pub fn write_text(out: &mut impl Write, r: &ReloadResponse) -> std::io::Result<()> {
    writeln!(out, "reloaded {} (sha256 {})", r.path, r.sha256)?;
    if r.applied.is_empty() {
        writeln!(out, "  no change took effect")?;
    }
    for a in &r.applied {
        writeln!(out, "  applied: {a}")?;
    }
    for s in &r.restart_required {
        writeln!(
            out,
            "  NOT applied (needs a restart; the running value stays): {s}"
        )?;
    }
    for n in &r.notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_restart_only_settings() {
        let r = ReloadResponse {
            path: "/etc/confgate/config.toml".into(),
            sha256: "ab".into(),
            applied: vec!["gate policy".into()],
            restart_required: vec!["daemon.state_dir".into()],
            notes: vec![],
        };
        let mut out = Vec::new();
        write_text(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("applied: gate policy"), "{text}");
        assert!(
            text.contains(
                "NOT applied (needs a restart; the running value stays): daemon.state_dir"
            ),
            "{text}"
        );
    }
}
