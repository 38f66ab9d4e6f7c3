//! `confgate approver serve` and `confgate approver init-ca`.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::approver::ca::{CaRequest, init_ca};
use crate::approver::config::{DEFAULT_SERVICE_CONFIG, ServiceConfig};

/// Runs the approval service of the file at `config` (default
/// `/etc/confgate/approver.toml`; a missing default file means the defaults) until
/// SIGTERM or SIGINT.
pub fn serve(config: Option<&Path>) -> anyhow::Result<i32> {
    let (path, explicit) = match config {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from(DEFAULT_SERVICE_CONFIG), false),
    };
    let cfg = ServiceConfig::load_or_default(&path, explicit)?;
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(async {
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
            tracing::info!("stopping the approval service");
        };
        crate::approver::serve(cfg, shutdown, None).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// Makes (or reuses) the CA in `req.dir` and issues the certificates; prints what it wrote.
pub fn ca(req: &CaRequest) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let report = init_ca(req)?;
    let mut out = std::io::stdout().lock();
    if report.new_ca {
        writeln!(out, "new CA in {}", req.dir.display())?;
    } else {
        writeln!(out, "using the existing CA in {}", req.dir.display())?;
    }
    for p in &report.written {
        writeln!(out, "wrote {}", p.display())?;
    }
    out.flush()?;
    Ok(0)
}
