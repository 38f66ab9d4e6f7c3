//! `confgate sessions [--all] [--json]`: list agent sessions (needs root or the admin group).
use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};

use crate::api::{client, pb};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::sessions::{SessionInfo, escape_text};

/// Longest reason shown in the table, in characters (`--json` has it whole).
const REASON_COLUMN: usize = 60;

/// Prints the daemon's live sessions (all with `all`) as a table, or as one JSON array of
/// session objects with `json`. Returns the exit code.
pub fn sessions(
    socket: &Path,
    json: bool,
    all: bool,
    agent: Option<&str>,
    since: Option<OffsetDateTime>,
) -> anyhow::Result<i32> {
    let list = filter(fetch(socket, all)?, agent, since);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &list).context("writing JSON")?;
        writeln!(out)?;
    } else {
        out.write_all(render_table(&list, all).as_bytes())?;
    }
    out.flush()?;
    Ok(0)
}

pub(super) fn fetch(socket: &Path, all: bool) -> anyhow::Result<Vec<SessionInfo>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let reply = rt.block_on(async {
        let mut c = client::connect(socket).await?;
        c.list_sessions(pb::ListSessionsRequest { include_ended: all })
            .await
            .map_err(|s| anyhow!(client::explain(&s)))
    })?;
    reply
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| SessionInfo::try_from(s).map_err(anyhow::Error::from))
        .collect()
}

/// `--since`: RFC 3339 (`2026-01-02T03:04:05Z`) or a duration back from now (`2h`, `3d`).
pub fn parse_since(s: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        anyhow!("--since {s:?}: neither an RFC 3339 time nor a duration such as 2h or 3d")
    })?;
    Ok(OffsetDateTime::now_utc() - d)
}

/// The sessions of `agent` (exact name) that started at or after `since`.
pub fn filter(
    list: Vec<SessionInfo>,
    agent: Option<&str>,
    since: Option<OffsetDateTime>,
) -> Vec<SessionInfo> {
    list.into_iter()
        .filter(|s| agent.is_none_or(|a| s.agent == a))
        .filter(|s| {
            since.is_none_or(|t| {
                OffsetDateTime::parse(&s.started, &Rfc3339).is_ok_and(|started| started >= t)
            })
        })
        .collect()
}

/// The human-readable table (ends with a newline). Cells are escaped so nothing a session
/// carries can drive the terminal.
pub fn render_table(sessions: &[SessionInfo], all: bool) -> String {
    if sessions.is_empty() {
        return if all {
            "no agent sessions\n".into()
        } else {
            "no live agent sessions\n".into()
        };
    }
    let mut header = vec!["ID", "AGENT", "USER", "PID", "STARTED", "EVENTS"];
    if all {
        header.push("ENDED");
    }
    header.push("REASON");
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let mut row = vec![
                s.id.to_string(),
                escape_text(&s.agent),
                escape_text(&s.user),
                s.root_pid.to_string(),
                escape_text(&s.started),
                s.events.to_string(),
            ];
            if all {
                row.push(
                    s.ended
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), escape_text),
                );
            }
            row.push(
                s.reason
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |r| ellipsize(&escape_text(r))),
            );
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell); // last column: no padding
            } else {
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn ellipsize(s: &str) -> String {
    if s.chars().count() <= REASON_COLUMN {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(REASON_COLUMN - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{FakeDaemon, ThreadServer};
    use crate::sessions::SessionSource;

    fn info(id: u64, agent: &str, reason: Option<&str>, ended: Option<&str>) -> SessionInfo {
        SessionInfo {
            id,
            agent: agent.into(),
            reason: reason.map(Into::into),
            root_pid: 1000 + id as u32,
            uid: 1000,
            user: "dev".into(),
            started: "2026-01-01T00:00:00Z".into(),
            source: SessionSource::Wrapper,
            command: vec![],
            cwd: "/".into(),
            events: id * 10,
            ended: ended.map(Into::into),
            scope: vec![],
        }
    }

    #[test]
    fn table_is_aligned_and_escaped() {
        let long = "r".repeat(100);
        let t = render_table(
            &[
                info(1, "claude-code", Some("fix CI"), None),
                info(12, "x", Some(&long), None),
            ],
            false,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID  AGENT        USER  PID   STARTED               EVENTS  REASON"
        );
        assert_eq!(
            lines[1],
            "1   claude-code  dev   1001  2026-01-01T00:00:00Z  10      fix CI"
        );
        assert!(
            lines[2].starts_with("12  x            dev   1012  2026-01-01T00:00:00Z  120     rrr")
        );
        assert!(lines[2].ends_with('…'));
        assert_eq!(
            lines[2].split_whitespace().last().unwrap().chars().count(),
            REASON_COLUMN
        );

        // Values from the daemon are escaped, whatever they contain.
        let t = render_table(
            &[info(2, "a\u{1b}[31m", None, Some("2026-01-02T00:00:00Z"))],
            true,
        );
        assert!(!t.contains('\u{1b}'));
        assert!(t.contains("a\\u{1b}[31m"));
        assert!(t.lines().next().unwrap().contains("ENDED"));
        assert!(t.contains("2026-01-02T00:00:00Z  -"));
        assert_eq!(render_table(&[], false), "no live agent sessions\n");
    }

    #[test]
    fn fetch_lists_through_the_daemon_and_reports_denial() {
        let fake = FakeDaemon::new(false);
        let server = ThreadServer::start(fake.clone());
        let err = fetch(&server.socket, false).unwrap_err();
        assert!(format!("{err:#}").contains("permission denied"), "{err:#}");
        fake.set_admin(true);
        assert!(fetch(&server.socket, true).unwrap().is_empty());
        let missing = ["/nonexistent/confgate-test-agent".into()];
        let err = crate::cli::run::run(
            &server.socket,
            "codex",
            Some("why"),
            &missing,
            &crate::cli::run::Confine::No,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), crate::cli::run::EXIT_NOT_FOUND, "{err}");
        let list = fetch(&server.socket, false).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].agent.as_str(), list[0].reason.as_deref()),
            ("codex", Some("why"))
        );
        assert_eq!(list[0].root_pid, std::process::id());
        // JSON form of a session: the source is a plain string, absent values are null.
        let json = serde_json::to_value(info(3, "codex", None, None)).unwrap();
        assert_eq!(json["source"], "wrapper");
        assert!(json["reason"].is_null() && json["ended"].is_null());
    }
}
