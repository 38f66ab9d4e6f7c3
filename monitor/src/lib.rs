//! confgate: host daemon, CLI and approval service.
pub mod kernel;
