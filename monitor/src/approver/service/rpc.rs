//! The `confgate.v1.Approver` RPCs: each identifies its caller, checks its input and
//! calls the shared state.
use super::*;

#[tonic::async_trait]
impl pb::approver_server::Approver for ApproverService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = &self.shared;
        let host = s.identify_host(&request, "Submit")?;
        let new = wire::new_request(
            request.into_inner(),
            &host,
            now_ms(),
            s.limits.default_lifetime_ms,
        )
        .inspect_err(|e| s.refused("Submit", e))?;
        let (rec, created, unsynced) = s
            .db("submit", move |st| {
                let new = super::bursts::with_suggestion(st, new)?;
                st.submit(new)
            })
            .await?;
        let out = wire::request(&rec, None);
        // Acknowledged only once durable (a crash before would lose the request, and the
        // host resends only what was not acknowledged). The grace is waited here, not on a
        // blocking thread: a burst of requests must not park the blocking pool.
        let sync = async {
            tokio::time::sleep(SUBMIT_SYNC_GRACE).await;
            s.db("submit", move |st| st.sync(unsynced)).await
        };
        if created {
            bump(&s.counters.submitted);
            if rec.state == State::Pending {
                s.pending_lock().insert((rec.deadline_unix_ms, rec.id));
                s.sweep.notify_one();
            }
            tracing::info!(request = rec.id, host = %host, path = %rec.context.path, "request submitted");
            // Approvers see it now; it reaches the disk and the ledger meanwhile, and the
            // host's acknowledgement waits for both.
            let _ = s.requests.send(out.clone());
            let (synced, _) = tokio::join!(sync, s.ledger("request_submitted", json!(rec)));
            synced?;
        } else {
            sync.await?;
            bump(&s.counters.resubmitted);
            // The stored request, with its decision and grant if it has one by now.
            let me = Arc::clone(s);
            return Ok(Response::new(
                s.db("submit", move |_| me.request_pb(&rec)).await?,
            ));
        }
        Ok(Response::new(out))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let s = &self.shared;
        let host = s.identify_host(&request, "Report")?;
        let r = request.into_inner();
        let record = check_report(&r).inspect_err(|e| s.refused("Report", e))?;
        let (h, seq) = (host.clone(), r.host_seq);
        let (kind, rec) = (r.kind.clone(), record.clone());
        if !s
            .db("report", move |st| {
                st.note_report_of(&h, seq, now_ms(), &kind, &rec)
            })
            .await?
        {
            bump(&s.counters.reports_duplicate);
            return Ok(Response::new(pb::ReportResponse {}));
        }
        let body = json!({
            "host": host,
            "host_seq": r.host_seq,
            "kind": r.kind,
            "time_unix_ms": r.time_unix_ms,
            "record": record,
        });
        if !s.ledger("host_report", body).await {
            // Not in the ledger: let the host send it again.
            let h = host.clone();
            s.db("report", move |st| st.forget_report(&h, seq)).await?;
            return Err(Status::unavailable(
                "the service ledger cannot be written; send the report again later",
            ));
        }
        bump(&s.counters.reports);
        // A hold a crash let through, or a review the host replaced by a newer one or
        // withdrew (the path is back at its baseline): nobody should decide it any more.
        if matches!(
            r.kind.as_str(),
            "released_by_crash" | "review_superseded" | "review_withdrawn"
        ) {
            s.release(&host, &r.kind, &record).await;
        }
        if r.kind == "session_ended"
            && let Some(session) = record.get("session").and_then(|v| v.as_u64())
        {
            let (h, now) = (host.clone(), now_ms());
            // Logged and counted by `db` when it fails; the host's ledger has the record.
            let _ = s
                .db("session_ended", move |st| {
                    st.note_session_ended(&h, session, now)
                })
                .await;
        }
        Ok(Response::new(pb::ReportResponse {}))
    }

    type UpdatesStream = BoxStream<pb::HostUpdate>;

    async fn updates(
        &self,
        request: Request<pb::UpdatesRequest>,
    ) -> Result<Response<Self::UpdatesStream>, Status> {
        let s = Arc::clone(&self.shared);
        let host = s.identify_host(&request, "Updates")?;
        let key = request.get_ref().attestation_key.clone();
        s.deciders
            .set_host_key(&host, &key)
            .inspect_err(|e| s.refused("Updates", e))?;
        if !key.is_empty() && s.store.is_shared() {
            // The other replicas verify this host's attestations too.
            let h = host.clone();
            s.db("updates", move |st| st.set_host_key(&h, &key)).await?;
        }
        let after = request.get_ref().after_seq;
        let h = host.clone();
        let last = s.db("updates", move |st| st.last_update_seq(&h)).await?;
        if after > last {
            // The host has applied updates this service never sent (its store was
            // replaced or reset): say so instead of waiting forever.
            tracing::warn!(host = %host, after, last, "host resumes beyond the update log");
            return Err(Status::out_of_range(format!(
                "after_seq {after} is beyond this service's update log for {host} (last seq {last}); \
                 the service's state was reset"
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        tracing::debug!(host = %host, after, "updates stream opened");
        tokio::spawn(updates_stream(s, host, after, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "ListRequests")?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => LIST_DEFAULT,
            n => usize::try_from(n).unwrap_or(LIST_MAX).min(LIST_MAX),
        };
        let me = Arc::clone(&s);
        let (requests, total) = s
            .db("list", move |st| {
                let list = st
                    .list_requests(r.all, limit)?
                    .iter()
                    .map(|q| me.request_pb(q))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((list, st.request_count(r.all)?))
            })
            .await?;
        let hidden = total.saturating_sub(requests.len() as u64);
        Ok(Response::new(pb::ListRequestsResponse { requests, hidden }))
    }

    type WatchRequestsStream = BoxStream<pb::ApprovalRequest>;

    async fn watch_requests(
        &self,
        request: Request<pb::WatchRequestsRequest>,
    ) -> Result<Response<Self::WatchRequestsStream>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "WatchRequests")?;
        // Subscribe before listing, so nothing falls between the list and the live feed.
        let live = s.requests.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tracing::debug!(approver = %who.name, "watch stream opened");
        tokio::spawn(watch_stream(s, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "GetRequest")?;
        let id = request.get_ref().id;
        let me = Arc::clone(&s);
        s.db("get", move |st| {
            st.request(id)?.map(|r| me.request_pb(&r)).transpose()
        })
        .await?
        .map(Response::new)
        .ok_or_else(|| Status::not_found(format!("no request {id}")))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::ApprovalRequest>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "Decide")?;
        let r = request.into_inner();
        check_decide(&r).inspect_err(|e| s.refused("Decide", e))?;
        let id = r.id;
        // What the client says about itself: recorded, never used to authorize.
        let claims = json!({
            "decider_host": r.decider_host,
            "decider_session": r.decider_session,
        });
        // Read, checks and resolution in one call on the blocking pool (one hand-off).
        let me = Arc::clone(&s);
        let resolved = s
            .db("decide", move |st| {
                let Some(req) = st.request(id)? else {
                    return Ok(Err(Status::not_found(format!("no request {id}"))));
                };
                let now = now_ms();
                if !r.attestation.is_empty()
                    && let Some(key) = st.host_key(&req.context.host)?
                {
                    // Its host may be connected to another replica: the key it presented
                    // there (the one verified by the mTLS host channel, as here).
                    let _ = me.deciders.set_host_key(&req.context.host, &key);
                }
                let (mut how, decider, person) = match me.check_decision(&who, &r, &req, now) {
                    Ok(v) => v,
                    Err(status) => return Ok(Err(status)),
                };
                if let Err(status) = me.claim_attestation(st, &who, id, &decider, now)? {
                    return Ok(Err(status));
                }
                if let Resolution::Approve { grant, .. } = &mut how {
                    use super::tally::Tally;
                    match super::tally::approve(st, &who, person.as_deref(), &r, &req, grant, now)?
                    {
                        Tally::Alone => {}
                        Tally::Recorded(req) => return Ok(Ok(Err(Box::new((req, decider))))),
                        Tally::Refused(status) => return Ok(Err(status)),
                        Tally::Complete(req) => {
                            **grant = super::tally::combined((**grant).clone(), &req);
                        }
                    }
                }
                Ok(match st.resolve(id, how, now)? {
                    Ok(res) => Ok(Ok((res, decider))),
                    Err(Refusal::NotPending(state)) => Err(not_pending(id, state)),
                    Err(_) => Err(Status::not_found(format!("no request {id}"))),
                })
            })
            .await??;
        let (resolved, decider) = match resolved {
            Ok(v) => v,
            // One approval of several recorded: the request stays pending.
            Err(recorded) => {
                let (req, decider) = *recorded;
                s.approval_recorded(&req, claims, decider).await;
                return Ok(Response::new(wire::request(&req, None)));
            }
        };
        let mut extra = claims;
        if let Some(m) = extra.as_object_mut() {
            m.insert("decider".to_owned(), decider);
            if !resolved.request.approvals.is_empty() {
                m.insert("approvals".to_owned(), json!(resolved.request.approvals));
            }
        }
        s.resolved(&resolved, extra).await;
        Ok(Response::new(wire::request(
            &resolved.request,
            resolved.grant.as_ref(),
        )))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let s = Arc::clone(&self.shared);
        // Approvers see every grant; a host sees the grants that apply to it.
        let only_host = match s.auth.identify(&request) {
            Ok(crate::approver::identity::Principal::Host { host }) => Some(host),
            _ => {
                s.identify_approver(&request, "ListGrants")?;
                None
            }
        };
        let all = request.get_ref().all;
        let grants = s
            .db("grants", move |st| {
                let mut g = st.list_grants(all, now_ms())?;
                if let Some(h) = &only_host {
                    g.retain(|g| g.host == *h);
                }
                Ok(g)
            })
            .await?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(wire::grant).collect(),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let s = Arc::clone(&self.shared);
        let who = s.identify_approver(&request, "RevokeGrant")?;
        let r = request.into_inner();
        check_text("note", &r.note, MAX_TEXT).inspect_err(|e| s.refused("RevokeGrant", e))?;
        let (id, by) = (r.id, who.name.clone());
        let (grant, seq) = match s
            .db("revoke", move |st| st.revoke(id, &by, now_ms()))
            .await?
        {
            Ok(done) => done,
            Err(Refusal::GrantNotLive { revoked: true }) => {
                return Err(Status::failed_precondition(format!(
                    "grant {id} is already revoked"
                )));
            }
            Err(Refusal::GrantNotLive { revoked: false }) => {
                return Err(Status::failed_precondition(format!(
                    "grant {id} has already expired"
                )));
            }
            Err(_) => return Err(Status::not_found(format!("no grant {id}"))),
        };
        bump(&s.counters.revoked);
        s.push_update(&grant.host, None);
        tracing::info!(grant = id, host = %grant.host, by = %who.name, "grant revoked");
        s.ledger(
            "grant_revoked",
            json!({ "grant": grant, "note": r.note, "update_seq": seq }),
        )
        .await;
        Ok(Response::new(wire::grant(&grant)))
    }

    type AuditLogStream = BoxStream<pb::LedgerEntry>;

    async fn audit_log(
        &self,
        request: Request<pb::AuditLogRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        let s = Arc::clone(&self.shared);
        s.identify_approver(&request, "AuditLog")?;
        let since = request.get_ref().since_unix_ms;
        let me = Arc::clone(&s);
        let lines = tokio::task::spawn_blocking(move || me.audit.read(since))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                bump(&s.counters.ledger_errors);
                tracing::error!(error = %e, "cannot read the approver ledger");
                Status::internal(format!("ledger: {e}"))
            })?;
        let items = lines.into_iter().map(|json| Ok(pb::LedgerEntry { json }));
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        let s = &self.shared;
        let (name, role) = s
            .auth
            .identify(&request)
            .and_then(|p| s.auth.describe(&p))
            .inspect_err(|e| s.refused("WhoAmI", e))?;
        Ok(Response::new(pb::Identity {
            name,
            role: role.to_owned(),
        }))
    }
}

pub(super) fn check_report(r: &pb::ReportRequest) -> Result<serde_json::Value, Status> {
    if r.host_seq == 0 {
        return Err(invalid("host_seq", "must not be 0"));
    }
    if r.kind.is_empty()
        || r.kind.len() > 64
        || !r
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "kind",
            "must be 1-64 characters of a-z, 0-9 and `_`",
        ));
    }
    if r.json.len() > MAX_REPORT_JSON {
        return Err(invalid(
            "json",
            format!("larger than {MAX_REPORT_JSON} bytes"),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&r.json) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid("json", "must be a JSON object")),
        Err(e) => Err(invalid("json", format!("not JSON: {e}"))),
    }
}
