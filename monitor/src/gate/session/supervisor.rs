//! [`Supervisors`]: the daemon's supervisors of confined sessions, one per listener.
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::ConfineSpec;

/// A session's seccomp listener, handed over by the helper or restored from systemd's
/// descriptor store after a restart.
pub struct Attach {
    /// The session the listener belongs to.
    pub session: u64,
    /// Its root process.
    pub root_pid: u32,
    /// The seccomp user-notification listener.
    pub listener: OwnedFd,
    /// What the session's Landlock domain allows (the supervisor's CONTINUE set).
    pub spec: Arc<ConfineSpec>,
}

/// Why a listener could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor thread could not start.
    #[error("cannot start the supervisor of session {session}: {source}")]
    Start {
        /// The session.
        session: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The daemon's session supervisors.
#[derive(Default)]
pub struct Supervisors {}

impl Supervisors {
    /// Starts supervising `a.listener`.
    pub fn attach(&self, a: Attach) -> Result<(), SupervisorError> {
        let _ = a;
        Err(SupervisorError::Start {
            session: 0,
            source: std::io::Error::from_raw_os_error(libc::ENOSYS),
        })
    }
}
