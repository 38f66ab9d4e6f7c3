//! `approvals approve --suggested` and `approvals approve --session-set`: approving a
//! burst of one session's requests with the service's session-scoped glob suggestion,
//! only as reviewed (`--expect-glob`, `--ids`); the set itself is
//! [`crate::approver::session_set`], as the web page computes it.
use anyhow::{anyhow, bail};

use super::connect::explain;
use crate::approver::client::ApproverChannel;
use crate::approver::session_set::{self as sets};
pub use crate::approver::session_set::{Reviewed, Set};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

/// Request `id` as the service has it.
async fn get(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
) -> anyhow::Result<pb::ApprovalRequest> {
    Ok(c.get_request(pb::GetRequestRequest { id })
        .await
        .map_err(|s| anyhow!("request {id}: {}", explain(&s)))?
        .into_inner())
}

/// `--suggested`: request `id` with its suggested glob.
pub async fn suggested(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
    reviewed: &Reviewed<'_>,
) -> anyhow::Result<Set> {
    if !reviewed.ids.is_empty() {
        bail!("--ids goes with --session-set");
    }
    let r = get(c, id).await?;
    Ok(sets::suggested(&r, reviewed)?)
}

/// `--session-set`: the pending requests of request `id`'s session (`id` first, then the
/// others oldest first) and the glob that covers all of them and the session's earlier
/// paths, as reviewed: `--expect-glob` must be the glob, or `--ids` lists the requests
/// (each in the set; only those are approved).
pub async fn session_set(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
    reviewed: &Reviewed<'_>,
) -> anyhow::Result<Set> {
    if reviewed.glob.is_none() && reviewed.ids.is_empty() {
        bail!(
            "--session-set approves what you reviewed: add --expect-glob GLOB (the set's suggested glob that approvals list/show printed) or --ids ID,... (the requests you reviewed)"
        );
    }
    let r = get(c, id).await?;
    let pending = c
        .list_requests(pb::ListRequestsRequest {
            all: false,
            limit: 1000,
        })
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner()
        .requests;
    Ok(sets::session_set(&r, &pending, Some(reviewed))?)
}
