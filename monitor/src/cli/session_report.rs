//! `confgate sessions show ID [--json]`: one session's report for post-incident
//! reconstruction, and the `--agent`/`--since` filters of `confgate sessions`.
//!
//! Put together on the host (root: the ledger and the events file are root's) from
//! - the daemon: the session (`ListSessions`) and what of its changes is drift now (the
//!   baseline's `drift`, items attributed to the session);
//! - the host ledger (`<state_dir>/ledger.jsonl`): its start and end records, and every
//!   gate record about it: requests, decisions with who made them (`grant.by`), denials,
//!   scope refusals, changes with their diffs, flags, reverts, its grants and their expiry;
//! - the events file (`output.events_file`) and its rotated copies (logrotate's names:
//!   `FILE.1`, `FILE.2.gz`, ...; see `deploy/logrotate`): every operation attributed to it.
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use crate::sessions::{SessionInfo, escape_text};

/// Most events of one session kept in a report (the rest are counted).
const MAX_EVENTS: usize = 10_000;

/// The ledger records about session `id`, in order: those naming it, and those naming a
/// request or grant of it.
pub fn ledger_records(ledger: &Path, id: u64) -> anyhow::Result<Vec<Value>> {
    let f = match std::fs::File::open(ledger) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", ledger.display())),
    };
    let mut requests = BTreeSet::new();
    let mut grants = BTreeSet::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", ledger.display()))?;
        let Ok(r) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let b = &r["body"];
        let mine = b["session"].as_u64() == Some(id)
            || b["host_request_id"]
                .as_u64()
                .is_some_and(|q| requests.contains(&q))
            || b["grant"].as_u64().is_some_and(|g| grants.contains(&g));
        if !mine {
            continue;
        }
        if let Some(q) = b["host_request_id"].as_u64() {
            requests.insert(q);
        }
        if r["kind"] == "grant"
            && let Some(g) = b["grant"].as_u64()
        {
            grants.insert(g);
        }
        out.push(r);
    }
    Ok(out)
}

/// Most rotated events files looked for (`FILE.1` ... `FILE.N`, plain or `.gz`).
const MAX_ROTATED: usize = 1000;

/// The events file and its rotated copies that exist, oldest first: logrotate's numbered
/// names (`FILE.N`, or `FILE.N.gz` once compressed), `N` from 1 up to the first missing.
pub fn event_files(events_file: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for n in 1..=MAX_ROTATED {
        let plain = std::path::PathBuf::from(format!("{}.{n}", events_file.display()));
        let gz = std::path::PathBuf::from(format!("{}.{n}.gz", events_file.display()));
        match (plain.exists(), gz.exists()) {
            (true, _) => files.push(plain),
            (false, true) => files.push(gz),
            (false, false) => break,
        }
    }
    files.reverse();
    files.push(events_file.to_path_buf());
    files
}

/// The events of session `id` in every file of [`event_files`] (at most [`MAX_EVENTS`],
/// oldest first), how many more there were, the files read, and why any could not be read
/// (a rotated file that is unreadable or corrupt is reported, not fatal).
pub fn all_session_events(
    events_file: &Path,
    id: u64,
) -> (Vec<Value>, u64, Vec<String>, Vec<String>) {
    let (mut out, mut more, mut read, mut errors) = (Vec::new(), 0u64, Vec::new(), Vec::new());
    for f in event_files(events_file) {
        let opened = match std::fs::File::open(&f) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let reader: Box<dyn std::io::Read> = if f.extension().is_some_and(|x| x == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(opened))
        } else {
            Box::new(opened)
        };
        match session_events_in(reader, &f, id, &mut out, &mut more) {
            Ok(()) => read.push(f.display().to_string()),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (out, more, read, errors)
}

/// Adds the events of session `id` read from `r` (the file `name`) to `out` (at most
/// [`MAX_EVENTS`] in all), counting the others in `more`.
fn session_events_in(
    r: impl std::io::Read,
    name: &Path,
    id: u64,
    out: &mut Vec<Value>,
    more: &mut u64,
) -> anyhow::Result<()> {
    let needle = format!("\"session\":{{\"id\":{id},");
    for line in std::io::BufReader::new(r).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", name.display()))?;
        if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if e["session"]["id"].as_u64() != Some(id) {
            continue;
        }
        if out.len() < MAX_EVENTS {
            out.push(e);
        } else {
            *more += 1;
        }
    }
    Ok(())
}

/// The report of `session` from its ledger records, events and the drift items now.
pub fn report(
    session: &SessionInfo,
    records: Vec<Value>,
    (events, events_more): (Vec<Value>, u64),
    drift: Value,
    now_ms: i64,
) -> Value {
    let of = |kind: &str| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["kind"] == kind)
            .cloned()
            .collect()
    };
    let first = |kind: &str| of(kind).into_iter().next().map(|r| r["body"].clone());
    let ended_grants: BTreeSet<u64> = of("session_ended")
        .iter()
        .flat_map(|r| r["body"]["grants"].as_array().cloned().unwrap_or_default())
        .filter_map(|g| g.as_u64())
        .collect();
    let grants: Vec<Value> = of("grant")
        .into_iter()
        .map(|r| {
            let b = &r["body"];
            let expires = b["expires_unix_ms"].as_i64().unwrap_or(0);
            let id = b["grant"].as_u64().unwrap_or(0);
            json!({
                "grant": id, "by": b["by"], "rule": b["rule"], "path_glob": b["path_glob"],
                "operations": b["operations"], "on_expiry": b["on_expiry"],
                "expires_unix_ms": expires, "granted": r["time"],
                "live": expires > now_ms && !ended_grants.contains(&id),
            })
        })
        .collect();
    let decisions: Vec<Value> = records
        .iter()
        .filter(|r| !matches!(r["kind"].as_str(), Some("session_start" | "session_end")))
        .map(|r| json!({"time": r["time"], "kind": r["kind"], "body": r["body"]}))
        .collect();
    let drift_now = match drift.as_array() {
        Some(items) => Value::Array(
            items
                .iter()
                .filter(|i| i["attribution"]["session"].as_u64() == Some(session.id))
                .cloned()
                .collect(),
        ),
        None => drift,
    };
    json!({
        "session": session,
        "start": first("session_start"),
        "end": first("session_end"),
        "events": events,
        "events_not_shown": events_more,
        "ledger": decisions,
        "grants": grants,
        "flagged": of("change_flagged").into_iter().map(|r| r["body"].clone()).collect::<Vec<_>>(),
        "reverted": of("reverted").into_iter().map(|r| r["body"].clone()).collect::<Vec<_>>(),
        "scope_denied": of("scope_denied").len(),
        "drift_now": drift_now,
    })
}

/// The report as text (every cell escaped: nothing a session wrote can drive the terminal).
pub fn render(r: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let t = |v: &Value| match v {
        Value::String(s) => escape_text(s),
        Value::Null => "-".into(),
        v => escape_text(&v.to_string()),
    };
    let s = &r["session"];
    writeln!(
        out,
        "session {}  agent {}  user {}  started {}  ended {}",
        t(&s["id"]),
        t(&s["agent"]),
        t(&s["user"]),
        t(&s["started"]),
        t(&s["ended"])
    )?;
    writeln!(out, "reason: {}", t(&s["reason"]))?;
    let st = &r["start"];
    if st.is_object() {
        writeln!(
            out,
            "start: uid {} gid {} groups {} cwd {} cgroup {}",
            t(&st["uid"]),
            t(&st["gid"]),
            t(&st["groups"]),
            t(&st["cwd"]),
            t(&st["cgroup"])
        )?;
        writeln!(out, "  argv: {}", t(&st["argv"]))?;
        writeln!(
            out,
            "  scope: {}  confined: {}",
            t(&st["scope"]),
            t(&st["confined"])
        )?;
        writeln!(out, "  gated: {}", t(&st["gated"]))?;
        writeln!(
            out,
            "  credential variables (names): {}",
            t(&st["credential_env"])
        )?;
    } else {
        writeln!(out, "start: no session_start record in the ledger")?;
    }
    let events = r["events"].as_array().cloned().unwrap_or_default();
    for e in r["events_errors"].as_array().into_iter().flatten() {
        writeln!(out, "events file not read: {}", t(e))?;
    }
    writeln!(
        out,
        "\nchanges ({} events{}):",
        events.len(),
        match r["events_not_shown"].as_u64() {
            Some(n) if n > 0 => format!(", {n} more not shown"),
            _ => String::new(),
        }
    )?;
    for e in &events {
        let denied = if e["details"]["scope_denied"] == true {
            "  [outside scope: refused]"
        } else {
            ""
        };
        writeln!(
            out,
            "  {} {:<10} {} result {} pid {} {}{denied}",
            t(&e["time"]),
            t(&e["kind"]),
            t(&e["path"]),
            t(&e["result"]),
            t(&e["pid"]),
            t(&e["comm"])
        )?;
    }
    writeln!(out, "\ngate records:")?;
    for d in r["ledger"].as_array().cloned().unwrap_or_default() {
        let b = &d["body"];
        writeln!(
            out,
            "  {} {:<18} {} {}",
            t(&d["time"]),
            t(&d["kind"]),
            t(&b["path"]),
            match d["kind"].as_str() {
                Some("grant") => format!("by {} rule {}", t(&b["by"]), t(&b["rule"])),
                _ => String::new(),
            }
        )?;
        if let Some(diff) = b["diff"]["diff"].as_str().or(b["diff"].as_str()) {
            for line in diff.lines() {
                writeln!(out, "      {}", escape_text(line))?;
            }
        }
    }
    writeln!(out, "\ngrants:")?;
    for g in r["grants"].as_array().cloned().unwrap_or_default() {
        let exp = g["expires_unix_ms"]
            .as_i64()
            .map(crate::ledger::format_unix_ms)
            .unwrap_or_default();
        writeln!(
            out,
            "  grant {} by {} on {} ({}) expires {exp} then {}: {}",
            t(&g["grant"]),
            t(&g["by"]),
            t(&g["path_glob"]),
            t(&g["operations"]),
            t(&g["on_expiry"]),
            if g["live"] == true { "LIVE" } else { "ended" }
        )?;
    }
    let count = |k: &str| r[k].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "\nflagged: {}  reverted: {}  refused outside scope: {}",
        count("flagged"),
        count("reverted"),
        t(&r["scope_denied"])
    )?;
    match r["drift_now"].as_array() {
        Some(items) if items.is_empty() => writeln!(out, "drift now: none of it")?,
        Some(items) => {
            writeln!(out, "drift now ({}):", items.len())?;
            for i in items {
                writeln!(out, "  {:<9} {}", t(&i["change"]), t(&i["path"]))?;
            }
        }
        None => writeln!(out, "drift now: unknown ({})", t(&r["drift_now"]))?,
    }
    Ok(())
}

/// `confgate sessions show ID [--json]`.
pub fn show(
    socket: &Path,
    ledger: &Path,
    events_file: &Path,
    id: u64,
    json: bool,
) -> anyhow::Result<i32> {
    let session = super::sessions::fetch(socket, true)?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| anyhow!("no session {id}"))?;
    let records = ledger_records(ledger, id)?;
    let (events, more, files, errors) = all_session_events(events_file, id);
    let events = (events, more);
    let drift = match super::baseline::call(socket, "drift", Vec::new(), String::new()) {
        Ok(v) => v,
        Err(e) => Value::String(format!("{e:#}")),
    };
    let mut r = report(&session, records, events, drift, crate::os::clock::now_ms());
    r["events_files"] = json!(files);
    r["events_errors"] = json!(errors);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &r).context("writing JSON")?;
        writeln!(out)?;
    } else {
        render(&r, &mut out)?;
    }
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::sessions::{filter, parse_since};
    use time::OffsetDateTime;

    fn info(id: u64, agent: &str, started: &str) -> SessionInfo {
        SessionInfo {
            id,
            agent: agent.into(),
            reason: None,
            root_pid: 1,
            uid: 0,
            user: "root".into(),
            started: started.into(),
            source: crate::sessions::SessionSource::Wrapper,
            command: vec![],
            cwd: "/".into(),
            events: 0,
            ended: None,
            scope: vec![],
        }
    }

    #[test]
    fn filters_by_agent_and_start() {
        let list = vec![
            info(1, "codex", "2026-01-01T00:00:00Z"),
            info(2, "claude-code", "2026-02-01T00:00:00.5Z"),
            info(3, "codex", "2026-03-01T00:00:00Z"),
        ];
        let since = parse_since("2026-01-15T00:00:00Z").unwrap();
        let ids = |v: Vec<SessionInfo>| v.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(filter(list.clone(), Some("codex"), None)), [1, 3]);
        assert_eq!(ids(filter(list.clone(), None, Some(since))), [2, 3]);
        assert_eq!(ids(filter(list.clone(), Some("codex"), Some(since))), [3]);
        assert!(parse_since("2h").unwrap() < OffsetDateTime::now_utc());
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn ledger_records_follow_requests_and_grants() {
        let d = tempfile::tempdir().unwrap();
        let ledger = d.path().join("ledger.jsonl");
        let lines = [
            json!({"kind": "session_start", "body": {"session": 7}}),
            json!({"kind": "request", "body": {"session": 7, "host_request_id": 3}}),
            json!({"kind": "request", "body": {"session": 8, "host_request_id": 4}}),
            json!({"kind": "grant", "body": {"grant": 11, "host_request_id": 3, "by": "alice",
                   "expires_unix_ms": 1000}}),
            json!({"kind": "grant", "body": {"grant": 12, "host_request_id": 4}}),
            json!({"kind": "reverted", "body": {"grant": 11, "session": 7, "path": "/etc/x"}}),
            json!({"kind": "change", "body": {"grant": 12, "session": 8}}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&ledger, format!("{text}not json\n")).unwrap();
        let r = ledger_records(&ledger, 7).unwrap();
        let kinds: Vec<_> = r.iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["session_start", "request", "grant", "reverted"]);
        let rep = report(
            &info(7, "codex", "t"),
            r,
            (vec![], 0),
            Value::String("no baseline".into()),
            2000,
        );
        assert_eq!(rep["grants"][0]["by"], "alice");
        assert_eq!(rep["grants"][0]["live"], false);
        assert_eq!(rep["reverted"].as_array().map(Vec::len), Some(1));
        let mut text = Vec::new();
        render(&rep, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("reverted: 1") && text.contains("drift now: unknown"),
            "{text}"
        );
        assert!(
            ledger_records(&d.path().join("missing"), 7)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn events_are_read_from_rotated_files_oldest_first() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("events.ndjson");
        let ev =
            |n: u64, s: u64| format!("{{\"n\":{n},\"session\":{{\"id\":{s},\"agent\":\"a\"}}}}\n");
        let gz = |path: &std::path::Path, text: &str| {
            let mut e = flate2::write::GzEncoder::new(
                std::fs::File::create(path).unwrap(),
                flate2::Compression::fast(),
            );
            e.write_all(text.as_bytes()).unwrap();
            e.finish().unwrap();
        };
        gz(
            &d.path().join("events.ndjson.3.gz"),
            &(ev(1, 7) + &ev(2, 8)),
        );
        gz(&d.path().join("events.ndjson.2.gz"), &ev(3, 7));
        std::fs::write(d.path().join("events.ndjson.1"), ev(4, 7)).unwrap();
        std::fs::write(&f, ev(5, 7) + "not json\n").unwrap();
        // After a gap: not a rotation of this file.
        std::fs::write(d.path().join("events.ndjson.5"), ev(9, 7)).unwrap();
        let (events, more, files, errors) = all_session_events(&f, 7);
        let ns: Vec<u64> = events.iter().filter_map(|e| e["n"].as_u64()).collect();
        assert_eq!(ns, [1, 3, 4, 5]);
        assert_eq!((more, files.len(), errors.len()), (0, 4, 0), "{errors:?}");
        // A corrupt compressed file is reported and the others still read.
        std::fs::remove_file(d.path().join("events.ndjson.5")).unwrap();
        std::fs::write(d.path().join("events.ndjson.4.gz"), "not gzip").unwrap();
        let (events, _, files, errors) = all_session_events(&f, 7);
        assert_eq!(events.len(), 4);
        assert_eq!((files.len(), errors.len()), (4, 1), "{errors:?}");
        assert!(errors[0].contains("events.ndjson.4.gz"), "{errors:?}");
        // Nothing there at all: no events, no error.
        let (events, _, _, errors) = all_session_events(&d.path().join("none"), 7);
        assert!(events.is_empty() && errors.is_empty());
    }
}
