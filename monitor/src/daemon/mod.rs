//! `confgate daemon`: wires the kernel programs, fanotify, the pipeline, the outputs and
//! the gRPC API together and runs until SIGTERM/SIGINT; SIGHUP reloads the configuration.
//!
//! - `startup`: everything built from the configuration, in the order that matters.
//! - `runtime`: the event loop, one method per source it waits on, and shutdown.
//! - `consumers`: what is done with events (metrics, gate, events output).
//! - `shared`: state the loop shares with the gRPC handlers, and the API they serve.
//! - `gate`: the gate inside the daemon; `fanmode`: its fanotify permission group, marks
//!   and watchdog as `gate.fanotify` says; `protected`: what the built-in rule protects;
//!   `cadence`: when the loop flushes.
//! - `reload`: re-reading the configuration (SIGHUP, `confgate reload`).
//! - `sdnotify`: systemd's `Type=notify` protocol: readiness, status, the watchdog.
use std::path::Path;

use crate::config::Config;

mod baseline_api;
mod cadence;
mod consumers;
mod fanmode;
mod gate;
mod nats;
mod propose_api;
mod protected;
mod reload;
mod runtime;
mod sdnotify;
mod session_record;
mod shared;
mod startup;

pub use gate::GateRuntime;

/// Most threads the daemon's runtime starts for blocking work (see `main.rs`).
pub const MAX_BLOCKING_THREADS: usize = 64;

/// Run the daemon until a termination signal. `config_path` is the configuration file in
/// use (protected by the gate's built-in rule even when it does not exist).
pub async fn run(cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    startup::start(cfg, config_path).await?.run().await
}
