//! Agent sessions: the process trees whose writes are attributed to an AI agent.
//!
//! A session starts either from the wrapper (`confgate run`, via the daemon's
//! `RegisterSession` call) or from an auto-detection rule. The [`SessionRegistry`] is the
//! daemon's authoritative list. Sessions are persisted in the [`Store`] the moment they are
//! created or ended; per-session event counts are kept in memory on the hot path and written
//! by [`SessionRegistry::flush`].
//!
//! The registry does not know about processes: deciding whether a pid is already in a session
//! and ending sessions whose root exited is the daemon's job (it has the process table).
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::os::clock::now_rfc3339;
use crate::store::{RecordTable, SESSIONS_TABLE, Store, StoreError};

/// Agent sessions, by session id.
pub const SESSIONS: RecordTable<SessionInfo> = RecordTable::new(SESSIONS_TABLE);

/// Sequence name of session ids.
pub const SESSION_IDS: &str = "session_id";

/// Longest accepted agent name, in characters.
pub const MAX_AGENT_CHARS: usize = 64;
/// Longest accepted reason, in bytes (UTF-8).
pub const MAX_REASON_BYTES: usize = 4096;
/// Budget for the stored command line, in bytes over all arguments. Longer command lines are
/// truncated (they are informational; the wrapper must not fail because a prompt is long).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
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

/// The daemon's registry of agent sessions. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct SessionRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Serializes everything that writes to the store, so that a slow `flush` snapshot can never
    /// overwrite a newer `end`. Never taken on the hot path.
    persist: Mutex<()>,
    state: Mutex<BTreeMap<u64, Entry>>,
}

struct Entry {
    info: SessionInfo,
    /// `info.events` as last written to the store.
    persisted_events: u64,
}

impl SessionRegistry {
    /// Loads the persisted sessions. Sessions that were not ended are reported as live until
    /// the daemon re-checks their root processes (and ends the ones that are gone).
    pub fn open(store: Store) -> Result<Self, SessionError> {
        let mut map = BTreeMap::new();
        for (id, info) in store.scan(SESSIONS)? {
            let persisted_events = info.events;
            map.insert(
                id,
                Entry {
                    info,
                    persisted_events,
                },
            );
        }
        Ok(SessionRegistry {
            inner: Arc::new(Inner {
                store,
                persist: Mutex::new(()),
                state: Mutex::new(map),
            }),
        })
    }

    /// Creates a session. Its id is allocated and the session persisted before this returns.
    /// Rejects invalid agent names and reasons ([`validate_agent`], [`validate_reason`]);
    /// escapes control characters in the command line and working directory.
    ///
    /// Looks up the user name of `uid` (NSS), so it may block briefly; async callers should
    /// use `spawn_blocking`.
    pub fn create(&self, new: NewSession) -> Result<SessionInfo, SessionError> {
        validate_agent(&new.agent)?;
        let reason = match new.reason {
            Some(r) if r.is_empty() => None,
            Some(r) => {
                validate_reason(&r)?;
                Some(r)
            }
            None => None,
        };
        if let SessionSource::Detected { rule } = &new.source {
            validate_agent(rule)?;
        }
        let mut info = SessionInfo {
            id: 0,
            agent: new.agent,
            reason,
            root_pid: new.root_pid,
            uid: new.uid,
            user: user_name(new.uid),
            started: now_rfc3339(),
            source: new.source,
            command: sanitize_command(&new.command),
            cwd: truncate_bytes(escape_text(&new.cwd), MAX_CWD_BYTES),
            events: 0,
            ended: None,
        };
        let _persist = lock(&self.inner.persist);
        self.inner.store.write(|tx| {
            info.id = tx.next_id(SESSION_IDS)?;
            tx.put(SESSIONS, info.id, &info)
        })?;
        lock(&self.inner.state).insert(
            info.id,
            Entry {
                info: info.clone(),
                persisted_events: 0,
            },
        );
        tracing::info!(
            session = info.id,
            agent = %info.agent,
            root_pid = info.root_pid,
            uid = info.uid,
            source = %info.source,
            "agent session started"
        );
        Ok(info)
    }

    pub fn get(&self, id: u64) -> Option<SessionInfo> {
        lock(&self.inner.state).get(&id).map(|e| e.info.clone())
    }

    /// Sessions not ended, by id.
    pub fn live(&self) -> Vec<SessionInfo> {
        lock(&self.inner.state)
            .values()
            .filter(|e| e.info.ended.is_none())
            .map(|e| e.info.clone())
            .collect()
    }

    /// All sessions, ended ones included, by id.
    pub fn all(&self) -> Vec<SessionInfo> {
        lock(&self.inner.state)
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// Counts one event for session `id` (in memory only; see [`SessionRegistry::flush`]).
    /// Unknown ids are ignored.
    pub fn note_event(&self, id: u64) {
        if let Some(e) = lock(&self.inner.state).get_mut(&id) {
            e.info.events = e.info.events.saturating_add(1);
        }
    }

    /// Persists the event counts that changed since the last flush (one transaction).
    pub fn flush(&self) -> Result<(), SessionError> {
        let _persist = lock(&self.inner.persist);
        let dirty: Vec<SessionInfo> = lock(&self.inner.state)
            .values()
            .filter(|e| e.info.events != e.persisted_events)
            .map(|e| e.info.clone())
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        self.inner.store.write(|tx| {
            for info in &dirty {
                tx.put(SESSIONS, info.id, info)?;
            }
            Ok(())
        })?;
        let mut state = lock(&self.inner.state);
        for info in &dirty {
            if let Some(e) = state.get_mut(&info.id) {
                e.persisted_events = info.events;
            }
        }
        Ok(())
    }

    /// Marks session `id` ended now (persisted before returning, together with its current
    /// event count). Ending an ended session does nothing.
    pub fn end(&self, id: u64) -> Result<(), SessionError> {
        let _persist = lock(&self.inner.persist);
        let mut info = match lock(&self.inner.state).get(&id) {
            None => return Err(SessionError::NotFound(id)),
            Some(e) if e.info.ended.is_some() => return Ok(()),
            Some(e) => e.info.clone(),
        };
        info.ended = Some(now_rfc3339());
        self.inner.store.put(SESSIONS, id, &info)?;
        if let Some(e) = lock(&self.inner.state).get_mut(&id) {
            // Events counted while we were writing stay in memory for the next flush.
            e.info.ended = info.ended.clone();
            e.persisted_events = info.events;
        }
        tracing::info!(session = id, agent = %info.agent, events = info.events, "agent session ended");
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every update is one assignment).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks an agent name: 1 to [`MAX_AGENT_CHARS`] printable ASCII characters (letters, digits,
/// punctuation, inner spaces), no leading or trailing space. Agent names appear in tables,
/// logs and rules, so nothing invisible or terminal-controlling is allowed.
pub fn validate_agent(agent: &str) -> Result<(), SessionError> {
    if agent.is_empty() {
        return Err(SessionError::Invalid("agent name is empty".into()));
    }
    if agent.chars().count() > MAX_AGENT_CHARS {
        return Err(SessionError::Invalid(format!(
            "agent name is longer than {MAX_AGENT_CHARS} characters"
        )));
    }
    if let Some(c) = agent.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(SessionError::Invalid(format!(
            "agent name {:?} contains {:?}; use printable ASCII only",
            escape_text(agent),
            c
        )));
    }
    if agent.starts_with(' ') || agent.ends_with(' ') {
        return Err(SessionError::Invalid(
            "agent name starts or ends with a space".into(),
        ));
    }
    Ok(())
}

/// Checks a reason: at most [`MAX_REASON_BYTES`] bytes, no control characters (newlines and
/// tabs included) and no invisible formatting characters (bidirectional overrides,
/// zero-width characters) that could disguise it on a terminal.
pub fn validate_reason(reason: &str) -> Result<(), SessionError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(SessionError::Invalid(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    if let Some(c) = reason
        .chars()
        .find(|c| c.is_control() || is_invisible_format(*c))
    {
        return Err(SessionError::Invalid(format!(
            "reason contains the control or formatting character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Unicode format characters that change how surrounding text is displayed (Cf category
/// members that matter for spoofing).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Escapes `\` as `\\` and control / invisible formatting characters as `\u{..}`, so the result
/// is safe to print and the escaping is unambiguous.
pub fn escape_text(s: &str) -> String {
    if !s
        .chars()
        .any(|c| c == '\\' || c.is_control() || is_invisible_format(c))
    {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || is_invisible_format(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn sanitize_command(command: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len().min(64));
    let mut budget = MAX_COMMAND_BYTES;
    for (i, arg) in command.iter().enumerate() {
        let arg = escape_text(arg);
        if arg.len() > budget {
            out.push(truncate_bytes(arg, budget));
            out.push(format!(
                "[confgate: command truncated, {} more arguments]",
                command.len() - i - 1
            ));
            break;
        }
        budget -= arg.len();
        out.push(arg);
    }
    out
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut with `…`.
fn truncate_bytes(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
    s
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
mod tests {
    use super::*;
    use crate::store::STORE_FILE;

    fn new(agent: &str) -> NewSession {
        NewSession {
            agent: agent.into(),
            reason: Some("fix the build".into()),
            root_pid: 4242,
            uid: 0,
            source: SessionSource::Wrapper,
            command: vec!["claude".into(), "-p".into(), "hi".into()],
            cwd: "/home/dev/project".into(),
        }
    }

    fn open(dir: &tempfile::TempDir) -> SessionRegistry {
        SessionRegistry::open(Store::open(&dir.path().join(STORE_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn create_assigns_ids_and_fills_fields() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(&dir);
        let a = reg.create(new("claude-code")).unwrap();
        let b = reg.create(new("codex")).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.agent, "claude-code");
        assert_eq!(a.reason.as_deref(), Some("fix the build"));
        assert_eq!(a.user, "root");
        assert_eq!(a.root_pid, 4242);
        assert_eq!(a.events, 0);
        assert_eq!(a.ended, None);
        // e.g. 2026-11-22T02:52:00Z
        let b_ = a.started.as_bytes();
        assert!(
            b_.len() == 20 && b_[4] == b'-' && b_[10] == b'T' && b_[19] == b'Z',
            "{}",
            a.started
        );
        assert_eq!(reg.get(1), Some(a.clone()));
        assert_eq!(reg.live(), vec![a, b]);
    }

    #[test]
    fn created_session_is_persisted_before_return() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        let reg = SessionRegistry::open(store.clone()).unwrap();
        let s = reg.create(new("aider")).unwrap();
        assert_eq!(store.get(SESSIONS, s.id).unwrap(), Some(s));
    }

    #[test]
    fn sessions_survive_restart_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = open(&dir);
            let a = reg.create(new("a")).unwrap();
            reg.create(new("b")).unwrap();
            for _ in 0..5 {
                reg.note_event(a.id);
            }
            reg.flush().unwrap();
            reg.end(a.id).unwrap();
        }
        let reg = open(&dir);
        let all = reg.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].events, 5);
        assert!(all[0].ended.is_some());
        assert_eq!(
            reg.live()
                .iter()
                .map(|s| s.agent.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(reg.create(new("c")).unwrap().id, 3);
    }

    #[test]
    fn note_event_is_memory_only_until_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        let reg = SessionRegistry::open(store.clone()).unwrap();
        let s = reg.create(new("a")).unwrap();
        reg.note_event(s.id);
        reg.note_event(s.id);
        reg.note_event(999); // unknown: ignored
        assert_eq!(reg.get(s.id).map(|s| s.events), Some(2));
        assert_eq!(
            store.get(SESSIONS, s.id).unwrap().map(|s| s.events),
            Some(0)
        );
        reg.flush().unwrap();
        assert_eq!(
            store.get(SESSIONS, s.id).unwrap().map(|s| s.events),
            Some(2)
        );
        reg.flush().unwrap(); // nothing dirty
    }

    #[test]
    fn end_is_persisted_idempotent_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        let reg = SessionRegistry::open(store.clone()).unwrap();
        let s = reg.create(new("a")).unwrap();
        reg.note_event(s.id);
        reg.end(s.id).unwrap();
        let ended = reg.get(s.id).and_then(|s| s.ended).unwrap();
        let stored = store.get(SESSIONS, s.id).unwrap().unwrap();
        assert_eq!(stored.ended.as_deref(), Some(ended.as_str()));
        assert_eq!(stored.events, 1);
        reg.end(s.id).unwrap();
        assert_eq!(reg.get(s.id).and_then(|s| s.ended), Some(ended));
        assert!(reg.live().is_empty());
        assert!(matches!(reg.end(77), Err(SessionError::NotFound(77))));
        // Events after the end are still counted and flushed, the end mark stays.
        reg.note_event(s.id);
        reg.flush().unwrap();
        let stored = store.get(SESSIONS, s.id).unwrap().unwrap();
        assert_eq!((stored.events, stored.ended.is_some()), (2, true));
    }

    #[test]
    fn agent_names_are_validated() {
        for ok in [
            "a",
            "claude-code",
            "Codex CLI",
            "gpt_5.1@openai",
            &"x".repeat(64),
        ] {
            assert!(validate_agent(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            " a",
            "a ",
            "a\nb",
            "a\u{1b}[31m",
            "é",
            "a\u{202e}b",
            "a\tb",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(validate_agent(bad), Err(SessionError::Invalid(_))),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let reg = open(&dir);
        assert!(reg.create(new("bad\u{7}")).is_err());
        let mut n = new("a");
        n.source = SessionSource::Detected {
            rule: "\u{1b}]0;x".into(),
        };
        assert!(reg.create(n).is_err());
        assert!(reg.all().is_empty());
    }

    #[test]
    fn reasons_are_validated() {
        assert!(validate_reason("").is_ok());
        assert!(validate_reason("réparer le build — vite").is_ok());
        assert!(validate_reason(&"r".repeat(MAX_REASON_BYTES)).is_ok());
        for bad in [
            "a\nb",
            "tab\there",
            "\u{1b}[2J",
            "safe\u{202e}txt.exe",
            "zero\u{200b}width",
        ] {
            assert!(
                matches!(validate_reason(bad), Err(SessionError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(validate_reason(&"r".repeat(MAX_REASON_BYTES + 1)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let reg = open(&dir);
        let mut n = new("a");
        n.reason = Some(String::new());
        assert_eq!(reg.create(n).unwrap().reason, None);
    }

    #[test]
    fn command_and_cwd_are_escaped_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(&dir);
        let mut n = new("a");
        n.command = vec!["sh".into(), "-c".into(), "echo a\nb\\c\u{1b}".into()];
        n.cwd = "/tmp/x\ry".into();
        let s = reg.create(n).unwrap();
        assert_eq!(s.command, ["sh", "-c", "echo a\\u{a}b\\\\c\\u{1b}"]);
        assert_eq!(s.cwd, "/tmp/x\\u{d}y");

        let mut n = new("a");
        n.command = vec![
            "agent".into(),
            "p".repeat(MAX_COMMAND_BYTES),
            "x".into(),
            "y".into(),
        ];
        let s = reg.create(n).unwrap();
        assert_eq!(s.command.len(), 3);
        assert!(s.command[1].ends_with('…'));
        assert!(s.command.iter().take(2).map(String::len).sum::<usize>() <= MAX_COMMAND_BYTES);
        assert_eq!(
            s.command[2],
            "[confgate: command truncated, 2 more arguments]"
        );
    }

    #[test]
    fn escape_is_identity_on_plain_text() {
        assert_eq!(escape_text("/home/dev/проект"), "/home/dev/проект");
        assert_eq!(truncate_bytes("ééé".into(), 4), "…");
        assert_eq!(truncate_bytes("abcdef".into(), 5), "ab…");
    }

    #[test]
    fn source_string_form() {
        assert_eq!(SessionSource::Wrapper.to_string(), "wrapper");
        let d = SessionSource::Detected {
            rule: "claude-code".into(),
        };
        assert_eq!(d.to_string(), "detect:claude-code");
        assert_eq!("detect:claude-code".parse::<SessionSource>().unwrap(), d);
        assert_eq!(
            "wrapper".parse::<SessionSource>().unwrap(),
            SessionSource::Wrapper
        );
        assert!("manual".parse::<SessionSource>().is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"detect:claude-code\"");
        assert_eq!(
            serde_json::from_str::<SessionSource>("\"wrapper\"").unwrap(),
            SessionSource::Wrapper
        );
    }

    #[test]
    fn an_undecodable_session_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let reg = open(&dir);
            reg.create(new("claude-code")).unwrap();
        }
        // An old or damaged record: valid redb, invalid JSON for a session.
        let store = Store::open(&path).unwrap();
        store
            .write(|tx| {
                tx.raw()
                    .open_table(redb::TableDefinition::<u64, &[u8]>::new(SESSIONS.name()))?
                    .insert(7, b"{\"id\": \"not a number\"}".as_slice())?;
                Ok(())
            })
            .unwrap();
        let reg = SessionRegistry::open(store).expect("loads the good sessions");
        let ids: Vec<u64> = reg.all().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1]);
        // New sessions still get fresh ids.
        assert!(reg.create(new("codex")).unwrap().id > 1);
    }
}
