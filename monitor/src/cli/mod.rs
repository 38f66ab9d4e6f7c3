//! Commands of the `confgate` binary.
pub mod approvals;
#[cfg(test)]
mod approvals_service_tests;
pub mod approver;
pub mod audit;
pub mod audit_repair;
pub mod check_config;
pub mod grants;
pub mod run;
pub mod sessions;
pub mod stats;
pub mod store_check;
