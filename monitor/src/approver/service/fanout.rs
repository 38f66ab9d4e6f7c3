//! Changes committed by the other replicas of a service on PostgreSQL (see
//! [`crate::approver::pg`]): their decisions and revocations reach this replica's `Updates`
//! streams (which read them from the shared per-host log), their new and resolved requests
//! its `WatchRequests` streams and its pending set (so that this replica expires a request
//! whose replica is gone).
use super::*;
use crate::approver::pg::Fanout;

impl Shared {
    /// Applies the other replicas' changes until the service stops.
    pub async fn fanout(self: Arc<Self>, mut rx: mpsc::Receiver<Fanout>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(change) => self.apply(change).await,
                    None => return,
                },
                _ = stopping.changed() => {}
            }
        }
    }

    async fn apply(self: &Arc<Self>, change: Fanout) {
        match change {
            Fanout::Created { id, deadline } => {
                self.pending_lock().insert((deadline, id));
                self.sweep.notify_one();
                self.watchers_see(id).await;
            }
            Fanout::Resolved { id, host, .. } => {
                // The streams find the decision in the log (the update is not in memory).
                self.push_update(&host, None);
                // No longer pending here either. The request is read back only for this
                // replica's `approvals watch` streams: a read per decision, one at a time,
                // would hold up the changes behind it.
                self.pending_lock().retain(|&(_, p)| p != id);
                if self.requests.receiver_count() > 0 {
                    self.watchers_see(id).await;
                }
            }
            Fanout::Revoked { host, .. } => self.push_update(&host, None),
            Fanout::Resync => {
                // Notifications may have been missed: the pending set from the database,
                // and every stream reads its host's log again.
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

    /// Sends request `id` as stored now to the `WatchRequests` streams; returns its
    /// deadline.
    async fn watchers_see(self: &Arc<Self>, id: u64) -> Option<i64> {
        let me = Arc::clone(self);
        let found = self
            .db("fanout", move |st| match st.request(id)? {
                Some(r) => Ok(Some((r.deadline_unix_ms, me.request_pb(&r)?))),
                None => Ok(None),
            })
            .await;
        match found {
            Ok(Some((deadline, pb))) => {
                let _ = self.requests.send(pb);
                Some(deadline)
            }
            _ => None,
        }
    }
}
