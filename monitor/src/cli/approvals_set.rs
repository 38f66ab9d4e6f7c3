//! `approvals approve --suggested` and `approvals approve --session-set`: approving a
//! burst of one session's requests with the service's session-scoped glob suggestion.
use anyhow::{anyhow, bail};

use super::connect::explain;
use crate::approver::burst::suggest;
use crate::approver::client::ApproverChannel;
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

/// The glob `--suggested` approves request `id` with.
pub async fn suggested_glob(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
) -> anyhow::Result<String> {
    let r = get(c, id).await?;
    if r.suggested_glob.is_empty() {
        bail!(
            "request {id} has no suggested glob (its session's paths share no directory below /); approve it without --suggested"
        );
    }
    Ok(r.suggested_glob)
}

/// The pending requests of request `id`'s session (`id` first, then the others oldest
/// first) and the glob that covers all of them and the session's earlier paths.
pub async fn session_set(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
) -> anyhow::Result<(Vec<u64>, String)> {
    let r = get(c, id).await?;
    let ctx = r.context.clone().unwrap_or_default();
    if ctx.session_id == 0 {
        bail!("request {id} comes from no agent session: there is no session set to approve");
    }
    let pending = c
        .list_requests(pb::ListRequestsRequest {
            all: false,
            limit: 1000,
        })
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner()
        .requests;
    let mut set: Vec<&pb::ApprovalRequest> = pending
        .iter()
        .filter(|p| {
            p.id != id
                && p.context
                    .as_ref()
                    .is_some_and(|c| c.host == ctx.host && c.session_id == ctx.session_id)
        })
        .collect();
    set.sort_by_key(|p| p.id);
    let mut paths: Vec<&str> = vec![ctx.path.as_str()];
    paths.extend(r.suggested_from.iter().map(String::as_str));
    paths.extend(
        set.iter()
            .filter_map(|p| p.context.as_ref().map(|c| c.path.as_str())),
    );
    let Some(glob) = suggest(paths.iter().copied()) else {
        bail!(
            "the pending requests of session {} share no directory below /: approve them one by one",
            ctx.session_id
        );
    };
    let mut ids = vec![id];
    ids.extend(set.iter().map(|p| p.id));
    Ok((ids, glob))
}
