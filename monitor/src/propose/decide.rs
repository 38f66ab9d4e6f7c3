//! The approval service's answers to proposals: approved (applied, or a conflict),
//! denied, expired, refused; and proposals nobody answered by their deadline.
use super::*;
use crate::uplink::UplinkUpdate;

/// How long after its deadline a proposal the service never answered (it was
/// unreachable) is closed as expired on this host.
const EXPIRY_GRACE_MS: i64 = 5000;

/// Takes the uplink's updates: those about proposals are handled by `proposals`, every
/// other one is passed on (in order) to the returned receiver, the gate engine's input.
pub fn route_updates(
    mut updates: tokio::sync::mpsc::Receiver<UplinkUpdate>,
    proposals: Arc<Proposals>,
) -> tokio::sync::mpsc::Receiver<UplinkUpdate> {
    let (tx, rx) = tokio::sync::mpsc::channel(updates.max_capacity().max(1));
    tokio::spawn(async move {
        while let Some(u) = updates.recv().await {
            let id = match &u {
                UplinkUpdate::Decision {
                    host_request_id, ..
                }
                | UplinkUpdate::Rejected {
                    host_request_id, ..
                } => Some(*host_request_id),
                UplinkUpdate::Revoked { .. } => None,
            };
            match id {
                Some(id) if proposals.owns(id) => {
                    let p = Arc::clone(&proposals);
                    tokio::spawn(async move { p.on_update(id, u).await });
                }
                _ => {
                    if tx.send(u).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The outcome of an approval.
enum Outcome {
    Applied(apply::Applied),
    Conflict(String),
    Failed(String),
}

impl Proposals {
    async fn on_update(self: Arc<Self>, id: u64, u: UplinkUpdate) {
        // One answer at a time per proposal (a decision delivered twice is applied once).
        if !lock(&self.deciding).insert(id) {
            return;
        }
        self.answer(id, u).await;
        lock(&self.deciding).remove(&id);
    }

    async fn answer(self: &Arc<Self>, id: u64, u: UplinkUpdate) {
        let d = match u {
            UplinkUpdate::Decision { decision, .. } => decision,
            UplinkUpdate::Rejected { error, .. } => {
                bump(&self.counters.rejected);
                warn!(proposal = id, %error, "the approval service refused a proposal");
                self.close(id, State::Rejected, "", "", &error).await;
                return;
            }
            UplinkUpdate::Revoked { .. } => return,
        };
        let state = pb::RequestState::try_from(d.state).unwrap_or(pb::RequestState::Unspecified);
        let pending = lock(&self.known)
            .get(&id)
            .is_some_and(|r| r.state == State::Pending);
        if !pending {
            if state == pb::RequestState::Approved {
                bump(&self.counters.decisions_ignored);
                warn!(proposal = id, by = %d.decided_by, "an approval arrived for a proposal already closed here: nothing written");
                self.audit(
                    "decision_ignored",
                    json!({"proposal": id, "request_id": d.request_id, "by": d.decided_by,
                           "why": "the proposal is already closed on this host"}),
                )
                .await;
            }
            return;
        }
        match state {
            pb::RequestState::Approved => self.approved(id, &d).await,
            pb::RequestState::Denied => {
                bump(&self.counters.denied);
                info!(proposal = id, by = %d.decided_by, "proposal denied");
                self.close(id, State::Denied, &d.decided_by, &d.note, "")
                    .await;
            }
            pb::RequestState::Expired => {
                bump(&self.counters.expired);
                info!(proposal = id, "proposal expired undecided");
                self.close(id, State::Expired, "timeout", "", "").await;
            }
            _ => {}
        }
    }

    /// Closes proposal `id` as `state`, ledgered (`proposal_<state>`).
    async fn close(self: &Arc<Self>, id: u64, state: State, by: &str, note: &str, detail: &str) {
        let rec = {
            let mut known = lock(&self.known);
            let Some(r) = known.get_mut(&id) else { return };
            r.state = state;
            r.decided_by = by.to_owned();
            r.note = note.to_owned();
            r.detail = detail.to_owned();
            r.decided_unix_ms = now_ms();
            r.clone()
        };
        if let Err(e) = self.persist(id, true).await {
            warn!(proposal = id, error = %e, "cannot store the outcome of a proposal");
        }
        self.touched();
        let kind = match state {
            State::Applied => "proposal_applied",
            State::Denied => "proposal_denied",
            State::Conflict => "proposal_conflict",
            State::Expired => "proposal_expired",
            State::Rejected => "proposal_rejected",
            State::Failed => "proposal_failed",
            State::Pending => return,
        };
        self.audit(kind, Self::body(id, &rec)).await;
    }

    fn body(id: u64, r: &ProposalRecord) -> serde_json::Value {
        json!({"proposal": id, "request_id": r.request_id, "path": encode(&r.path),
               "proposed_by": {"session": r.session, "agent": r.agent, "uid": r.uid, "pid": r.pid},
               "reason": r.reason, "decided_by": r.decided_by, "note": r.note,
               "base_sha256": r.base, "content_sha256": r.content_sha256,
               "detail": r.detail})
    }

    async fn approved(self: &Arc<Self>, id: u64, d: &pb::Decision) {
        let Some(rec) = lock(&self.known).get(&id).cloned() else {
            return;
        };
        let me = Arc::clone(self);
        let path = rec.path.clone();
        let base = rec.base.clone();
        let outcome = blocking(move || {
            let content = match me.store.get_blob(PROPOSAL_CONTENT, id) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Outcome::Failed("the proposed content is not in the store".into());
                }
                Err(e) => return Outcome::Failed(format!("cannot read the proposed content: {e}")),
            };
            if hex(&Sha256::digest(&content).into()) != rec.content_sha256 {
                return Outcome::Failed(
                    "the stored content does not match its hash: not written".into(),
                );
            }
            match apply::apply(&path, &content, base.as_deref(), id) {
                Ok(a) => Outcome::Applied(a),
                Err(apply::ApplyError::Conflict(why)) => Outcome::Conflict(why),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|e| Outcome::Failed(e.to_string()));
        match outcome {
            Outcome::Applied(a) => {
                bump(&self.counters.applied);
                info!(proposal = id, path = %encode(&rec.path), by = %d.decided_by, "approved proposal applied");
                let b = Arc::clone(&self.baseline);
                let p = rec.path.clone();
                let extra = json!({"proposal": id, "request_id": d.request_id,
                                   "proposed_by": {"session": rec.session, "agent": rec.agent, "uid": rec.uid, "pid": rec.pid},
                                   "approved_by": d.decided_by, "note": d.note});
                let source = format!("proposal {id}");
                let moved = blocking(move || b.accept(&[p], &source, extra)).await;
                if !matches!(moved, Ok(Ok(_))) {
                    warn!(
                        proposal = id,
                        "the proposal was applied but the baseline could not be moved: drift will show it"
                    );
                }
                let detail = if a.already {
                    "the file already held the proposed content (applied before a restart)"
                        .to_owned()
                } else {
                    format!(
                        "{} mode {:o} owner {}:{}",
                        if a.created { "created" } else { "replaced" },
                        a.mode,
                        a.uid,
                        a.gid
                    )
                };
                self.close(id, State::Applied, &d.decided_by, &d.note, &detail)
                    .await;
            }
            Outcome::Conflict(why) => {
                bump(&self.counters.conflicts);
                warn!(proposal = id, path = %encode(&rec.path), %why, "approved proposal not applied: the file changed since");
                self.close(id, State::Conflict, &d.decided_by, &d.note, &why)
                    .await;
            }
            Outcome::Failed(why) => {
                bump(&self.counters.failed);
                warn!(proposal = id, path = %encode(&rec.path), %why, "approved proposal could not be applied");
                self.close(id, State::Failed, &d.decided_by, &d.note, &why)
                    .await;
            }
        }
    }

    /// Closes proposals whose deadline passed without any answer from the service (it
    /// was unreachable): expired, nothing written.
    pub(super) async fn expiry_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = now_ms();
            let late: Vec<u64> = lock(&self.known)
                .iter()
                .filter(|(_, r)| {
                    r.state == State::Pending
                        && r.deadline_unix_ms.saturating_add(EXPIRY_GRACE_MS) < now
                })
                .map(|(id, _)| *id)
                .collect();
            for id in late {
                bump(&self.counters.expired);
                warn!(
                    proposal = id,
                    "proposal past its deadline without an answer from the approval service: expired"
                );
                self.close(
                    id,
                    State::Expired,
                    "timeout",
                    "",
                    "no answer from the approval service by the deadline",
                )
                .await;
            }
        }
    }
}
