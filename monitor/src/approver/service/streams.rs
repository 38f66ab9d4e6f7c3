//! The `Updates` (per host, resumable by seq) and `WatchRequests` streams.
use super::*;

/// Feeds one host's `Updates` stream: the log after `after`, then each new entry as it is
/// pushed; from the log again whenever a pushed entry is not the next one expected.
pub(super) async fn updates_stream(
    s: Arc<Shared>,
    host: String,
    mut after: u64,
    tx: mpsc::Sender<Result<pb::HostUpdate, Status>>,
) {
    // Subscribed before the first read of the log: nothing falls between the two.
    let mut pushed = s.updates.subscribe();
    let mut stopping = s.stopping.subscribe();
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let (h, me) = (host.clone(), Arc::clone(&s));
        let batch = s
            .db("updates", move |st| {
                st.updates_after(&h, after, UPDATE_BATCH)?
                    .into_iter()
                    .map(|u| host_update(&me, u))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let full = batch.len() == UPDATE_BATCH;
        for u in batch {
            let seq = u.seq;
            if tx.send(Ok(u)).await.is_err() {
                return;
            }
            after = seq;
        }
        if full {
            continue;
        }
        // Live: forward pushed updates while they follow on; read the log on a gap.
        loop {
            tokio::select! {
                m = pushed.recv() => match m {
                    Ok(p) if p.host != host && !p.host.is_empty() => {}
                    Ok(p) => match &p.update {
                        Some(u) if u.seq <= after => {}
                        Some(u) if u.seq == after + 1 => {
                            if tx.send(Ok(u.clone())).await.is_err() {
                                return;
                            }
                            after = u.seq;
                        }
                        _ => break,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = stopping.changed() => break,
            }
        }
    }
}

pub(super) fn host_update(s: &Shared, u: UpdateRec) -> Result<pb::HostUpdate, StoreError> {
    use pb::host_update::Update;
    let update = match u.kind {
        UpdateKind::Decision { request_id } => s.store.request(request_id)?.and_then(|r| {
            let d = r.decision.clone()?;
            let g = match d.grant_id {
                Some(id) => s.store.grant(id).ok().flatten(),
                None => None,
            };
            Some(Update::Decision(wire::decision(request_id, &d, g.as_ref())))
        }),
        UpdateKind::Revoked { grant_id } => s
            .store
            .grant(grant_id)?
            .map(|g| Update::Revoked(wire::grant(&g))),
    };
    if update.is_none() {
        tracing::error!(seq = u.seq, "update log entry points at a missing record");
    }
    Ok(pb::HostUpdate {
        seq: u.seq,
        host_request_id: u.host_request_id,
        update,
    })
}

/// Feeds one `WatchRequests` stream: every pending request, then each change. A watcher
/// that falls behind gets the pending list again (the gap is counted and logged).
pub(super) async fn watch_stream(
    s: Arc<Shared>,
    mut live: broadcast::Receiver<pb::ApprovalRequest>,
    tx: mpsc::Sender<Result<pb::ApprovalRequest, Status>>,
) {
    let mut stopping = s.stopping.subscribe();
    let mut resync = true;
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if resync {
            resync = false;
            let me = Arc::clone(&s);
            let pending = s
                .db("watch", move |st| {
                    let mut v = st.list_requests(false, usize::MAX)?;
                    v.reverse();
                    v.iter()
                        .map(|r| me.request_pb(r))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
            match pending {
                Ok(list) => {
                    for r in list {
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
        tokio::select! {
            r = live.recv() => match r {
                Ok(req) => if tx.send(Ok(req)).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    s.counters.watch_lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(skipped = n, "request watcher too slow; sending the pending list again");
                    resync = true;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
            _ = stopping.changed() => {}
        }
    }
}
