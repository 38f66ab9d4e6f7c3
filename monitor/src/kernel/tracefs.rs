//! Making sure tracefs is mounted: syscall tracepoints are attached through it.
use std::path::Path;

use nix::mount::{MsFlags, mount};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mount tracefs at `/sys/kernel/tracing` if its `events` directory is missing.
/// Returns whether a mount was performed.
pub fn ensure_mounted() -> std::io::Result<bool> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(std::io::Error::from)?;
    Ok(true)
}
