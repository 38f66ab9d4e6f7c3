//! seccomp for a confined session: the filter the helper installs (refused syscalls, the
//! path syscalls whose notification goes to the daemon's supervisor) and, on the daemon's
//! side, the listener calls.
//!
//! - [`filter`]: the classic-BPF program and its installation, returning the listener.
//! - [`notify`]: the supervisor's side of the listener: receive, check, answer, inject,
//!   read the caller's strings.
pub mod filter;
pub mod notify;

pub use filter::{install, program};
