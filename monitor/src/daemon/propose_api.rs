//! The daemon's side of `Propose`, `GetProposal` and `ListProposals`: who the caller is
//! (its peer pid, still the process that connected, and its agent session from the
//! kernel's session map), then the gate's [`Proposals`].
use std::sync::Arc;
use std::time::Duration;

use crate::api::pb;
use crate::api::server::{ApiError, Caller};
use crate::propose::{Proposals, ProposeError, Proposer};

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Invalid(m) => ApiError::InvalidArgument(m),
            ProposeError::Refused(m) => ApiError::FailedPrecondition(m),
            ProposeError::TooMany(m) => ApiError::ResourceExhausted(m),
            ProposeError::NotFound(m) => ApiError::NotFound(m),
            ProposeError::Unavailable(m) => ApiError::Unavailable(m),
            ProposeError::Internal(m) => ApiError::Internal(m),
        }
    }
}

fn service(p: Option<Arc<Proposals>>) -> Result<Arc<Proposals>, ApiError> {
    p.ok_or_else(|| {
        ApiError::Unavailable(
            "this daemon takes no proposals (the gate is disabled, or its baseline could not be opened: see its log)"
                .into(),
        )
    })
}

/// The proposer behind `caller`: refused when the process that connected is gone (its
/// pid could name another process, in another session, by now).
pub(super) fn proposer(caller: &Caller, session: u64, admin: bool) -> Result<Proposer, ApiError> {
    if !crate::api::peer::started_by(caller.pid, caller.accepted_ticks) {
        return Err(ApiError::PermissionDenied(format!(
            "process {} that opened this connection is gone (its pid may name another process now); connect again",
            caller.pid
        )));
    }
    Ok(Proposer {
        pid: caller.pid,
        uid: caller.uid,
        session,
        admin,
    })
}

pub(super) async fn propose(
    p: Option<Arc<Proposals>>,
    who: Proposer,
    r: pb::ProposeRequest,
) -> Result<pb::Proposal, ApiError> {
    let ttl = (r.ttl_seconds != 0).then(|| Duration::from_secs(r.ttl_seconds));
    Ok(service(p)?
        .propose(who, r.path, r.content, r.reason, ttl)
        .await?)
}

pub(super) async fn get(
    p: Option<Arc<Proposals>>,
    who: Proposer,
    id: u64,
    wait_ms: u64,
) -> Result<pb::Proposal, ApiError> {
    Ok(service(p)?
        .get(who, id, Duration::from_millis(wait_ms))
        .await?)
}

pub(super) fn list(
    p: Option<Arc<Proposals>>,
    who: Proposer,
) -> Result<Vec<pb::Proposal>, ApiError> {
    Ok(service(p)?.list(who))
}
