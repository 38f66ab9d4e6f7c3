//! The host's record of the approval requests it filed, kept in the daemon's store until
//! decided: a decision may arrive after a restart, and the grant it creates needs the
//! request's rule (its `on_expiry`), which the service's grant does not carry.
use serde::{Deserialize, Serialize};

use crate::gate::preimage::{PreImage, hex};
use crate::policy::grants::Grant;
use crate::store::{BlobTable, RecordTable};

/// Requests filed and not yet decided, by host request id.
pub const REQUESTS: RecordTable<RequestRecord> = RecordTable::new("gate_requests");
/// Live grants, by grant id (restored at start).
pub const GRANTS: RecordTable<Grant> = RecordTable::new("gate_grants");
/// Sequence of host request ids.
pub const REQUEST_IDS: &str = "gate_request";
/// Held operations of confined sessions by notification id, written in the transaction
/// that files their request (see `gate::session::holds`; JSON of its `HoldRecord`).
pub const SESSION_HOLDS: RecordTable<serde_json::Value> = RecordTable::new("session_holds");
/// Content of a held file while its request is undecided (files up to
/// [`MAX_REQUEST_PREIMAGE`] bytes), by host request id: if the daemon dies while the open is
/// held, the kernel lets the write through, and the next start diffs and reverts it from
/// this.
pub const REQUEST_PREIMAGES: BlobTable = BlobTable::new("gate_request_preimages");
/// Largest pre-image kept with an undecided request (larger files keep their hash only:
/// a release by a crash is then detected and flagged, not reverted).
pub const MAX_REQUEST_PREIMAGE: usize = 64 * 1024;

/// What a held file was when its request was filed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPre {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// False when the held open created the file.
    pub existed: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Whether the content is in [`REQUEST_PREIMAGES`].
    pub content_kept: bool,
}

impl RequestPre {
    pub fn of(pre: &PreImage, created: bool) -> RequestPre {
        RequestPre {
            sha256: hex(&pre.sha256),
            existed: !created,
            mode: pre.mode,
            uid: pre.uid,
            gid: pre.gid,
            size: pre.size,
            content_kept: pre
                .content
                .as_ref()
                .is_some_and(|c| c.len() <= MAX_REQUEST_PREIMAGE),
        }
    }
}

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
    /// The held file when the request was filed (holds only; absent in records written
    /// before it was kept).
    #[serde(default)]
    pub pre: Option<RequestPre>,
    /// A hold answered on this host without a decision of the service (its timeout): not
    /// released by a crash if the daemon restarts before the service's answer.
    #[serde(default)]
    pub answered: bool,
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
            pre: None,
            answered: false,
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

#[cfg(test)]
mod compat_tests {
    use super::*;

    #[test]
    fn records_written_before_the_pre_image_was_kept_still_decode() {
        let old = br#"{"rule":"r","session":1,"path":[47,101],"mode":"hold","created_unix_ms":1,"deadline_unix_ms":2}"#;
        let r: RequestRecord = serde_json::from_slice(old).unwrap();
        assert_eq!(r.pre, None);
    }
}
