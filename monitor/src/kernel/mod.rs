//! The kernel side seen from the daemon: loading and attaching the eBPF programs,
//! the maps the daemon writes (sessions, prefixes, config), the counters it reads, and
//! the decoder for the ring-buffer records, and the programs' diagnostics (`log`).
pub mod decode;
pub mod loader;
pub mod log;
pub mod tracefs;

pub use loader::{AttachReport, GateMaps, Kernel, KernelError, KernelSettings};
