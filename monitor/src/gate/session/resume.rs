//! Surviving a daemon restart: each confined session's seccomp listener is kept in
//! systemd's descriptor store (`FDSTORE=1`, named `session-<id>`), its [`ConfineSpec`] in
//! the daemon's store ([`SPECS`]); a restarted daemon gets the listeners back
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`) and pairs each with its spec and its live session
//! ([`restored_attachments`]) to attach it again. The kernel keeps every notification
//! that arrived meanwhile queued on the listener, so held operations resume too.
//!
//! Order of the calls around a session:
//! 1. attach: [`remember_spec`] (durable), then [`store_listener`];
//! 2. end: [`remove_listener`], then [`forget_spec`];
//! 3. start-up: [`restored_attachments`] (after ended sessions were ended).
//!
//! Without a notification socket (the daemon run by hand), [`store_listener`] and
//! [`remove_listener`] do nothing: a daemon that dies takes the listeners with it, and
//! the sessions' notified syscalls then fail (`ENOSYS`, the kernel's answer when a
//! filter's listener is gone) while nothing else on the host notices.
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use tracing::{info, warn};

use super::{Attach, ConfineSpec};
use crate::os::sdnotify;
use crate::sessions::SessionRegistry;
use crate::store::{RecordTable, Store, StoreError};

/// The spec each confined session's Landlock domain was built from, by session id.
pub const SPECS: RecordTable<ConfineSpec> = RecordTable::new("session_specs");

/// Prefix of the descriptor store name of a session's listener.
const FDNAME_PREFIX: &str = "session-";

/// The descriptor store name of session `session`'s listener.
pub fn fd_name(session: u64) -> String {
    format!("{FDNAME_PREFIX}{session}")
}

/// The session of a descriptor store name: `session-<id>` with `id` a decimal number
/// without sign or leading zeros, not 0. Anything else is not ours.
pub fn parse_fd_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FDNAME_PREFIX)?;
    if digits.is_empty()
        || digits.len() > 20
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// Records `spec` as session `session`'s (durable before this returns).
pub fn remember_spec(store: &Store, session: u64, spec: &ConfineSpec) -> Result<(), StoreError> {
    store.put(SPECS, session, spec)
}

/// Forgets session `session`'s spec; whether there was one.
pub fn forget_spec(store: &Store, session: u64) -> Result<bool, StoreError> {
    store.write(|tx| tx.remove(SPECS, session))
}

/// Puts session `session`'s listener in systemd's descriptor store. `Ok(false)`: no
/// notification socket (nothing to keep it in).
pub fn store_listener(session: u64, fd: BorrowedFd<'_>) -> io::Result<bool> {
    let Some(n) = sdnotify::notifier() else {
        return Ok(false);
    };
    let msg = format!("FDSTORE=1\nFDNAME={}\n", fd_name(session));
    n.send(&msg, &[fd]).map(|()| true)
}

/// Removes session `session`'s listener from systemd's descriptor store. `Ok(false)`: no
/// notification socket.
pub fn remove_listener(session: u64) -> io::Result<bool> {
    let Some(n) = sdnotify::notifier() else {
        return Ok(false);
    };
    let msg = format!("FDSTOREREMOVE=1\nFDNAME={}\n", fd_name(session));
    n.send(&msg, &[]).map(|()| true)
}

/// Asks systemd to drop the stored descriptors named `name` (a name it gave us, so a
/// valid one; anything with a control character is left alone). Failures are logged.
fn remove_named(name: &str) {
    let Some(n) = sdnotify::notifier() else {
        return;
    };
    if name.chars().any(char::is_control) {
        return;
    }
    if let Err(e) = n.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]) {
        warn!(error = %e, "cannot remove a descriptor from the service manager's store");
    }
}

/// The descriptors systemd passed back: well-formed `session-<id>` ones by session, and the
/// names of the others, which are closed here.
#[derive(Debug, Default)]
pub struct Restored {
    pub listeners: Vec<(u64, OwnedFd)>,
    pub rejected: Vec<String>,
}

/// Splits passed-back descriptors by name ([`parse_fd_name`]); the rest are closed.
pub fn sort_restored(fds: Vec<(String, OwnedFd)>) -> Restored {
    let mut out = Restored::default();
    for (name, fd) in fds {
        match parse_fd_name(&name) {
            Some(id) => out.listeners.push((id, fd)),
            None => {
                drop(fd);
                out.rejected.push(name);
            }
        }
    }
    out
}

/// The listeners systemd passed back to this process (see [`sdnotify::take_listen_fds`]:
/// only the first call gets them).
pub fn restored_listeners() -> io::Result<Restored> {
    Ok(sort_restored(sdnotify::take_listen_fds()?))
}

/// What start-up can attach again, and how many passed-back descriptors it closed.
#[derive(Default)]
pub struct Resumed {
    pub attach: Vec<Attach>,
    /// Descriptors closed: not named `session-<id>`, of an ended or unknown session, of a
    /// session without a spec, or a second one of the same session.
    pub discarded: u64,
}

/// The passed-back listeners paired with their persisted spec and their live session
/// (root pid from `registry`); specs of sessions no longer live are forgotten. Call after
/// start-up ended the sessions whose root is gone.
pub fn restored_attachments(store: &Store, registry: &SessionRegistry) -> Resumed {
    let restored = match restored_listeners() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot take the descriptors the service manager passed back");
            Restored::default()
        }
    };
    pair(restored, store, registry)
}

/// [`restored_attachments`] for given descriptors.
pub fn pair(restored: Restored, store: &Store, registry: &SessionRegistry) -> Resumed {
    let mut out = Resumed {
        discarded: restored.rejected.len() as u64,
        ..Resumed::default()
    };
    for name in &restored.rejected {
        warn!(
            name = %crate::sessions::escape_text(name),
            "closed a passed-back descriptor that is not a session listener"
        );
        remove_named(name);
    }
    let specs: Vec<(u64, ConfineSpec)> = store.scan(SPECS).unwrap_or_else(|e| {
        warn!(error = %e, "cannot read the sessions' confinement specs");
        Vec::new()
    });
    for (session, fd) in restored.listeners {
        let live = registry.get(session).filter(|s| s.ended.is_none());
        let spec = specs.iter().find(|(id, _)| *id == session).map(|(_, s)| s);
        let why = match (&live, spec) {
            (None, _) => "the session ended or is unknown",
            (Some(_), None) => "no confinement spec was kept for the session",
            (Some(_), Some(_)) if out.attach.iter().any(|a| a.session == session) => {
                "a second listener for the same session"
            }
            (Some(info), Some(spec)) => {
                info!(
                    session,
                    root_pid = info.root_pid,
                    "session listener restored"
                );
                out.attach.push(Attach {
                    session,
                    root_pid: info.root_pid,
                    listener: fd,
                    spec: Arc::new(spec.clone()),
                });
                continue;
            }
        };
        warn!(
            session,
            reason = why,
            "closed a passed-back session listener"
        );
        drop(fd);
        out.discarded += 1;
        // Out of the descriptor store too (a duplicate shares the kept one's name).
        if !out.attach.iter().any(|a| a.session == session) {
            remove_named(&fd_name(session));
        }
    }
    for (session, _) in &specs {
        if registry.get(*session).is_none_or(|s| s.ended.is_some())
            && let Err(e) = forget_spec(store, *session)
        {
            warn!(session, error = %e, "cannot forget the spec of an ended session");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{NewSession, SessionSource};

    #[test]
    fn names() {
        assert_eq!(parse_fd_name("session-1"), Some(1));
        assert_eq!(
            parse_fd_name("session-18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(fd_name(42), "session-42");
        assert_eq!(parse_fd_name(&fd_name(42)), Some(42));
        for bad in [
            "",
            "session-",
            "session-0",
            "session-01",
            "session-+1",
            "session--1",
            "session-1 ",
            "session-1x",
            "session-18446744073709551616",
            "session-99999999999999999999999",
            "Session-1",
            "unknown",
            "stored",
        ] {
            assert_eq!(parse_fd_name(bad), None, "{bad:?}");
        }
    }

    fn pipe_fd() -> (OwnedFd, std::io::PipeWriter) {
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(r), w)
    }

    /// Whether every read end of the pipe is closed (a write fails with EPIPE).
    fn closed(w: &mut std::io::PipeWriter) -> bool {
        use std::io::Write as _;
        matches!(w.write(b"x"), Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    #[test]
    fn pairs_listeners_with_live_sessions_and_their_specs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let registry = SessionRegistry::open(store.clone()).unwrap();
        let new = |root_pid| NewSession {
            agent: "test".into(),
            reason: None,
            root_pid,
            uid: 0,
            source: SessionSource::Wrapper,
            command: vec![],
            cwd: "/".into(),
            scope: vec![],
        };
        let live = registry.create(new(std::process::id())).unwrap().id;
        let ended = registry.create(new(1)).unwrap().id;
        let unspecced = registry.create(new(std::process::id())).unwrap().id;
        registry.end(ended).unwrap();
        let spec = ConfineSpec {
            write_allowed: vec!["/tmp".into()],
            hidden: vec!["/etc/confgate".into()],
            ..ConfineSpec::default()
        };
        remember_spec(&store, live, &spec).unwrap();
        remember_spec(&store, ended, &spec).unwrap();

        let (live_fd, mut live_w) = pipe_fd();
        let (dup_fd, mut dup_w) = pipe_fd();
        let (ended_fd, mut ended_w) = pipe_fd();
        let (unknown_fd, mut unknown_w) = pipe_fd();
        let (unspecced_fd, mut unspecced_w) = pipe_fd();
        let (other_fd, mut other_w) = pipe_fd();
        let restored = sort_restored(vec![
            (fd_name(live), live_fd),
            (fd_name(live), dup_fd),
            (fd_name(ended), ended_fd),
            (fd_name(999_999), unknown_fd),
            (fd_name(unspecced), unspecced_fd),
            ("stored".into(), other_fd),
        ]);
        assert_eq!(restored.rejected, vec!["stored".to_string()]);
        let resumed = pair(restored, &store, &registry);
        assert_eq!(resumed.discarded, 5);
        assert_eq!(resumed.attach.len(), 1);
        let a = &resumed.attach[0];
        assert_eq!((a.session, a.root_pid), (live, std::process::id()));
        assert_eq!(*a.spec, spec);
        assert!(!closed(&mut live_w), "the attached listener stays open");
        for w in [
            &mut dup_w,
            &mut ended_w,
            &mut unknown_w,
            &mut unspecced_w,
            &mut other_w,
        ] {
            assert!(closed(w), "a discarded descriptor is closed");
        }
        // The ended session's spec is forgotten, the live one's kept.
        assert!(store.get(SPECS, ended).unwrap().is_none());
        assert!(store.get(SPECS, live).unwrap().is_some());
    }

    #[test]
    fn without_a_notification_socket_nothing_is_sent() {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return; // the test runner itself runs under a service manager
        }
        let (r, _w) = std::io::pipe().unwrap();
        use std::os::fd::AsFd as _;
        assert!(!store_listener(1, r.as_fd()).unwrap());
        assert!(!remove_listener(1).unwrap());
    }
}
