//! Decisions from the approval service: grants (with the held open's pre-image in the
//! grant's commit), denials, expiries, refusals, applied concurrently per request.
use super::*;

impl Engine {
    /// Applies the service's updates. Decisions of different requests are independent and
    /// are applied concurrently (each waits for its own commit and ledger line: applied
    /// one after the other, 2000 decisions took ~17 s of fsyncs before the last writer was
    /// released); a decision repeated while the first is being applied is dropped, and a
    /// revocation waits for every decision before it (its grant may be among them).
    pub(super) async fn update_loop(self: Arc<Self>, mut rx: mpsc::Receiver<UplinkUpdate>) {
        let mut applying = tokio::task::JoinSet::new();
        let in_flight: Arc<Mutex<std::collections::HashSet<u64>>> = Arc::default();
        while let Some(u) = rx.recv().await {
            while applying.try_join_next().is_some() {}
            match u {
                UplinkUpdate::Decision {
                    host_request_id,
                    decision,
                    ..
                } => {
                    if !lock(&in_flight).insert(host_request_id) {
                        continue;
                    }
                    let me = Arc::clone(&self);
                    let flight = Arc::clone(&in_flight);
                    applying.spawn(async move {
                        me.on_decision(host_request_id, decision).await;
                        lock(&flight).remove(&host_request_id);
                    });
                }
                UplinkUpdate::Revoked { grant, .. } => {
                    while applying.join_next().await.is_some() {}
                    let removed = self.state.grants_mut().remove(grant.id);
                    if let Some(g) = removed {
                        GateMetrics::inc(&self.state.metrics.grants_revoked);
                        self.end_grant(g, "revoked").await;
                    }
                }
                UplinkUpdate::Rejected {
                    host_request_id,
                    error,
                } => self.on_rejected(host_request_id, error).await,
            }
        }
    }

    /// The service refused a request: never silent (counted, logged, ledgered), and the
    /// open waiting on it gets its rule's failure verdict now rather than at its timeout.
    pub(super) async fn on_rejected(&self, host_request_id: u64, error: String) {
        GateMetrics::inc(&self.state.metrics.requests_rejected);
        warn!(request = host_request_id, %error, "the approval service rejected the request; its failure verdict applies");
        self.ledger(
            "request_rejected",
            json!({"host_request_id": host_request_id, "error": error}),
        )
        .await;
        lock(&self.open_requests).retain(|_, id| *id != host_request_id);
        self.forget_request(host_request_id).await;
        if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
            let _ = w.tx.send(Outcome::Rejected);
        }
    }

    /// An approval for a request this host already closed: counted, logged, ledgered
    /// (`decision_ignored`), and no grant.
    async fn decision_for_closed(&self, host_request_id: u64, d: &pb::Decision) {
        GateMetrics::inc(&self.state.metrics.decisions_for_closed);
        warn!(
            request = host_request_id,
            by = %d.decided_by,
            "an approval arrived for a request this host already closed (released by a crash, or ended): no grant"
        );
        self.ledger(
            "decision_ignored",
            json!({"host_request_id": host_request_id, "request_id": d.request_id,
                   "state": "approved", "by": d.decided_by,
                   "why": "the request is closed on this host (released by a crash, or its grant ended)"}),
        )
        .await;
        lock(&self.open_requests).retain(|_, id| *id != host_request_id);
    }

    /// The on_expiry of the rule that filed the request (`flag` if the rule is gone).
    pub(super) fn on_expiry_of(&self, rule: &str) -> OnExpiry {
        self.state
            .policy()
            .rule(rule)
            .map_or(OnExpiry::Flag, |r| r.on_expiry)
    }

    pub(super) async fn on_decision(&self, host_request_id: u64, d: pb::Decision) {
        // The rule that filed the request: from its waiting open, else from its record.
        let waiting = lock(&self.waiters)
            .get(&host_request_id)
            .map(|w| w.rule.clone());
        let filed_rule = match waiting {
            Some(rule) => Some(rule),
            None => {
                let store = self.store.clone();
                blocking(move || store.get(REQUESTS, host_request_id))
                    .await
                    .and_then(Result::ok)
                    .flatten()
                    .map(|r| r.rule)
            }
        };
        let state = pb::RequestState::try_from(d.state).unwrap_or(pb::RequestState::Unspecified);
        // Whether the request's record is already gone (removed with the grant).
        let mut request_ended = false;
        let outcome = match state {
            pb::RequestState::Approved => {
                let Some(pg) = d.grant.as_ref() else {
                    GateMetrics::inc(&self.state.metrics.update_errors);
                    warn!(
                        request = host_request_id,
                        "approval without a grant: ignored"
                    );
                    return;
                };
                let rule = filed_rule.clone().unwrap_or_else(|| "unknown".to_owned());
                let grant = match Grant::from_proto(pg, &rule, self.on_expiry_of(&rule)) {
                    Ok(g) => g,
                    Err(e) => {
                        GateMetrics::inc(&self.state.metrics.update_errors);
                        warn!(request = host_request_id, error = %e, "invalid grant: ignored");
                        return;
                    }
                };
                let known = self.state.grants().get(grant.id).is_some();
                if !known && filed_rule.is_none() {
                    // No open waits on it and this host keeps no record of it: the request
                    // was closed here before the approval arrived (a crash released its hold
                    // and the change was settled, or its grant already ended). A grant now
                    // would allow writes nobody approved in this context: none is made.
                    self.decision_for_closed(host_request_id, &d).await;
                    return;
                }
                // The open waiting on this request leaves the map now: its pre-image is kept
                // in the grant's own commit (one disk wait, not two).
                let mut waiter = lock(&self.waiters).remove(&host_request_id);
                let keep = waiter
                    .as_mut()
                    .and_then(|w| w.keep.take())
                    .filter(|k| !self.state.is_tracked(grant.id, &k.path));
                let mut kept = None;
                if !known || keep.is_some() {
                    // Grant, end of its request and the pre-image in one commit, with the
                    // ledger line written meanwhile.
                    let store = self.store.clone();
                    let g = grant.clone();
                    let end_request = !known && filed_rule.is_some();
                    let save = blocking(move || {
                        store.write(|tx| {
                            if !known {
                                tx.put(GRANTS, g.id, &g)?;
                            }
                            if end_request {
                                tx.remove(REQUESTS, host_request_id)?;
                                tx.remove_blob(REQUEST_PREIMAGES, host_request_id)?;
                            }
                            keep.map(|k| {
                                changes::record_in(tx, &k.pre, &k.path, g.id, k.session, !k.created)
                            })
                            .transpose()
                        })
                    });
                    if !known {
                        info!(grant = grant.id, request = host_request_id, by = %d.decided_by, path_glob = %grant.path_glob.as_str(), "approved: grant live");
                    }
                    let audit = async {
                        if !known {
                            self.ledger("grant", self.grant_body(&grant, host_request_id, &d))
                                .await;
                        }
                    };
                    let (saved, ()) = tokio::join!(save, audit);
                    match saved {
                        Some(Ok(change)) => {
                            request_ended = end_request;
                            kept = change;
                        }
                        other => {
                            GateMetrics::inc(&self.state.metrics.store_errors);
                            warn!(grant = grant.id, error = ?other.map(|r| r.err()), "cannot persist the grant; it holds until restart");
                        }
                    }
                    if !known {
                        self.state.grants_mut().insert(grant.clone());
                        self.state.count_grants();
                    }
                }
                if let Some(w) = waiter.take() {
                    let _ = w.tx.send(Outcome::Approved(grant.id, kept));
                }
                Outcome::Approved(grant.id, None)
            }
            pb::RequestState::Denied => {
                info!(request = host_request_id, by = %d.decided_by, "denied by approver");
                // A denied writer does not wait for the ledger: nothing it could do
                // depends on that line being on disk (the service keeps the decision).
                if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
                    let _ = w.tx.send(Outcome::Denied);
                }
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "denied", "by": d.decided_by, "note": d.note}),
                )
                .await;
                Outcome::Denied
            }
            pb::RequestState::Expired => {
                if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
                    let _ = w.tx.send(Outcome::Expired(d.verdict == "allow"));
                }
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "expired", "verdict": d.verdict}),
                )
                .await;
                Outcome::Expired(d.verdict == "allow")
            }
            pb::RequestState::Released => {
                // This host closed it itself at start (a crash released the hold): the
                // service confirms. Nothing waits on it.
                debug!(
                    request = host_request_id,
                    "the service closed a request a crash released"
                );
                return;
            }
            _ => {
                GateMetrics::inc(&self.state.metrics.update_errors);
                warn!(
                    request = host_request_id,
                    state = d.state,
                    "decision in an unexpected state: ignored"
                );
                return;
            }
        };
        lock(&self.open_requests).retain(|_, id| *id != host_request_id);
        if filed_rule.is_some() && !request_ended {
            self.forget_request(host_request_id).await;
        }
        if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
            let _ = w.tx.send(outcome);
        }
    }

    // ---- grant expiry ------------------------------------------------------------------

    /// The ledger record of a new grant.
    pub(super) fn grant_body(
        &self,
        grant: &Grant,
        host_request_id: u64,
        d: &pb::Decision,
    ) -> Value {
        json!({"grant": grant.id, "host_request_id": host_request_id,
               "request_id": d.request_id, "by": d.decided_by, "note": d.note,
               "scope": grant.scope,
               "operations": grant.ops.to_strings(),
               "expires_unix_ms": unix_ms(grant.expires_at),
               "path_glob": grant.path_glob.as_str(), "rule": grant.rule,
               "on_expiry": grant.on_expiry.as_str()})
    }
}
