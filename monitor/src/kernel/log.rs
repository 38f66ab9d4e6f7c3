//! The eBPF programs' diagnostics (aya-log: a record lost to a full ring buffer, a path
//! that could not be read), forwarded to `tracing` under the target
//! `monitor::kernel::ebpf`.
//!
//! The programs log at debug and trace level only. The level they log at is fixed when
//! the object is loaded ([`level`], from the `tracing` subscriber's maximum level): below
//! debug, the logging branches are dead code to the verifier and no reader thread runs.
use std::{
    os::fd::{AsFd as _, OwnedFd},
    thread::JoinHandle,
};

use aya::Ebpf;
use aya_log::{EbpfLogger, Level};
use nix::{
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};
use tracing::level_filters::LevelFilter;

/// The `AYA_LOG_LEVEL` to load the programs with: `tracing`'s current maximum level (0 when
/// nothing is enabled).
pub fn level() -> u8 {
    let max = LevelFilter::current();
    let level = if max >= LevelFilter::TRACE {
        Level::Trace
    } else if max >= LevelFilter::DEBUG {
        Level::Debug
    } else if max >= LevelFilter::INFO {
        Level::Info
    } else if max >= LevelFilter::WARN {
        Level::Warn
    } else if max >= LevelFilter::ERROR {
        Level::Error
    } else {
        return 0;
    };
    level as u8
}

/// Whether programs loaded at `level` may log anything (they only log at debug or trace).
pub fn logs_at(level: u8) -> bool {
    level >= Level::Debug as u8
}

/// A thread that forwards the programs' log records while it lives.
pub struct EbpfLog {
    /// Closed on drop: the thread sees the hang-up and ends.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl EbpfLog {
    /// Take the log ring buffer out of the loaded object and forward its records to
    /// `logger` (`tracing_log::LogTracer` in the daemon) from a thread.
    pub fn start<L: log::Log + Send + 'static>(
        ebpf: &mut Ebpf,
        logger: L,
    ) -> Result<EbpfLog, LogError> {
        let reader = EbpfLogger::init_with_logger(ebpf, logger)?;
        let (wake, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || forward(reader, wake))?;
        Ok(EbpfLog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EbpfLog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("eBPF log ring buffer: {0}")]
    Logger(#[from] aya_log::Error),
    #[error("eBPF log reader: {0}")]
    Io(#[from] std::io::Error),
}

/// Wait for log records (or the hang-up of `wake`) and hand them to the logger.
fn forward<L: log::Log>(mut reader: EbpfLogger<L>, wake: OwnedFd) {
    loop {
        let mut fds = [
            PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let stop = fds[1].any().unwrap_or(true);
        reader.flush();
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_follows_tracing() {
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .finish(),
        );
        // At least debug (another test's subscriber may ask for more meanwhile).
        assert!(level() >= Level::Debug as u8);
        assert!(logs_at(level()));
        assert!(!logs_at(Level::Info as u8));
        assert!(!logs_at(0));
    }
}
