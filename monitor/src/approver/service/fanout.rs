//! Changes committed by the other replicas of a service on PostgreSQL (see
//! [`crate::approver::pg`]): their decisions and revocations reach this replica's `Updates`
//! streams (which read them from the shared per-host log), their new and resolved requests
//! its `WatchRequests` streams and its pending set (so that this replica expires a request
//! whose replica is gone).
use super::*;
use crate::approver::pg::Fanout;

/// Changes applied together at most (what waits in the channel when one is taken).
const BATCH: usize = 256;

impl Shared {
    /// Applies the other replicas' changes until the service stops: each time, every change
    /// waiting (up to [`BATCH`]), in order, with one read of the requests they name for
    /// this replica's `WatchRequests` streams. One read per change made this loop the
    /// slowest part of a replica at saturation (BENCHMARKS.md, scenario 13).
    pub async fn fanout(self: Arc<Self>, mut rx: mpsc::Receiver<Fanout>) {
        let mut stopping = self.stopping.subscribe();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.apply(std::mem::take(&mut batch)).await;
                }
                _ = stopping.changed() => {}
            }
        }
    }

    async fn apply(self: &Arc<Self>, changes: Vec<Fanout>) {
        // Requests to show to this replica's watchers, in the order they changed.
        let mut watched = Vec::new();
        let watching = self.requests.receiver_count() > 0;
        for change in changes {
            match change {
                Fanout::Created { id, deadline } => {
                    self.pending_lock().insert((deadline, id));
                    self.sweep.notify_one();
                    if watching {
                        watched.push(id);
                    }
                }
                Fanout::Resolved { id, host, .. } => {
                    // The streams find the decision in the log (the update is not in
                    // memory).
                    self.push_update(&host, None);
                    self.pending_lock().retain(|&(_, p)| p != id);
                    if watching {
                        watched.push(id);
                    }
                }
                Fanout::Revoked { host, .. } => self.push_update(&host, None),
                Fanout::Resync => {
                    // Notifications may have been missed: the pending set from the
                    // database, and every stream reads its host's log again.
                    let me = Arc::clone(self);
                    if let Ok(pending) = self.db("fanout", move |st| st.pending()).await {
                        let fresh = pending.into_iter().map(|(id, d)| (d, id)).collect();
                        *me.pending_lock() = fresh;
                        me.sweep.notify_one();
                    }
                    self.push_update("", None);
                }
            }
        }
        if !watched.is_empty() {
            self.watchers_see(watched).await;
        }
    }

    /// Sends requests `ids` as stored now to the `WatchRequests` streams, in order, read
    /// in one call on the blocking pool.
    async fn watchers_see(self: &Arc<Self>, ids: Vec<u64>) {
        let me = Arc::clone(self);
        let found = self
            .db("fanout", move |st| {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(r) = st.request(id)? {
                        out.push(me.request_pb(&r)?);
                    }
                }
                Ok(out)
            })
            .await;
        if let Ok(requests) = found {
            for pb in requests {
                let _ = self.requests.send(pb);
            }
        }
    }
}
