//! Counting approvals of a request whose rule needs several (`approvals = N`): each
//! person's approval is recorded with its terms; the Nth resolves the request with what
//! all of them approved.
use super::*;
use crate::approver::quorum;
use crate::approver::store::{ApprovalRec, ApprovalTerms};

/// Where an approval leaves a request that needs several.
pub(super) enum Tally {
    /// The rule needs one approval: resolve with this approver's grant.
    Alone,
    /// Recorded; the request waits for more.
    Recorded(RequestRec),
    /// Refused (this person approved already, or the request is no longer pending).
    Refused(Status),
    /// This approval completes the quorum: resolve with the intersection of the recorded
    /// approvals' terms ([`combined`]).
    Complete(RequestRec),
}

/// An approval by `who` (person `person`; already checked: permitted, not from the
/// session, pending) asking for `grant`.
pub(super) fn approve(
    st: &ApprovalStore,
    who: &ApproverId,
    person: Option<&str>,
    r: &pb::DecideRequest,
    req: &RequestRec,
    grant: &GrantRec,
    now: i64,
) -> Result<Tally, StoreError> {
    let need = quorum::of(req).approvals.max(1);
    if need <= 1 {
        return Ok(Tally::Alone);
    }
    let id = req.id;
    let approval = ApprovalRec {
        by: who.name.clone(),
        unix_ms: now,
        note: r.note.clone(),
        person: person.unwrap_or_default().to_owned(),
        terms: Some(ApprovalTerms {
            ttl_ms: grant.expires_unix_ms.saturating_sub(grant.created_unix_ms),
            scope: grant.scope,
            path_glob: grant.path_glob.clone(),
            operations: grant.operations.clone(),
        }),
    };
    let counted = approval.counted_as().to_owned();
    Ok(match st.add_approval(id, approval)? {
        Err(Refusal::NotPending(state)) => Tally::Refused(not_pending(id, state)),
        Err(_) => Tally::Refused(Status::not_found(format!("no request {id}"))),
        Ok((req, false)) => {
            let before = req
                .approvals
                .iter()
                .find(|a| a.counted_as() == counted || a.by == who.name)
                .map_or_else(|| who.name.clone(), |a| a.by.clone());
            Tally::Refused(Status::already_exists(format!(
                "{counted} already approved request {id} (as {before}): a person counts once, \
                 whichever channel they approve through; {}",
                quorum::progress(&req)
            )))
        }
        Ok((req, true)) if (req.approvals.len() as u64) < u64::from(need) => Tally::Recorded(req),
        Ok((req, true)) => Tally::Complete(req),
    })
}

/// The grant of a request whose quorum `req.approvals` completed, from the last
/// approver's `grant`: what every approver approved. The shortest lifetime; agent scope
/// only if all chose it; a glob only if all chose the same one, else the request's own
/// path; the operations all chose (the request's own when they share none). Approvals
/// recorded without terms count as the narrowest choice.
pub(super) fn combined(mut grant: GrantRec, req: &RequestRec) -> GrantRec {
    let own_glob = exact_glob(&req.context.path);
    let mut ttl = grant.expires_unix_ms.saturating_sub(grant.created_unix_ms);
    let mut all_agent = grant.scope == Scope::Agent;
    let mut glob = Some(grant.path_glob.clone());
    let mut ops: Vec<String> = grant.operations.clone();
    for a in &req.approvals {
        let Some(t) = &a.terms else {
            all_agent = false;
            glob = None;
            ops.retain(|o| req.context.operations.contains(o));
            continue;
        };
        ttl = ttl.min(t.ttl_ms);
        all_agent &= t.scope == Scope::Agent;
        if glob.as_deref() != Some(t.path_glob.as_str()) {
            glob = None;
        }
        ops.retain(|o| t.operations.contains(o));
    }
    grant.expires_unix_ms = grant.created_unix_ms.saturating_add(ttl.max(0));
    if !all_agent {
        grant.scope = Scope::Session;
    }
    grant.path_glob = glob.unwrap_or(own_glob);
    if ops.is_empty() {
        ops = req.context.operations.clone();
    }
    grant.operations = ops;
    grant
}

impl Shared {
    /// After an approval that did not complete its request's quorum: ledger, watchers.
    pub(super) async fn approval_recorded(
        self: &Arc<Self>,
        req: &RequestRec,
        claims: serde_json::Value,
        decider: serde_json::Value,
    ) {
        let by = req
            .approvals
            .last()
            .map(|a| a.by.clone())
            .unwrap_or_default();
        let progress = quorum::progress(req);
        tracing::info!(request = req.id, approver = %by, %progress, "approval recorded; the request waits for more");
        let _ = self.requests.send(wire::request(req, None));
        let mut body = json!({
            "request_id": req.id,
            "host": req.context.host,
            "host_request_id": req.host_request_id,
            "by": by,
            "progress": progress,
            "approvals": req.approvals,
            "decider": decider,
        });
        if let (Some(map), serde_json::Value::Object(more)) = (body.as_object_mut(), claims) {
            map.extend(more);
        }
        self.ledger("approval_recorded", body).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approver::store::{ContextRec, State};

    fn grant(ttl_ms: i64, scope: Scope, glob: &str, ops: &[&str]) -> GrantRec {
        GrantRec {
            id: 0,
            request_id: 1,
            host: "h".into(),
            scope,
            session_id: 7,
            agent: "codex".into(),
            path_glob: glob.into(),
            operations: ops.iter().map(|o| (*o).to_owned()).collect(),
            created_unix_ms: 1_000,
            expires_unix_ms: 1_000 + ttl_ms,
            granted_by: "token:bob".into(),
            note: String::new(),
            revoked_unix_ms: None,
            revoked_by: None,
            session_ended_unix_ms: None,
        }
    }

    fn approval(g: &GrantRec) -> ApprovalRec {
        ApprovalRec {
            by: g.granted_by.clone(),
            unix_ms: 0,
            note: String::new(),
            person: String::new(),
            terms: Some(ApprovalTerms {
                ttl_ms: g.expires_unix_ms - g.created_unix_ms,
                scope: g.scope,
                path_glob: g.path_glob.clone(),
                operations: g.operations.clone(),
            }),
        }
    }

    fn request(approvals: Vec<ApprovalRec>) -> RequestRec {
        RequestRec {
            id: 1,
            host_request_id: 1,
            context: ContextRec {
                path: "/etc/nginx/nginx.conf".into(),
                operations: vec!["write".into()],
                ..ContextRec::default()
            },
            created_unix_ms: 0,
            deadline_unix_ms: 0,
            state: State::Pending,
            decision: None,
            approvals,
            notify: Vec::new(),
            suggested_glob: String::new(),
            suggested_from: Vec::new(),
        }
    }

    #[test]
    fn the_quorums_grant_is_what_every_approver_approved() {
        // alice: 5 minutes, session, exact path, write; bob (last): 1 hour, agent,
        // /etc/**, write+create.
        let alice = grant(300_000, Scope::Session, "/etc/nginx/nginx.conf", &["write"]);
        let bob = grant(3_600_000, Scope::Agent, "/etc/**", &["create", "write"]);
        let req = request(vec![approval(&alice), approval(&bob)]);
        let g = combined(bob.clone(), &req);
        assert_eq!(g.expires_unix_ms - g.created_unix_ms, 300_000);
        assert_eq!(g.scope, Scope::Session);
        assert_eq!(g.path_glob, exact_glob("/etc/nginx/nginx.conf"));
        assert_eq!(g.operations, vec!["write".to_owned()]);
        // All agreeing: their terms stand.
        let carol = grant(600_000, Scope::Agent, "/etc/nginx/**", &["create", "write"]);
        let dave = grant(900_000, Scope::Agent, "/etc/nginx/**", &["create", "write"]);
        let req = request(vec![approval(&carol), approval(&dave)]);
        let g = combined(dave.clone(), &req);
        assert_eq!(g.expires_unix_ms - g.created_unix_ms, 600_000);
        assert_eq!(g.scope, Scope::Agent);
        assert_eq!(g.path_glob, "/etc/nginx/**");
        assert_eq!(g.operations, vec!["create".to_owned(), "write".to_owned()]);
        // Different globs: the request's own path, not the last approver's glob.
        let erin = grant(600_000, Scope::Agent, "/etc/**", &["write"]);
        let req = request(vec![approval(&carol), approval(&erin)]);
        assert_eq!(
            combined(erin.clone(), &req).path_glob,
            exact_glob("/etc/nginx/nginx.conf")
        );
        // No operation in common: the request's own.
        let only_create = grant(600_000, Scope::Session, "/etc/nginx/**", &["create"]);
        let only_write = grant(600_000, Scope::Session, "/etc/nginx/**", &["truncate"]);
        let req = request(vec![approval(&only_create), approval(&only_write)]);
        assert_eq!(
            combined(only_write.clone(), &req).operations,
            vec!["write".to_owned()]
        );
    }

    /// Root on the Unix socket (`unix:root`) and the same person signed in on the web
    /// (`oidc:r00t`, mapped to `root`) count once; an unmapped web identity is nobody.
    #[tokio::test]
    async fn one_person_through_two_channels_counts_once() {
        use crate::approver::config::PersonEntry;
        use crate::approver::testing;
        use crate::approver::web::Web;
        use confgate_proto::v1::approver_server::Approver as _;

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = testing::service_config(dir.path());
        cfg.persons = vec![
            PersonEntry {
                name: "root".into(),
                identities: vec!["oidc:r00t".into()],
                groups: Vec::new(),
            },
            PersonEntry {
                name: "bob".into(),
                identities: vec!["oidc:b0b".into()],
                groups: Vec::new(),
            },
        ];
        let (server, mut c) = testing::start(cfg).await;
        let mut sub = testing::request(1, 7).build();
        testing::context(&mut sub).quorum = Some(pb::Quorum {
            approvals: 2,
            ..Default::default()
        });
        let r = c.submit(sub).await.unwrap().into_inner();
        let first = c.decide(testing::approve(r.id)).await.unwrap().into_inner();
        assert_eq!(first.state, pb::RequestState::Pending as i32);
        let svc = ApproverService::new(Arc::clone(&server.shared));
        let again = svc
            .decide(Web::as_approver("oidc:r00t", testing::approve(r.id)))
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        assert!(
            again.message().contains("root already approved")
                && again.message().contains("a person counts once"),
            "{}",
            again.message()
        );
        let nobody = svc
            .decide(Web::as_approver("oidc:root", testing::approve(r.id)))
            .await
            .unwrap_err();
        assert!(nobody.message().contains("no known person"), "{nobody:?}");
        let done = svc
            .decide(Web::as_approver("oidc:b0b", testing::approve(r.id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.state, pb::RequestState::Approved as i32);
    }
}
