//! Connections of the daemon's socket that remember when they were accepted.
//!
//! The kernel reports a Unix-socket peer's pid as it was at connect time (SO_PEERCRED). If
//! that process exits while another process keeps the connection (a child it handed the
//! descriptor to), the pid can later name an unrelated process. Calls whose answer depends
//! on *which* process is calling (`Attest`) check with [`started_by`] that the process now
//! holding the pid already existed when the connection was accepted.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::os::clock::boot_ticks_now;
use crate::os::procfs::start_ticks;

/// What a request of an [`Accepted`] connection carries in its extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub uds: UdsConnectInfo,
    /// Clock ticks since boot (the unit of `/proc/<pid>/stat`'s start time) at accept;
    /// `None` if the clock could not be read.
    pub accepted_ticks: Option<u64>,
}

/// A Unix stream with its accept time.
#[derive(Debug)]
pub struct Accepted {
    inner: UnixStream,
    accepted_ticks: Option<u64>,
}

impl Accepted {
    pub fn new(inner: UnixStream) -> Accepted {
        Accepted {
            inner,
            accepted_ticks: boot_ticks_now(),
        }
    }
}

impl Connected for Accepted {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            uds: self.inner.connect_info(),
            accepted_ticks: self.accepted_ticks,
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether the process now holding `pid` existed when the connection was accepted (at
/// `accepted_ticks`). False when either time is unknown or the process is gone.
pub fn started_by(pid: u32, accepted_ticks: Option<u64>) -> bool {
    match (start_ticks(pid), accepted_ticks) {
        (Some(start), Some(accepted)) => start <= accepted,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_after_the_accept_is_not_the_caller() {
        let me = std::process::id();
        let now = boot_ticks_now().unwrap();
        let started = start_ticks(me).unwrap();
        assert!(started <= now, "{started} > {now}");
        assert!(started_by(me, Some(now)));
        // An accept before this process started: the pid names someone else now.
        assert!(!started_by(me, Some(started.saturating_sub(1))));
        assert!(!started_by(me, None));
        assert!(!started_by(u32::MAX, Some(now)), "no such process");
    }
}
