//! The audit ledger's reader, verifier and opener on any file content: a damaged or
//! forged ledger yields records, skipped lines, problems or an error, never a panic;
//! a parsed record prints back to a line that parses to the same record.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use monitor::ledger::{Ledger, LedgerRecord, read, read_lenient, verify};

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("confgate-fuzz-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(r) = LedgerRecord::parse_line(line) {
            let again =
                LedgerRecord::parse_line(r.to_line().as_bytes()).expect("a printed record parses");
            assert_eq!(again.to_line(), r.to_line());
            let _ = r.computed_hash();
            let _ = r.timestamp();
        }
    }
    let path = scratch().join("ledger.jsonl");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = read(&path, None);
    let _ = read_lenient(&path, None);
    if let Ok(report) = verify(&path) {
        let _ = report.is_intact();
        for p in &report.problems {
            let _ = p.line();
            let _ = p.to_string();
        }
    }
    // Opening checks (and may repair or set aside) the tail; it must not panic either.
    let _ = Ledger::open(&path);
    if let Ok(entries) = std::fs::read_dir(scratch()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
});
