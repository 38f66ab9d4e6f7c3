//! Reading records back.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::SystemTime;

use super::{LedgerError, LedgerRecord, io_err};

/// A line that [`read_lenient`] could not use.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

/// What [`read_lenient`] found.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    /// Records with their 1-based line numbers, in file order.
    pub records: Vec<(u64, LedgerRecord)>,
    /// Complete lines that are not records.
    pub skipped: Vec<SkippedLine>,
    /// Length of a last line without a newline (an append in progress or a torn
    /// append); it is not parsed.
    pub incomplete_tail: Option<u64>,
}

/// Calls `f(line_number, bytes, complete)` for each line of `path` (without the newline);
/// `complete` is false only for a last line that has no newline.
pub(super) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, &[u8], bool),
) -> Result<(), LedgerError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(io_err(path, "read"))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        match buf.strip_suffix(b"\n") {
            Some(content) => f(line, content, true),
            None => f(line, &buf, false),
        }
    }
}

/// Every record of the ledger at `path` (at or after `since` when given), skipping lines
/// that are not records and reporting them in the outcome. Needs no lock.
pub fn read_lenient(path: &Path, since: Option<SystemTime>) -> Result<ReadOutcome, LedgerError> {
    let mut out = ReadOutcome::default();
    for_each_line(path, |line, bytes, complete| {
        if !complete {
            out.incomplete_tail = Some(bytes.len() as u64);
            return;
        }
        match LedgerRecord::parse_line(bytes) {
            Ok(r) => {
                let keep = match since {
                    None => true,
                    // parse_line checked that time parses.
                    Some(since) => r.timestamp().is_some_and(|t| t >= since),
                };
                if keep {
                    out.records.push((line, r));
                }
            }
            Err(reason) => out.skipped.push(SkippedLine { line, reason }),
        }
    })?;
    Ok(out)
}

/// Every record of the ledger at `path`, oldest first, only those at or after `since`
/// when given. A line that is not a record is an error ([`LedgerError::Malformed`]); a
/// last line without a newline (an append in progress) is left out and logged. Does not
/// check hashes: that is [`super::verify`]'s job.
pub fn read(path: &Path, since: Option<SystemTime>) -> Result<Vec<LedgerRecord>, LedgerError> {
    let outcome = read_lenient(path, since)?;
    if let Some(bad) = outcome.skipped.into_iter().next() {
        return Err(LedgerError::Malformed {
            path: path.to_owned(),
            line: bad.line,
            reason: bad.reason,
        });
    }
    if let Some(bytes) = outcome.incomplete_tail {
        tracing::warn!(
            path = %path.display(),
            bytes,
            "ignoring the ledger's incomplete last line (an append in progress, or a torn one)"
        );
    }
    Ok(outcome.records.into_iter().map(|(_, r)| r).collect())
}
