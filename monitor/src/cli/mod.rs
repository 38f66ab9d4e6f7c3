//! Commands of the `confgate` binary.
pub mod run;
pub mod sessions;
