//! One ledger record: its fields, its JSON line, its timestamp.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};

use super::canonical::{canonical_json, is_sha256_hex, record_hash};

/// `prev` of the first record: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record of the hash-chained ledger, as stored on one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    /// Position in the chain: 1, 2, ...
    pub seq: u64,
    /// When the record was appended: RFC 3339, UTC, milliseconds (`...T12:00:00.123Z`).
    pub time: String,
    /// What happened: "request", "decision", "grant", "expiry", "revert", ...
    pub kind: String,
    /// The details, a JSON object.
    pub body: Value,
    /// `hash` of the previous record; [`GENESIS_PREV`] for the first.
    pub prev: String,
    /// Lowercase hex SHA-256 over the canonical encoding (see [`super::canonical`]).
    pub hash: String,
}

impl LedgerRecord {
    /// Builds a record and computes its hash.
    pub(crate) fn new(seq: u64, time: String, kind: String, body: Value, prev: String) -> Self {
        let hash = record_hash(seq, &time, &kind, &prev, &canonical_json(&body));
        LedgerRecord {
            seq,
            time,
            kind,
            body,
            prev,
            hash,
        }
    }

    /// The hash the record's content calls for (equal to `hash` unless it was altered).
    pub fn computed_hash(&self) -> String {
        record_hash(
            self.seq,
            &self.time,
            &self.kind,
            &self.prev,
            &canonical_json(&self.body),
        )
    }

    /// `time` as a `SystemTime`, `None` when it is not RFC 3339.
    pub fn timestamp(&self) -> Option<SystemTime> {
        parse_time(&self.time)
    }

    /// The record's JSON line (without the newline): fixed field order, canonical body.
    /// Never contains a newline, whatever the strings hold.
    pub fn to_line(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        format!(
            "{{\"seq\":{},\"time\":{},\"kind\":{},\"body\":{},\"prev\":{},\"hash\":{}}}",
            self.seq,
            q(&self.time),
            q(&self.kind),
            canonical_json(&self.body),
            q(&self.prev),
            q(&self.hash)
        )
    }

    /// Parses one line (without its newline) and checks the record's shape: known fields
    /// only, `seq` ≥ 1, RFC 3339 `time`, object `body`, hex `prev` and `hash`. Does not
    /// check the hash (see [`LedgerRecord::computed_hash`]).
    pub fn parse_line(line: &[u8]) -> Result<LedgerRecord, String> {
        let text = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
        if text.trim().is_empty() {
            return Err("empty line".into());
        }
        let r: LedgerRecord = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if r.seq == 0 {
            return Err("seq is 0 (records count from 1)".into());
        }
        if parse_time(&r.time).is_none() {
            return Err("time is not RFC 3339".into());
        }
        if !r.body.is_object() {
            return Err("body is not a JSON object".into());
        }
        if !is_sha256_hex(&r.prev) {
            return Err("prev is not 64 lowercase hex digits".into());
        }
        if !is_sha256_hex(&r.hash) {
            return Err("hash is not 64 lowercase hex digits".into());
        }
        Ok(r)
    }
}

/// Formats `t` as the ledger writes times: RFC 3339, UTC, milliseconds.
/// [`format_time`] of a time in milliseconds since the epoch (before it: the epoch).
pub fn format_unix_ms(ms: i64) -> String {
    format_time(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

pub fn format_time(t: SystemTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Parses an RFC 3339 time (any offset) into a `SystemTime`.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let secs = t.unix_timestamp();
    let nanos = Duration::from_nanos(u64::from(t.nanosecond()));
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn line_round_trips_and_stays_one_line() {
        let r = LedgerRecord::new(
            3,
            format_time(SystemTime::now()),
            "change".into(),
            json!({"path": "/etc/x\ny", "n": 1, "a": [1, "\u{7f}\r"]}),
            GENESIS_PREV.into(),
        );
        let line = r.to_line();
        assert!(!line.contains('\n') && !line.contains('\r'));
        let back = LedgerRecord::parse_line(line.as_bytes()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.computed_hash(), r.hash);
    }

    #[test]
    fn time_format_is_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let s = format_time(t);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(parse_time("2023-11-14T23:13:20.123+01:00"), Some(t));
        assert_eq!(parse_time("yesterday"), None);
        // Far and pre-epoch times (beyond u64 nanoseconds) still convert.
        assert_eq!(
            parse_time("2999-01-01T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(32_472_144_000))
        );
        assert_eq!(
            parse_time("1969-12-31T23:59:59.250Z"),
            Some(UNIX_EPOCH - Duration::from_millis(750))
        );
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        let good = LedgerRecord::new(
            1,
            format_time(SystemTime::now()),
            "k".into(),
            json!({}),
            GENESIS_PREV.into(),
        );
        let v: Value = serde_json::from_str(&good.to_line()).unwrap();
        let with = |field: &str, val: Value| {
            let mut v = v.clone();
            v[field] = val;
            LedgerRecord::parse_line(v.to_string().as_bytes()).unwrap_err()
        };
        assert!(with("seq", json!(0)).contains("seq"));
        assert!(with("time", json!("now")).contains("time"));
        assert!(with("body", json!([1])).contains("body"));
        assert!(with("prev", json!("00")).contains("prev"));
        assert!(with("hash", json!("X".repeat(64))).contains("hash"));
        assert!(with("extra", json!(1)).contains("unknown field"));
        assert!(
            LedgerRecord::parse_line(b"\xff{}")
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(LedgerRecord::parse_line(b"").unwrap_err().contains("empty"));
    }
}
