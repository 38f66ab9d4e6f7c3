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
/// one resumed, and how many were lost.
pub(super) fn resume(
    store: &Store,
    held: &tokio::sync::mpsc::Sender<Held>,
    handles: &std::sync::Mutex<std::collections::HashMap<u64, SessionHandle>>,
    counters: &SupervisorCounters,
) -> (Vec<u64>, usize) {
    {
        let records = match store.scan(HOLDS) {
            Ok(r) => r
                .into_iter()
                .filter_map(|(id, v)| {
                    serde_json::from_value::<HoldRecord>(v)
                        .ok()
                        .map(|r| (id, r))
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                warn!(error = %e, "cannot read the recorded held operations");
                return (Vec::new(), 0);
            }
        };
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
            }
        }
        (resumed, lost)
    }
}
