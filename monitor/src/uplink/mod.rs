//! The daemon's client of the approval service.
//!
//! [`Uplink::start`] returns an [`UplinkHandle`] (cloneable) and the receiver of
//! [`UplinkUpdate`]s. The handle's [`UplinkHandle::submit`] and [`UplinkHandle::report`]
//! write the message to a spool table of the daemon's store (durable, fsync'd) and return;
//! a background task sends it. Nothing waits on the network: while the service is
//! unreachable, calls return after the spool write, the spool grows, and the gate engine
//! applies each rule's failure verdict itself at its deadlines.
//!
//! The background task keeps one connection: exponential backoff with jitter between
//! attempts (100 ms .. 10 s, but at most 500 ms while a submitted request still awaits its
//! decision, so that an approval given meanwhile is not held up); on every (re)connection it first subscribes to
//! `Approver.Updates` from the last update it delivered (`after_seq`, kept in the store;
//! the subscription also presents the daemon's decider attestation key), so that decisions
//! made meanwhile arrive at once, then re-sends everything still spooled, oldest first (the
//! service is idempotent on `host_request_id` and `host_seq`), removing each entry once the
//! service acknowledged it.
//!
//! Delivery of updates is **at least once**: the cursor is stored after the update is in
//! the receiver's channel, so an update can be delivered again after a reconnection or a
//! restart (and the ones still in the channel when the daemon dies are lost from it but
//! not from the service: see below). The consumer must be idempotent: apply a decision for
//! a request it already resolved, or a revocation of a grant it no longer holds, as a
//! no-op. The channel holds at most [`UplinkOptions::updates_capacity`] updates, so at most
//! that many (plus the one being handled) can have their cursor stored before the consumer
//! applied them; a crash in that window loses them locally. With the default capacity of
//! 1 that is at most two updates; the service still has them (`ListGrants`, `GetRequest`).
//!
//! If the service refuses the cursor (`OUT_OF_RANGE`: its update log was reset and is
//! shorter than what this host applied), the cursor goes back to 0 (counted in
//! `cursor_resets`) and the whole new log is replayed.
//!
//! A message the service rejects as invalid (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
//! `NOT_FOUND`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `UNIMPLEMENTED`) is dropped from the
//! spool, counted (`rejected`) and logged, and a rejected request is handed to the
//! receiver as [`UplinkUpdate::Rejected`] (the gate ledgers it and applies its rule's
//! failure verdict at once); every other error is treated as a broken connection (counted
//! in `send_errors`) and the message is re-sent after reconnecting.
//!
//! A request whose context breaks the request contract (`approver::wire::check_context`,
//! the check the service runs) is refused by [`UplinkHandle::submit_now`] before it is
//! spooled (`UplinkError::Invalid`).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use confgate_proto::v1::approver_client::ApproverClient;
use confgate_proto::v1::{self, HostUpdate, SubmitRequest, UpdatesRequest, host_update};

use crate::approver::client::{ApproverChannel, ClientConfig, connect};
use crate::store::{Store, StoreError, Unsynced, WriteTx};

pub mod backoff;
pub mod spool;

pub use backoff::Backoff;
use spool::{Spool, SpoolEntry};

/// An update from the approval service for this host.
#[derive(Clone, Debug, PartialEq)]
pub enum UplinkUpdate {
    /// A request of this host was decided (approved with a grant, denied, or expired).
    Decision {
        seq: u64,
        host_request_id: u64,
        decision: v1::Decision,
    },
    /// A grant of this host was revoked before its expiry.
    Revoked { seq: u64, grant: v1::Grant },
    /// The service refused request `host_request_id` (it will never be decided); `error`
    /// is its answer. Not part of the service's update log: `seq` is 0.
    Rejected { host_request_id: u64, error: String },
}

impl UplinkUpdate {
    /// The per-host sequence number of the update.
    pub fn seq(&self) -> u64 {
        match self {
            UplinkUpdate::Decision { seq, .. } | UplinkUpdate::Revoked { seq, .. } => *seq,
            UplinkUpdate::Rejected { .. } => 0,
        }
    }
}

/// Errors of [`UplinkHandle::submit`] and [`UplinkHandle::report`]: the message is not
/// spooled (so it will not be sent).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink spool: {0}")]
    Store(#[from] StoreError),
    #[error("uplink spool write did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("invalid uplink message: {0}")]
    Invalid(String),
}

/// Tuning of the background task (defaults are what the daemon uses).
#[derive(Clone, Debug)]
pub struct UplinkOptions {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for one `Submit`/`Report` acknowledgement before the connection is
    /// considered broken.
    pub rpc_timeout: Duration,
    /// Capacity of the update channel (see the module doc on at-least-once delivery).
    pub updates_capacity: usize,
    /// The daemon's decider attestation public key, presented to the service with every
    /// `Updates` subscription (over the host's own identity).
    pub attestation_key: Option<Vec<u8>>,
    /// Longest wait between reconnection attempts while a submitted request still awaits
    /// its decision (an approval given meanwhile arrives at the next attempt).
    pub awaiting_max_backoff: Duration,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            updates_capacity: 1,
            attestation_key: None,
            awaiting_max_backoff: Duration::from_millis(500),
        }
    }
}

/// Counters of the uplink (all monotonic except `spool_pending`, a gauge).
#[derive(Debug, Default)]
struct Counters {
    /// Messages written to the spool.
    spooled: AtomicU64,
    /// Submit requests acknowledged on their first send.
    submitted: AtomicU64,
    /// Messages sent again: after a failed send, or left in the spool by an earlier run.
    resubmitted: AtomicU64,
    /// Reports acknowledged.
    reports_sent: AtomicU64,
    /// Sends that failed for a transport reason (the message stays spooled).
    send_errors: AtomicU64,
    /// Messages the service refused as invalid, dropped from the spool.
    rejected: AtomicU64,
    /// Spooled submit requests whose stored bytes could not be decoded, dropped.
    damaged: AtomicU64,
    /// Failed connection attempts.
    connect_failures: AtomicU64,
    /// Connections established after the first.
    reconnects: AtomicU64,
    /// Updates handed to the receiver.
    updates_applied: AtomicU64,
    /// Updates without content, or not newer than the cursor, skipped.
    updates_skipped: AtomicU64,
    /// Subscriptions refused because the service's update log was reset (the cursor
    /// was set back to 0).
    cursor_resets: AtomicU64,
    /// Failed store writes of the task (spool removal, cursor).
    store_errors: AtomicU64,
    /// Entries in the spool now.
    spool_pending: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    connected: AtomicBool,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Entry point: see the module documentation.
pub struct Uplink;

impl Uplink {
    /// Starts the background task (needs a tokio runtime) with the default options.
    /// `host` is this host's name, put into requests whose context has none (the service
    /// replaces it with the name its transport identity gives).
    pub fn start(
        cfg: ClientConfig,
        store: Store,
        host: String,
    ) -> (UplinkHandle, mpsc::Receiver<UplinkUpdate>) {
        Uplink::start_with(cfg, store, host, UplinkOptions::default())
    }

    /// [`Uplink::start`] with explicit options.
    pub fn start_with(
        cfg: ClientConfig,
        store: Store,
        host: String,
        options: UplinkOptions,
    ) -> (UplinkHandle, mpsc::Receiver<UplinkUpdate>) {
        let (updates_tx, updates_rx) = mpsc::channel(options.updates_capacity.max(1));
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let spool = Spool::new(store);
        let task = Task {
            cfg,
            spool: spool.clone(),
            options,
            pending: BTreeMap::new(),
            incoming: incoming_rx,
            updates: updates_tx,
            shared: Arc::clone(&shared),
            ever_connected: false,
            awaiting: std::collections::HashMap::new(),
        };
        let join = tokio::spawn(task.run());
        let handle = UplinkHandle {
            spool,
            incoming: incoming_tx,
            shared,
            host: Arc::from(host),
            task: Arc::new(Mutex::new(Some(join))),
        };
        (handle, updates_rx)
    }
}

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
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Counters for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.shared.counters;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("uplink_spooled", v(&c.spooled)),
            ("uplink_submitted", v(&c.submitted)),
            ("uplink_resubmitted", v(&c.resubmitted)),
            ("uplink_reports_sent", v(&c.reports_sent)),
            ("uplink_send_errors", v(&c.send_errors)),
            ("uplink_rejected", v(&c.rejected)),
            ("uplink_damaged", v(&c.damaged)),
            ("uplink_connect_failures", v(&c.connect_failures)),
            ("uplink_reconnects", v(&c.reconnects)),
            ("uplink_updates_applied", v(&c.updates_applied)),
            ("uplink_updates_skipped", v(&c.updates_skipped)),
            ("uplink_cursor_resets", v(&c.cursor_resets)),
            ("uplink_store_errors", v(&c.store_errors)),
            ("uplink_spool_pending", v(&c.spool_pending)),
            ("uplink_connected", u64::from(self.connected())),
        ]
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
enum Answer {
    /// The service's answer, or the timeout's.
    Rpc(Result<Result<(), tonic::Status>, tokio::time::error::Elapsed>),
    Damaged,
}

/// Why a connection ended.
enum End {
    /// Every handle or the update receiver is gone: stop.
    Stop,
    /// Reconnect after a backoff.
    Broken(String),
}

struct Task {
    cfg: ClientConfig,
    spool: Spool,
    options: UplinkOptions,
    /// Spooled entries not yet acknowledged, by spool id, and whether a send was tried.
    pending: BTreeMap<u64, (SpoolEntry, bool)>,
    incoming: mpsc::UnboundedReceiver<(u64, SpoolEntry)>,
    updates: mpsc::Sender<UplinkUpdate>,
    shared: Arc<Shared>,
    ever_connected: bool,
    /// Submitted requests without a decision yet: host request id to deadline (Unix ms).
    awaiting: std::collections::HashMap<u64, i64>,
}

/// Most requests tracked in [`Task::awaiting`] (beyond, reconnection just backs off as usual).
const MAX_AWAITING: usize = 100_000;
/// Deadline assumed for a request that names none.
const AWAITING_DEFAULT_MS: i64 = 600_000;

impl Task {
    /// Whether some submitted request may still get a decision (prunes expired ones).
    fn awaiting_decision(&mut self) -> bool {
        let now = crate::os::clock::now_ms();
        self.awaiting.retain(|_, deadline| *deadline > now);
        !self.awaiting.is_empty()
    }

    async fn run(mut self) {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.load()).await {
            Ok(Ok(entries)) => {
                if !entries.is_empty() {
                    tracing::info!(
                        entries = entries.len(),
                        "uplink: resending spooled messages"
                    );
                }
                // Left by an earlier run: they may have been sent already.
                for (id, entry) in entries {
                    self.accept(id, entry, true);
                }
            }
            Ok(Err(e)) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(error = %e, "uplink: cannot read the spool; earlier messages are not resent");
            }
            Err(e) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(error = %e, "uplink: spool read did not complete");
            }
        }
        let mut backoff = Backoff::new(self.options.min_backoff, self.options.max_backoff);
        let mut logged_down = false;
        loop {
            if self.updates.is_closed() {
                return;
            }
            let end = match connect(&self.cfg).await {
                Ok(client) => {
                    logged_down = false;
                    self.connection(client, &mut backoff).await
                }
                Err(e) => {
                    bump(&self.shared.counters.connect_failures);
                    if logged_down {
                        tracing::debug!(error = %e, "uplink: still cannot reach the approval service");
                    } else {
                        tracing::warn!(error = %e, "uplink: cannot reach the approval service; spooling and retrying");
                        logged_down = true;
                    }
                    End::Broken(e.to_string())
                }
            };
            self.shared.connected.store(false, Ordering::Relaxed);
            match end {
                End::Stop => return,
                End::Broken(reason) => {
                    let mut delay = backoff.next_delay();
                    if self.awaiting_decision() {
                        // Someone may be deciding right now: do not make them wait 10 s.
                        delay = delay.min(self.options.awaiting_max_backoff);
                    }
                    tracing::debug!(%reason, ?delay, "uplink: reconnecting after a delay");
                    if !self.idle(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits `delay` while accepting newly spooled entries; false when every handle is gone.
    async fn idle(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                item = self.incoming.recv() => match item {
                    Some((id, entry)) => self.accept(id, entry, false),
                    None => return false,
                },
            }
        }
    }

    async fn connection(
        &mut self,
        mut client: ApproverClient<ApproverChannel>,
        backoff: &mut Backoff,
    ) -> End {
        if self.ever_connected {
            bump(&self.shared.counters.reconnects);
        }
        self.ever_connected = true;
        let spool = self.spool.clone();
        let mut cursor = match tokio::task::spawn_blocking(move || spool.cursor()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(error = %e, "uplink: cannot read the update cursor; replaying every update");
                0
            }
            Err(e) => return End::Broken(format!("cursor read did not complete: {e}")),
        };
        let subscribe = UpdatesRequest {
            after_seq: cursor,
            attestation_key: self.options.attestation_key.clone().unwrap_or_default(),
        };
        let mut stream = match client.updates(subscribe).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                // The service's update log is shorter than what this host applied: its
                // state was reset. Replay its whole log (consumers are idempotent).
                bump(&self.shared.counters.cursor_resets);
                tracing::error!(after_seq = cursor, %status, "uplink: the approval service lost its update log; resubscribing from the start");
                let spool = self.spool.clone();
                let failed = match tokio::task::spawn_blocking(move || spool.set_cursor(0)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(error) = failed {
                    bump(&self.shared.counters.store_errors);
                    tracing::error!(%error, "uplink: cannot reset the update cursor");
                }
                return End::Broken(format!("Updates: {status}"));
            }
            Err(status) => {
                bump(&self.shared.counters.send_errors);
                return End::Broken(format!("Updates: {status}"));
            }
        };
        // Subscribed first: decisions made while this host was away (and its attestation
        // key) reach the service side at once, not after the spool is resent.
        while let Ok((id, entry)) = self.incoming.try_recv() {
            self.accept(id, entry, false);
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            if let Err(end) = self.send(&mut client, id).await {
                return end;
            }
        }
        self.shared.connected.store(true, Ordering::Relaxed);
        backoff.reset();
        tracing::info!(
            after_seq = cursor,
            "uplink: connected to the approval service"
        );
        // Requests are sent without waiting for each other's acknowledgement (the service
        // acknowledges once durable, which can take a while): decisions keep flowing meanwhile.
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                item = self.incoming.recv() => match item {
                    Some((id, entry)) => {
                        let submit = matches!(entry, SpoolEntry::Submit { .. });
                        self.accept(id, entry, false);
                        let sent = if submit {
                            if let Some(rpc) = self.rpc(&client, id) {
                                inflight.spawn(rpc);
                            }
                            Ok(())
                        } else {
                            self.send(&mut client, id).await
                        };
                        if let Err(end) = sent {
                            return end;
                        }
                    }
                    None => return End::Stop,
                },
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    let settled = match done {
                        Ok((id, result)) => self.settle(id, result).await,
                        Err(e) => Err(End::Broken(format!("send task failed: {e}"))),
                    };
                    if let Err(end) = settled {
                        return end;
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(update)) => {
                        if let Err(end) = self.deliver(update, &mut cursor).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Broken("the update stream ended".into()),
                    Err(status) => return End::Broken(format!("update stream: {status}")),
                },
            }
        }
    }

    /// Sends one pending entry and waits for the answer; on acknowledgement (or rejection)
    /// removes it from the spool.
    async fn send(
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
    fn rpc(
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
                        .map(|r| r.map(drop)),
                ),
                Call::Report(req) => Answer::Rpc(
                    tokio::time::timeout(timeout, client.report(req))
                        .await
                        .map(|r| r.map(drop)),
                ),
                Call::Nothing => Answer::Rpc(Ok(Ok(()))),
                Call::Damaged => Answer::Damaged,
            };
            (id, answer)
        })
    }

    /// Applies the answer to pending entry `id`: acknowledged or rejected, it leaves the
    /// spool; a transient failure breaks the connection (the entry is resent on the next).
    async fn settle(&mut self, id: u64, answer: Answer) -> Result<(), End> {
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
            Ok(Ok(())) => {
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
    fn accept(&mut self, id: u64, entry: SpoolEntry, tried: bool) {
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

    fn sync_gauge(&self) {
        self.shared
            .counters
            .spool_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Drops an entry from the spool and memory (the caller updates the gauge after its
    /// counters, so that a drained gauge implies final counters).
    async fn forget(&mut self, id: u64) {
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

    /// Hands one update to the receiver, then stores the cursor.
    async fn deliver(&mut self, u: HostUpdate, cursor: &mut u64) -> Result<(), End> {
        let c = &self.shared.counters;
        if u.seq <= *cursor {
            bump(&c.updates_skipped);
            tracing::warn!(
                seq = u.seq,
                cursor = *cursor,
                "uplink: update not newer than the cursor; skipped"
            );
            return Ok(());
        }
        let update = match u.update {
            Some(host_update::Update::Decision(decision)) => {
                self.awaiting.remove(&u.host_request_id);
                Some(UplinkUpdate::Decision {
                    seq: u.seq,
                    host_request_id: u.host_request_id,
                    decision,
                })
            }
            Some(host_update::Update::Revoked(grant)) => {
                Some(UplinkUpdate::Revoked { seq: u.seq, grant })
            }
            None => {
                bump(&c.updates_skipped);
                tracing::warn!(seq = u.seq, "uplink: update without content; skipped");
                None
            }
        };
        if let Some(update) = update {
            if self.updates.send(update).await.is_err() {
                return Err(End::Stop);
            }
            bump(&c.updates_applied);
        }
        *cursor = u.seq;
        let spool = self.spool.clone();
        let seq = u.seq;
        match tokio::task::spawn_blocking(move || spool.set_cursor(seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(seq, error = %e, "uplink: cannot store the update cursor; updates will be replayed");
            }
            Err(e) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(seq, error = %e, "uplink: cursor write did not complete");
            }
        }
        Ok(())
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

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
