//! Attribution: an observation that left the correlator becomes an [`Event`], naming the
//! process that made it (from the process table, encoded once per change of the table)
//! and the agent session it was made in.
use std::collections::HashMap;

use crate::{
    event::escape::encode,
    event::{Ancestor, Details, Event, SCHEMA_VERSION, SessionRef, Shared, Source},
    observe::correlate::Observation,
    observe::procs::proctable::ProcTable,
    os::{clock, procfs},
    sessions::SessionRegistry,
};

/// Event ids, and what events say about writers and sessions, cached.
pub struct Attributor {
    id_prefix: String,
    seq: u64,
    /// Descriptions of writers, by tgid (see [`Attributor::described`]).
    described: HashMap<u32, Described>,
    /// Session references, by session id.
    session_refs: HashMap<u64, Shared<SessionRef>>,
    empty_argv: Shared<Vec<String>>,
    no_ancestors: Shared<Vec<Ancestor>>,
}

/// What events say about the process that wrote, encoded once per change of the process
/// table rather than once per event.
struct Described {
    /// [`ProcTable::generation`] it was built at.
    generation: u64,
    ppid: u32,
    uid: u32,
    comm: String,
    exe: String,
    argv: Shared<Vec<String>>,
    cwd: Option<String>,
    ancestors: Shared<Vec<Ancestor>>,
}

/// Thread group of a thread id reported by fanotify.
fn tgid_of(procs: &ProcTable, tid: u32) -> u32 {
    if procs.get(tid).is_some_and(|p| !p.tentative) {
        return tid;
    }
    procfs::tgid_of(tid).unwrap_or(tid)
}

impl Attributor {
    /// `started_ns`: when the daemon started (ns since the epoch); event ids start with it.
    pub fn new(started_ns: i128) -> Self {
        Attributor {
            id_prefix: format!("{started_ns:x}"),
            seq: 0,
            described: HashMap::new(),
            session_refs: HashMap::new(),
            empty_argv: Shared::new(Vec::new()),
            no_ancestors: Shared::new(Vec::new()),
        }
    }

    /// The description of `tgid` as events carry it, from the cache while the process
    /// table has not changed since it was built.
    fn described(&mut self, procs: &ProcTable, tgid: u32) -> Option<&Described> {
        let generation = procs.generation();
        let fresh = self
            .described
            .get(&tgid)
            .is_some_and(|d| d.generation == generation);
        if !fresh {
            let p = procs.get(tgid)?;
            let ancestors: Vec<Ancestor> = procs
                .ancestors(tgid)
                .into_iter()
                .map(|a| Ancestor {
                    pid: a.pid,
                    comm: encode(&a.comm),
                    exe: encode(&a.exe),
                })
                .collect();
            let d = Described {
                generation,
                ppid: p.ppid,
                uid: p.uid,
                comm: encode(&p.comm),
                exe: encode(&p.exe),
                argv: Shared::new(p.argv.iter().map(|a| encode(a)).collect()),
                cwd: p.cwd.as_deref().map(encode),
                ancestors: Shared::new(ancestors),
            };
            self.described.insert(tgid, d);
        }
        self.described.get(&tgid)
    }

    /// The session reference events of `id` carry (sessions do not change what it holds).
    fn session_ref(&mut self, id: u64, sessions: &SessionRegistry) -> Shared<SessionRef> {
        if let Some(r) = self.session_refs.get(&id) {
            return r.clone();
        }
        match sessions.get(id) {
            Some(s) => {
                let r = Shared::new(SessionRef {
                    id: s.id,
                    agent: s.agent,
                    reason: s.reason,
                    root_pid: s.root_pid,
                });
                self.session_refs.insert(id, r.clone());
                r
            }
            // Not cached: the registry may learn it.
            None => Shared::new(SessionRef {
                id,
                agent: "unknown".into(),
                reason: None,
                root_pid: 0,
            }),
        }
    }

    /// The event for observation `o`, its writer looked up in `procs` (loaded from `/proc`
    /// if the table missed it) and its session in `sessions`.
    pub fn attribute(
        &mut self,
        o: Observation,
        procs: &mut ProcTable,
        sessions: &SessionRegistry,
    ) -> Event {
        let tgid = if o.tgid != 0 {
            o.tgid
        } else {
            tgid_of(procs, o.tid)
        };
        self.seq += 1;
        let id = format!("{}-{}", self.id_prefix, self.seq);
        // Load a process the table missed.
        let _ = procs.get_or_load(tgid);
        // A syscall record carries the session its process was in when it made the call
        // (the kernel's map at that moment): that decides, also when it is none — the
        // process may have joined a session since (`exec confgate run` right after an
        // open). Only fanotify knows no session; for it the process's current one is the
        // best guess (session processes are seen by eBPF, so this rarely matters).
        let session_id = if o.source == Source::Fanotify {
            procs.get(tgid).map_or(0, |p| p.session)
        } else {
            o.session
        };
        let session = (session_id != 0).then(|| {
            sessions.note_event(session_id);
            self.session_ref(session_id, sessions)
        });
        let (empty_argv, no_ancestors) = (self.empty_argv.clone(), self.no_ancestors.clone());
        let desc = self.described(procs, tgid);
        let comm = if o.comm.is_empty() {
            desc.map(|d| d.comm.clone()).unwrap_or_default()
        } else {
            encode(&o.comm)
        };
        let origin = crate::event::origin::origin();
        Event {
            v: SCHEMA_VERSION,
            class: crate::event::FileClass,
            time: clock::rfc3339_ns(o.time_ns),
            time_ns: o.time_ns,
            id,
            host: &origin.host,
            boot_id: &origin.boot_id,
            kind: o.kind,
            path: encode(&o.path),
            target: o.target.as_deref().map(encode),
            result: o.result,
            pid: tgid,
            tid: o.tid,
            ppid: desc.map(|d| d.ppid),
            uid: o.uid.or(desc.map(|d| d.uid)),
            comm,
            exe: desc.map(|d| d.exe.clone()),
            argv: desc.map_or(empty_argv, |d| d.argv.clone()),
            cwd: desc.and_then(|d| d.cwd.clone()),
            ancestors: desc.map_or(no_ancestors, |d| d.ancestors.clone()),
            session,
            source: o.source,
            details: (o.details != Details::default()).then_some(o.details),
        }
    }

    /// Forget what was cached about processes `procs` no longer knows, and every session
    /// reference (rebuilt on demand; ended sessions must not pile up).
    pub fn gc(&mut self, procs: &ProcTable) {
        self.described.retain(|pid, _| procs.get(*pid).is_some());
        self.session_refs.clear();
    }
}
