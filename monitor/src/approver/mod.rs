//! The approval service of confgate (`confgate approver serve`, or in-process in the daemon
//! in local mode) and its client transport.
//!
//! - [`addr`]: the address forms (`unix:/path`, `https://host:port`, loopback `http://`).
//! - [`client`]: [`client::ClientConfig`] and [`client::connect`] for the daemon's uplink
//!   and the approvals CLI.
pub mod addr;
pub mod client;
