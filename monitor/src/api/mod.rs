//! gRPC API of the daemon (`confgate.v1.Daemon`) over its Unix socket.
//!
//! - [`server`]: the tonic service on top of the [`server::DaemonApi`] trait the daemon
//!   implements, with per-call authorization from the kernel's peer credentials.
//! - [`client`]: connecting to the daemon's socket, for the CLI commands.
//!
//! This module also converts between the registry's [`SessionInfo`] and the wire type.
use std::path::PathBuf;

use crate::sessions::{SessionInfo, SessionSource};

pub mod client;
pub mod peer;
pub mod server;
#[cfg(test)]
pub(crate) mod testing;

/// The generated `confgate.v1` types, client and server.
pub use confgate_proto::v1 as pb;

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/confgate/confgate.sock";

/// Errors of the RPC layer (binding, serving, connecting).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The daemon's socket could not be reached.
    #[error("{}", connect_message(socket, source))]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another process is already serving on {socket} (is a confgate daemon already running?)"
    )]
    SocketInUse { socket: PathBuf },
    #[error("{socket} exists and is not a socket; refusing to replace it")]
    NotASocket { socket: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The peer sent something this side cannot represent.
    #[error("malformed message from the peer: {0}")]
    Malformed(String),
}

fn connect_message(socket: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | ConnectionRefused => {
            format!(
                "is `confgate daemon` running? socket {}: {e}",
                socket.display()
            )
        }
        PermissionDenied => format!(
            "cannot connect to the confgate daemon: socket {}: {e} (its permissions exclude this user)",
            socket.display()
        ),
        _ => format!(
            "cannot connect to the confgate daemon: socket {}: {e}",
            socket.display()
        ),
    }
}

impl From<&SessionInfo> for pb::SessionInfo {
    fn from(s: &SessionInfo) -> Self {
        pb::SessionInfo {
            id: s.id,
            agent: s.agent.clone(),
            reason: s.reason.clone().unwrap_or_default(),
            root_pid: s.root_pid,
            uid: s.uid,
            user: s.user.clone(),
            started: s.started.clone(),
            source: s.source.to_string(),
            command: s.command.clone(),
            cwd: s.cwd.clone(),
            events: s.events,
            ended: s.ended.clone().unwrap_or_default(),
            scope: s.scope.clone(),
        }
    }
}

impl TryFrom<pb::SessionInfo> for SessionInfo {
    type Error = RpcError;
    fn try_from(p: pb::SessionInfo) -> Result<Self, RpcError> {
        let source: SessionSource = p
            .source
            .parse()
            .map_err(|e| RpcError::Malformed(format!("session {}: {e}", p.id)))?;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Ok(SessionInfo {
            id: p.id,
            agent: p.agent,
            reason: non_empty(p.reason),
            root_pid: p.root_pid,
            uid: p.uid,
            user: p.user,
            started: p.started,
            source,
            command: p.command,
            cwd: p.cwd,
            events: p.events,
            ended: non_empty(p.ended),
            scope: p.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trips_through_the_wire_type() {
        let mut s = SessionInfo {
            id: 9,
            agent: "codex".into(),
            reason: None,
            root_pid: 10,
            uid: 1000,
            user: "dev".into(),
            started: "2026-01-01T00:00:00Z".into(),
            source: SessionSource::Detected {
                rule: "codex".into(),
            },
            command: vec!["codex".into()],
            cwd: "/src".into(),
            events: 3,
            ended: None,
            scope: vec!["/srv/app/**".into()],
        };
        let p = pb::SessionInfo::from(&s);
        assert_eq!(
            (p.reason.as_str(), p.source.as_str(), p.ended.as_str()),
            ("", "detect:codex", "")
        );
        assert_eq!(SessionInfo::try_from(p).unwrap(), s);
        s.reason = Some("why".into());
        s.ended = Some("2026-01-01T01:00:00Z".into());
        s.source = SessionSource::Wrapper;
        assert_eq!(SessionInfo::try_from(pb::SessionInfo::from(&s)).unwrap(), s);
        let bad = pb::SessionInfo {
            source: "teleported".into(),
            ..pb::SessionInfo::from(&s)
        };
        assert!(matches!(
            SessionInfo::try_from(bad),
            Err(RpcError::Malformed(_))
        ));
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let e = RpcError::Connect {
            socket: DEFAULT_SOCKET.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("is `confgate daemon` running? socket /run/confgate/confgate.sock:"),
            "{msg}"
        );
    }
}
