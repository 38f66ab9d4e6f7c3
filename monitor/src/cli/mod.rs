//! Commands of the `confgate` binary.
pub mod approver;
pub mod audit;
pub mod check_config;
pub mod run;
pub mod sessions;
pub mod stats;
