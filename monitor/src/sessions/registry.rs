//! [`SessionRegistry`]: the daemon's authoritative list of sessions, in memory and in the
//! store.
use crate::os::clock::now_rfc3339;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::store::{SESSION_IDS, SESSIONS};
use super::text::{escape_text, sanitize_command, truncate_bytes, validate_agent, validate_reason};
use super::{MAX_CWD_BYTES, NewSession, SessionError, SessionInfo, SessionSource, user_name};
use crate::store::Store;

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
    /// Live sessions whose seccomp listener the daemon supervises (in memory: a restarted
    /// daemon learns them again from the descriptors it gets back).
    confined: Mutex<std::collections::BTreeSet<u64>>,
    /// Sessions about to confine themselves, with the end of their grace.
    confining: Mutex<BTreeMap<u64, std::time::Instant>>,
    /// Bumped whenever a session starts, ends or is confined (see
    /// [`SessionRegistry::changes`]).
    changed: tokio::sync::watch::Sender<u64>,
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
                confined: Mutex::new(std::collections::BTreeSet::new()),
                confining: Mutex::new(BTreeMap::new()),
                changed: tokio::sync::watch::Sender::new(0),
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
            scope: new.scope,
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
        self.changed();
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

    /// Records that session `id` is confined (its listener is supervised).
    pub fn mark_confined(&self, id: u64) {
        lock(&self.inner.confined).insert(id);
        lock(&self.inner.confining).remove(&id);
        self.changed();
    }

    /// A receiver that sees a new value whenever a session starts, ends or is confined
    /// (the gate places or removes its host-wide marks on that).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn changed(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Session `id` is about to confine itself: until [`super::CONFINE_GRACE`] has passed
    /// it is not listed by [`SessionRegistry::live_unconfined`].
    pub fn expect_confinement(&self, id: u64) {
        lock(&self.inner.confining).insert(id, std::time::Instant::now() + super::CONFINE_GRACE);
        self.changed();
    }

    /// When the next grace of [`SessionRegistry::expect_confinement`] ends.
    pub fn next_confinement_deadline(&self) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        lock(&self.inner.confining)
            .values()
            .copied()
            .filter(|d| *d > now)
            .min()
    }

    /// Whether session `id` is confined.
    pub fn is_confined(&self, id: u64) -> bool {
        lock(&self.inner.confined).contains(&id)
    }

    /// Live sessions that are not confined (detected agents, `confgate run --no-confine`).
    pub fn live_unconfined(&self) -> Vec<SessionInfo> {
        let confined = lock(&self.inner.confined).clone();
        let now = std::time::Instant::now();
        let confining: Vec<u64> = lock(&self.inner.confining)
            .iter()
            .filter(|(_, d)| **d > now)
            .map(|(id, _)| *id)
            .collect();
        self.live()
            .into_iter()
            .filter(|s| !confined.contains(&s.id) && !confining.contains(&s.id))
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
        lock(&self.inner.confined).remove(&id);
        self.changed();
        tracing::info!(session = id, agent = %info.agent, events = info.events, "agent session ended");
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every update is one assignment).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
