//! The background task's connection loop: connect, subscribe to updates, resend the
//! spool, then send, settle and deliver until the connection breaks; reconnect after a
//! backoff (shorter while a request awaits its decision).
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use confgate_proto::v1::UpdatesRequest;
use confgate_proto::v1::approver_client::ApproverClient;

use super::backoff::Backoff;
use super::spool::{Spool, SpoolEntry};
use super::status::{Shared, bump};
use super::{UplinkOptions, UplinkUpdate};
use crate::approver::client::{ApproverChannel, ClientConfig, connect};

/// Why a connection ended.
pub(super) enum End {
    /// Every handle or the update receiver is gone: stop.
    Stop,
    /// Reconnect after a backoff.
    Broken(String),
}

/// The background task: one connection at a time, and what is not yet acknowledged.
pub(super) struct Task {
    pub(super) cfg: ClientConfig,
    pub(super) spool: Spool,
    pub(super) options: UplinkOptions,
    /// Spooled entries not yet acknowledged, by spool id, and whether a send was tried.
    pub(super) pending: BTreeMap<u64, (SpoolEntry, bool)>,
    pub(super) incoming: mpsc::UnboundedReceiver<(u64, SpoolEntry)>,
    pub(super) updates: mpsc::Sender<UplinkUpdate>,
    pub(super) shared: Arc<Shared>,
    pub(super) ever_connected: bool,
    /// Submitted requests without a decision yet: host request id to deadline (Unix ms).
    pub(super) awaiting: HashMap<u64, i64>,
}

impl Task {
    pub(super) fn new(
        cfg: ClientConfig,
        spool: Spool,
        options: UplinkOptions,
        incoming: mpsc::UnboundedReceiver<(u64, SpoolEntry)>,
        updates: mpsc::Sender<UplinkUpdate>,
        shared: Arc<Shared>,
    ) -> Self {
        Task {
            cfg,
            spool,
            options,
            pending: BTreeMap::new(),
            incoming,
            updates,
            shared,
            ever_connected: false,
            awaiting: HashMap::new(),
        }
    }

    /// Whether some submitted request may still get a decision (prunes expired ones).
    fn awaiting_decision(&mut self) -> bool {
        let now = crate::os::clock::now_ms();
        self.awaiting.retain(|_, deadline| *deadline > now);
        !self.awaiting.is_empty()
    }

    pub(super) async fn run(mut self) {
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
        // The endpoint tried next, and how many failed in a row since one worked.
        let (mut current, mut tried) = (0usize, 0usize);
        loop {
            if self.updates.is_closed() {
                return;
            }
            let cfg = self.cfg.nth_endpoint(current);
            let end = match connect(&cfg).await {
                Ok(client) => {
                    logged_down = false;
                    tried = 0;
                    if self.cfg.endpoint_count() > 1 {
                        tracing::info!(endpoint = %cfg.endpoint, "uplink: connected");
                    }
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
                // Several endpoints (replicas of one service): the next one at once, until
                // each was tried since the last connection that worked; then the backoff.
                End::Broken(reason) if tried + 1 < self.cfg.endpoint_count() => {
                    tried += 1;
                    current = (current + 1) % self.cfg.endpoint_count();
                    bump(&self.shared.counters.failovers);
                    tracing::info!(%reason, from = %cfg.endpoint, to = %self.cfg.nth_endpoint(current).endpoint, "uplink: failing over to the next endpoint");
                }
                End::Broken(reason) => {
                    tried = 0;
                    current = (current + 1) % self.cfg.endpoint_count();
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
}
