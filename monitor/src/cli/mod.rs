//! Commands of the `confgate` binary.
pub mod approvals;
#[cfg(test)]
mod approvals_service_tests;
mod approvals_set;
pub mod approver;
pub mod args;
pub mod audit;
pub mod audit_repair;
pub mod baseline;
pub mod check_approver;
pub mod check_config;
pub mod connect;
pub mod events;
pub mod grants;
pub mod launch;
pub mod mcp;
pub mod propose;
pub mod reload;
pub mod render;
pub mod run;
pub mod session_report;
pub mod sessions;
pub mod shim;
pub mod stats;
pub mod store_check;

/// Whether `e` comes from writing to a closed pipe (`confgate stats | head`): the reader
/// wanted no more, so every command then exits quietly with status 0.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
