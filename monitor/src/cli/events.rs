//! `confgate events`: the daemon's live event stream, filtered (`--agent`, `--session`,
//! `--path`, `--kind`) and printed as NDJSON or one compact line per event.
//!
//! Filters are ANDed across flags and ORed within one (a flag may be repeated, or given a
//! comma-separated list). The daemon sends every event; the filtering is done here on the
//! event's JSON, so what is printed in `json` mode is the daemon's line unchanged.
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use confgate_proto::v1::SubscribeEventsRequest;
use globset::{GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::api::client::connect;
use crate::event::escape::for_terminal;

/// The kinds of events (`kind` of the event schema).
pub const KINDS: &[&str] = &[
    "open_write",
    "create",
    "write",
    "rename",
    "unlink",
    "truncate",
    "chmod",
    "chown",
    "link",
    "symlink",
    "mkdir",
    // Made by the daemon's periodic drift check (see README "Baseline, drift and revert").
    "drift_detected",
];

/// How events are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The daemon's NDJSON line, unchanged.
    #[default]
    Json,
    /// One line per event: time, kind, path (and target), result, process, session.
    Compact,
}

/// Which events to print.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Filters {
    /// Only events of sessions of this agent (exact name); repeatable.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub agent: Vec<String>,
    /// Only events of this session id; repeatable.
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    pub session: Vec<u64>,
    /// Only events whose path or target matches the glob (`*` within one component, `**`
    /// across them, e.g. `/etc/**` or `**/.env`); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub path: Vec<String>,
    /// Only events of this kind (open_write, create, write, rename, unlink, truncate,
    /// chmod, chown, link, symlink, mkdir, drift_detected); repeatable.
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    pub kind: Vec<String>,
}

/// [`Filters`], checked and compiled.
#[derive(Debug)]
pub struct Matcher {
    agents: Vec<String>,
    sessions: Vec<u64>,
    paths: Option<GlobSet>,
    kinds: Vec<String>,
}

impl Matcher {
    /// Checks the filters: an unknown kind or a bad glob is an error naming it.
    pub fn new(f: &Filters) -> anyhow::Result<Matcher> {
        for k in &f.kind {
            if !KINDS.contains(&k.as_str()) {
                anyhow::bail!(
                    "--kind {k:?}: not an event kind (one of {})",
                    KINDS.join(", ")
                );
            }
        }
        let paths = if f.path.is_empty() {
            None
        } else {
            let mut b = GlobSetBuilder::new();
            for p in &f.path {
                let g = crate::config::build_glob(p, true)
                    .map_err(|e| anyhow::anyhow!("--path {p:?}: {e}"))?;
                b.add(g);
            }
            Some(b.build().context("--path globs")?)
        };
        Ok(Matcher {
            agents: f.agent.clone(),
            sessions: f.session.clone(),
            paths,
            kinds: f.kind.clone(),
        })
    }

    /// Whether no filter is set (every event matches).
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.sessions.is_empty()
            && self.paths.is_none()
            && self.kinds.is_empty()
    }

    /// Whether event `e` passes every filter.
    pub fn matches(&self, e: &Value) -> bool {
        let s = |v: &Value| v.as_str().map(str::to_owned);
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| e["kind"] == k.as_str()) {
            return false;
        }
        if !self.agents.is_empty()
            && !self
                .agents
                .iter()
                .any(|a| e["session"]["agent"] == a.as_str())
        {
            return false;
        }
        if !self.sessions.is_empty()
            && !e["session"]["id"]
                .as_u64()
                .is_some_and(|id| self.sessions.contains(&id))
        {
            return false;
        }
        if let Some(globs) = &self.paths {
            let hit = [s(&e["path"]), s(&e["target"])]
                .into_iter()
                .flatten()
                .any(|p| globs.is_match(&p));
            if !hit {
                return false;
            }
        }
        true
    }
}

/// One line for event `e`: `TIME KIND PATH[ -> TARGET][ FAILED(ERRNO)] by COMM[PID]
/// uid=UID[ session=AGENT#ID] (SOURCE)`, every name made safe for a terminal.
pub fn compact(e: &Value) -> String {
    let text = |v: &Value| for_terminal(v.as_str().unwrap_or("?").as_bytes());
    if e["kind"] == "drift_detected" {
        // No process made it: the drift's change and attribution instead.
        return format!(
            "{} {:<10} {} {} by {} ({})",
            text(&e["time"]),
            text(&e["kind"]),
            text(&e["path"]),
            text(&e["drift"]["change"]),
            text(&e["drift"]["attribution"]["by"]),
            text(&e["source"]),
        );
    }
    let target = e["target"]
        .as_str()
        .map(|t| format!(" -> {}", for_terminal(t.as_bytes())))
        .unwrap_or_default();
    let result = match e["result"].as_i64() {
        Some(r) if r < 0 => format!(" FAILED({r})"),
        _ => String::new(),
    };
    let session = match e["session"]["id"].as_u64() {
        Some(id) => format!(" session={}#{id}", text(&e["session"]["agent"])),
        None => String::new(),
    };
    let uid = e["uid"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |u| u.to_string());
    format!(
        "{} {:<10} {}{target}{result} by {}[{}] uid={uid}{session} ({})",
        text(&e["time"]),
        text(&e["kind"]),
        text(&e["path"]),
        text(&e["comm"]),
        e["pid"].as_u64().unwrap_or(0),
        text(&e["source"]),
    )
}

/// Streams the events that pass `filters` until the daemon stops or the pipe closes.
pub fn events(socket: &Path, filters: &Filters, output: Output) -> anyhow::Result<i32> {
    let matcher = Matcher::new(filters)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(async {
            let mut client = connect(socket).await?;
            let mut stream = client
                .subscribe_events(SubscribeEventsRequest {})
                .await
                .context("SubscribeEvents")?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(rec) = stream.message().await.context("event stream")? {
                let line = if matcher.is_empty() && output == Output::Json {
                    rec.json
                } else {
                    // The daemon's own JSON; a line that does not parse is printed as is
                    // (json) or said so (compact) rather than dropped silently.
                    match serde_json::from_str::<Value>(&rec.json) {
                        Ok(e) if !matcher.matches(&e) => continue,
                        Ok(e) if output == Output::Compact => compact(&e),
                        Ok(_) => rec.json,
                        Err(err) => {
                            eprintln!(
                                "confgate: an event that is not JSON ({err}), printed as received"
                            );
                            rec.json
                        }
                    }
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Ok(0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev() -> Value {
        json!({"v":1,"time":"2026-12-07T12:00:00Z","kind":"rename","path":"/etc/x.tmp",
               "target":"/etc/app.conf","result":-17,"pid":7,"comm":"mv\u{1b}[2J","uid":0,
               "source":"both","session":{"id":3,"agent":"claude","root_pid":5}})
    }

    fn m(f: Filters) -> Matcher {
        Matcher::new(&f).unwrap()
    }

    #[test]
    fn filters_and_across_or_within() {
        let e = ev();
        assert!(m(Filters::default()).matches(&e));
        let f = |agent: &[&str], session: &[u64], path: &[&str], kind: &[&str]| Filters {
            agent: agent.iter().map(|s| s.to_string()).collect(),
            session: session.to_vec(),
            path: path.iter().map(|s| s.to_string()).collect(),
            kind: kind.iter().map(|s| s.to_string()).collect(),
        };
        assert!(m(f(&["codex", "claude"], &[3], &["/etc/*.conf"], &["rename"])).matches(&e));
        assert!(!m(f(&["codex"], &[], &[], &[])).matches(&e));
        assert!(!m(f(&[], &[4], &[], &[])).matches(&e));
        assert!(!m(f(&[], &[], &["/srv/**"], &[])).matches(&e));
        assert!(
            !m(f(&[], &[], &["/*.conf"], &[])).matches(&e),
            "* stays in one component"
        );
        assert!(m(f(&[], &[], &["**/x.tmp"], &[])).matches(&e));
        assert!(!m(f(&[], &[], &[], &["write", "create"])).matches(&e));
        let outside = json!({"kind":"write","path":"/etc/a","session":null});
        assert!(!m(f(&["claude"], &[], &[], &[])).matches(&outside));
        assert!(!m(f(&[], &[3], &[], &[])).matches(&outside));
    }

    #[test]
    fn bad_filters_are_errors() {
        let e = Matcher::new(&Filters {
            kind: vec!["delete".into()],
            ..Filters::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("\"delete\": not an event kind"),
            "{e}"
        );
        let e = Matcher::new(&Filters {
            path: vec!["/etc/[".into()],
            ..Filters::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--path \"/etc/[\""), "{e}");
    }

    #[test]
    fn compact_is_one_safe_line() {
        let line = compact(&ev());
        assert_eq!(
            line,
            "2026-12-07T12:00:00Z rename     /etc/x.tmp -> /etc/app.conf FAILED(-17) by mv\\u{1b}[2J[7] uid=0 session=claude#3 (both)"
        );
        let mut e = ev();
        e["path"] = json!("/etc/a\nb");
        e["session"] = Value::Null;
        let line = compact(&e);
        assert!(!line.contains('\n') && !line.contains("session="), "{line}");
    }
}
