//! The uplink's durable state in the daemon's store: the spool of requests and reports not
//! yet acknowledged by the approval service, and the cursor of applied updates.
use prost::Message;
use serde::{Deserialize, Serialize};

use confgate_proto::v1::{ReportRequest, SubmitRequest};

use crate::store::{RecordTable, Store, StoreError, Unsynced, WriteTx};

/// Spooled messages, keyed by spool id (FIFO order).
pub const SPOOL: RecordTable<SpoolEntry> = RecordTable::new("uplink_spool");
/// Key [`CURSOR_KEY`]: the `seq` of the last update handed to the consumer.
pub const CURSOR: RecordTable<u64> = RecordTable::new("uplink_cursor");
const CURSOR_KEY: u64 = 1;
/// Sequence of spool ids.
const SPOOL_IDS: &str = "uplink_spool";
/// Sequence of `Report.host_seq` (strictly increasing per host, never reused).
const REPORT_SEQ: &str = "uplink_report_seq";

/// One message waiting for the approval service's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpoolEntry {
    /// An `Approver.Submit`; the request protobuf-encoded, in hex.
    Submit {
        host_request_id: u64,
        request: String,
    },
    /// An `Approver.Report`.
    Report {
        host_seq: u64,
        kind: String,
        json: String,
        time_unix_ms: i64,
    },
}

impl SpoolEntry {
    /// The submit request, decoded; `None` if the stored bytes are damaged.
    pub fn submit_request(&self) -> Option<SubmitRequest> {
        match self {
            SpoolEntry::Submit { request, .. } => {
                SubmitRequest::decode(from_hex(request)?.as_slice()).ok()
            }
            SpoolEntry::Report { .. } => None,
        }
    }

    /// The report request (reports need no decoding).
    pub fn report_request(&self) -> Option<ReportRequest> {
        match self {
            SpoolEntry::Report {
                host_seq,
                kind,
                json,
                time_unix_ms,
            } => Some(ReportRequest {
                host_seq: *host_seq,
                kind: kind.clone(),
                json: json.clone(),
                time_unix_ms: *time_unix_ms,
            }),
            SpoolEntry::Submit { .. } => None,
        }
    }
}

/// Spool and cursor operations on the daemon's store. Each is one durable transaction.
#[derive(Clone, Debug)]
pub struct Spool {
    store: Store,
}

impl Spool {
    pub fn new(store: Store) -> Spool {
        Spool { store }
    }

    /// Spools a submit request; returns its spool id and entry.
    pub fn push_submit(&self, req: &SubmitRequest) -> Result<(u64, SpoolEntry), StoreError> {
        let (spooled, unsynced) = self.push_submit_with(|_| Ok(req.clone()))?;
        self.sync(unsynced)?;
        Ok(spooled)
    }

    /// Spools the submit request that `build` returns, in the same transaction as whatever
    /// `build` writes itself (the caller's own record of the request). The commit does not
    /// wait for the disk (the request can leave at once): it is durable once synced
    /// ([`Spool::sync`]), or with the next durable commit. Its ids are skipped ahead at
    /// start-up by whoever allocates them, so a crash before then cannot make one name two
    /// requests.
    pub fn push_submit_with(
        &self,
        build: impl FnOnce(&WriteTx<'_>) -> Result<SubmitRequest, StoreError>,
    ) -> Result<((u64, SpoolEntry), Unsynced), StoreError> {
        self.store.write_deferred(|tx| {
            let req = build(tx)?;
            let entry = SpoolEntry::Submit {
                host_request_id: req.host_request_id,
                request: to_hex(&req.encode_to_vec()),
            };
            let id = tx.next_id(SPOOL_IDS)?;
            tx.put(SPOOL, id, &entry)?;
            Ok((id, entry))
        })
    }

    /// Makes a spooled request durable (see [`Store::sync`]).
    pub fn sync(&self, u: Unsynced) -> Result<(), StoreError> {
        self.store.sync(u)
    }

    /// Spools a report, allocating its `host_seq` in the same transaction.
    pub fn push_report(
        &self,
        kind: &str,
        json: String,
        time_unix_ms: i64,
    ) -> Result<(u64, SpoolEntry), StoreError> {
        self.store.write(|tx| {
            let host_seq = tx.next_id(REPORT_SEQ)?;
            let id = tx.next_id(SPOOL_IDS)?;
            let entry = SpoolEntry::Report {
                host_seq,
                kind: kind.to_owned(),
                json,
                time_unix_ms,
            };
            tx.put(SPOOL, id, &entry)?;
            Ok((id, entry))
        })
    }

    /// Removes an acknowledged (or rejected) entry. Not fsync'd: lost in a crash, the entry
    /// is sent again and the service deduplicates it (`host_request_id`, `host_seq`).
    pub fn remove(&self, id: u64) -> Result<bool, StoreError> {
        self.store.write_lazy(|tx| tx.remove(SPOOL, id))
    }

    /// Every spooled entry, oldest first.
    pub fn load(&self) -> Result<Vec<(u64, SpoolEntry)>, StoreError> {
        self.store.scan(SPOOL)
    }

    /// The last update seq handed to the consumer (0: none yet).
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(self.store.get(CURSOR, CURSOR_KEY)?.unwrap_or(0))
    }

    /// Not fsync'd: lost in a crash, the updates after the older cursor are delivered
    /// again (delivery is at least once; the consumer is idempotent).
    pub fn set_cursor(&self, seq: u64) -> Result<(), StoreError> {
        self.store.write_lazy(|tx| tx.put(CURSOR, CURSOR_KEY, &seq))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STORE_FILE;
    use confgate_proto::v1::RequestContext;

    #[test]
    fn hex_round_trip_and_damage() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex(""), Some(vec![]));
    }

    #[test]
    fn spool_survives_reopen_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let req = SubmitRequest {
            host_request_id: 9,
            context: Some(RequestContext {
                path: "/etc/\u{fffd}x".into(),
                ..RequestContext::default()
            }),
            created_unix_ms: 1,
            deadline_unix_ms: 2,
        };
        {
            let spool = Spool::new(Store::open(&path).unwrap());
            let (a, _) = spool.push_submit(&req).unwrap();
            let (b, e) = spool
                .push_report("fallback_verdict", "{}".into(), 5)
                .unwrap();
            let (_, e2) = spool.push_report("change", "{\"a\":1}".into(), 6).unwrap();
            assert!(a < b);
            assert!(matches!(e, SpoolEntry::Report { host_seq: 1, .. }));
            assert!(matches!(e2, SpoolEntry::Report { host_seq: 2, .. }));
            spool.set_cursor(17).unwrap();
        }
        let spool = Spool::new(Store::open(&path).unwrap());
        let entries = spool.load().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].1.submit_request().unwrap(), req);
        assert_eq!(
            entries[1].1.report_request().unwrap().kind,
            "fallback_verdict"
        );
        assert_eq!(spool.cursor().unwrap(), 17);
        assert!(spool.remove(entries[0].0).unwrap());
        assert_eq!(spool.load().unwrap().len(), 2);
        // host_seq keeps increasing after a restart, even once entries are removed.
        let (_, e) = spool.push_report("x", "{}".into(), 7).unwrap();
        assert!(matches!(e, SpoolEntry::Report { host_seq: 3, .. }));
    }

    #[test]
    fn damaged_submit_decodes_to_none() {
        let e = SpoolEntry::Submit {
            host_request_id: 1,
            request: "zz".into(),
        };
        assert!(e.submit_request().is_none());
        assert!(e.report_request().is_none());
    }
}
