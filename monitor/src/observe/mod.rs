//! The observation pipeline: kernel records and fanotify events in, attributed events out.
//!
//! - `syscalls`: a completed syscall (enter + exit) to an observation (kind, paths, details).
//! - `procs`: what is known of every process (`proctable`), path resolution against its
//!   working directory and descriptors (`resolve`), auto-detection of agents (`detect`).
//! - `correlate`: merging eBPF and fanotify observations into one event per operation.
//! - `pipeline`: the core that drives these stages.
//! - `attribute`: an observation to an event, naming its process and session.
//! - `sink`: where events go (NDJSON file, terminal, subscribers).
pub mod attribute;
pub mod correlate;
pub mod pipeline;
pub mod procs;
pub mod sink;
pub mod supervised;
pub mod syscalls;
