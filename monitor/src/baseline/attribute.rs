//! Who made a drifted change: the latest event about the path since its baseline (session,
//! agent, command, pid, uid, time), whether a grant approved it (the ledger's `change` and
//! `grant` records: by whom, expiring when), and otherwise "daemon down" when the file's
//! modification time falls in a period the daemon was not running (between the last
//! ledger record before a `daemon_started` and that record), else "unknown".
use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::ledger::LedgerRecord;
use crate::ledger::parse_time;

/// Most of the events file read (its end).
const MAX_EVENTS_BYTES: u64 = 32 << 20;

/// Attribution of one drifted change.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Attribution {
    /// `session`, `process` (outside any session), `daemon down`, `unknown`.
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// When (the event's time, or the file's mtime for "daemon down").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub approved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_expiry: Option<String>,
}

struct Seen {
    ms: i64,
    time: String,
    session: Option<u64>,
    agent: Option<String>,
    command: String,
    pid: Option<u32>,
    uid: Option<u32>,
}

struct Approval {
    ms: i64,
    grant: u64,
}

/// What is known from the events file and the ledger.
#[derive(Default)]
pub struct History {
    /// Latest event per path.
    events: HashMap<String, Seen>,
    /// Latest approved change per path.
    changes: HashMap<String, Approval>,
    /// Grant id -> (by, expires, on_expiry).
    grants: HashMap<u64, (String, i64, String)>,
    /// Periods the daemon was not running (unix ms).
    down: Vec<(i64, i64)>,
}

fn ms_of(time: &str) -> Option<i64> {
    parse_time(time)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// The fields attribution reads, from an OCSF File System Activity written by
/// `event::ocsf` (what OCSF has no place for is under `unmapped.confgate`).
fn from_ocsf(v: &Value) -> Value {
    let c = &v["unmapped"]["confgate"];
    let p = &v["actor"]["process"];
    let argv: Vec<&str> = p["cmd_line"].as_str().map(|l| vec![l]).unwrap_or_default();
    serde_json::json!({
        "time": c["time"],
        "result": c["result"],
        "path": v["file"]["path"],
        "target": c["target"],
        "argv": argv,
        "comm": p["name"],
        "pid": p["pid"],
        "uid": p["user"]["uid"].as_str().and_then(|u| u.parse::<u32>().ok()),
        "session": c["session"],
    })
}

impl History {
    /// Reads the end of the events file (at most [`MAX_EVENTS_BYTES`]) and the ledger's
    /// records.
    pub fn load(events_file: &Path, ledger: &[LedgerRecord]) -> History {
        let mut h = History::default();
        h.read_events(events_file);
        let mut prev_ms: Option<i64> = None;
        for r in ledger {
            let ms = ms_of(&r.time);
            match r.kind.as_str() {
                "daemon_started" => {
                    if let (Some(a), Some(b)) = (prev_ms, ms) {
                        h.down.push((a, b));
                    }
                }
                "change" => {
                    let path = r.body["diff"]["path"].as_str();
                    let grant = r.body["grant"].as_u64();
                    if let (Some(p), Some(g), Some(ms)) = (path, grant, ms)
                        && g != 0
                    {
                        h.changes.insert(p.to_owned(), Approval { ms, grant: g });
                    }
                }
                "grant" => {
                    if let Some(g) = r.body["grant"].as_u64() {
                        h.grants.insert(
                            g,
                            (
                                r.body["by"].as_str().unwrap_or_default().to_owned(),
                                r.body["expires_unix_ms"].as_i64().unwrap_or(0),
                                r.body["on_expiry"].as_str().unwrap_or_default().to_owned(),
                            ),
                        );
                    }
                }
                _ => {}
            }
            if ms.is_some() {
                prev_ms = ms;
            }
        }
        h
    }

    fn read_events(&mut self, file: &Path) {
        let Ok(mut f) = std::fs::File::open(file) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(MAX_EVENTS_BYTES);
        if f.seek(SeekFrom::Start(start)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.take(MAX_EVENTS_BYTES).read_to_end(&mut buf).is_err() {
            return;
        }
        for line in buf.split(|&b| b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            // Only file operations (a ledger record's event is an `audit` event, or an
            // OCSF Base Event); OCSF lines (`output.format = "ocsf"`) read as confgate's.
            let v = match (v.get("class_uid"), v["class"].as_str()) {
                (Some(c), _) if c == 1001 => from_ocsf(&v),
                (Some(_), _) | (None, Some("audit")) => continue,
                (None, _) => v,
            };
            let Some(ms) = v["time"].as_str().and_then(ms_of) else {
                continue;
            };
            if v["result"].as_i64().is_some_and(|r| r < 0) {
                continue;
            }
            let argv: Vec<&str> = v["argv"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let command = if argv.is_empty() {
                v["comm"].as_str().unwrap_or_default().to_owned()
            } else {
                argv.join(" ")
            };
            let seen = || Seen {
                ms,
                time: v["time"].as_str().unwrap_or_default().to_owned(),
                session: v["session"]["id"].as_u64(),
                agent: v["session"]["agent"].as_str().map(str::to_owned),
                command: command.clone(),
                pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                uid: v["uid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            };
            // A rename's new name is where the change lands.
            for key in ["path", "target"] {
                if let Some(p) = v[key].as_str() {
                    self.events.insert(p.to_owned(), seen());
                }
            }
        }
    }

    /// Attribution of a change of `path` made after `since_ms` (its baseline), whose
    /// file was last modified at `mtime_ms` (`None`: deleted).
    pub fn attribute(&self, path: &str, since_ms: i64, mtime_ms: Option<i64>) -> Attribution {
        let mut a = Attribution {
            by: "unknown".to_owned(),
            ..Attribution::default()
        };
        let down = mtime_ms.is_some_and(|m| self.down.iter().any(|&(s, e)| m > s && m < e));
        match self.events.get(path).filter(|s| s.ms >= since_ms) {
            Some(s) if !down || mtime_ms.is_some_and(|m| m <= s.ms + 1000) => {
                a.by = if s.session.is_some() {
                    "session"
                } else {
                    "process"
                }
                .to_owned();
                a.session = s.session;
                a.agent = s.agent.clone();
                a.command = Some(s.command.clone());
                a.pid = s.pid;
                a.uid = s.uid;
                a.time = Some(s.time.clone());
            }
            _ if down => {
                a.by = "daemon down".to_owned();
                a.time = mtime_ms.map(|m| {
                    crate::ledger::format_time(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.max(0) as u64),
                    )
                });
            }
            _ => {}
        }
        if let Some(c) = self.changes.get(path).filter(|c| c.ms >= since_ms) {
            a.approved = true;
            a.grant = Some(c.grant);
            if let Some((by, exp, on)) = self.grants.get(&c.grant) {
                a.approved_by = Some(by.clone());
                a.expires_unix_ms = Some(*exp);
                a.on_expiry = Some(on.clone());
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, FileClass, Kind, SCHEMA_VERSION, SessionRef, Source};

    fn event(path: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            class: FileClass,
            time: "2026-12-07T10:00:00.000000001Z".into(),
            time_ns: 1_796_637_600_000_000_001,
            id: "1-1".into(),
            host: "h",
            boot_id: "b",
            kind: Kind::Write,
            path: path.into(),
            target: None,
            result: Some(5),
            pid: 42,
            tid: 42,
            ppid: None,
            uid: Some(1000),
            comm: "sed".into(),
            exe: None,
            argv: vec!["sed".into(), "-i".into()].into(),
            cwd: None,
            ancestors: Vec::new().into(),
            session: Some(
                SessionRef {
                    id: 9,
                    agent: "claude".into(),
                    reason: None,
                    root_pid: 42,
                }
                .into(),
            ),
            source: Source::Ebpf,
            details: None,
        }
    }

    /// Attribution reads confgate and OCSF lines alike, and no ledger record's event.
    #[test]
    fn attribution_reads_both_formats_and_skips_audit_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = crate::ledger::Ledger::open(&dir.path().join("l.jsonl")).expect("ledger");
        let rec = ledger
            .append("drift_detected", serde_json::json!({"path": "/etc/b"}))
            .expect("append");
        let audit = crate::event::audit::AuditEvent::from_record(&rec);
        let lines = [
            serde_json::to_string(&event("/etc/a")).expect("json"),
            crate::event::ocsf::file_activity(&event("/etc/b")).to_string(),
            serde_json::to_string(&audit).expect("json"),
            crate::event::ocsf::audit_event(&audit).to_string(),
        ];
        let file = dir.path().join("events.ndjson");
        std::fs::write(&file, lines.join("\n")).expect("write");
        let h = History::load(&file, &[]);
        for path in ["/etc/a", "/etc/b"] {
            let a = h.attribute(path, 0, Some(1_796_637_600_000));
            assert_eq!(a.by, "session", "{path}");
            assert_eq!(a.session, Some(9));
            assert_eq!(a.agent.as_deref(), Some("claude"));
            assert_eq!(a.command.as_deref(), Some("sed -i"));
            assert_eq!(a.pid, Some(42));
            assert_eq!(a.uid, Some(1000));
            assert_eq!(a.time.as_deref(), Some("2026-12-07T10:00:00.000000001Z"));
        }
        // The drift's own event (later, path /etc/b) did not replace the write.
        assert_eq!(h.events.len(), 2);
    }
}
