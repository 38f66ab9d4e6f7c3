//! Checking a ledger file: every problem with its line and seq, and the head to anchor.
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::canonical::is_sha256_hex;
use super::read::for_each_line;
use super::{GENESIS_PREV, LedgerError, LedgerRecord};

/// The last record of the chain (highest seq): record its seq and hash somewhere else
/// (another host, a ticket) so that removing records from the end can be detected later
/// with [`verify_anchored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// 1-based line of the record.
    pub line: u64,
    pub time: String,
}

/// A (seq, hash) pair recorded earlier, written `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("anchor {s:?} is not SEQ:HASH"))?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("anchor seq {seq:?} is not a number"))?;
        let hash = hash.to_ascii_lowercase();
        if seq == 0 || !is_sha256_hex(&hash) {
            return Err(format!(
                "anchor {s:?}: need a seq ≥ 1 and a 64-digit hex hash"
            ));
        }
        Ok(Anchor { seq, hash })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// One thing wrong with a ledger file. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A complete line that is not a record (not JSON, wrong fields, bad values).
    Malformed { line: u64, reason: String },
    /// The last line has no newline: the file was cut mid-record, or an append is running.
    IncompleteLastLine { line: u64, bytes: u64 },
    /// The record's content does not match its stored hash: content changed.
    HashMismatch {
        line: u64,
        seq: u64,
        stored: String,
        computed: String,
    },
    /// Records `first..=last` are absent: removed. `after_line` holds seq `first - 1`
    /// (none when the start of the chain is missing), `before_line` holds seq `last + 1`.
    Missing {
        first: u64,
        last: u64,
        after_line: Option<u64>,
        before_line: u64,
    },
    /// The record's `prev` is not the stored hash of seq - 1 (at `prev_line`), or, for seq 1,
    /// not 64 zeros: the previous record was replaced by one with a recomputed hash.
    BrokenLink {
        line: u64,
        seq: u64,
        prev: String,
        expected: String,
        prev_line: Option<u64>,
    },
    /// An exact copy of the record at `first_line`.
    Duplicate {
        line: u64,
        seq: u64,
        first_line: u64,
    },
    /// A second, different record with the seq of the one at `first_line`.
    ConflictingSeq {
        line: u64,
        seq: u64,
        first_line: u64,
    },
    /// The record is not in seq order: records were reordered. `after`/`before` are the
    /// neighbouring records in the file as (seq, line).
    OutOfOrder {
        line: u64,
        seq: u64,
        after: Option<(u64, u64)>,
        before: Option<(u64, u64)>,
    },
    /// The anchored seq is not in the file (removed from the end, or earlier).
    AnchorMissing { anchor: Anchor },
    /// The record with the anchored seq has another hash.
    AnchorMismatch {
        anchor: Anchor,
        line: u64,
        found: String,
    },
}

impl Problem {
    /// The line a reader should look at (for sorting the report).
    pub fn line(&self) -> u64 {
        match self {
            Problem::Malformed { line, .. }
            | Problem::IncompleteLastLine { line, .. }
            | Problem::HashMismatch { line, .. }
            | Problem::BrokenLink { line, .. }
            | Problem::Duplicate { line, .. }
            | Problem::ConflictingSeq { line, .. }
            | Problem::OutOfOrder { line, .. }
            | Problem::AnchorMismatch { line, .. } => *line,
            Problem::Missing { before_line, .. } => *before_line,
            Problem::AnchorMissing { .. } => u64::MAX,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Malformed { line, reason } => {
                write!(f, "line {line}: not a ledger record: {reason}")
            }
            Problem::IncompleteLastLine { line, bytes } => write!(
                f,
                "line {line}: the last line is incomplete ({bytes} bytes, no newline): the file \
                 was cut in the middle of a record (or an append is in progress)"
            ),
            Problem::HashMismatch {
                line,
                seq,
                stored,
                computed,
            } => write!(
                f,
                "line {line}: seq {seq}: content changed: the record hashes to {computed}, its \
                 stored hash is {stored}"
            ),
            Problem::Missing {
                first,
                last,
                after_line,
                before_line,
            } => {
                let n = last - first + 1;
                let what = if n == 1 {
                    format!("seq {first} is missing (1 record removed)")
                } else {
                    format!("seq {first}..{last} are missing ({n} records removed)")
                };
                match after_line {
                    Some(a) => write!(
                        f,
                        "{what} between line {a} (seq {}) and line {before_line} (seq {})",
                        first - 1,
                        last + 1
                    ),
                    None => write!(
                        f,
                        "{what} from the start of the ledger, before line {before_line} (seq {})",
                        last + 1
                    ),
                }
            }
            Problem::BrokenLink {
                line,
                seq,
                prev,
                expected,
                prev_line,
            } => match prev_line {
                Some(pl) => write!(
                    f,
                    "line {line}: seq {seq} does not link to seq {} at line {pl}: that record \
                     was changed or replaced (prev {prev}, hash of seq {} {expected})",
                    seq - 1,
                    seq - 1
                ),
                None => write!(
                    f,
                    "line {line}: seq {seq} does not start the chain: prev is {prev}, not 64 zeros"
                ),
            },
            Problem::Duplicate {
                line,
                seq,
                first_line,
            } => write!(
                f,
                "line {line}: seq {seq} is duplicated: a copy of the record at line {first_line}"
            ),
            Problem::ConflictingSeq {
                line,
                seq,
                first_line,
            } => write!(
                f,
                "line {line}: seq {seq} appears a second time with different content (first at \
                 line {first_line})"
            ),
            Problem::OutOfOrder {
                line,
                seq,
                after,
                before,
            } => {
                write!(
                    f,
                    "line {line}: seq {seq} is out of order (records reordered):"
                )?;
                if let Some((s, l)) = after {
                    write!(f, " it follows seq {s} at line {l}")?;
                }
                if let Some((s, l)) = before {
                    let sep = if after.is_some() { " and" } else { " it" };
                    write!(f, "{sep} precedes seq {s} at line {l}")?;
                }
                Ok(())
            }
            Problem::AnchorMissing { anchor } => write!(
                f,
                "anchor {anchor}: no record with seq {} (records removed from the end?)",
                anchor.seq
            ),
            Problem::AnchorMismatch {
                anchor,
                line,
                found,
            } => write!(
                f,
                "line {line}: seq {} has hash {found}, the anchor says {}",
                anchor.seq, anchor.hash
            ),
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Lines in the file (an incomplete last line included).
    pub lines: u64,
    /// Lines that parse as records.
    pub records: u64,
    /// The record with the highest seq; `None` for a ledger without records.
    pub head: Option<Head>,
    /// Every problem found, by line.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No problem found.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A parsed record's chain fields.
#[derive(Debug, Clone)]
struct Entry {
    line: u64,
    seq: u64,
    prev: String,
    hash: String,
    time: String,
}

/// Checks every line of the ledger at `path`: each record's hash against its content, the
/// seq sequence (gaps, duplicates, order) and every `prev` link. Needs no lock; an append
/// running at the same time may show as an incomplete last line.
pub fn verify(path: &Path) -> Result<VerifyReport, LedgerError> {
    let mut report = VerifyReport::default();
    let mut entries = Vec::new();
    for_each_line(path, |line, bytes, complete| {
        report.lines = line;
        if !complete {
            report.problems.push(Problem::IncompleteLastLine {
                line,
                bytes: bytes.len() as u64,
            });
            return;
        }
        match LedgerRecord::parse_line(bytes) {
            Err(reason) => report.problems.push(Problem::Malformed { line, reason }),
            Ok(r) => {
                let computed = r.computed_hash();
                if computed != r.hash {
                    report.problems.push(Problem::HashMismatch {
                        line,
                        seq: r.seq,
                        stored: r.hash.clone(),
                        computed,
                    });
                }
                entries.push(Entry {
                    line,
                    seq: r.seq,
                    prev: r.prev,
                    hash: r.hash,
                    time: r.time,
                });
            }
        }
    })?;
    report.records = entries.len() as u64;
    let unique = drop_repeats(entries, &mut report.problems);
    order_problems(&unique, &mut report.problems);
    let mut by_seq: Vec<&Entry> = unique.iter().collect();
    by_seq.sort_by_key(|e| e.seq);
    gap_and_link_problems(&by_seq, &mut report.problems);
    report.head = by_seq.last().map(|e| Head {
        seq: e.seq,
        hash: e.hash.clone(),
        line: e.line,
        time: e.time.clone(),
    });
    report.problems.sort_by_key(Problem::line);
    Ok(report)
}

/// [`verify`], and also check that the record with `anchor.seq` still has `anchor.hash`.
pub fn verify_anchored(path: &Path, anchor: &Anchor) -> Result<VerifyReport, LedgerError> {
    let mut report = verify(path)?;
    // Find the anchored record by reading its line again (verify keeps no records).
    let mut found: Option<(u64, String)> = None;
    for_each_line(path, |line, bytes, complete| {
        if found.is_some() || !complete {
            return;
        }
        if let Ok(r) = LedgerRecord::parse_line(bytes)
            && r.seq == anchor.seq
        {
            found = Some((line, r.hash));
        }
    })?;
    match found {
        None => report.problems.push(Problem::AnchorMissing {
            anchor: anchor.clone(),
        }),
        Some((line, hash)) if hash != anchor.hash => {
            report.problems.push(Problem::AnchorMismatch {
                anchor: anchor.clone(),
                line,
                found: hash,
            });
        }
        Some(_) => {}
    }
    report.problems.sort_by_key(Problem::line);
    Ok(report)
}

/// Keeps the first record of each seq; reports exact copies and conflicting records.
fn drop_repeats(entries: Vec<Entry>, problems: &mut Vec<Problem>) -> Vec<Entry> {
    let mut first: HashMap<u64, usize> = HashMap::new();
    let mut unique: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(&i) = first.get(&e.seq) {
            let orig = &unique[i];
            problems.push(if orig.hash == e.hash {
                Problem::Duplicate {
                    line: e.line,
                    seq: e.seq,
                    first_line: orig.line,
                }
            } else {
                Problem::ConflictingSeq {
                    line: e.line,
                    seq: e.seq,
                    first_line: orig.line,
                }
            });
        } else {
            first.insert(e.seq, unique.len());
            unique.push(e);
        }
    }
    unique
}

/// Reports the records outside a longest increasing run of seqs: the fewest records
/// whose moves explain the file's order.
fn order_problems(unique: &[Entry], problems: &mut Vec<Problem>) {
    let seqs: Vec<u64> = unique.iter().map(|e| e.seq).collect();
    let keep = longest_increasing(&seqs);
    for (i, e) in unique.iter().enumerate() {
        if keep[i] {
            continue;
        }
        let neighbour = |j: Option<usize>| j.and_then(|j| unique.get(j)).map(|n| (n.seq, n.line));
        problems.push(Problem::OutOfOrder {
            line: e.line,
            seq: e.seq,
            after: neighbour(i.checked_sub(1)),
            before: neighbour(Some(i + 1)),
        });
    }
}

/// Marks the members of one longest strictly increasing subsequence (patience sorting).
fn longest_increasing(xs: &[u64]) -> Vec<bool> {
    // tails[k]: index of the smallest last element of an increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut pred: Vec<Option<usize>> = vec![None; xs.len()];
    for (i, &x) in xs.iter().enumerate() {
        let k = tails.partition_point(|&t| xs[t] < x);
        pred[i] = k.checked_sub(1).map(|p| tails[p]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut keep = vec![false; xs.len()];
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        keep[i] = true;
        cur = pred[i];
    }
    keep
}

/// Reports missing seqs (from 1 to the highest) and broken `prev` links between
/// consecutive seqs. `by_seq` is sorted by seq, without repeats.
fn gap_and_link_problems(by_seq: &[&Entry], problems: &mut Vec<Problem>) {
    let mut previous: Option<&Entry> = None;
    for e in by_seq {
        let expected_seq = previous.map_or(1, |p| p.seq + 1);
        if e.seq > expected_seq {
            problems.push(Problem::Missing {
                first: expected_seq,
                last: e.seq - 1,
                after_line: previous.map(|p| p.line),
                before_line: e.line,
            });
        } else if e.seq == 1 {
            if e.prev != GENESIS_PREV {
                problems.push(Problem::BrokenLink {
                    line: e.line,
                    seq: 1,
                    prev: e.prev.clone(),
                    expected: GENESIS_PREV.to_owned(),
                    prev_line: None,
                });
            }
        } else if let Some(p) = previous
            && e.prev != p.hash
        {
            problems.push(Problem::BrokenLink {
                line: e.line,
                seq: e.seq,
                prev: e.prev.clone(),
                expected: p.hash.clone(),
                prev_line: Some(p.line),
            });
        }
        previous = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_increasing_marks_the_fewest_moved() {
        let keep = longest_increasing(&[1, 6, 2, 3, 4, 5, 7]);
        assert_eq!(keep, vec![true, false, true, true, true, true, true]);
        let keep = longest_increasing(&[1, 2, 7, 4, 5, 6, 3, 8]);
        assert_eq!(
            keep.iter().filter(|k| !**k).count(),
            2,
            "two records moved: {keep:?}"
        );
        assert!(!keep[2] && !keep[6]);
        assert_eq!(longest_increasing(&[]), Vec::<bool>::new());
    }

    #[test]
    fn anchor_parses_and_rejects() {
        let h = "a".repeat(64);
        assert_eq!(
            format!("12:{h}").parse::<Anchor>().unwrap(),
            Anchor {
                seq: 12,
                hash: h.clone()
            }
        );
        assert!("12".parse::<Anchor>().is_err());
        assert!(format!("0:{h}").parse::<Anchor>().is_err());
        assert!("3:abc".parse::<Anchor>().is_err());
    }
}
