//! `confgate store check`: is each store file usable, and does every record decode?
//!
//! Reads a copy taken under the file's lock, so it never changes the store and refuses
//! while a daemon holds it (the daemon checks its stores itself at every start: a damaged
//! file is moved aside, an undecodable record skipped; both are counted in `confgate stats`).
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::store::{self, Decodes, StoreError};

/// Exit status when every file is intact.
pub const EXIT_INTACT: i32 = 0;
/// Exit status when a file is damaged or has records that do not decode.
pub const EXIT_DAMAGED: i32 = 1;
/// Exit status when a file could not be checked (in use by a daemon, unreadable, missing).
pub const EXIT_ERROR: i32 = 2;

fn decodes<V: DeserializeOwned>(b: &[u8]) -> bool {
    serde_json::from_slice::<V>(b).is_ok()
}

/// The record tables of the daemon's and the approval service's stores, with their types.
const TABLES: &[(&str, Decodes)] = &[
    ("sessions", decodes::<crate::sessions::SessionInfo>),
    (
        "gate_requests",
        decodes::<crate::gate::requests::RequestRecord>,
    ),
    ("gate_grants", decodes::<crate::policy::grants::Grant>),
    ("gate_changes", decodes::<crate::gate::changes::Change>),
    ("uplink_spool", decodes::<crate::uplink::spool::SpoolEntry>),
    ("uplink_cursor", decodes::<u64>),
    (
        "approver_requests",
        decodes::<crate::approver::store::RequestRec>,
    ),
    (
        "approver_grants",
        decodes::<crate::approver::store::GrantRec>,
    ),
];

/// The default files: the daemon's store and the local approval service's, under
/// `state_dir` (the second only if it exists).
pub fn default_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![state_dir.join(store::STORE_FILE)];
    let approver = state_dir.join("approver/approver.redb");
    if approver.exists() {
        v.push(approver);
    }
    v
}

/// Checks `files`; prints one verdict per file to `out`, errors to `err`; returns the exit
/// status (the worst of the files).
pub fn check(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut status = EXIT_INTACT;
    for f in files {
        let code = match store::check_file(f, TABLES) {
            Ok(c) if c.is_intact() => {
                let n: u64 = c.tables.iter().map(|t| t.1).sum();
                let _ = writeln!(out, "{}: intact ({n} records)", f.display());
                EXIT_INTACT
            }
            Ok(c) => {
                if let Some(d) = &c.damaged {
                    let _ = writeln!(
                        out,
                        "{}: DAMAGED: {d}; the daemon moves it aside and starts a new store at \
                         its next start",
                        f.display()
                    );
                }
                if c.repaired {
                    let _ = writeln!(
                        out,
                        "{}: failed redb's integrity check (repairable: the daemon repairs it in \
                         place at its next start)",
                        f.display()
                    );
                }
                for (table, rows, bad) in &c.tables {
                    if !bad.is_empty() {
                        let keys: Vec<String> = bad.iter().take(20).map(u64::to_string).collect();
                        let _ = writeln!(
                            out,
                            "{}: table {table}: {} of {rows} records do not decode (keys {}{}); \
                             they are skipped when the daemon loads the table",
                            f.display(),
                            bad.len(),
                            keys.join(", "),
                            if bad.len() > 20 { ", ..." } else { "" }
                        );
                    }
                }
                EXIT_DAMAGED
            }
            Err(e @ StoreError::Locked { .. }) => {
                let _ = writeln!(
                    err,
                    "confgate: {e}; the daemon checks its store itself when it starts (stop it \
                     to check the file by hand)"
                );
                EXIT_ERROR
            }
            Err(e) => {
                let _ = writeln!(err, "confgate: {}: {e}", f.display());
                EXIT_ERROR
            }
        };
        status = status.max(code);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::SESSIONS;
    use crate::store::Store;

    fn run(files: &[PathBuf]) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(files, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn intact_damaged_undecodable_and_locked_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confgate.redb");
        let s = Store::open(&path).unwrap();
        s.write(|tx| {
            tx.raw()
                .open_table(redb::TableDefinition::<u64, &[u8]>::new(SESSIONS.name()))?
                .insert(3, b"{not json".as_slice())?;
            Ok(())
        })
        .unwrap();
        // In use by a "daemon".
        let (code, _, err) = run(std::slice::from_ref(&path));
        assert_eq!(code, EXIT_ERROR);
        assert!(err.contains("in use"), "{err}");
        drop(s);
        let before = std::fs::read(&path).unwrap();
        let (code, out, _) = run(std::slice::from_ref(&path));
        assert_eq!(code, EXIT_DAMAGED, "{out}");
        assert!(
            out.contains("table sessions: 1 of 1 records do not decode (keys 3)"),
            "{out}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the check changes nothing"
        );

        let good = dir.path().join("good.redb");
        drop(Store::open(&good).unwrap());
        let (code, out, _) = run(std::slice::from_ref(&good));
        assert_eq!(code, EXIT_INTACT, "{out}");
        assert!(out.contains("intact"), "{out}");

        let len = std::fs::metadata(&good).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&good)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let (code, out, _) = run(std::slice::from_ref(&good));
        assert_eq!(code, EXIT_DAMAGED, "{out}");
        assert!(out.contains("DAMAGED"), "{out}");
        assert!(good.exists(), "a check never moves the file");

        let (code, _, err) = run(&[dir.path().join("missing.redb")]);
        assert_eq!(code, EXIT_ERROR, "{err}");
    }
}
