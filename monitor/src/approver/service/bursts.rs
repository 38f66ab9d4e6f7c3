//! The session-scoped glob suggestion of a new request: from the paths its session has
//! asked for so far on its host (the newest requests, see `approver::burst`).
use super::*;
use crate::approver::burst::{MAX_SUGGESTION_PATHS, suggest_for};
use crate::approver::store::NewRequest;

/// Newest requests looked through for the session's earlier paths.
const LOOK_BACK: usize = 2000;

/// `new` with its suggestion filled in (unchanged for a resubmission: the stored request
/// is returned then, whatever this says).
pub(super) fn with_suggestion(
    st: &ApprovalStore,
    mut new: NewRequest,
) -> Result<NewRequest, StoreError> {
    if new.context.session_id == 0 {
        return Ok(new);
    }
    let mut paths = vec![new.context.path.clone()];
    for r in st.list_requests(true, LOOK_BACK)? {
        if paths.len() >= MAX_SUGGESTION_PATHS {
            break;
        }
        if r.context.host == new.context.host
            && r.context.session_id == new.context.session_id
            && !paths.contains(&r.context.path)
        {
            paths.push(r.context.path);
        }
    }
    if let Some((glob, from)) = suggest_for(&paths[0], paths[1..].iter().map(String::as_str)) {
        new.suggested_glob = glob;
        new.suggested_from = from;
    }
    Ok(new)
}
