//! The daemon's side of the `Baseline` RPC: `confgate drift`, `revert` and `baseline
//! accept`, run on a blocking thread against the gate's baseline.
use std::sync::Arc;

use serde_json::json;

use crate::api::server::{ApiError, Caller};
use crate::baseline::BaselineError;
use crate::baseline::service::{BaselineService, Requester};

fn api_error(e: BaselineError) -> ApiError {
    match e {
        e @ (BaselineError::NotInScope(_) | BaselineError::NotRecorded(_)) => {
            ApiError::FailedPrecondition(e.to_string())
        }
        e => ApiError::Internal(e.to_string()),
    }
}

/// What a `Baseline` call asks for.
pub(super) struct What {
    pub(super) op: String,
    pub(super) paths: Vec<Vec<u8>>,
    pub(super) note: String,
    /// `revert --to SEQ` (0: the baseline).
    pub(super) to_seq: u64,
}

/// Runs `what` for `caller` (in agent session `session`, 0: none).
pub(super) async fn call(
    service: Option<Arc<BaselineService>>,
    caller: Caller,
    session: u64,
    what: What,
) -> Result<String, ApiError> {
    let What {
        op,
        paths,
        note,
        to_seq,
    } = what;
    let Some(b) = service else {
        return Err(ApiError::Unavailable(
            "this daemon keeps no baseline (the gate is disabled, or the baseline could not be opened: see its log)".into(),
        ));
    };
    if op == "accept" && session != 0 {
        return Err(ApiError::PermissionDenied(format!(
            "process {} is inside agent session {session}: the baseline is moved only from outside every agent session",
            caller.pid
        )));
    }
    let who = Requester {
        uid: caller.uid,
        pid: caller.pid,
        session,
    };
    let run = move || -> Result<String, ApiError> {
        let value = match op.as_str() {
            "drift" => json!(b.drift(&paths).map_err(api_error)?),
            "revert" => {
                if paths.is_empty() {
                    return Err(ApiError::InvalidArgument("name the paths to revert".into()));
                }
                if to_seq != 0 {
                    json!(b.revert_to(&paths, to_seq, &who).map_err(api_error)?)
                } else {
                    json!(b.revert(&paths, &who).map_err(api_error)?)
                }
            }
            "accept" => {
                if paths.is_empty() {
                    return Err(ApiError::InvalidArgument("name the paths to accept".into()));
                }
                b.accept(&paths, "accept", json!({"by": who, "note": note}))
                    .map_err(api_error)?
            }
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "unknown operation {other:?}"
                )));
            }
        };
        serde_json::to_string(&value).map_err(|e| ApiError::Internal(e.to_string()))
    };
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| ApiError::Internal(format!("baseline task failed: {e}")))?
}
