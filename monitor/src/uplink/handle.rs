//! [`UplinkHandle`]: what the daemon calls. Every message is written to the spool
//! (durably) and handed to the background task; nothing here waits on the network.
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use confgate_proto::v1::SubmitRequest;

use super::UplinkError;
use super::spool::{Spool, SpoolEntry};
use super::status::{Shared, bump};
use crate::store::{StoreError, Unsynced, WriteTx};

/// Handle to the uplink; cheap to clone. The task stops when every handle is dropped, the
/// update receiver is dropped, or [`UplinkHandle::shutdown`] is called.
#[derive(Clone)]
pub struct UplinkHandle {
    spool: Spool,
    incoming: mpsc::UnboundedSender<(u64, SpoolEntry)>,
    shared: Arc<Shared>,
    host: Arc<str>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for UplinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkHandle")
            .field("host", &self.host)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl UplinkHandle {
    pub(super) fn new(
        spool: Spool,
        incoming: mpsc::UnboundedSender<(u64, SpoolEntry)>,
        shared: Arc<Shared>,
        host: Arc<str>,
        task: JoinHandle<()>,
    ) -> Self {
        UplinkHandle {
            spool,
            incoming,
            shared,
            host,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Requests the service acknowledged from now on, as (host request id, the service's
    /// request id: the one approvers name).
    pub fn accepted(&self) -> tokio::sync::broadcast::Receiver<(u64, u64)> {
        self.shared.accepted.0.subscribe()
    }

    /// Spools `req` durably, then hands it to the background task, and returns: it never
    /// waits on the service. `req.host_request_id` must be set (unique per host; the
    /// service deduplicates resubmissions on it).
    pub async fn submit(&self, req: SubmitRequest) -> Result<(), UplinkError> {
        let (_, unsynced) = self.submit_with(move |_| Ok(req)).await?;
        self.sync(unsynced).await
    }

    /// Like [`UplinkHandle::submit`], for a request that `build` makes inside the spool's
    /// transaction, so that the caller's own record of it (and the id it allocates there)
    /// costs no second commit. The request leaves at once; it is durable once synced
    /// ([`UplinkHandle::sync`]) or with the next durable commit of the store. Returns the
    /// request's `host_request_id`.
    pub async fn submit_with(
        &self,
        build: impl FnOnce(&WriteTx<'_>) -> Result<SubmitRequest, StoreError> + Send + 'static,
    ) -> Result<(u64, Unsynced), UplinkError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.submit_now(build)).await?
    }

    /// [`UplinkHandle::submit_with`] on the calling thread (it commits to the store: call it
    /// where blocking is fine).
    pub fn submit_now(
        &self,
        build: impl FnOnce(&WriteTx<'_>) -> Result<SubmitRequest, StoreError>,
    ) -> Result<(u64, Unsynced), UplinkError> {
        let host = self.host.clone();
        let spooled = self
            .spool
            .push_submit_with(|tx| {
                let mut req = build(tx)?;
                if req.host_request_id == 0 {
                    return Err(StoreError::Abandoned(
                        "submit request without host_request_id".into(),
                    ));
                }
                let Some(ctx) = req.context.as_mut() else {
                    return Err(StoreError::Abandoned(
                        "submit request without context".into(),
                    ));
                };
                if ctx.host.is_empty() {
                    ctx.host = host.to_string();
                }
                // The service's own check: a request it would refuse is never spooled.
                crate::approver::wire::check_context(ctx).map_err(|status| {
                    StoreError::Abandoned(format!(
                        "the request breaks the request contract: {}",
                        status.message()
                    ))
                })?;
                Ok(req)
            })
            .map_err(|e| match e {
                StoreError::Abandoned(why) => UplinkError::Invalid(why),
                e => UplinkError::Store(e),
            })?;
        let (spooled, unsynced) = spooled;
        let id = match &spooled.1 {
            SpoolEntry::Submit {
                host_request_id, ..
            } => *host_request_id,
            SpoolEntry::Report { .. } => 0,
        };
        self.enqueue(spooled);
        Ok((id, unsynced))
    }

    /// [`UplinkHandle::sync`] from a thread that may block (never from async code): it
    /// does not take another blocking thread, so a full pool cannot stall it.
    pub fn sync_blocking(&self, u: Unsynced) -> Result<(), UplinkError> {
        self.spool.sync(u)?;
        Ok(())
    }

    /// Makes a request spooled by [`UplinkHandle::submit_with`] durable: at once if a
    /// durable commit made meanwhile (a decision's) covered it, else by one of its own.
    pub async fn sync(&self, u: Unsynced) -> Result<(), UplinkError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.sync(u)).await??;
        Ok(())
    }

    /// Spools a host audit record (`Approver.Report`) with the next `host_seq` from the
    /// store, then hands it to the background task; returns that `host_seq`.
    pub async fn report(&self, kind: &str, json: serde_json::Value) -> Result<u64, UplinkError> {
        if kind.is_empty() || kind.len() > 64 || !kind.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UplinkError::Invalid(format!(
                "report kind {:?} is not 1..=64 printable ASCII characters",
                kind.chars().take(64).collect::<String>()
            )));
        }
        let kind = kind.to_owned();
        let json = json.to_string();
        let spool = self.spool.clone();
        let spooled = tokio::task::spawn_blocking(move || {
            spool.push_report(&kind, json, crate::os::clock::now_ms())
        })
        .await??;
        let host_seq = match &spooled.1 {
            SpoolEntry::Report { host_seq, .. } => *host_seq,
            SpoolEntry::Submit { .. } => 0,
        };
        self.enqueue(spooled);
        Ok(host_seq)
    }

    fn enqueue(&self, spooled: (u64, SpoolEntry)) {
        bump(&self.shared.counters.spooled);
        if self.incoming.send(spooled).is_err() {
            // Only after shutdown: the entry stays in the store for the next start.
            tracing::warn!(
                "uplink task is not running; message kept in the spool for the next start"
            );
        }
    }

    /// Whether a connection to the service is up (connected and subscribed to updates).
    pub fn connected(&self) -> bool {
        self.shared.connected()
    }

    /// Counters for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.shared.snapshot()
    }

    /// Stops the background task and waits for it. Spooled messages stay in the store.
    pub async fn shutdown(&self) {
        if let Some(join) = self.task.lock().await.take() {
            join.abort();
            let _ = join.await;
        }
        self.shared.connected.store(false, Ordering::Relaxed);
    }
}
