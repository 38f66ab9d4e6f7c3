//! What the pipeline knows of processes: the process table, path resolution in a process's
//! context, and auto-detection of agent processes.
pub mod detect;
pub mod proctable;
pub mod resolve;
