//! `confgate audit log`, `confgate audit verify` and `confgate audit repair`: read, check
//! and (after damage) continue the host's audit ledger.
//!
//! Both read the file directly (no daemon needed; the ledger is 0640, so root or the
//! file's group). The default ledger is `<daemon.state_dir>/ledger.jsonl`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;

use crate::ledger::{self, Anchor, LedgerRecord, VerifyReport};

/// Exit status of `audit verify` when the ledger is intact.
pub const EXIT_INTACT: i32 = 0;
/// Exit status of `audit verify` when problems were found.
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit status of `audit verify` when the ledger could not be read (or no path resolved).
pub const EXIT_ERROR: i32 = 2;

/// Longest body shown on a human `audit log` line, in characters (`--json` has it whole).
const BODY_COLUMN: usize = 400;

/// The `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print ledger records, oldest first (one line per record, or JSON lines with --json).
    Log {
        /// Only records at or after this time: a duration ago ("2h", "1d 30m") or an
        /// RFC 3339 time ("2024-05-01T12:00:00Z").
        #[arg(long, value_parser = parse_since)]
        since: Option<Since>,
        /// Print each record as its JSON line.
        #[arg(long)]
        json: bool,
        /// Ledger file (default: the `ledger` of an approver.toml given with --config, else
        /// <daemon.state_dir>/ledger.jsonl).
        #[arg(long)]
        ledger: Option<PathBuf>,
    },
    /// Check the hash chain: exit 0 when intact, 1 when problems are found, 2 on errors.
    Verify {
        /// Ledger file (default: the `ledger` of an approver.toml given with --config, else
        /// <daemon.state_dir>/ledger.jsonl).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// A head recorded earlier, SEQ:HASH: check that record is still there unchanged
        /// (detects records removed from the end).
        #[arg(long)]
        anchor: Option<Anchor>,
    },
    /// Continue a ledger whose last records do not chain (a changed or garbage last line):
    /// move it aside and start a new chain linked to its last verified record, as the
    /// daemon does at start. Exit 0 when nothing needed repair, 1 when repaired, 2 on
    /// errors (e.g. the daemon holds the ledger: stop it first).
    Repair {
        /// Ledger file (default: the `ledger` of an approver.toml given with --config, else
        /// <daemon.state_dir>/ledger.jsonl).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Keep the damaged lines in the file and continue after the last line that parses
        /// as a record (a `ledger_repaired` record), instead of moving the file aside.
        #[arg(long)]
        in_place: bool,
    },
}

/// The `--since` argument: how long ago, or when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(SystemTime),
}

impl Since {
    /// The point in time, relative to `now` for a duration.
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// Parses `--since`: an RFC 3339 time, or a duration as humantime reads it.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Some(t) = ledger::parse_time(s) {
        return Ok(Since::At(t));
    }
    humantime::parse_duration(s).map(Since::Ago).map_err(|e| {
        format!(
            "{s:?} is neither a duration (\"90m\", \"2h\", \"1d\") nor an RFC 3339 time \
             (\"2024-05-01T12:00:00Z\"): {e}"
        )
    })
}

/// Runs an `audit` subcommand; `default_ledger` resolves the path from the configuration
/// when `--ledger` is not given. Prints to stdout/stderr and returns the exit status.
pub fn run(cmd: &AuditCommand, default_ledger: impl FnOnce() -> anyhow::Result<PathBuf>) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    run_to(cmd, default_ledger, SystemTime::now(), &mut out, &mut err)
}

/// [`run`] writing to the given streams, at time `now` (for `--since` durations).
pub fn run_to(
    cmd: &AuditCommand,
    default_ledger: impl FnOnce() -> anyhow::Result<PathBuf>,
    now: SystemTime,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let ledger_arg = match cmd {
        AuditCommand::Log { ledger, .. }
        | AuditCommand::Verify { ledger, .. }
        | AuditCommand::Repair { ledger, .. } => ledger,
    };
    let path = match ledger_arg.clone().map_or_else(default_ledger, Ok) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "confgate: {e:#}");
            return match cmd {
                AuditCommand::Verify { .. } | AuditCommand::Repair { .. } => EXIT_ERROR,
                AuditCommand::Log { .. } => 1,
            };
        }
    };
    match cmd {
        AuditCommand::Log { since, json, .. } => {
            match log(&path, since.map(|s| s.resolve(now)), *json, out, err) {
                Ok(()) => 0,
                Err(e) if super::is_broken_pipe(&e) => 0,
                Err(e) => {
                    let _ = writeln!(err, "confgate: {e:#}");
                    1
                }
            }
        }
        AuditCommand::Verify { anchor, .. } => verify(&path, anchor.as_ref(), out, err),
        AuditCommand::Repair { in_place, .. } => {
            super::audit_repair::repair(&path, *in_place, out, err)
        }
    }
}

/// `audit log`: the records at or after `since`, oldest first. Lines that are not records
/// are skipped with a warning on `err` (`audit verify` explains them).
pub fn log(
    path: &Path,
    since: Option<SystemTime>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    let outcome = ledger::read_lenient(path, since)?;
    for (_, record) in &outcome.records {
        if json {
            writeln!(out, "{}", record.to_line())
        } else {
            writeln!(out, "{}", human_line(record))
        }
        .context("writing output")?;
    }
    out.flush().context("writing output")?;
    if !outcome.skipped.is_empty() {
        let lines: Vec<String> = outcome
            .skipped
            .iter()
            .take(10)
            .map(|s| s.line.to_string())
            .collect();
        let more = if outcome.skipped.len() > 10 {
            ", ..."
        } else {
            ""
        };
        writeln!(
            err,
            "confgate: warning: {} line(s) of {} are not ledger records and were skipped \
             (line {}{more}); run `confgate audit verify`",
            outcome.skipped.len(),
            path.display(),
            lines.join(", ")
        )?;
    }
    if let Some(bytes) = outcome.incomplete_tail {
        writeln!(
            err,
            "confgate: warning: the last line of {} is incomplete ({bytes} bytes): an append \
             in progress, or a torn one",
            path.display()
        )?;
    }
    Ok(())
}

/// One human line: seq, time, kind, body (compact JSON, terminal-safe, shortened).
pub fn human_line(r: &LedgerRecord) -> String {
    let mut body = json_for_terminal(&ledger::canonical::canonical_json(&r.body));
    if body.chars().count() > BODY_COLUMN {
        body = body.chars().take(BODY_COLUMN - 1).collect();
        body.push('…');
    }
    format!(
        "{:>6}  {}  {:<18}  {}",
        r.seq,
        json_for_terminal(&r.time),
        json_for_terminal(&r.kind),
        body
    )
}

/// JSON text made safe for a terminal: control characters JSON leaves alone (DEL, C1)
/// and invisible formatting characters (bidi overrides, zero-width) become `\uXXXX`,
/// which keeps JSON text valid and meaning the same.
fn json_for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let invisible = matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}');
        if c.is_control() || invisible {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// `audit verify`: prints OK with the record count and head, or every problem; returns
/// [`EXIT_INTACT`], [`EXIT_PROBLEMS`] or [`EXIT_ERROR`].
pub fn verify(
    path: &Path,
    anchor: Option<&Anchor>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let report = match anchor {
        Some(a) => ledger::verify_anchored(path, a),
        None => ledger::verify(path),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "confgate: cannot verify the ledger: {e}");
            return EXIT_ERROR;
        }
    };
    match out
        .write_all(render_report(path, &report).as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) if report.is_intact() => EXIT_INTACT,
        Ok(()) => EXIT_PROBLEMS,
        Err(e) => {
            let _ = writeln!(err, "confgate: writing output: {e}");
            EXIT_ERROR
        }
    }
}

/// The text `audit verify` prints (ends with a newline).
pub fn render_report(path: &Path, report: &VerifyReport) -> String {
    let head = match &report.head {
        Some(h) => format!(
            "head: seq {} hash {} (line {}, {})",
            h.seq,
            h.hash,
            h.line,
            json_for_terminal(&h.time)
        ),
        None => "head: none (no records)".to_owned(),
    };
    if report.is_intact() {
        return format!(
            "OK: {} intact, {} record(s)\n{head}\n",
            path.display(),
            report.records
        );
    }
    let mut text = format!(
        "PROBLEMS: {} in {} ({} record(s) on {} line(s))\n",
        report.problems.len(),
        path.display(),
        report.records,
        report.lines
    );
    for p in &report.problems {
        text.push_str("  ");
        text.push_str(&json_for_terminal(&p.to_string()));
        text.push('\n');
    }
    text.push_str(&head);
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AuditCommand,
    }

    fn parse(args: &[&str]) -> Result<AuditCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("audit").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn ledger_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut l = ledger::Ledger::open(&path).unwrap();
        for i in 1..=n {
            l.append("change", json!({"i": i, "path": "/etc/x\u{202e}\n"}))
                .unwrap();
        }
        (dir, path)
    }

    fn run_args(args: &[&str], default: &Path) -> (i32, String, String) {
        let cmd = parse(args).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_to(
            &cmd,
            || Ok(default.to_owned()),
            SystemTime::now(),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn since_takes_durations_and_rfc3339() {
        assert_eq!(
            parse_since("2h").unwrap(),
            Since::Ago(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_since("1d 30m").unwrap(),
            Since::Ago(Duration::from_secs(86_400 + 1800))
        );
        let at = parse_since("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(
            at,
            Since::At(SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        assert_eq!(
            parse_since("2024-05-01T14:00:00+02:00").unwrap(),
            at,
            "offsets are honoured"
        );
        let err = parse_since("last tuesday").unwrap_err();
        assert!(err.contains("neither a duration"), "{err}");
        assert!(parse_since("").is_err());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            Since::Ago(Duration::from_secs(100)).resolve(now),
            now - Duration::from_secs(100)
        );
        assert_eq!(
            Since::Ago(Duration::MAX).resolve(now),
            SystemTime::UNIX_EPOCH,
            "an overflowing duration means everything"
        );
    }

    #[test]
    fn since_argument_goes_through_clap() {
        match parse(&["log", "--since", "90m", "--json"]).unwrap() {
            AuditCommand::Log {
                since,
                json,
                ledger,
                ..
            } => {
                assert_eq!(since, Some(Since::Ago(Duration::from_secs(5400))));
                assert!(json);
                assert_eq!(ledger, None);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&["log", "--since", "soon"]).unwrap_err();
        assert!(e.to_string().contains("neither a duration"), "{e}");
        let e = parse(&["verify", "--anchor", "5"]).unwrap_err();
        assert!(e.to_string().contains("SEQ:HASH"), "{e}");
    }

    #[test]
    fn verify_exits_0_when_intact_1_on_problems_2_on_errors() {
        let (dir, path) = ledger_with(3);
        let (code, out, _) = run_args(&["verify"], &path);
        assert_eq!(code, EXIT_INTACT, "{out}");
        assert!(out.starts_with("OK: "), "{out}");
        assert!(
            out.contains("3 record(s)") && out.contains("head: seq 3 hash "),
            "{out}"
        );

        // --ledger wins over the default.
        let missing = dir.path().join("nope.jsonl");
        let (code, _, err) = run_args(&["verify", "--ledger", missing.to_str().unwrap()], &path);
        assert_eq!(code, EXIT_ERROR);
        assert!(err.contains("nope.jsonl"), "{err}");

        // Tamper: remove the middle record.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let (code, out, _) = run_args(&["verify"], &path);
        assert_eq!(code, EXIT_PROBLEMS, "{out}");
        assert!(out.starts_with("PROBLEMS: 1 in "), "{out}");
        assert!(out.contains("seq 2 is missing"), "{out}");

        // An unresolvable default path is an error too.
        let cmd = parse(&["verify"]).unwrap();
        let code = run_to(
            &cmd,
            || anyhow::bail!("bad config"),
            SystemTime::now(),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(code, EXIT_ERROR);
    }

    #[test]
    fn verify_with_anchor_catches_a_cut_end() {
        let (_dir, path) = ledger_with(3);
        let head = ledger::verify(&path).unwrap().head.unwrap();
        let anchor = format!("{}:{}", head.seq, head.hash);
        assert_eq!(
            run_args(&["verify", "--anchor", &anchor], &path).0,
            EXIT_INTACT
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        assert_eq!(run_args(&["verify"], &path).0, EXIT_INTACT);
        let (code, out, _) = run_args(&["verify", "--anchor", &anchor], &path);
        assert_eq!(code, EXIT_PROBLEMS);
        assert!(out.contains("no record with seq 3"), "{out}");
    }

    #[test]
    fn log_prints_one_safe_line_per_record_or_json_lines() {
        let (_dir, path) = ledger_with(2);
        let (code, out, err) = run_args(&["log"], &path);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].trim_start().starts_with("1  "), "{out}");
        assert!(lines[0].contains("change"), "{out}");
        assert!(
            lines[0].contains(r#""path":"/etc/x\u202e\n""#),
            "bidi override made visible: {out}"
        );
        assert!(!out.contains('\u{202e}'));

        let (code, out, _) = run_args(&["log", "--json"], &path);
        assert_eq!(code, 0);
        let recs: Vec<LedgerRecord> = out
            .lines()
            .map(|l| LedgerRecord::parse_line(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(recs, ledger::read(&path, None).unwrap());

        // --since in the future shows nothing; a minute ago shows everything.
        let (_, out, _) = run_args(&["log", "--since", "2999-01-01T00:00:00Z"], &path);
        assert!(out.is_empty(), "{out}");
        let (_, out, _) = run_args(&["log", "--since", "1m"], &path);
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn log_warns_about_lines_that_are_not_records() {
        let (_dir, path) = ledger_with(2);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("garbage\n");
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run_args(&["log"], &path);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), 2);
        assert!(
            err.contains("line 3") && err.contains("audit verify"),
            "{err}"
        );
    }

    #[test]
    fn long_bodies_are_shortened_on_human_lines() {
        let r = LedgerRecord {
            seq: 1,
            time: "2024-01-01T00:00:00.000Z".into(),
            kind: "change".into(),
            body: json!({"diff": "x".repeat(5000)}),
            prev: ledger::GENESIS_PREV.into(),
            hash: ledger::GENESIS_PREV.into(),
        };
        let line = human_line(&r);
        assert!(line.ends_with('…'));
        assert!(line.chars().count() < BODY_COLUMN + 60);
    }
}
