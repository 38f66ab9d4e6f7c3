//! The one layer that talks to the operating system directly: raw fanotify and the file
//! system calls around it (handles, `fstat`, directory listing), procfs facts about
//! processes, clocks, and process-wide memory hints. Everything above it sees safe Rust
//! types; every `unsafe` block of the daemon outside the eBPF crate lives here or in the
//! gate's permission group.
pub mod clock;
pub mod fanotify;
pub mod host;
pub mod memory;
