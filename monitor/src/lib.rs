//! confgate: host daemon, CLI and approval service.
//!
//! Module map, in the order an event travels (one job each; README "How it works"):
//! - `os`: the one layer of raw system calls (fanotify, handles, procfs, clocks, memory).
//! - `kernel`: load/attach the eBPF programs from their typed table, decode ring-buffer
//!   records.
//! - `notify`: the fanotify notification group over the watched trees.
//! - `observe`: the pipeline (syscalls, process table and path resolution, detection,
//!   correlation of the two observers, attribution to writers and sessions, sinks).
//! - `event`: the event contract and its byte-safe text encoding (`event::escape`).
//! - `sessions`: agent sessions, their registry and persisted records.
//! - `gate`: the permission group that holds opens of gated files (marks, intent,
//!   listener, decider, pre-images, changes, the engine).
//! - `policy`: the gate's rules, built-in self-protection, operations and grants.
//! - `config`: TOML configuration (schema, validation, the TOML span checker every confgate
//!   file shares, the `[approval.client]` settings, endpoint addresses) and the watched-path
//!   set derived from it (`config::watch`).
//! - `store`, `ledger`, `state`, `metrics`: the embedded store, the hash-chained audit
//!   ledger, damaged state files and the state directory's mode, counters.
//! - `prom`: the Prometheus endpoints of the daemon and the approval service (`[metrics]`).
//! - `api`: the daemon's gRPC API over its Unix socket.
//! - `uplink`: the daemon's spooled, reconnecting client of the approval service.
//! - `approver`: the approval service and its client transport.
//! - `daemon`, `cli`: wiring and the commands people type.
pub mod api;
pub mod approver;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod gate;
pub mod kernel;
pub mod ledger;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod observe;
pub mod os;
pub mod policy;
pub mod prom;
pub mod propose;
pub mod sessions;
pub mod state;
pub mod store;
pub mod uplink;
