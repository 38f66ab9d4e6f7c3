//! The web approval page: pending requests with their context, decisions, grants, the
//! ledger; sign-in with OpenID Connect and signed one-time action links.
use std::sync::Arc;

use axum::Router;

use super::ApproverError;
use super::config::ServiceConfig;
use super::service::Shared;

/// The web page's routes (none until `[web]` is configured).
pub fn routes(_shared: Arc<Shared>, _cfg: &ServiceConfig) -> Result<Router, ApproverError> {
    Ok(Router::new())
}
