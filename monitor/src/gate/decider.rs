//! The permission thread's side of the gate: [`GateDecider`] answers from memory only.
//!
//! It reads the policy, the live grants and the set of (grant, path) pairs whose pre-image
//! is already kept. Anything that needs I/O (a pre-image, a request, the ledger, removing a
//! file that a denied open created) is deferred to the [`super::engine::Engine`] with the
//! open still held. What it denies on its own goes to the engine as a [`Note`] over a
//! bounded channel (a full channel is counted, never waited on).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use tokio::sync::mpsc;

use std::os::unix::ffi::OsStrExt as _;

use super::Verdict as Answer;
use super::listener::{Decider, FastVerdict, PermEvent};
use super::session::scope::ScopeMatcher;
use crate::policy::grants::GrantSet;
use crate::policy::{FailVerdict, GateQuery, Mode, OpSet, Policy, Rule, SessionRef, Verdict};
use crate::sessions::SessionRegistry;

/// Gate counters, for `confgate stats`.
#[derive(Default, Debug)]
pub struct GateMetrics {
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    /// Requests the approval service refused (ledgered; their failure verdict applied).
    pub requests_rejected: AtomicU64,
    pub approved: AtomicU64,
    pub denied: AtomicU64,
    pub denied_by_approver: AtomicU64,
    pub denied_by_policy: AtomicU64,
    pub denied_builtin: AtomicU64,
    /// Writes of unconfined sessions refused outside their declared scope (gated paths).
    pub scope_denied: AtomicU64,
    /// Writes of sessions outside their declared scope that could only be observed
    /// (ledgered `out_of_scope`), and those not ledgered (past the per-session limit).
    pub out_of_scope: AtomicU64,
    pub out_of_scope_unledgered: AtomicU64,
    pub allowed_by_grant: AtomicU64,
    pub fallback_allow: AtomicU64,
    pub fallback_deny: AtomicU64,
    pub hold_timeouts: AtomicU64,
    pub created_removed: AtomicU64,
    pub preimage_errors: AtomicU64,
    pub grants_live: AtomicU64,
    pub grants_expired: AtomicU64,
    pub grants_revoked: AtomicU64,
    pub changes_flagged: AtomicU64,
    pub changes_reverted: AtomicU64,
    pub revert_errors: AtomicU64,
    pub diffs: AtomicU64,
    pub diffs_unchanged: AtomicU64,
    pub diffs_coalesced: AtomicU64,
    pub unapproved_renames: AtomicU64,
    pub renames_unrestorable: AtomicU64,
    pub revert_conflicts: AtomicU64,
    pub renames_covered: AtomicU64,
    pub renames_repeated: AtomicU64,
    pub released_by_crash: AtomicU64,
    /// Held operations of confined sessions taken again after a restart / whose caller
    /// was gone by then.
    pub holds_resumed: AtomicU64,
    pub holds_lost: AtomicU64,
    pub ledger_errors: AtomicU64,
    pub report_errors: AtomicU64,
    pub notes_dropped: AtomicU64,
    pub notices_dropped: AtomicU64,
    pub update_errors: AtomicU64,
    pub decisions_for_closed: AtomicU64,
    pub store_errors: AtomicU64,
    /// Approval requests whose record is on disk (a crash after this point is recovered
    /// as a released hold; before it, the record may be lost: see the README).
    pub requests_synced: AtomicU64,
    /// Terminal notices written / not written (no controlling terminal, would block, rate
    /// limit); see `gate::terminal`.
    pub terminal_notices: AtomicU64,
    pub terminal_no_terminal: AtomicU64,
    pub terminal_dropped: AtomicU64,
    pub terminal_rate_limited: AtomicU64,
    /// Review mode (see `gate::engine::review`): operations let through at once to be
    /// reviewed; requests filed; approved; restored after a deny / no answer in time;
    /// requests replaced by a later change / withdrawn (the change was undone meanwhile);
    /// completed operations that left nothing to review; failures (no baseline, a
    /// restore or a baseline move that failed: the change stays, flagged).
    pub reviews_passed: AtomicU64,
    pub reviews_filed: AtomicU64,
    pub reviews_approved: AtomicU64,
    pub reviews_denied: AtomicU64,
    pub reviews_timed_out: AtomicU64,
    pub reviews_superseded: AtomicU64,
    pub reviews_withdrawn: AtomicU64,
    pub reviews_unchanged: AtomicU64,
    pub review_errors: AtomicU64,
}

impl GateMetrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("gate_requests", g(&self.requests)),
            ("gate_request_errors", g(&self.request_errors)),
            ("gate_requests_rejected", g(&self.requests_rejected)),
            ("gate_approved", g(&self.approved)),
            ("gate_denied", g(&self.denied)),
            ("gate_denied_by_approver", g(&self.denied_by_approver)),
            ("gate_denied_by_policy", g(&self.denied_by_policy)),
            ("gate_denied_builtin", g(&self.denied_builtin)),
            ("gate_scope_denied", g(&self.scope_denied)),
            ("gate_out_of_scope", g(&self.out_of_scope)),
            (
                "gate_out_of_scope_unledgered",
                g(&self.out_of_scope_unledgered),
            ),
            ("gate_allowed_by_grant", g(&self.allowed_by_grant)),
            ("gate_fallback_allow", g(&self.fallback_allow)),
            ("gate_fallback_deny", g(&self.fallback_deny)),
            ("gate_hold_timeouts", g(&self.hold_timeouts)),
            ("gate_created_removed", g(&self.created_removed)),
            ("gate_preimage_errors", g(&self.preimage_errors)),
            ("gate_grants_live", g(&self.grants_live)),
            ("gate_grants_expired", g(&self.grants_expired)),
            ("gate_grants_revoked", g(&self.grants_revoked)),
            ("gate_changes_flagged", g(&self.changes_flagged)),
            ("gate_changes_reverted", g(&self.changes_reverted)),
            ("gate_revert_errors", g(&self.revert_errors)),
            ("gate_diffs", g(&self.diffs)),
            ("gate_diffs_unchanged", g(&self.diffs_unchanged)),
            ("gate_diffs_coalesced", g(&self.diffs_coalesced)),
            ("gate_unapproved_renames", g(&self.unapproved_renames)),
            (
                "gate_unapproved_renames_unrestorable",
                g(&self.renames_unrestorable),
            ),
            ("gate_revert_conflicts", g(&self.revert_conflicts)),
            ("gate_renames_covered_by_grant", g(&self.renames_covered)),
            ("gate_renames_repeated", g(&self.renames_repeated)),
            ("gate_released_by_crash", g(&self.released_by_crash)),
            ("gate_holds_resumed", g(&self.holds_resumed)),
            ("gate_holds_lost", g(&self.holds_lost)),
            ("gate_ledger_errors", g(&self.ledger_errors)),
            ("gate_report_errors", g(&self.report_errors)),
            ("gate_notes_dropped", g(&self.notes_dropped)),
            ("gate_notices_dropped", g(&self.notices_dropped)),
            ("gate_update_errors", g(&self.update_errors)),
            (
                "gate_decisions_for_closed_requests",
                g(&self.decisions_for_closed),
            ),
            ("gate_store_errors", g(&self.store_errors)),
            ("gate_requests_synced", g(&self.requests_synced)),
            ("gate_terminal_notices", g(&self.terminal_notices)),
            (
                "gate_terminal_notices_no_terminal",
                g(&self.terminal_no_terminal),
            ),
            ("gate_terminal_notices_dropped", g(&self.terminal_dropped)),
            (
                "gate_terminal_notices_rate_limited",
                g(&self.terminal_rate_limited),
            ),
            ("gate_reviews_passed", g(&self.reviews_passed)),
            ("gate_reviews_filed", g(&self.reviews_filed)),
            ("gate_reviews_approved", g(&self.reviews_approved)),
            ("gate_reviews_denied", g(&self.reviews_denied)),
            ("gate_reviews_timed_out", g(&self.reviews_timed_out)),
            ("gate_reviews_superseded", g(&self.reviews_superseded)),
            ("gate_reviews_withdrawn", g(&self.reviews_withdrawn)),
            ("gate_reviews_unchanged", g(&self.reviews_unchanged)),
            ("gate_review_errors", g(&self.review_errors)),
        ]
    }
}

/// Something the permission thread decided alone that belongs in the ledger.
#[derive(Debug)]
pub struct Note {
    pub kind: &'static str,
    pub path: Vec<u8>,
    pub session: u64,
    pub pid: u32,
    pub rule: String,
}

/// The session whose review-mode change of a path waits for review, and its rule.
type Reviewer = (u64, Arc<Rule>);

/// State shared by the permission thread and the engine's tasks. Every lock here is held
/// only for in-memory work, never across I/O.
pub struct GateState {
    /// The policy in force: swapped whole by a configuration reload, so each decision
    /// reads one policy from start to end ([`GateState::policy`]).
    policy: RwLock<Arc<Policy>>,
    grants: RwLock<GrantSet>,
    /// Paths whose pre-image is kept, with the grants (0: a failure verdict) they were
    /// kept under: further opens under the same grant pass without I/O. The grant that let
    /// the latest write open through is last: a close-write's change is that grant's.
    tracked: RwLock<HashMap<Vec<u8>, Vec<u64>>>,
    /// Paths changed in review mode whose review is not settled yet, with the session
    /// whose operation the decider let through last (see `gate::engine::review`).
    reviewing: RwLock<HashMap<Vec<u8>, Reviewer>>,
    /// Agent name per session (cached: the registry clones whole records).
    agents: RwLock<HashMap<u64, Arc<str>>>,
    /// Declared scope per session (`None`: none), for rules' `within_scope`.
    scopes: RwLock<HashMap<u64, Option<Arc<ScopeMatcher>>>>,
    pub sessions: SessionRegistry,
    pub metrics: Arc<GateMetrics>,
    notes: mpsc::Sender<Note>,
    /// Paths outside sessions' scopes recorded or refused (see [`super::out_of_scope`]).
    pub scope_seen: super::out_of_scope::Seen,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl GateState {
    pub fn new(
        policy: Arc<Policy>,
        grants: GrantSet,
        sessions: SessionRegistry,
        metrics: Arc<GateMetrics>,
        notes: mpsc::Sender<Note>,
    ) -> GateState {
        metrics
            .grants_live
            .store(grants.len() as u64, Ordering::Relaxed);
        GateState {
            policy: RwLock::new(policy),
            grants: RwLock::new(grants),
            tracked: RwLock::new(HashMap::new()),
            reviewing: RwLock::new(HashMap::new()),
            agents: RwLock::new(HashMap::new()),
            scopes: RwLock::new(HashMap::new()),
            scope_seen: Default::default(),
            sessions,
            metrics,
            notes,
        }
    }

    /// The policy in force now (one decision keeps the one it took).
    pub fn policy(&self) -> Arc<Policy> {
        read(&self.policy).clone()
    }

    /// Puts `policy` in force (a configuration reload): the next decision uses it.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *write(&self.policy) = policy;
    }

    /// The agent of `session` (`None` outside sessions or for an unknown session).
    pub fn agent(&self, session: u64) -> Option<Arc<str>> {
        if session == 0 {
            return None;
        }
        if let Some(a) = read(&self.agents).get(&session) {
            return Some(a.clone());
        }
        let info = self.sessions.get(session)?;
        let a: Arc<str> = Arc::from(info.agent.as_str());
        write(&self.agents).insert(session, a.clone());
        Some(a)
    }

    /// Session `id` ended: its compiled scope is dropped (ids are not reused).
    pub fn forget_scope(&self, id: u64) {
        write(&self.scopes).remove(&id);
    }

    /// Whether `path` is inside `session`'s declared scope (`None`: no session, or one
    /// that declared no scope). The globs are compiled once per session, their literal
    /// prefixes resolved as the session's confinement resolved them.
    pub fn within_scope(&self, session: u64, path: &[u8]) -> Option<bool> {
        if session == 0 {
            return None;
        }
        let cached = read(&self.scopes).get(&session).cloned();
        let m = match cached {
            Some(m) => m,
            None => {
                let info = self.sessions.get(session)?;
                let m = if info.scope.is_empty() {
                    None
                } else {
                    let (_, globs) = crate::gate::session::scope::resolve(&info.scope);
                    ScopeMatcher::new(&globs).map(Arc::new)
                };
                write(&self.scopes).insert(session, m.clone());
                m
            }
        };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        m.map(|m| m.contains(path))
    }

    pub fn grants(&self) -> RwLockReadGuard<'_, GrantSet> {
        read(&self.grants)
    }

    pub fn grants_mut(&self) -> RwLockWriteGuard<'_, GrantSet> {
        write(&self.grants)
    }

    /// Records the current number of live grants in the metrics.
    pub fn count_grants(&self) {
        let n = self.grants().len() as u64;
        self.metrics.grants_live.store(n, Ordering::Relaxed);
    }

    pub fn is_tracked(&self, grant: u64, path: &[u8]) -> bool {
        read(&self.tracked)
            .get(path)
            .is_some_and(|g| g.contains(&grant))
    }

    pub fn is_tracked_path(&self, path: &[u8]) -> bool {
        read(&self.tracked).contains_key(path)
    }

    /// Keeps `grant` as a writer of `path`, the latest one.
    pub fn track(&self, grant: u64, path: &[u8]) {
        let mut t = write(&self.tracked);
        let grants = t.entry(path.to_vec()).or_default();
        grants.retain(|g| *g != grant);
        grants.push(grant);
    }

    /// A tracked `grant` let another write open of `path` through: it is the latest writer.
    /// (A read lock when it already is, the common case of one agent writing in a loop.)
    pub fn touch_writer(&self, grant: u64, path: &[u8]) {
        if read(&self.tracked)
            .get(path)
            .is_some_and(|g| g.last() == Some(&grant))
        {
            return;
        }
        let mut t = write(&self.tracked);
        if let Some(grants) = t.get_mut(path)
            && let Some(i) = grants.iter().position(|g| *g == grant)
        {
            let g = grants.remove(i);
            grants.push(g);
        }
    }

    /// The grants tracked on `path`, the one that let the latest write open through last.
    pub fn writers(&self, path: &[u8]) -> Vec<u64> {
        read(&self.tracked).get(path).cloned().unwrap_or_default()
    }

    /// `session` changes `path` in review mode under `rule`: its completion is reviewed.
    /// (A read lock when already so, the common case of an agent writing one file in a
    /// loop.)
    pub fn mark_review(&self, path: &[u8], session: u64, rule: &Arc<Rule>) {
        if read(&self.reviewing)
            .get(path)
            .is_some_and(|(s, r)| *s == session && Arc::ptr_eq(r, rule))
        {
            return;
        }
        write(&self.reviewing).insert(path.to_vec(), (session, Arc::clone(rule)));
    }

    /// Whether `path` has a review-mode change whose review is not settled.
    pub fn is_reviewing(&self, path: &[u8]) -> bool {
        read(&self.reviewing).contains_key(path)
    }

    /// The session and rule of the review-mode change of `path` not yet settled.
    pub fn reviewer(&self, path: &[u8]) -> Option<(u64, Arc<Rule>)> {
        read(&self.reviewing).get(path).cloned()
    }

    /// The review of `path` is settled (its change approved, restored, or gone).
    pub fn unmark_review(&self, path: &[u8]) {
        write(&self.reviewing).remove(path);
    }

    pub fn untrack(&self, grant: u64, path: &[u8]) {
        let mut t = write(&self.tracked);
        if let Some(grants) = t.get_mut(path) {
            grants.retain(|g| *g != grant);
            if grants.is_empty() {
                t.remove(path);
            }
        }
    }

    fn note(&self, kind: &'static str, ev: &PermEvent, rule: &str) {
        let note = Note {
            kind,
            path: ev.path.clone(),
            session: ev.session,
            pid: ev.tgid,
            rule: rule.to_owned(),
        };
        if self.notes.try_send(note).is_err() {
            GateMetrics::inc(&self.metrics.notes_dropped);
        }
    }
}

/// The operations of a held open; `created` as far as known.
pub fn ops_of(ev: &PermEvent, created: bool) -> OpSet {
    if let Some(op) = ev.op {
        return op.ops;
    }
    OpSet::from_open_flags(ev.intent.as_ref().map_or(0, |i| i.flags), created)
}

/// Whether the open has `O_CREAT` (it may create the file; only the engine can tell).
pub fn may_create(ev: &PermEvent) -> bool {
    ev.intent
        .as_ref()
        .is_some_and(|i| i.flags & libc::O_CREAT as u32 != 0)
}

/// The failure verdict of a deferred `ask`: what the open gets if the engine never
/// answers it. `deny-and-request` always denies the open itself; a `review` rule's open is
/// deferred only to keep the pre-image of a grant that covers it (its failure: deny).
pub fn fail_answer(mode: Mode, fail: FailVerdict) -> Answer {
    if mode == Mode::Hold && fail == FailVerdict::Allow {
        Answer::Allow
    } else {
        Answer::Deny
    }
}

/// The [`Decider`] of the gate listener.
pub struct GateDecider {
    state: Arc<GateState>,
}

impl GateDecider {
    pub fn new(state: Arc<GateState>) -> GateDecider {
        GateDecider { state }
    }
}

impl Decider for GateDecider {
    fn decide(&self, ev: &PermEvent) -> FastVerdict {
        let st = &self.state;
        let agent = st.agent(ev.session);
        // A session the registry does not know yet (tagged a moment ago) is still a
        // session: the built-in rule applies to it, agent-specific rules cannot.
        let session = (ev.session != 0).then(|| SessionRef {
            id: ev.session,
            agent: agent.as_deref().unwrap_or(""),
            within_scope: st.within_scope(ev.session, &ev.path),
        });
        // Whether this open creates the file is only known after an fstat: take `O_CREAT`
        // as creating here so that create-only rules match (the engine checks).
        let created = may_create(ev);
        let q = GateQuery {
            path: &ev.path,
            session,
            ops: ops_of(ev, created),
            write: ev.is_write(),
        };
        if q.write && session.is_some_and(|s| s.within_scope == Some(false)) {
            // Outside the session's declared scope (an unconfined session: a confined
            // one's is refused by its supervisor before): refused before the rules. A file
            // this open created must be removed: the engine does it.
            let _ = st.scope_seen.first(ev.session, &ev.path);
            if created {
                return FastVerdict::Defer { fail: Answer::Deny };
            }
            GateMetrics::inc(&st.metrics.scope_denied);
            GateMetrics::inc(&st.metrics.denied);
            st.note("scope_denied", ev, "");
            return FastVerdict::Deny;
        }
        let policy = st.policy();
        let Some(m) = policy.evaluate(&q) else {
            return FastVerdict::Allow;
        };
        if m.builtin {
            GateMetrics::inc(&st.metrics.denied_builtin);
            GateMetrics::inc(&st.metrics.denied);
            st.note("denied_builtin", ev, &m.rule.name);
            return FastVerdict::Deny;
        }
        match m.rule.verdict {
            Verdict::Allow => FastVerdict::Allow,
            // A file this open created must be removed: I/O, so the engine does it.
            Verdict::Deny if created => FastVerdict::Defer { fail: Answer::Deny },
            Verdict::Deny => {
                GateMetrics::inc(&st.metrics.denied_by_policy);
                GateMetrics::inc(&st.metrics.denied);
                st.note("denied_by_policy", ev, &m.rule.name);
                FastVerdict::Deny
            }
            Verdict::Ask => {
                let now = SystemTime::now();
                let granted = st
                    .grants()
                    .find(
                        &m.rule.name,
                        ev.session,
                        q.session.map_or("", |s| s.agent),
                        &ev.path,
                        q.ops,
                        now,
                    )
                    .map(|g| g.id);
                if let Some(id) = granted
                    && st.is_tracked(id, &ev.path)
                {
                    if ev.is_write() {
                        st.touch_writer(id, &ev.path);
                    }
                    GateMetrics::inc(&st.metrics.allowed_by_grant);
                    return FastVerdict::Allow;
                }
                if m.rule.mode == Mode::Review && granted.is_none() {
                    // Nothing blocks: the operation proceeds, and its result is reviewed
                    // when it completes (the engine, told by the event pipeline).
                    st.mark_review(&ev.path, ev.session, &m.rule);
                    GateMetrics::inc(&st.metrics.reviews_passed);
                    return FastVerdict::Allow;
                }
                FastVerdict::Defer {
                    fail: fail_answer(m.rule.mode, m.rule.fail),
                }
            }
        }
    }

    fn wants_proc_fallback(&self) -> bool {
        self.state.policy().gates_outside_sessions()
    }

    fn scope_denied(&self, session: u64, pid: u32, path: &[u8]) {
        let note = Note {
            kind: "scope_denied",
            path: path.to_vec(),
            session,
            pid,
            rule: String::new(),
        };
        if self.state.notes.try_send(note).is_err() {
            GateMetrics::inc(&self.state.metrics.notes_dropped);
        }
    }
}
