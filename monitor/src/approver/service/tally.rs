//! Counting approvals of a request whose rule needs several (`approvals = N`): each
//! distinct approver's approval is recorded; the Nth resolves the request.
use super::*;
use crate::approver::quorum;
use crate::approver::store::ApprovalRec;

/// An approval by `who` (already checked: permitted, not from the session, pending) of a
/// request that needs several. `None`: this approval completes the quorum (or the rule
/// needs one): resolve it. `Some(Ok(req))`: recorded, still pending. `Some(Err(..))`:
/// refused (this approver approved already, or the request is no longer pending).
pub(super) fn approve(
    st: &ApprovalStore,
    who: &ApproverId,
    r: &pb::DecideRequest,
    req: &RequestRec,
    now: i64,
) -> Result<Option<Result<RequestRec, Status>>, StoreError> {
    let need = quorum::of(req).approvals.max(1);
    if need <= 1 {
        return Ok(None);
    }
    let id = req.id;
    let approval = ApprovalRec {
        by: who.name.clone(),
        unix_ms: now,
        note: r.note.clone(),
    };
    Ok(match st.add_approval(id, approval)? {
        Err(Refusal::NotPending(state)) => Some(Err(not_pending(id, state))),
        Err(_) => Some(Err(Status::not_found(format!("no request {id}")))),
        Ok((req, false)) => Some(Err(Status::already_exists(format!(
            "{} already approved request {id}: an approver counts once; {}",
            who.name,
            quorum::progress(&req)
        )))),
        Ok((req, true)) if (req.approvals.len() as u64) < u64::from(need) => Some(Ok(req)),
        Ok(_) => None,
    })
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
