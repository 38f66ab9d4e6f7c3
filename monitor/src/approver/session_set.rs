//! A session's pending requests as one reviewable set, approved with the session-scoped
//! glob suggestion: what `approvals approve --suggested` / `--session-set` and the web
//! page's "approve this session's set" compute from the service's requests. Only as
//! reviewed (the glob shown, or the ids listed), never with a glob anchored above two
//! directory levels or over confgate's own files, and only for the operations asked for.
use confgate_proto::v1 as pb;

use super::burst::{likely_final, suggest_for, too_wide};

/// A set cannot be approved as asked; the message says why and what to do instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetError(pub String);

fn refuse<T>(m: impl Into<String>) -> Result<T, SetError> {
    Err(SetError(m.into()))
}

/// What the approver reviewed: the glob shown, or the ids of the set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reviewed<'a> {
    pub glob: Option<&'a str>,
    pub ids: &'a [u64],
}

/// What approving a set grants: each of `ids` (the request asked about first) with
/// `glob` (session scope) and `operations`. `paths`: each id's path, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub ids: Vec<u64>,
    pub glob: String,
    pub operations: Vec<String>,
    pub paths: Vec<(u64, String)>,
}

/// What an installer does to a temporary file it puts into place (`*.dpkg-new`): creates,
/// writes, truncates, sets its mode and owner, renames it onto its final name (a rename
/// removes the source name).
const TEMP_FILE_OPS: [&str; 7] = [
    "create", "write", "truncate", "chmod", "chown", "rename", "remove",
];

/// The operations `requests` asked for, and, for temporary files, what putting them into
/// place takes ([`TEMP_FILE_OPS`]): never every operation (no `link`, `xattr`).
pub fn operations<'a>(requests: impl IntoIterator<Item = &'a pb::ApprovalRequest>) -> Vec<String> {
    let mut ops: Vec<String> = Vec::new();
    for r in requests {
        let Some(c) = r.context.as_ref() else {
            continue;
        };
        ops.extend(c.operations.iter().cloned());
        if likely_final(&c.path).is_some() {
            ops.extend(TEMP_FILE_OPS.iter().map(|o| (*o).to_owned()));
        }
    }
    ops.sort();
    ops.dedup();
    ops
}

/// Refuses a glob too wide for a burst, or (when `reviewed` names one) one the approver
/// did not review.
fn check_glob(glob: &str, reviewed: Option<&Reviewed<'_>>) -> Result<(), SetError> {
    if let Some(why) = too_wide(glob) {
        return refuse(format!(
            "the suggested glob is too wide to approve a burst with: {why}; approve the requests with narrower globs"
        ));
    }
    if let Some(expected) = reviewed.and_then(|r| r.glob)
        && expected != glob
    {
        return refuse(format!(
            "the suggestion is now {glob}, not the {expected} you reviewed (the session asked for more meanwhile): review it again"
        ));
    }
    Ok(())
}

fn path_of(r: &pb::ApprovalRequest) -> String {
    r.context
        .as_ref()
        .map(|c| c.path.clone())
        .unwrap_or_default()
}

/// Request `r` alone with its suggested glob.
pub fn suggested(r: &pb::ApprovalRequest, reviewed: &Reviewed<'_>) -> Result<Set, SetError> {
    if r.suggested_glob.is_empty() {
        return refuse(format!(
            "request {} has no suggested glob (its session's paths share no directory two levels below /): approve it on its own",
            r.id
        ));
    }
    check_glob(&r.suggested_glob, Some(reviewed))?;
    Ok(Set {
        ids: vec![r.id],
        glob: r.suggested_glob.clone(),
        operations: operations([r]),
        paths: vec![(r.id, path_of(r))],
    })
}

/// The pending requests of request `r`'s session among `pending` (`r` first, then the
/// others oldest first) and the glob that covers all of them and the session's earlier
/// paths. With `reviewed`, only as reviewed: its glob must be the set's glob, and when it
/// lists ids, each is in the set and only those are kept. Without (to show the set), the
/// whole set.
pub fn session_set(
    r: &pb::ApprovalRequest,
    pending: &[pb::ApprovalRequest],
    reviewed: Option<&Reviewed<'_>>,
) -> Result<Set, SetError> {
    let id = r.id;
    let ctx = r.context.clone().unwrap_or_default();
    if ctx.session_id == 0 {
        return refuse(format!(
            "request {id} comes from no agent session: there is no session set to approve"
        ));
    }
    let mut set: Vec<&pb::ApprovalRequest> = pending
        .iter()
        .filter(|p| {
            p.id != id
                && p.state == pb::RequestState::Pending as i32
                && p.context
                    .as_ref()
                    .is_some_and(|c| c.host == ctx.host && c.session_id == ctx.session_id)
        })
        .collect();
    set.sort_by_key(|p| p.id);
    if let Some(rv) = reviewed
        && !rv.ids.is_empty()
    {
        for want in rv.ids {
            if *want != id && !set.iter().any(|p| p.id == *want) {
                return refuse(format!(
                    "request {want} is not a pending request of session {} (the set of request {id})",
                    ctx.session_id
                ));
            }
        }
        set.retain(|p| rv.ids.contains(&p.id));
    }
    let mut paths: Vec<&str> = r.suggested_from.iter().map(String::as_str).collect();
    paths.extend(
        set.iter()
            .filter_map(|p| p.context.as_ref().map(|c| c.path.as_str())),
    );
    let Some((glob, from)) = suggest_for(&ctx.path, paths.iter().copied()) else {
        return refuse(format!(
            "the pending requests of session {} share no directory two levels below / (or only confgate's own): approve them one by one",
            ctx.session_id
        ));
    };
    check_glob(&glob, reviewed)?;
    // Only the requests the glob covers (the session's other trees are other sets).
    set.retain(|p| p.context.as_ref().is_some_and(|c| from.contains(&c.path)));
    let operations = operations(std::iter::once(r).chain(set.iter().copied()));
    let mut ids = vec![id];
    ids.extend(set.iter().map(|p| p.id));
    let mut shown = vec![(id, ctx.path.clone())];
    shown.extend(set.iter().map(|p| (p.id, path_of(p))));
    Ok(Set {
        ids,
        glob,
        operations,
        paths: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: u64, session: u64, path: &str) -> pb::ApprovalRequest {
        pb::ApprovalRequest {
            id,
            state: pb::RequestState::Pending as i32,
            context: Some(pb::RequestContext {
                host: "h".into(),
                session_id: session,
                path: path.into(),
                operations: vec!["write".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_set_is_the_sessions_pending_requests_in_one_tree() {
        let r = req(3, 7, "/etc/nginx/nginx.conf.dpkg-new");
        let pending = vec![
            req(1, 7, "/etc/nginx/sites-available/default.dpkg-new"),
            req(2, 8, "/etc/nginx/other.conf"),
            req(4, 7, "/etc/ssh/sshd_config"),
            r.clone(),
        ];
        let s = session_set(&r, &pending, None).unwrap();
        assert_eq!(s.glob, "/etc/nginx/**");
        assert_eq!(
            s.ids,
            vec![3, 1],
            "own first, other sessions and trees left out"
        );
        assert!(
            s.operations.contains(&"rename".to_owned()),
            "temp files' ops"
        );
        assert_eq!(s.paths[1].1, "/etc/nginx/sites-available/default.dpkg-new");
    }

    #[test]
    fn only_as_reviewed() {
        let r = req(3, 7, "/etc/nginx/nginx.conf");
        let pending = vec![req(1, 7, "/etc/nginx/mime.types"), r.clone()];
        let wrong = Reviewed {
            glob: Some("/etc/nginx/conf.d/**"),
            ids: &[],
        };
        assert!(session_set(&r, &pending, Some(&wrong)).is_err());
        let stranger = Reviewed {
            glob: None,
            ids: &[9],
        };
        assert!(session_set(&r, &pending, Some(&stranger)).is_err());
        let right = Reviewed {
            glob: Some("/etc/nginx/**"),
            ids: &[3],
        };
        assert_eq!(
            session_set(&r, &pending, Some(&right)).unwrap().ids,
            vec![3]
        );
        let outside = req(5, 0, "/etc/nginx/x");
        assert!(session_set(&outside, &pending, None).is_err(), "no session");
    }
}
