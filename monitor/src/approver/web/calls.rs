//! The web page's calls into the approval service (in process, as the signed-in
//! approver) and how their refusals are shown.
use std::sync::Arc;

use axum::Extension;
use axum::http::StatusCode;
use axum::response::Response;
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_server::Approver as _;

use super::{Web, refuse};
use crate::approver::http::conn::{LocalEnd, Peer};
use crate::approver::service::ApproverService;

/// The service, called in process.
pub(super) fn svc(web: &Web) -> ApproverService {
    ApproverService::new(Arc::clone(&web.shared))
}

/// A refusal of the service as a page with the matching HTTP status.
pub(super) fn status_page(s: &tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(code, s.message())
}

/// Request `id` as `who` may see it.
pub(super) async fn get_request(
    web: &Web,
    who: &str,
    id: u64,
) -> Result<pb::ApprovalRequest, tonic::Status> {
    svc(web)
        .get_request(Web::as_approver(who, pb::GetRequestRequest { id }))
        .await
        .map(tonic::Response::into_inner)
}

/// The connection's two ends, when served by the listener (not in unit tests).
pub(super) type Ends = (Option<Extension<Peer>>, Option<Extension<LocalEnd>>);

/// The session of the process behind `ends` (see [`Web::caller_session`]), or why not.
pub(super) async fn session_of(web: &Web, ends: Ends) -> Result<Option<u64>, String> {
    let (peer, local) = ends;
    web.caller_session(peer.map(|p| p.0.0), local.map(|l| l.0.0))
        .await
}
