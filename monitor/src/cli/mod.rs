//! Commands of the `confgate` binary.
pub mod check_config;
