//! Holds that a crash released. When the daemon dies while opens are held, the kernel
//! answers every held open with *allow* (see the module docs of [`crate::gate`]): the
//! writes happen, although their requests were never decided. At the next start every
//! hold request still in the store (not answered on this host before the crash) is such a
//! release: it is closed as `released_by_crash`, never left pending to be recorded later as
//! denied or expired although the write went through. What the file is now is compared
//! with what it was when the request was filed; a changed file becomes a change with no
//! approval (grant 0), diffed and then flagged or reverted like any other.
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use serde::Serialize;

use super::changes::{self, Change, ChangeError, Kept};
use super::requests::{REQUEST_PREIMAGES, REQUESTS, RequestRecord};
use crate::event::escape::encode;
use crate::ledger::canonical::sha256_hex;
use crate::store::{Store, StoreError};

/// What a released hold left behind.
#[derive(Debug)]
pub struct Released {
    pub host_request_id: u64,
    pub record: RequestRecord,
    pub finding: Finding,
}

/// Whether the released write changed the file.
#[derive(Debug)]
pub enum Finding {
    /// Content as it was when the request was filed (the writer did not write, or wrote
    /// the same bytes).
    Unchanged { sha256: String },
    /// The file differs (or appeared, or is gone). `change` is the unapproved change now
    /// kept in the store, to diff and flag or revert (its content is there when it was
    /// small enough to keep with the request).
    Changed {
        now_sha256: Option<String>,
        change: Change,
    },
    /// The request was filed before pre-images were kept with requests: nothing to compare
    /// with.
    Unknown,
}

impl Finding {
    pub fn changed(&self) -> Option<bool> {
        match self {
            Finding::Unchanged { .. } => Some(false),
            Finding::Changed { .. } => Some(true),
            Finding::Unknown => None,
        }
    }
}

/// The ledger body of a release.
#[derive(Debug, Serialize)]
pub struct ReleaseRecord<'a> {
    pub host_request_id: u64,
    pub path: String,
    pub session: u64,
    pub rule: &'a str,
    /// `null` when it cannot be told.
    pub changed: Option<bool>,
    pub pre_image_sha256: Option<&'a str>,
    pub now_sha256: Option<String>,
}

impl Released {
    pub fn record(&self) -> ReleaseRecord<'_> {
        let now_sha256 = match &self.finding {
            Finding::Unchanged { sha256 } => Some(sha256.clone()),
            Finding::Changed { now_sha256, .. } => now_sha256.clone(),
            Finding::Unknown => None,
        };
        ReleaseRecord {
            host_request_id: self.host_request_id,
            path: encode(&self.record.path),
            session: self.record.session,
            rule: &self.record.rule,
            changed: self.finding.changed(),
            pre_image_sha256: self.record.pre.as_ref().map(|p| p.sha256.as_str()),
            now_sha256,
        }
    }
}

/// Closes every hold request left in the store by a crash: each is removed (with its kept
/// content) and, when its file changed, replaced by an unapproved change in the same
/// transaction. Undecodable records are not this function's business (the store skips and
/// counts them). Blocks: call it on a blocking thread, before the engine takes requests.
pub fn release_holds(store: &Store) -> Result<Vec<Released>, ChangeError> {
    release_holds_except(store, &std::collections::HashSet::new()).map(|(r, _)| r)
}

/// [`release_holds`], except for the holds of `resuming` sessions (confined sessions whose
/// listener the service manager passed back: their held operations were never let
/// through and may still be waiting), which are returned as they are.
#[allow(clippy::type_complexity)]
pub fn release_holds_except(
    store: &Store,
    resuming: &std::collections::HashSet<u64>,
) -> Result<(Vec<Released>, Vec<(u64, RequestRecord)>), ChangeError> {
    let mut out = Vec::new();
    let mut resumable = Vec::new();
    for (id, record) in store.scan(REQUESTS)? {
        if record.mode != crate::policy::Mode::Hold.as_str() || record.answered {
            continue;
        }
        if resuming.contains(&record.session) {
            resumable.push((id, record));
            continue;
        }
        let now = read_now(&record.path).map_err(|source| ChangeError::Io {
            path: encode(&record.path),
            source,
        })?;
        let kept_content = match &record.pre {
            Some(p) if p.content_kept => store.get_blob(REQUEST_PREIMAGES, id)?,
            _ => None,
        };
        let finding = store.write(|tx| -> Result<Finding, StoreError> {
            tx.remove(REQUESTS, id)?;
            tx.remove_blob(REQUEST_PREIMAGES, id)?;
            let Some(pre) = &record.pre else {
                return Ok(Finding::Unknown);
            };
            let now_sha256 = now.as_deref().map(sha256_hex);
            let same = match (&now_sha256, pre.existed) {
                (Some(h), true) => *h == pre.sha256,
                // The held open created the file: it is there either way (the kernel
                // creates it before the permission event); empty means nothing written.
                (Some(_), false) => now.as_deref().is_some_and(<[u8]>::is_empty),
                (None, existed) => !existed,
            };
            if same {
                return Ok(Finding::Unchanged {
                    sha256: now_sha256.unwrap_or_default(),
                });
            }
            let kept = Kept {
                mode: pre.mode,
                uid: pre.uid,
                gid: pre.gid,
                size: pre.size,
                sha256: pre.sha256.clone(),
                dev: 0,
                ino: 0,
            };
            let change = changes::record_kept_in(
                tx,
                &kept,
                kept_content.as_deref(),
                &record.path,
                0,
                record.session,
                pre.existed,
            )?;
            Ok(Finding::Changed { now_sha256, change })
        })?;
        out.push(Released {
            host_request_id: id,
            record,
            finding,
        });
    }
    Ok((out, resumable))
}

fn read_now(path: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(Path::new(std::ffi::OsStr::from_bytes(path))) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::requests::{REQUEST_IDS, RequestPre};

    fn file(store: &Store, path: &Path, pre: Option<RequestPre>, content: Option<&[u8]>) -> u64 {
        let rec = RequestRecord {
            rule: "r".into(),
            session: 4,
            path: path.as_os_str().as_bytes().to_vec(),
            mode: "hold".into(),
            created_unix_ms: 1,
            deadline_unix_ms: 2,
            pre,
            answered: false,
        };
        store
            .write(|tx| {
                let id = tx.next_id(REQUEST_IDS)?;
                tx.put(REQUESTS, id, &rec)?;
                if let Some(c) = content {
                    tx.put_blob(REQUEST_PREIMAGES, id, c)?;
                }
                Ok(id)
            })
            .unwrap()
    }

    fn pre_of(content: &[u8], existed: bool) -> RequestPre {
        RequestPre {
            sha256: sha256_hex(content),
            existed,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            content_kept: true,
        }
    }

    #[test]
    fn a_changed_file_becomes_an_unapproved_change_that_can_be_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, b"pool=10\n").unwrap();
        let id = file(
            &store,
            &f,
            Some(pre_of(b"pool=10\n", true)),
            Some(b"pool=10\n"),
        );
        // The crash let the write through.
        std::fs::write(&f, b"pool=500\n").unwrap();
        let out = release_holds(&store).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].host_request_id, id);
        let Finding::Changed { change, .. } = &out[0].finding else {
            panic!("{:?}", out[0].finding);
        };
        assert_eq!(change.grant_id, 0);
        assert!(change.content_kept);
        assert_eq!(
            changes::revert(&store, change).unwrap(),
            changes::Reverted::Restored
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"pool=10\n");
        // The request and its content are gone: a second start finds nothing.
        assert!(store.scan(REQUESTS).unwrap().is_empty());
        assert_eq!(store.get_blob(REQUEST_PREIMAGES, id).unwrap(), None);
        assert!(release_holds(&store).unwrap().is_empty());
    }

    #[test]
    fn an_unchanged_file_is_closed_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, b"same\n").unwrap();
        file(&store, &f, Some(pre_of(b"same\n", true)), None);
        let out = release_holds(&store).unwrap();
        assert!(matches!(out[0].finding, Finding::Unchanged { .. }));
        assert_eq!(out[0].record().changed, Some(false));
        assert!(store.scan(changes::CHANGES).unwrap().is_empty());
    }

    #[test]
    fn answered_and_deny_and_request_records_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let f = dir.path().join("app.conf");
        let mut rec = RequestRecord {
            rule: "r".into(),
            session: 4,
            path: f.as_os_str().as_bytes().to_vec(),
            mode: "deny-and-request".into(),
            created_unix_ms: 1,
            deadline_unix_ms: 2,
            pre: None,
            answered: false,
        };
        store.put(REQUESTS, 1, &rec).unwrap();
        rec.mode = "hold".into();
        rec.answered = true;
        store.put(REQUESTS, 2, &rec).unwrap();
        assert!(release_holds(&store).unwrap().is_empty());
        assert_eq!(store.scan(REQUESTS).unwrap().len(), 2);
    }

    #[test]
    fn a_created_file_that_got_content_is_a_change_removed_on_revert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let f = dir.path().join("new.conf");
        file(&store, &f, Some(pre_of(b"", false)), Some(b""));
        std::fs::write(&f, b"evil=1\n").unwrap();
        let out = release_holds(&store).unwrap();
        let Finding::Changed { change, .. } = &out[0].finding else {
            panic!("{:?}", out[0].finding);
        };
        assert!(!change.existed);
        assert_eq!(
            changes::revert(&store, change).unwrap(),
            changes::Reverted::Removed
        );
        assert!(!f.exists());
    }
}
