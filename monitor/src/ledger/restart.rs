//! Starting a new chain when the ledger's tail is broken, so that the writer never stays
//! down: the damaged file is moved aside (`<name>.damaged-<unix ms>`, kept as evidence)
//! and a new file begins with a `ledger_chain_restarted` record naming it and the seq and
//! hash of its last record whose chain verifies from the start.
use std::fs::File;
use std::path::Path;

use nix::fcntl::Flock;
use serde_json::json;

use super::read::for_each_line;
use super::{GENESIS_PREV, Ledger, LedgerError, LedgerOptions, LedgerRecord, OnBrokenTail, io_err};
use crate::state;

/// The last record of `path` up to which the chain verifies from the start (every line a
/// record, seqs 1, 2, ..., each hash right and each `prev` the hash before it), as
/// (seq, hash, 1-based line); (0, 64 zeros, 0) when even the first line fails.
pub(super) fn last_verified(path: &Path) -> Result<(u64, String, u64), LedgerError> {
    let mut head = (0u64, GENESIS_PREV.to_owned(), 0u64);
    let mut broken = false;
    for_each_line(path, |line, bytes, complete| {
        if broken {
            return;
        }
        let next = complete
            .then(|| LedgerRecord::parse_line(bytes).ok())
            .flatten()
            .filter(|r| r.seq == head.0 + 1 && r.prev == head.1 && r.computed_hash() == r.hash);
        match next {
            Some(r) => head = (r.seq, r.hash, line),
            None => broken = true,
        }
    })?;
    Ok(head)
}

/// Moves the ledger at `path` (whose tail check failed with `problem`; `old` is its locked
/// handle, none when the entry is not a regular file) aside and opens a new one whose first record links to the old chain.
pub(super) fn restart_chain(
    path: &Path,
    old: Option<Flock<File>>,
    problem: &str,
) -> Result<Ledger, LedgerError> {
    // Without a handle the entry is not a regular file: nothing in it to link to.
    let (linked_seq, linked_hash, linked_line) = match old {
        Some(_) => last_verified(path)?,
        None => (0, GENESIS_PREV.to_owned(), 0),
    };
    let moved_to =
        state::move_aside(path).map_err(io_err(path, "move the damaged ledger aside"))?;
    // The old file's lock goes with it; the new file gets its own.
    drop(old);
    state::inc(&state::counters().damaged_files);
    state::inc(&state::counters().ledger_chain_restarts);
    tracing::error!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        %problem,
        linked_seq,
        "the ledger's tail is broken: moved it aside and started a new chain"
    );
    let mut ledger = Ledger::open_with(
        path,
        LedgerOptions {
            on_broken_tail: OnBrokenTail::Refuse,
        },
    )?;
    ledger.append(
        "ledger_chain_restarted",
        json!({
            "problem": problem,
            "damaged_file": moved_to.to_string_lossy(),
            "linked_seq": linked_seq,
            "linked_hash": linked_hash,
            "linked_line": linked_line,
        }),
    )?;
    Ok(ledger)
}
