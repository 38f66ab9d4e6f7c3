//! The host's record of the approval requests it filed, kept in the daemon's store until
//! decided: a decision may arrive after a restart, and the grant it creates needs the
//! request's rule (its `on_expiry`), which the service's grant does not carry.
use serde::{Deserialize, Serialize};

use crate::policy::grants::Grant;
use crate::store::RecordTable;

/// Requests filed and not yet decided, by host request id.
pub const REQUESTS: RecordTable<RequestRecord> = RecordTable::new("gate_requests");
/// Live grants, by grant id (restored at start).
pub const GRANTS: RecordTable<Grant> = RecordTable::new("gate_grants");
/// Sequence of host request ids.
pub const REQUEST_IDS: &str = "gate_request";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Name of the rule that asked.
    pub rule: String,
    pub session: u64,
    /// Raw path bytes.
    pub path: Vec<u8>,
    /// `hold` or `deny-and-request`.
    pub mode: String,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn request_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let rec = RequestRecord {
            rule: "system-config".into(),
            session: 3,
            path: b"/etc/x\n\xff".to_vec(),
            mode: "hold".into(),
            created_unix_ms: 1,
            deadline_unix_ms: 2,
        };
        {
            let store = Store::open(&path).unwrap();
            let id = store.write(|tx| tx.next_id(REQUEST_IDS)).unwrap();
            store.put(REQUESTS, id, &rec).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all = store.scan(REQUESTS).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1, rec);
    }
}
