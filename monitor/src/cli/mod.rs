//! Commands of the `confgate` binary.
pub mod audit;
pub mod approver;
pub mod check_config;
pub mod run;
pub mod sessions;
pub mod stats;
