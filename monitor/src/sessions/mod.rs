//! Agent sessions: the process trees whose writes are attributed to an AI agent.
//!
//! A session starts either from the wrapper (`confgate run`, via the daemon's
//! `RegisterSession` call) or from an auto-detection rule. The [`SessionRegistry`] is the
//! daemon's authoritative list. Sessions are persisted in the [`crate::store::Store`] the
//! moment they are created or ended; per-session event counts are kept in memory on the hot
//! path and written by [`SessionRegistry::flush`].
//!
//! The registry does not know about processes: deciding whether a pid is already in a session
//! and ending sessions whose root exited is the daemon's job (it has the process table).
//!
//! The files: `registry.rs` (the registry), `store.rs` (the store table of session records
//! and the sequence of their ids), `text.rs` (checks of what a caller names a session, and
//! the escaping of what a process gives).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub mod exit;
mod registry;
pub mod scope;
mod store;
mod text;

pub use registry::SessionRegistry;
pub use store::{SESSION_IDS, SESSIONS};
pub use text::{escape_text, validate_agent, validate_reason};

/// Longest accepted agent name, in characters.
pub const MAX_AGENT_CHARS: usize = 64;
/// Longest accepted reason, in bytes (UTF-8).
pub const MAX_REASON_BYTES: usize = 4096;
/// Budget for the stored command line, in bytes over all arguments. Longer command lines are
/// truncated (they are informational; the wrapper must not fail because a prompt is long).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// How long a session registered by `confgate run` (which confines itself next) is not
/// counted as unconfined: the helper installs Landlock and seccomp within milliseconds;
/// a session still unconfined after this counts like a detected one.
pub const CONFINE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest stored working directory, in bytes.
pub const MAX_CWD_BYTES: usize = 4096;

/// One agent session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    /// Daemon-assigned id, unique on this host and never reused.
    pub id: u64,
    /// Agent name (validated, see [`validate_agent`]).
    pub agent: String,
    /// Why the session runs, as given at registration.
    pub reason: Option<String>,
    /// Pid of the session's root process.
    pub root_pid: u32,
    /// Uid of the root process.
    pub uid: u32,
    /// User name of `uid`, or the number if it has none.
    pub user: String,
    /// Start time, RFC 3339 UTC.
    pub started: String,
    /// How the session was started.
    pub source: SessionSource,
    /// Command line of the root process (control characters escaped, possibly truncated).
    pub command: Vec<String>,
    /// Working directory of the root process (control characters escaped).
    pub cwd: String,
    /// Events attributed to the session so far.
    pub events: u64,
    /// End time, RFC 3339 UTC; `None` while live.
    pub ended: Option<String>,
    /// Declared scope: absolute globs of the paths the session may write at all (see
    /// `gate::session::scope`); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
}

/// How a session came to be. Serialized as a string: `"wrapper"` or `"detect:<rule agent>"`,
/// the same form the gRPC API uses.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(into = "String", try_from = "String")]
pub enum SessionSource {
    /// Registered by the process itself (`confgate run` or the `RegisterSession` call).
    Wrapper,
    /// Started by the auto-detection rule of the named agent.
    Detected { rule: String },
}

impl fmt::Display for SessionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionSource::Wrapper => f.write_str("wrapper"),
            SessionSource::Detected { rule } => write!(f, "detect:{rule}"),
        }
    }
}

impl FromStr for SessionSource {
    type Err = SessionError;
    fn from_str(s: &str) -> Result<Self, SessionError> {
        match s {
            "wrapper" => Ok(SessionSource::Wrapper),
            _ => match s.strip_prefix("detect:") {
                Some(rule) => Ok(SessionSource::Detected {
                    rule: rule.to_owned(),
                }),
                None => Err(SessionError::Invalid(format!(
                    "unknown session source {:?}",
                    escape_text(s)
                ))),
            },
        }
    }
}

impl From<SessionSource> for String {
    fn from(s: SessionSource) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for SessionSource {
    type Error = SessionError;
    fn try_from(s: String) -> Result<Self, SessionError> {
        s.parse()
    }
}

/// What a new session is created from.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub agent: String,
    pub reason: Option<String>,
    pub root_pid: u32,
    pub uid: u32,
    pub source: SessionSource,
    pub command: Vec<String>,
    pub cwd: String,
    /// Declared scope (validated by the registry).
    pub scope: Vec<String>,
}

/// Errors of the session registry.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Rejected input (agent name, reason, ...); the message says what and why.
    #[error("{0}")]
    Invalid(String),
    #[error("no session {0}")]
    NotFound(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Name of `uid` from the user database, or the number.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => escape_text(&u.name),
        Ok(None) => uid.to_string(),
        Err(e) => {
            tracing::debug!(uid, error = %e, "user lookup failed");
            uid.to_string()
        }
    }
}

#[cfg(test)]
mod tests;
