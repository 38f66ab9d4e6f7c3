//! Decisions and what follows them: checks, the grant an approval makes, the committed
//! resolution's effects (pending set, streams, ledger), expiry by the sweeper, and
//! requests a host reports released by a crash.
use super::*;

impl Shared {
    /// Whether `who` may decide `req` as `r` asks at `now`, how it resolves, how the
    /// decider was established (for the ledger) and the person behind `who`: refusals
    /// are counted and logged here.
    pub(super) fn check_decision(
        &self,
        who: &ApproverId,
        r: &pb::DecideRequest,
        req: &RequestRec,
        now: i64,
    ) -> Result<(Resolution, serde_json::Value, Option<String>), Status> {
        let id = req.id;
        let decider = match self.deciders.check(who, r, req, now) {
            Ok(v) => v,
            Err(refused) => {
                let (counter, what) = match &refused {
                    Refused::InSession(_) => (
                        &self.counters.refused_self_approval,
                        "decision from inside an agent session refused",
                    ),
                    Refused::Unattested(_) => (
                        &self.counters.refused_unattested,
                        "decision without a valid host attestation refused",
                    ),
                };
                bump(counter);
                let status = refused.status().clone();
                tracing::warn!(request = id, approver = %who.name, reason = status.message(), "{what}");
                return Err(status);
            }
        };
        if req.state != State::Pending {
            return Err(not_pending(id, req.state));
        }
        let people = self.people.get().cloned().unwrap_or_default();
        let person = people.person(who);
        let groups = people.groups(who);
        if let Some(why) = super::super::quorum::refusal(
            who,
            person.as_deref(),
            &groups,
            &req.context,
            &super::super::quorum::of(req),
        ) {
            tracing::warn!(request = id, approver = %who.name, reason = %why, "decision by an approver the rule does not permit refused");
            return Err(Status::permission_denied(why));
        }
        if req.deadline_unix_ms <= now {
            self.sweep.notify_one();
            return Err(Status::failed_precondition(format!(
                "request {id} is past its deadline; its failure verdict ({}) applies",
                req.context.fail_verdict
            )));
        }
        let how = if r.approve {
            Resolution::Approve {
                grant: Box::new(
                    grant_for(r, req, who, now, self.limits.max_ttl_ms)
                        .inspect_err(|e| self.refused("Decide", e))?,
                ),
                note: r.note.clone(),
            }
        } else {
            Resolution::Deny {
                by: who.name.clone(),
                note: r.note.clone(),
            }
        };
        Ok((how, decider, person))
    }

    /// An attested decision's nonce, recorded where every replica sees it (`decider` as
    /// [`Shared::check_decision`] returned it): this replica's cache knows only the
    /// attestations used here, and one replayed on another replica would pass there. A
    /// nonce some replica used before refuses the decision (counted as unattested).
    pub(super) fn claim_attestation(
        &self,
        st: &ApprovalStore,
        who: &ApproverId,
        id: u64,
        decider: &serde_json::Value,
        now: i64,
    ) -> Result<Result<(), Status>, StoreError> {
        if decider["by"] != "host_attestation" || !st.is_shared() {
            return Ok(Ok(()));
        }
        let (Some(host), Some(nonce), Some(expires)) = (
            decider["host"].as_str(),
            decider["nonce"].as_str(),
            decider["expires_unix_ms"].as_i64(),
        ) else {
            return Ok(Ok(()));
        };
        if st.claim_nonce(host, nonce, expires, now)? {
            return Ok(Ok(()));
        }
        bump(&self.counters.refused_unattested);
        tracing::warn!(request = id, approver = %who.name, host, "decision with an attestation another replica already took refused (a replay)");
        Ok(Err(Status::permission_denied(
            "the attestation was used before (on another replica)",
        )))
    }

    /// A host reported that its daemon's crash let a held operation through, or that it
    /// superseded or withdrew a review: the request, if still pending, is closed as
    /// released (never expired or decided later as if the operation had waited).
    /// Failures are logged; the host's own ledger has the record.
    pub(super) async fn release(
        self: &Arc<Self>,
        host: &str,
        kind: &str,
        record: &serde_json::Value,
    ) {
        let Some(host_request_id) = record.get("host_request_id").and_then(|v| v.as_u64()) else {
            return;
        };
        let h = host.to_owned();
        let found = self
            .db("release", move |s| s.by_host_request(&h, host_request_id))
            .await;
        let Ok(Some(id)) = found else {
            return;
        };
        let by = format!("host:{host}");
        let note = match kind {
            "review_superseded" => "a newer change of the same path replaced this review",
            "review_withdrawn" => "the path is back at its baseline: nothing left to review",
            _ => {
                "the host's daemon stopped while the operation was held: the kernel let it \
                 through without a decision"
            }
        }
        .to_owned();
        let now = now_ms();
        if let Ok(Ok(r)) = self
            .db("release", move |s| {
                s.resolve(id, Resolution::Release { by, note }, now)
            })
            .await
        {
            self.resolved(&r, json!({})).await;
        }
    }

    /// After a committed resolution: pending set, ledger, wake streams, counters.
    pub(super) async fn resolved(self: &Arc<Self>, r: &Resolved, extra: serde_json::Value) {
        let req = &r.request;
        self.pending_lock().remove(&(req.deadline_unix_ms, req.id));
        let (kind, counter) = match req.state {
            State::Approved => ("request_approved", &self.counters.approved),
            State::Denied => ("request_denied", &self.counters.denied),
            State::Released => ("request_released", &self.counters.released),
            _ => ("request_expired", &self.counters.expired),
        };
        bump(counter);
        let mut body = json!({
            "request_id": req.id,
            "host": req.context.host,
            "host_request_id": req.host_request_id,
            "session_id": req.context.session_id,
            "agent": req.context.agent,
            "path": req.context.path,
            "decision": req.decision,
            "update_seq": r.update_seq,
        });
        if let (Some(map), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
            map.extend(more);
        }
        // Streams first (the resolution is committed), then the ledger lines: the host's
        // decision does not wait for them; the RPC that resolved does.
        let update = req.decision.as_ref().map(|d| pb::HostUpdate {
            seq: r.update_seq,
            host_request_id: req.host_request_id,
            update: Some(pb::host_update::Update::Decision(wire::decision(
                req.id,
                d,
                r.grant.as_ref(),
            ))),
        });
        self.push_update(&req.context.host, update);
        let _ = self.requests.send(wire::request(req, r.grant.as_ref()));
        self.ledger(kind, body).await;
        if let Some(g) = &r.grant {
            self.ledger("grant_created", json!(g)).await;
        }
        tracing::info!(
            request = req.id,
            host = %req.context.host,
            state = req.state.as_str(),
            by = req.decision.as_ref().map_or("", |d| d.decided_by.as_str()),
            "request resolved"
        );
    }

    /// Resolves every pending request whose deadline has passed, until stopped.
    pub async fn sweeper(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            let now = now_ms();
            let next = self.pending_lock().first().copied();
            let wait = match next {
                Some((deadline, id)) if deadline <= now => {
                    match self
                        .db("expire", move |s| s.resolve(id, Resolution::Expire, now))
                        .await
                    {
                        Ok(Ok(r)) => self.resolved(&r, json!({})).await,
                        Ok(Err(_)) => {
                            // Decided meanwhile (or gone): nothing to expire.
                            self.pending_lock().remove(&(deadline, id));
                        }
                        // Logged and counted; retry after a pause.
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                    continue;
                }
                Some((deadline, _)) => {
                    // Capped so that a clock step cannot delay expiry by much.
                    Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0).min(1000))
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.sweep.notified() => {}
                _ = stopping.changed() => {}
            }
        }
    }
}

pub(super) fn not_pending(id: u64, state: State) -> Status {
    Status::failed_precondition(format!("request {id} is already {}", state.as_str()))
}

pub(super) fn check_decide(r: &pb::DecideRequest) -> Result<(), Status> {
    check_text("note", &r.note, MAX_TEXT)?;
    check_text("decider_host", &r.decider_host, MAX_NAME)?;
    check_text("path_glob", &r.path_glob, MAX_PATH)?;
    decider::check_fields(r)?;
    if pb::GrantScope::try_from(r.scope).is_err() {
        return Err(invalid("scope", format!("{} is not a GrantScope", r.scope)));
    }
    if !r.approve
        && (r.ttl_seconds != 0
            || !r.path_glob.is_empty()
            || r.scope != 0
            || !r.operations.is_empty())
    {
        return Err(invalid(
            "approve",
            "ttl_seconds, scope, path_glob and operations apply to approvals only",
        ));
    }
    if r.operations.len() > wire::OPERATIONS.len() {
        return Err(invalid("operations", "too many entries"));
    }
    for op in &r.operations {
        if !wire::OPERATIONS.contains(&op.as_str()) {
            return Err(invalid(
                "operations",
                format!(
                    "{:?} is not one of {:?}",
                    op.chars().take(64).collect::<String>(),
                    wire::OPERATIONS
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn grant_for(
    r: &pb::DecideRequest,
    req: &RequestRec,
    who: &ApproverId,
    now: i64,
    max_ttl_ms: i64,
) -> Result<GrantRec, Status> {
    let max_secs = u64::try_from(max_ttl_ms / 1000).unwrap_or(0);
    let ttl = match r.ttl_seconds {
        0 => DEFAULT_TTL_SECS.min(max_secs),
        t if t > max_secs => {
            return Err(invalid(
                "ttl_seconds",
                format!("{t} is more than the service's max_ttl ({max_secs} s)"),
            ));
        }
        t => t,
    };
    let scope = match pb::GrantScope::try_from(r.scope) {
        Ok(pb::GrantScope::Agent) => {
            if req.context.agent.is_empty() {
                return Err(invalid(
                    "scope",
                    "the request names no agent, so an agent-wide grant is not possible",
                ));
            }
            Scope::Agent
        }
        _ => Scope::Session,
    };
    let path_glob = if r.path_glob.is_empty() {
        exact_glob(&req.context.path)
    } else {
        if !r.path_glob.starts_with('/') {
            return Err(invalid(
                "path_glob",
                "must match absolute paths (start with `/`)",
            ));
        }
        crate::config::build_glob(&r.path_glob, true)
            .map_err(|e| invalid("path_glob", format!("invalid glob: {e}")))?;
        r.path_glob.clone()
    };
    let ttl_ms = i64::try_from(ttl).unwrap_or(0).saturating_mul(1000);
    Ok(GrantRec {
        id: 0,
        request_id: req.id,
        host: req.context.host.clone(),
        scope,
        session_id: req.context.session_id,
        agent: req.context.agent.clone(),
        path_glob,
        operations: if r.operations.is_empty() {
            req.context.operations.clone()
        } else {
            let mut ops = r.operations.clone();
            ops.sort();
            ops.dedup();
            ops
        },
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(ttl_ms),
        granted_by: who.name.clone(),
        note: r.note.clone(),
        revoked_unix_ms: None,
        revoked_by: None,
        session_ended_unix_ms: None,
    })
}
