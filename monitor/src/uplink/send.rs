//! Sending spooled entries: the pending set, one RPC per entry, and what its answer does
//! to the spool (acknowledged or rejected: removed; a transient failure: kept and resent
//! on the next connection).
use std::sync::atomic::Ordering;

use confgate_proto::v1::approver_client::ApproverClient;
use confgate_proto::v1::{self, SubmitRequest};

use super::UplinkUpdate;
use super::spool::SpoolEntry;
use super::status::bump;
use super::task::{End, Task};
use crate::approver::client::ApproverChannel;

/// Most requests tracked in [`Task::awaiting`] (beyond, reconnection just backs off as usual).
const MAX_AWAITING: usize = 100_000;
/// Deadline assumed for a request that names none.
const AWAITING_DEFAULT_MS: i64 = 600_000;

/// What sending one pending entry takes.
enum Call {
    Submit(Box<SubmitRequest>),
    Report(v1::ReportRequest),
    /// A report that cannot be rebuilt: acknowledged as is.
    Nothing,
    /// A spooled request that cannot be decoded: dropped, counted.
    Damaged,
}

/// How sending one entry ended.
pub(super) enum Answer {
    /// The service's answer (for a request: the service's id of it), or the timeout's.
    Rpc(Result<Result<Option<u64>, tonic::Status>, tokio::time::error::Elapsed>),
    Damaged,
}

impl Task {
    /// Sends one pending entry and waits for the answer; on acknowledgement (or rejection)
    /// removes it from the spool.
    pub(super) async fn send(
        &mut self,
        client: &mut ApproverClient<ApproverChannel>,
        id: u64,
    ) -> Result<(), End> {
        match self.rpc(client, id) {
            Some(rpc) => {
                let (id, result) = rpc.await;
                self.settle(id, result).await
            }
            None => Ok(()),
        }
    }

    /// The RPC that sends pending entry `id` (with its timeout), or `None` if there is
    /// nothing to send (gone, or damaged: then dropped from the spool here, counted).
    pub(super) fn rpc(
        &mut self,
        client: &ApproverClient<ApproverChannel>,
        id: u64,
    ) -> Option<impl Future<Output = (u64, Answer)> + Send + 'static> {
        let (entry, _) = self.pending.get(&id)?;
        let timeout = self.options.rpc_timeout;
        let mut client = client.clone();
        let call = match entry {
            SpoolEntry::Submit {
                host_request_id, ..
            } => match entry.submit_request() {
                Some(req) => Call::Submit(Box::new(req)),
                None => {
                    tracing::error!(
                        spool_id = id,
                        host_request_id,
                        "uplink: spooled request is damaged; dropped (its rule's failure verdict applies)"
                    );
                    Call::Damaged
                }
            },
            SpoolEntry::Report { .. } => match entry.report_request() {
                Some(req) => Call::Report(req),
                None => Call::Nothing,
            },
        };
        Some(async move {
            let answer = match call {
                Call::Submit(req) => Answer::Rpc(
                    tokio::time::timeout(timeout, client.submit(*req))
                        .await
                        .map(|r| r.map(|a| Some(a.into_inner().id))),
                ),
                Call::Report(req) => Answer::Rpc(
                    tokio::time::timeout(timeout, client.report(req))
                        .await
                        .map(|r| r.map(|_| None)),
                ),
                Call::Nothing => Answer::Rpc(Ok(Ok(None))),
                Call::Damaged => Answer::Damaged,
            };
            (id, answer)
        })
    }

    /// Applies the answer to pending entry `id`: acknowledged or rejected, it leaves the
    /// spool; a transient failure breaks the connection (the entry is resent on the next).
    pub(super) async fn settle(&mut self, id: u64, answer: Answer) -> Result<(), End> {
        let Some((entry, tried)) = self.pending.get(&id).cloned() else {
            return Ok(());
        };
        let c = &self.shared.counters;
        let timeout = self.options.rpc_timeout;
        let result = match answer {
            Answer::Rpc(result) => result,
            Answer::Damaged => {
                bump(&c.damaged);
                self.forget(id).await;
                self.sync_gauge();
                return Ok(());
            }
        };
        match result {
            Ok(Ok(service_id)) => {
                if let (
                    Some(sid),
                    SpoolEntry::Submit {
                        host_request_id, ..
                    },
                ) = (service_id, &entry)
                {
                    // Nobody listening is fine (an error here only says so).
                    let _ = self.shared.accepted.0.send((*host_request_id, sid));
                }
                self.forget(id).await;
                let c = &self.shared.counters;
                match (&entry, tried) {
                    (_, true) => bump(&c.resubmitted),
                    (SpoolEntry::Submit { .. }, false) => bump(&c.submitted),
                    (SpoolEntry::Report { .. }, false) => {}
                }
                if let SpoolEntry::Report { .. } = entry {
                    bump(&c.reports_sent);
                }
                self.sync_gauge();
                Ok(())
            }
            Ok(Err(status)) if is_permanent(status.code()) => {
                tracing::error!(spool_id = id, ?entry, %status, "uplink: the approval service rejected a message; dropped");
                self.forget(id).await;
                bump(&self.shared.counters.rejected);
                self.sync_gauge();
                if let SpoolEntry::Submit {
                    host_request_id, ..
                } = entry
                {
                    let rejected = UplinkUpdate::Rejected {
                        host_request_id,
                        error: status.to_string(),
                    };
                    if self.updates.send(rejected).await.is_err() {
                        return Err(End::Stop);
                    }
                }
                Ok(())
            }
            Ok(Err(status)) => {
                bump(&c.send_errors);
                if let Some(p) = self.pending.get_mut(&id) {
                    p.1 = true;
                }
                Err(End::Broken(format!("send: {status}")))
            }
            Err(_) => {
                bump(&c.send_errors);
                if let Some(p) = self.pending.get_mut(&id) {
                    p.1 = true;
                }
                Err(End::Broken(format!(
                    "no acknowledgement within {timeout:?}"
                )))
            }
        }
    }

    /// Takes a spooled entry into the pending set (an entry already there keeps its state).
    pub(super) fn accept(&mut self, id: u64, entry: SpoolEntry, tried: bool) {
        if let SpoolEntry::Submit {
            host_request_id, ..
        } = &entry
            && self.awaiting.len() < MAX_AWAITING
        {
            let deadline = entry
                .submit_request()
                .map(|r| r.deadline_unix_ms)
                .filter(|d| *d > 0)
                .unwrap_or_else(|| crate::os::clock::now_ms().saturating_add(AWAITING_DEFAULT_MS));
            self.awaiting.insert(*host_request_id, deadline);
        }
        self.pending.entry(id).or_insert((entry, tried));
        self.sync_gauge();
    }

    pub(super) fn sync_gauge(&self) {
        self.shared
            .counters
            .spool_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Drops an entry from the spool and memory (the caller updates the gauge after its
    /// counters, so that a drained gauge implies final counters).
    pub(super) async fn forget(&mut self, id: u64) {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.remove(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(spool_id = id, error = %e, "uplink: cannot remove an acknowledged message from the spool; it will be resent after a restart");
            }
            Err(e) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(spool_id = id, error = %e, "uplink: spool removal did not complete");
            }
        }
        self.pending.remove(&id);
    }
}

/// Status codes that resending cannot fix.
fn is_permanent(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::Unimplemented
    )
}
