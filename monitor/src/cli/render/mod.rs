//! Formatting for people and for JSON, shared by the CLI commands: terminal-safe text,
//! tables, times (pure functions of the data and the current time); what approval
//! requests and grants look like is in [`approvals`] and [`grants`].
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use time::{OffsetDateTime, UtcOffset, macros::format_description};

use crate::os::clock::{at_unix_ms, local_offset_secs};
pub mod approvals;
pub mod grants;

/// Writes a listing: one JSON array of `to_json` of each item, or the `table`.
pub fn print_list<T>(
    items: &[T],
    json: bool,
    to_json: fn(&T) -> Value,
    out: &mut dyn Write,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        let list: Vec<Value> = items.iter().map(to_json).collect();
        writeln!(out, "{}", Value::Array(list))?;
    } else {
        out.write_all(table().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Terminal-safe text: control characters visible, backslashes doubled (as for events).
pub fn term(s: &str) -> String {
    crate::event::escape::for_terminal(s.as_bytes())
}

/// `s` shortened to `max` characters with a trailing ellipsis.
pub fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A command line for people: each argument terminal-safe, quoted when it would not read
/// as one word.
pub fn command_line(argv: &[String]) -> String {
    if argv.is_empty() {
        return "-".to_owned();
    }
    argv.iter()
        .map(|a| {
            let t = term(a);
            if t.is_empty()
                || t.chars()
                    .any(|c| c.is_whitespace() || "'\"$`;&|<>()".contains(c))
            {
                format!("'{}'", t.replace('\'', "'\\''"))
            } else {
                t
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn offset_at(unix_secs: i64) -> UtcOffset {
    local_offset_secs(unix_secs)
        .and_then(|s| i32::try_from(s).ok())
        .and_then(|s| UtcOffset::from_whole_seconds(s).ok())
        .unwrap_or(UtcOffset::UTC)
}

/// `unix_ms` as local RFC 3339 to the second (`2026-05-01T14:03:09+02:00`); "-" for 0.
pub fn local_time(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    let secs = unix_ms.div_euclid(1000);
    let fmt = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
    );
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .map(|t| t.to_offset(offset_at(secs)))
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// `unix_ms` as UTC RFC 3339 with milliseconds, for JSON; `None` for 0.
pub fn utc_time(unix_ms: i64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    Some(crate::ledger::format_time(at_unix_ms(unix_ms)?))
}

/// How far `unix_ms` is from `now_ms`, to the second: "in 4m 12s", "3m ago", "now".
pub fn relative(unix_ms: i64, now_ms: i64) -> String {
    let diff = unix_ms.saturating_sub(now_ms);
    let secs = (diff.unsigned_abs() + 500) / 1000;
    if secs == 0 {
        return "now".to_owned();
    }
    let d = humantime::format_duration(Duration::from_secs(secs));
    if diff > 0 {
        format!("in {d}")
    } else {
        format!("{d} ago")
    }
}

/// Local time with the distance from now: `2026-05-01T14:03:09+02:00 (in 4m 12s)`.
pub fn when(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    format!("{} ({})", local_time(unix_ms), relative(unix_ms, now_ms))
}

/// Aligned columns, the last one unpadded; ends with a newline.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            l.push_str(cell);
            if i + 1 < widths.len() {
                l.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Terminal-safe text, "-" when empty.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        term(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// 2026-05-01T12:00:00Z.
    pub const NOW: i64 = 1_777_636_800_000;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(NOW + 252_000, NOW), "in 4m 12s");
        assert_eq!(relative(NOW - 180_000, NOW), "3m ago");
        assert_eq!(relative(NOW + 400, NOW), "now");
        assert_eq!(relative(NOW + 3 * 86_400_000, NOW), "in 3days");
        assert_eq!(utc_time(NOW).as_deref(), Some("2026-05-01T12:00:00.000Z"));
        assert_eq!(utc_time(0), None);
        assert_eq!(local_time(0), "-");
    }

    #[test]
    fn local_time_is_rfc3339_with_the_local_offset() {
        let s = local_time(NOW);
        let parsed = crate::ledger::parse_time(&s).unwrap();
        assert_eq!(
            parsed,
            UNIX_EPOCH + Duration::from_millis(NOW as u64),
            "{s}"
        );
        // The offset is the one the C library gives for that instant.
        let off = offset_at(NOW / 1000);
        let (h, m, _) = off.as_hms();
        assert!(
            s.ends_with(&format!("{h:+03}:{:02}", m.abs())),
            "{s} vs {off}"
        );
    }

    #[test]
    fn command_lines_quote_what_is_not_one_word() {
        assert_eq!(
            command_line(&["vim".into(), "a b".into(), "".into(), "it's".into()]),
            "vim 'a b' '' 'it'\\''s'"
        );
        assert_eq!(command_line(&[]), "-");
    }
}
