//! Held operations that survive a daemon restart.
//!
//! A notification the supervisor has received can never be received again: a restarted
//! daemon that gets the session's listener back from systemd's descriptor store can answer
//! it only if it knows its id. Every operation handed to the engine is therefore recorded
//! here (durably, before its request is filed) with everything needed to perform it, and
//! forgotten when it is answered. At start-up, after the restored listeners are attached,
//! [`Supervisors::resume_holds`](super::Supervisors::resume_holds) turns each record
//! whose caller is still waiting (`SECCOMP_IOCTL_NOTIF_ID_VALID`) into a held operation
//! again; the engine attaches it to its pending request instead of filing a new one.
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::common::{SessionHandle, SupervisorCounters, lock, open_for_preimage};
use super::perform::Job;
use crate::gate::Verdict;
use crate::gate::listener::{Held, OpAnswer, OpFacts, PermEvent};
use crate::os::seccomp::notify;
use crate::store::Store;

/// Held operations by notification id (ids are per listener, 64-bit and start at a random
/// value: the session is recorded and checked too). Written by the engine in the
/// transaction that files the request, made durable before the request leaves.
pub use crate::gate::requests::SESSION_HOLDS as HOLDS;

/// One held operation, as the engine got it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldRecord {
    pub session: u64,
    pub job: Job,
    /// The path the decision is about (the gated name).
    pub path: Vec<u8>,
    /// The operations' bits ([`crate::policy::OpSet`] names).
    pub ops: Vec<String>,
    pub existed: bool,
    /// Index of the target the decision is about.
    pub primary: usize,
    /// The failure verdict: allow (`true`) or deny.
    pub fail_allow: bool,
    /// The request filed for it.
    #[serde(default)]
    pub request: Option<u64>,
}

/// The answer of a deferred operation: performs it (through the performer) or denies it.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) job: Option<Job>,
    pub(super) jobs: std::sync::mpsc::SyncSender<Job>,
    pub(super) listener: Arc<OwnedFd>,
    /// Where the hold is recorded (forgotten once answered).
    pub(super) store: Option<Store>,
    /// What is recorded when its request is filed.
    pub(super) record: HoldRecord,
}

impl OpAnswer for Deferred {
    fn hold_record(&self, request_id: u64) -> Option<(u64, serde_json::Value)> {
        let job = self.job.as_ref()?;
        let mut r = self.record.clone();
        r.request = Some(request_id);
        serde_json::to_value(&r).ok().map(|v| (job.id, v))
    }

    fn answer(&mut self, verdict: Verdict) -> io::Result<()> {
        let Some(job) = self.job.take() else {
            return Ok(());
        };
        if let Some(store) = &self.store {
            // Not durable on its own: a record left by a crash is found stale at the next
            // start (its notification is no longer valid) and dropped.
            let id = job.id;
            if let Err(e) = store.write_lazy(|tx| tx.remove(HOLDS, id).map(|_| ())) {
                warn!(error = %e, "cannot forget an answered held operation");
            }
        }
        match verdict {
            Verdict::Allow => self.jobs.try_send(job).map_err(|e| {
                // The performer is gone or swamped: the caller must not wait forever.
                let id = match &e {
                    std::sync::mpsc::TrySendError::Full(j)
                    | std::sync::mpsc::TrySendError::Disconnected(j) => j.id,
                };
                let _ = notify::respond_error(&*self.listener, id, libc::EAGAIN);
                io::Error::from_raw_os_error(libc::EAGAIN)
            }),
            Verdict::Deny => notify::respond_error(&*self.listener, job.id, libc::EPERM),
        }
    }
}

/// After a restart, once the restored listeners are attached: every recorded held
/// operation whose caller still waits goes to the engine again (which attaches it to its
/// pending request); the others are forgotten and counted. Returns the request of each
/// one resumed, how many were lost and how many could not be read.
pub(super) fn resume(
    store: &Store,
    held: &tokio::sync::mpsc::Sender<Held>,
    handles: &std::sync::Mutex<std::collections::HashMap<u64, SessionHandle>>,
    counters: &SupervisorCounters,
) -> Resumed {
    {
        let (records, unreadable) = match read_records(store) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the recorded held operations");
                return Resumed::default();
            }
        };
        for id in &unreadable {
            SupervisorCounters::inc(&counters.holds_unreadable);
            // Whichever restored session the caller belongs to (ids are 64-bit and start
            // at a random value per listener), it must not wait forever: fail closed.
            let answered = lock(handles)
                .values()
                .filter(|(l, _)| notify::id_valid(&**l, *id))
                .any(|(l, _)| notify::respond_error(&**l, *id, libc::EPERM).is_ok());
            warn!(
                notification = id,
                caller_answered_eperm = answered,
                "a recorded held operation cannot be read back (damaged record): removed"
            );
            let _ = store.write_lazy(|tx| tx.remove(HOLDS, *id).map(|_| ()));
        }
        let unreadable = unreadable.len();
        let (mut resumed, mut lost) = (Vec::new(), 0);
        for (id, r) in records {
            let handle = lock(handles).get(&r.session).cloned();
            let live = handle
                .as_ref()
                .is_some_and(|(l, _)| r.job.id == id && notify::id_valid(&**l, id));
            let Some((listener, jobs)) = handle.filter(|_| live) else {
                lost += 1;
                SupervisorCounters::inc(&counters.holds_lost);
                warn!(
                    session = r.session,
                    notification = id,
                    "a held operation recorded before the restart has no caller any more"
                );
                let _ = store.write_lazy(|tx| tx.remove(HOLDS, id).map(|_| ()));
                continue;
            };
            let fd = r
                .job
                .targets
                .get(r.primary)
                .filter(|t| t.found.is_some_and(|f| f.is_regular()))
                .and_then(|t| open_for_preimage(&t.path))
                .or_else(|| std::fs::File::open("/dev/null").ok().map(OwnedFd::from));
            let Some(fd) = fd else {
                lost += 1;
                SupervisorCounters::inc(&counters.holds_lost);
                warn!(
                    notification = id,
                    "no descriptor for a resumed held operation: failure verdict applied"
                );
                let _ = notify::respond_error(&*listener, id, libc::EMFILE);
                let _ = store.write_lazy(|tx| tx.remove(HOLDS, id).map(|_| ()));
                continue;
            };
            let ops = crate::policy::OpSet::from_names(&r.ops).unwrap_or(crate::policy::OpSet::ALL);
            let event = PermEvent {
                fd,
                tid: r.job.tid,
                tgid: r.job.tgid,
                session: r.session,
                path: r.path.clone(),
                intent: None,
                received: Instant::now(),
                op: Some(OpFacts {
                    ops,
                    existed: r.existed,
                    name: r.job.op.name(),
                    resumes: r.request,
                }),
            };
            let key = r.request;
            let fail = if r.fail_allow {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            let answer = Deferred {
                job: Some(r.job.clone()),
                jobs,
                listener,
                store: Some(store.clone()),
                record: r,
            };
            if held
                .try_send(Held::for_op(event, fail, Box::new(answer)))
                .is_ok()
            {
                resumed.extend(key);
                SupervisorCounters::inc(&counters.holds_resumed);
            } else {
                // Dropping the held operation applied its failure verdict.
                lost += 1;
                SupervisorCounters::inc(&counters.holds_lost);
                warn!(
                    notification = id,
                    "the engine's queue took no resumed held operation: failure verdict applied"
                );
            }
        }
        Resumed {
            requests: resumed,
            lost,
            unreadable,
        }
    }
}

/// What [`resume`] did.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The pending requests resumed operations wait on.
    pub requests: Vec<u64>,
    /// Recorded operations whose caller was gone, or that could not be taken again.
    pub lost: usize,
    /// Records that could not be read back.
    pub unreadable: usize,
}

/// Readable records by notification id, and the ids of the others.
type Records = (Vec<(u64, HoldRecord)>, Vec<u64>);

/// The decodable records, and the ids of those that are not (skipped by
/// [`Store::scan`] at the byte level, or JSON that is not a [`HoldRecord`]).
fn read_records(store: &Store) -> Result<Records, crate::store::StoreError> {
    let keys = store.keys(HOLDS)?;
    let mut records = Vec::new();
    let mut readable = std::collections::HashSet::new();
    let mut unreadable = Vec::new();
    for (id, v) in store.scan(HOLDS)? {
        readable.insert(id);
        match serde_json::from_value::<HoldRecord>(v) {
            Ok(r) => records.push((id, r)),
            Err(_) => unreadable.push(id),
        }
    }
    unreadable.extend(keys.into_iter().filter(|k| !readable.contains(k)));
    Ok((records, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A damaged record (bytes that are not JSON, and JSON that is not a hold) neither
    /// stops the others from being read nor goes unnoticed: it is counted and removed.
    #[test]
    fn damaged_hold_records_are_counted_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|tx| tx.put(HOLDS, 7, &serde_json::json!({"not": "a hold"})))
                .unwrap();
        }
        {
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let def: redb::TableDefinition<'_, u64, &[u8]> =
                    redb::TableDefinition::new("session_holds");
                let mut t = tx.open_table(def).unwrap();
                t.insert(9u64, b"\xff\x00 not json".as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let handles = std::sync::Mutex::new(std::collections::HashMap::new());
        let counters = SupervisorCounters::default();
        let r = resume(&store, &tx, &handles, &counters);
        assert_eq!(r.unreadable, 2);
        assert!(r.requests.is_empty());
        assert_eq!(
            counters
                .holds_unreadable
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert!(store.keys(HOLDS).unwrap().is_empty());
    }
}
