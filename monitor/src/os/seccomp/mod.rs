//! seccomp for a confined session: the filter the helper installs (refused syscalls, the
//! path syscalls whose notification goes to the daemon's supervisor) and, on the daemon's
//! side, the listener calls.
//!
//! - [`filter`]: the classic-BPF program and its installation, returning the listener.
pub mod filter;

pub use filter::{install, program};
