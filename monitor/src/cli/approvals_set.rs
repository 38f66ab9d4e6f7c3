//! `approvals approve --suggested` and `approvals approve --session-set`: approving a
//! burst of one session's requests with the service's session-scoped glob suggestion,
//! only as reviewed (`--expect-glob`, `--ids`), never with a glob anchored above two
//! directory levels or over confgate's own files, and only for the operations asked for.
use anyhow::{anyhow, bail};

use super::connect::explain;
use crate::approver::burst::suggest_for;
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

/// What the approver reviewed: the glob shown, or the ids of the set.
pub struct Reviewed<'a> {
    pub glob: Option<&'a str>,
    pub ids: &'a [u64],
}

/// What a `--suggested` or `--session-set` approval grants: each of `ids` with `glob`
/// (session scope) and `operations`.
#[derive(Debug)]
pub struct Set {
    pub ids: Vec<u64>,
    pub glob: String,
    pub operations: Vec<String>,
}

/// What an installer does to a temporary file it puts into place (`*.dpkg-new`): creates,
/// writes, truncates, sets its mode and owner, renames it onto its final name (a rename
/// removes the source name).
const TEMP_FILE_OPS: [&str; 7] = [
    "create", "write", "truncate", "chmod", "chown", "rename", "remove",
];

/// The operations `requests` asked for, and, for temporary files, what putting them into
/// place takes ([`TEMP_FILE_OPS`]): never every operation (no `link`, `xattr`).
fn operations<'a>(requests: impl IntoIterator<Item = &'a pb::ApprovalRequest>) -> Vec<String> {
    let mut ops: Vec<String> = Vec::new();
    for r in requests {
        let Some(c) = r.context.as_ref() else {
            continue;
        };
        ops.extend(c.operations.iter().cloned());
        if crate::approver::burst::likely_final(&c.path).is_some() {
            ops.extend(TEMP_FILE_OPS.iter().map(|o| (*o).to_owned()));
        }
    }
    ops.sort();
    ops.dedup();
    ops
}

/// Refuses a glob the approver did not review, or one too wide for a burst.
fn check_glob(glob: &str, reviewed: &Reviewed<'_>) -> anyhow::Result<()> {
    if let Some(why) = crate::approver::burst::too_wide(glob) {
        bail!(
            "the suggested glob is too wide to approve a burst with: {why}; approve the requests with narrower globs (--glob)"
        );
    }
    if let Some(expected) = reviewed.glob
        && expected != glob
    {
        bail!(
            "the suggestion is now {glob}, not the {expected} you reviewed (the session asked for more meanwhile): review it again (approvals show)"
        );
    }
    Ok(())
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
    if r.suggested_glob.is_empty() {
        bail!(
            "request {id} has no suggested glob (its session's paths share no directory two levels below /); approve it without --suggested"
        );
    }
    check_glob(&r.suggested_glob, reviewed)?;
    Ok(Set {
        ids: vec![id],
        glob: r.suggested_glob.clone(),
        operations: operations([&r]),
    })
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
    if !reviewed.ids.is_empty() {
        for want in reviewed.ids {
            if *want != id && !set.iter().any(|p| p.id == *want) {
                bail!(
                    "request {want} is not a pending request of session {} (the set of request {id})",
                    ctx.session_id
                );
            }
        }
        set.retain(|p| reviewed.ids.contains(&p.id));
    }
    let mut paths: Vec<&str> = r.suggested_from.iter().map(String::as_str).collect();
    paths.extend(
        set.iter()
            .filter_map(|p| p.context.as_ref().map(|c| c.path.as_str())),
    );
    let Some((glob, from)) = suggest_for(&ctx.path, paths.iter().copied()) else {
        bail!(
            "the pending requests of session {} share no directory two levels below / (or only confgate's own): approve them one by one (approvals approve ID)",
            ctx.session_id
        );
    };
    check_glob(&glob, reviewed)?;
    // Only the requests the glob covers (the session's other trees are other sets).
    set.retain(|p| p.context.as_ref().is_some_and(|c| from.contains(&c.path)));
    let operations = operations(std::iter::once(&r).chain(set.iter().copied()));
    let mut ids = vec![id];
    ids.extend(set.iter().map(|p| p.id));
    Ok(Set {
        ids,
        glob,
        operations,
    })
}
