//! `confgate revert PATH... --to SEQ`: a path put back to the state a ledger record says it
//! had, rather than to the baseline.
//!
//! The state of PATH at record SEQ (of the ledger in use, as `confgate audit log` numbers
//! them) is the state that record says the path was left in:
//!
//! - `baseline_moved`: the path's `after` (the state then approved; none: the path had
//!   left the baseline, so the revert removes it);
//! - `baseline_revert`: its `to` (what the revert put back);
//! - `drift_detected`: its `live` (the drifted state the check found; none: deleted).
//!
//! Any other record, or one that does not name the path, is refused. The content comes
//! from the baseline's object store, which keeps every content the baseline ever held (by
//! SHA-256, never removed): a state whose content was never in the baseline (a drift
//! nobody approved, a file past the size limits) is refused with what is missing, and
//! nothing is changed.
use serde_json::Value;

use super::{BaselineError, Entry, FileKind};
use crate::event::escape::{decode, encode};
use crate::ledger::LedgerRecord;

/// The state `rec` records for `path` (`None`: no file), or why there is none.
pub fn state_at(rec: &LedgerRecord, path: &[u8]) -> Result<Option<Entry>, BaselineError> {
    let want = encode(path);
    let missing = || {
        BaselineError::NotRecorded(format!(
            "{want}: ledger record {} ({}) records no state of this path",
            rec.seq, rec.kind
        ))
    };
    let state = match rec.kind.as_str() {
        "baseline_moved" => rec.body["files"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["path"] == want.as_str()))
            .map(|f| f["after"].clone())
            .ok_or_else(missing)?,
        "baseline_revert" if rec.body["path"] == want.as_str() => {
            if rec.body.get("error").is_some() {
                return Err(BaselineError::NotRecorded(format!(
                    "{want}: ledger record {} is a revert that failed",
                    rec.seq
                )));
            }
            rec.body["to"].clone()
        }
        "drift_detected" if rec.body["path"] == want.as_str() => rec.body["live"].clone(),
        _ => return Err(missing()),
    };
    if state.is_null() {
        return Ok(None);
    }
    entry_of(&state, rec.seq).map(Some).ok_or_else(|| {
        BaselineError::NotRecorded(format!(
            "{want}: the state in ledger record {} cannot be read",
            rec.seq
        ))
    })
}

/// An entry from a state as `drift` shows it (`drift::State`).
fn entry_of(v: &Value, seq: u64) -> Option<Entry> {
    let kind = match v["kind"].as_str()? {
        "file" => FileKind::File,
        "symlink" => FileKind::Symlink,
        _ => return None,
    };
    let target = match v["target"].as_str() {
        Some(t) => Some(decode(t)?),
        None => None,
    };
    Some(Entry {
        kind,
        mode: u32::from_str_radix(v["mode"].as_str()?, 8).ok()? & 0o7777,
        uid: u32::try_from(v["uid"].as_u64()?).ok()?,
        gid: u32::try_from(v["gid"].as_u64()?).ok()?,
        size: v["size"].as_u64()?,
        sha256: v["sha256"].as_str()?.to_owned(),
        // The object store decides: a content never kept there is refused by `content`.
        stored: true,
        target,
        mtime_ms: v["mtime_ms"].as_i64().unwrap_or(0),
        since_ms: 0,
        source: format!("ledger {seq}"),
    })
}

/// Whether the content of `e` is in the object store (checked before anything is
/// touched); the error says what is missing.
pub fn check_kept(
    b: &super::Baseline,
    path: &[u8],
    e: &Entry,
    seq: u64,
) -> Result<(), BaselineError> {
    if e.kind != FileKind::File {
        return Ok(());
    }
    match b.content(path, e) {
        Ok(_) => Ok(()),
        Err(_) => Err(BaselineError::NotRecorded(format!(
            "{}: the content recorded at ledger record {seq} (sha256 {}) is not kept: only content that was in the baseline can be put back",
            encode(path),
            e.sha256
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(seq: u64, kind: &str, body: Value) -> LedgerRecord {
        LedgerRecord {
            seq,
            time: String::new(),
            kind: kind.into(),
            body,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn the_state_a_record_left() {
        let st = json!({"kind": "file", "mode": "0640", "uid": 0, "gid": 4, "size": 3,
                        "sha256": "ab", "mtime_ms": 5});
        let moved = rec(
            7,
            "baseline_moved",
            json!({"files": [
            {"path": "/etc/a", "before": null, "after": st},
            {"path": "/etc/b", "before": st, "after": null}]}),
        );
        let a = state_at(&moved, b"/etc/a").unwrap().unwrap();
        assert_eq!((a.mode, a.gid, a.sha256.as_str()), (0o640, 4, "ab"));
        assert_eq!(state_at(&moved, b"/etc/b").unwrap(), None);
        let e = state_at(&moved, b"/etc/c").unwrap_err().to_string();
        assert!(
            e.contains("record 7 (baseline_moved) records no state"),
            "{e}"
        );
        let drift = rec(9, "drift_detected", json!({"path": "/etc/a", "live": st}));
        assert!(state_at(&drift, b"/etc/a").unwrap().is_some());
        let failed = rec(
            10,
            "baseline_revert",
            json!({"path": "/etc/a", "to": st, "error": "x"}),
        );
        assert!(state_at(&failed, b"/etc/a").is_err());
        assert!(state_at(&rec(11, "grant", json!({})), b"/etc/a").is_err());
    }
}
