//! confgate: host daemon, CLI and approval service.
//!
//! Module map (one job each):
//! - `kernel`: load/attach the eBPF programs, maps, counters, ring-buffer decoding.
//! - `fanotify`: the notification group over the watched trees.
//! - `gate`: the permission group that holds opens of gated files (marks, intent, listener,
//!   pre-images).
//! - `config`, `watch`: TOML configuration (with the TOML span checker every confgate file
//!   shares, the `[approval.client]` settings and endpoint addresses) and the watched-path
//!   set derived from it.
//! - `proctable`, `resolve`: process table and path resolution for attribution.
//! - `session`, `detect`, `store`: agent sessions, auto-detection rules, embedded store;
//!   `state`: damaged state files moved aside, the state directory's mode.
//! - `event`, `escape`, `correlate`, `sink`: the event contract, byte-safe path encoding,
//!   merging of eBPF and fanotify observations, NDJSON/human output.
//! - `ledger`: the hash-chained, append-only audit ledger.
//! - `policy`: the gate's rules, built-in self-protection and grants.
//! - `rpc`: the gRPC API over the daemon's Unix socket.
//! - `approver`: the approval service and its client transport.
//! - `uplink`: the daemon's spooled, reconnecting client of the approval service.
//! - `daemon`, `cli`: wiring and the commands people type; `memory`: giving back what
//!   only start-up needed; `os`: process-level hardening (`os::environ`: the start-up
//!   environment hidden from `/proc`).
pub mod approver;
pub mod cli;
pub mod clock;
pub mod config;
pub mod correlate;
pub mod daemon;
pub mod detect;
pub mod escape;
pub mod event;
pub mod fanotify;
pub mod gate;
pub mod host;
pub mod kernel;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod os;
pub mod pipeline;
pub mod policy;
pub mod proctable;
pub mod resolve;
pub mod rpc;
pub mod session;
pub mod sink;
pub mod state;
pub mod store;
pub mod syscalls;
pub mod uplink;
pub mod watch;
