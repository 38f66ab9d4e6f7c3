//! `confgate audit repair`: continue a ledger whose tail chain is broken, as the daemon does
//! at start-up (or in place with `--in-place`), and say what was done.
use std::io::Write;
use std::path::Path;

use crate::ledger::{self, Ledger, LedgerError, LedgerOptions, OnBrokenTail};

/// Exit status when the ledger's tail was intact (nothing was changed, except cutting a
/// torn last line, which every open does).
pub const EXIT_NOTHING_TO_DO: i32 = 0;
/// Exit status when a broken tail was repaired.
pub const EXIT_REPAIRED: i32 = 1;
/// Exit status when the ledger could not be repaired (in use, unreadable).
pub const EXIT_ERROR: i32 = 2;

/// Repairs the ledger at `path`; prints what happened to `out`, errors to `err`.
pub fn repair(path: &Path, in_place: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let refuse = LedgerOptions {
        on_broken_tail: OnBrokenTail::Refuse,
    };
    let problem = match Ledger::open_with(path, refuse) {
        Ok(l) => {
            let (seq, hash) = l.head();
            let _ = writeln!(
                out,
                "{}: the tail chains (head seq {seq}, hash {hash}); nothing to repair. \
                 `confgate audit verify` checks the whole file.",
                path.display()
            );
            return EXIT_NOTHING_TO_DO;
        }
        Err(LedgerError::BrokenTail { detail, .. }) => detail,
        Err(e @ LedgerError::Locked { .. }) => {
            let _ = writeln!(
                err,
                "confgate: {e}; a running daemon repairs its ledger itself when it starts \
                 (stop it first to repair by hand)"
            );
            return EXIT_ERROR;
        }
        Err(e) => {
            let _ = writeln!(err, "confgate: {e}");
            return EXIT_ERROR;
        }
    };
    let on_broken_tail = if in_place {
        OnBrokenTail::Repair
    } else {
        OnBrokenTail::Restart
    };
    let ledger = match Ledger::open_with(path, LedgerOptions { on_broken_tail }) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "confgate: {e}");
            return EXIT_ERROR;
        }
    };
    drop(ledger);
    // The record the repair appended says what it linked to.
    let first_or_last = ledger::read_lenient(path, None).ok().and_then(|o| {
        o.records
            .into_iter()
            .map(|(_, r)| r)
            .rfind(|r| r.kind == "ledger_chain_restarted" || r.kind == "ledger_repaired")
    });
    let _ = writeln!(out, "{}: the tail was broken: {problem}", path.display());
    match first_or_last {
        Some(r) if r.kind == "ledger_chain_restarted" => {
            let _ = writeln!(
                out,
                "moved the damaged file to {}; a new chain starts with a \
                 ledger_chain_restarted record linked to seq {} (hash {})",
                r.body["damaged_file"].as_str().unwrap_or("?"),
                r.body["linked_seq"],
                r.body["linked_hash"].as_str().unwrap_or("?"),
            );
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "continued in place after seq {} (line {}) with a ledger_repaired record; the \
                 damaged lines stay in the file and `confgate audit verify` keeps reporting them",
                r.body["linked_seq"], r.body["linked_line"],
            );
        }
        None => {
            let _ = writeln!(out, "repaired");
        }
    }
    EXIT_REPAIRED
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ledger(dir: &Path, n: u64) -> std::path::PathBuf {
        let path = dir.join("ledger.jsonl");
        let mut l = Ledger::open(&path).unwrap();
        for i in 0..n {
            l.append("change", json!({ "i": i })).unwrap();
        }
        path
    }

    fn run(path: &Path, in_place: bool) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = repair(path, in_place, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn intact_ledger_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger(dir.path(), 3);
        let before = std::fs::read(&path).unwrap();
        let (code, out, _) = run(&path, false);
        assert_eq!(code, EXIT_NOTHING_TO_DO);
        assert!(out.contains("nothing to repair"), "{out}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn broken_tail_is_moved_aside_or_repaired_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger(dir.path(), 3);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"garbage\n");
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = run(&path, false);
        assert_eq!(code, EXIT_REPAIRED, "{out}{err}");
        assert!(out.contains("moved the damaged file to"), "{out}");
        assert!(out.contains("linked to seq 3"), "{out}");
        assert!(ledger::verify(&path).unwrap().is_intact());
        assert_eq!(run(&path, false).0, EXIT_NOTHING_TO_DO);

        let dir = tempfile::tempdir().unwrap();
        let path = ledger(dir.path(), 2);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{}\n");
        std::fs::write(&path, &text).unwrap();
        let (code, out, _) = run(&path, true);
        assert_eq!(code, EXIT_REPAIRED);
        assert!(out.contains("continued in place after seq 2"), "{out}");
    }

    #[test]
    fn a_ledger_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger(dir.path(), 1);
        let _held = Ledger::open(&path).unwrap();
        let (code, _, err) = run(&path, false);
        assert_eq!(code, EXIT_ERROR);
        assert!(err.contains("already open"), "{err}");
    }
}
