//! The async side of the gate: held opens, requests to the approval service, waits,
//! grants, failure verdicts, diffs, expiry (flag or revert) and unapproved renames.
//!
//! Every held open is handled in its own task: the pre-image is read through the event's
//! descriptor (never by path, which would re-enter the gate) on a blocking thread, policy
//! is evaluated again with the exact operations (whether the open created the file is
//! known now), and then the open is allowed, denied, or asked about. Store writes, ledger
//! appends and `/proc` reads all run on blocking threads; the permission thread never waits
//! on any of them.
//!
//! This module holds the engine's state, start-up and audit helpers; its jobs are in
//! [`hold`] (held opens and requests), [`decisions`] (the approval service's answers),
//! [`expiry`] (grants ending, crash releases: flag or revert) and [`notices`] (close-writes
//! and renames from the event pipeline); [`tell`] writes the terminal notice once the
//! service acknowledged a request.
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use confgate_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

pub use tally::SessionCounts;

use super::changes::{self, CHANGES, Change};
use super::context;
use super::decider::{GateDecider, GateMetrics, GateState, Note, ops_of};
use super::listener::{Held, PermEvent};
use super::preimage::{self, PreImage};
use super::requests::{
    GRANTS, REQUEST_IDS, REQUEST_PREIMAGES, REQUESTS, RequestPre, RequestRecord, SESSION_HOLDS,
};
use crate::baseline::service::BaselineService;
use crate::event::escape::encode;
use crate::ledger::SharedLedger;
use crate::os::clock::unix_ms;
use crate::policy::grants::{Grant, GrantSet};
use crate::policy::{
    FailVerdict, GateQuery, Mode, OnExpiry, OpSet, Policy, Rule, SessionRef, Verdict,
};
use crate::sessions::{SessionInfo, SessionRegistry};
use crate::store::Store;
use crate::uplink::{UplinkHandle, UplinkUpdate};

mod decisions;
mod expiry;
mod hold;
mod notices;
mod review;
mod tally;
mod tell;

/// Notes from the permission thread (its own denies) waiting for the ledger.
const NOTE_QUEUE: usize = 4096;
/// Longest wait between two expiry checks.
const EXPIRY_POLL: Duration = Duration::from_secs(1);
/// How long after a close-write its diff is taken (closes of the same file meanwhile are
/// folded into it).
const DIFF_DELAY: Duration = Duration::from_millis(100);

/// How long a filed request waits for another durable commit (its decision's, when an
/// approver answers at once) before the engine makes it durable by itself.
const REQUEST_SYNC_GRACE: Duration = Duration::from_millis(50);

/// How long a file renamed onto a gated path is remembered, so that the same rename seen
/// twice (two sources, or a notice repeated) is handled once.
const RENAME_MEMORY: Duration = Duration::from_secs(30);

/// What the event pipeline tells the gate.
#[derive(Debug)]
pub enum Notice {
    /// A gated file was closed after writing by a process of `session` (0: none or
    /// unknown): record its diff.
    Closed {
        path: Vec<u8>,
        session: u64,
        /// The process that closed it (0: unknown).
        pid: u32,
    },
    /// A session renamed `from` (when known) onto `to`.
    Renamed {
        session: u64,
        agent: String,
        pid: u32,
        from: Option<Vec<u8>>,
        to: Vec<u8>,
    },
    /// A session's unlink, chmod, chown or truncate of `path` succeeded under live grant
    /// `grant` (an approved operation, see [`Engine::approving_grant`]).
    ApprovedOp {
        path: Vec<u8>,
        grant: u64,
        session: u64,
    },
}

/// How a request ended, for the open waiting on it.
#[derive(Debug)]
enum Outcome {
    /// Approved under grant `.0`; `.1` is the pre-image kept in the grant's own commit
    /// (`None`: the open keeps it itself).
    Approved(u64, Option<Change>),
    Denied,
    /// The service applied the failure verdict (allow: true).
    Expired(bool),
    /// The service refused the request (it will never be decided).
    Rejected,
}

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub host: String,
    /// Where unapproved files renamed into a gated tree are moved when reverted.
    pub quarantine_dir: std::path::PathBuf,
    /// `gate.terminal_notice`.
    pub terminal_notice: bool,
    /// `gate.approvals_url` (in local mode defaulting to the service's `[http]` URL).
    pub approvals_url: Option<String>,
    /// Which session a process is in (the kernel's map), for terminal notices.
    pub session_of: Option<super::terminal::SessionLookup>,
}

/// Handles the daemon keeps.
pub struct GateHandles {
    pub engine: Arc<Engine>,
    pub decider: Arc<GateDecider>,
    pub metrics: Arc<GateMetrics>,
}

/// The async side of the gate.
pub struct Engine {
    state: Arc<GateState>,
    store: Store,
    ledger: SharedLedger,
    uplink: UplinkHandle,
    settings: EngineSettings,
    /// Held opens waiting for the decision of their request, by host request id.
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    /// Undecided deny-and-request requests by (session, path): a retry does not file again.
    open_requests: Mutex<HashMap<(u64, Vec<u8>), u64>>,
    /// Kept pre-images by grant id (0: allowed by a failure verdict).
    changes: Mutex<HashMap<u64, Vec<Change>>>,
    /// After-hash of the last diff recorded per change id (a close without a new change
    /// records nothing).
    diffed: Mutex<HashMap<u64, String>>,
    /// Paths with a diff scheduled (closes within [`DIFF_DELAY`] share it), with the
    /// session and process of the latest close.
    diff_scheduled: Mutex<HashMap<Vec<u8>, (u64, u32)>>,
    /// Files renamed onto gated paths lately: path -> (device, inode, when).
    renames_seen: Mutex<HashMap<Vec<u8>, (u64, u64, std::time::Instant)>>,
    /// Pending hold requests of sessions whose listener came back after a restart (id ->
    /// session, path): a held operation taken again waits on its request.
    resumable: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// Notices on sessions' terminals.
    terminal: super::terminal::TerminalNotices,
    /// Filed requests whose terminal notice waits for the service's id of the request.
    to_tell: Mutex<HashMap<u64, tell::ToTell>>,
    /// The approved baseline (see [`crate::baseline`]).
    baseline: Option<Arc<BaselineService>>,
    /// Undecided reviews by path (see [`review`]); one step of a path's review at a time.
    reviews: tokio::sync::Mutex<HashMap<Vec<u8>, review::Review>>,
    /// Per-session counts of the records ledgered (for `session_end`).
    tally: tally::Tally,
}

/// A held open waiting for the decision of its request.
struct Waiter {
    tx: oneshot::Sender<Outcome>,
    /// The rule that filed the request (its decision needs no store read for it).
    rule: String,
    /// What an approval must keep before the open may proceed.
    keep: Option<Keep>,
}

/// What the blocking preparation of a held open read (its decision is a [`Next`]).
struct Prepared {
    held: Held,
    pre: Option<PreImage>,
    /// Whether this very open created the file.
    created: bool,
    writer: context::Writer,
    session: Option<SessionInfo>,
}

/// What happens to a prepared held open.
enum Next {
    /// No rule matched, or an allow rule did.
    Allow,
    /// A deny rule (or the built-in self-protection rule) matched.
    Deny(Arc<Rule>),
    /// A write by a session outside its declared scope (an unconfined session's: a
    /// confined one's is refused by its supervisor before).
    ScopeDenied,
    /// An `ask` that this live grant covers.
    Granted(u64),
    DenyAndRequest(Arc<Rule>, OpSet),
    /// A hold: its request is filed, with the body of its ledger line (`None`: it could
    /// not be, counted).
    Hold {
        rule: Arc<Rule>,
        filed: Option<(Filed, Value)>,
    },
}

/// A hold's filed request, waited for by [`Engine::await_decision`].
struct Filed {
    request_id: u64,
    rx: oneshot::Receiver<Outcome>,
    /// Since the listener read the event: prepared / filed.
    t_ask: Duration,
    t_filed: Duration,
}

/// What an `ask` knows of the held open (borrowed while it is prepared).
struct Asked<'a> {
    ev: &'a PermEvent,
    held: &'a Held,
    agent: &'a str,
    ops: OpSet,
    session: Option<&'a SessionInfo>,
    pre: Option<&'a PreImage>,
    created: bool,
    writer: &'a context::Writer,
}

impl Asked<'_> {
    /// What an approval must keep of this open before it may proceed.
    fn keep(&self) -> Option<Keep> {
        self.pre.cloned().map(|pre| Keep {
            pre,
            path: self.ev.path.clone(),
            session: self.ev.session,
            created: self.created,
        })
    }
}

/// What a request is about: the held open as the approver sees it (the writer's context
/// was read while it was held).
struct Subject<'a> {
    writer: &'a context::Writer,
    session: Option<&'a SessionInfo>,
    path: &'a [u8],
    ops: OpSet,
    pre: Option<&'a PreImage>,
    /// Whether the open created the file (then there is no content to name).
    created: bool,
}

/// What the engine works with: the policy, the session registry, and where it keeps
/// (`store`), records (`ledger`) and sends (`uplink`) what it does.
pub struct EngineParts {
    pub policy: Arc<Policy>,
    pub sessions: SessionRegistry,
    pub store: Store,
    pub ledger: SharedLedger,
    pub uplink: UplinkHandle,
    /// Confined sessions whose listener the service manager passed back: their pending
    /// hold requests wait for the held operations to come back (see
    /// [`Engine::close_unresumed`]) instead of being closed as released by a crash.
    pub resuming: std::collections::HashSet<u64>,
    /// The approved baseline: moved by approved changes, what reverts restore.
    pub baseline: Option<Arc<BaselineService>>,
}

/// What the engine's tasks read: held opens from the listener, the approval service's
/// updates from the uplink, and notices (close-writes, renames) from the event pipeline.
pub struct EngineInputs {
    pub held: mpsc::Receiver<Held>,
    pub updates: mpsc::Receiver<UplinkUpdate>,
    pub notices: mpsc::Receiver<Notice>,
}

/// A held open's pre-image, kept in the same commit as the grant that lets it through.
struct Keep {
    pre: PreImage,
    path: Vec<u8>,
    session: u64,
    created: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on a blocking thread; `None` if the thread panicked or the runtime is going
/// away.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Engine {
    /// Builds the engine from the persisted grants, changes and requests, and starts its
    /// tasks: one per input (held opens, service updates, notices) and the expiry timer.
    pub fn start(
        parts: EngineParts,
        settings: EngineSettings,
        inputs: EngineInputs,
    ) -> Result<GateHandles, crate::store::StoreError> {
        let EngineParts {
            policy,
            sessions,
            store,
            ledger,
            uplink,
            resuming,
            baseline,
        } = parts;
        let EngineInputs {
            held,
            updates,
            notices,
        } = inputs;
        let metrics = Arc::new(GateMetrics::default());
        let (note_tx, note_rx) = mpsc::channel(NOTE_QUEUE);
        // Requests are filed without waiting for the disk: an id a crash took with it must
        // not name a later request (the service may hold a decision for it).
        store.skip_ids(&[REQUEST_IDS])?;
        let mut grants = GrantSet::new();
        for (_, g) in store.scan(GRANTS)? {
            grants.insert(g);
        }
        let state = Arc::new(GateState::new(
            policy,
            grants,
            sessions,
            metrics.clone(),
            note_tx,
        ));
        // Holds a crash released: closed before anything else reads the requests.
        let (released, resumable) = match crate::gate::crash::release_holds_except(
            &store, &resuming,
        ) {
            Ok(r) => r,
            Err(e) => {
                GateMetrics::inc(&metrics.store_errors);
                error!(error = %e, "cannot close the holds a crash released; they stay pending");
                (Vec::new(), Vec::new())
            }
        };
        let resumable: HashMap<u64, (u64, Vec<u8>)> = resumable
            .into_iter()
            .map(|(id, r)| (id, (r.session, r.path)))
            .collect();
        let mut changes: HashMap<u64, Vec<Change>> = HashMap::new();
        for (_, c) in store.scan(CHANGES)? {
            state.track(c.grant_id, &c.path);
            changes.entry(c.grant_id).or_default().push(c);
        }
        let mut open_requests = HashMap::new();
        let mut reviews_before = Vec::new();
        for (id, r) in store.scan(REQUESTS)? {
            if r.mode == Mode::DenyAndRequest.as_str() {
                open_requests.insert((r.session, r.path.clone()), id);
            } else if r.mode == Mode::Review.as_str() && !r.answered {
                reviews_before.push((id, r));
            }
        }
        let engine = Arc::new(Engine {
            state: state.clone(),
            store,
            ledger,
            uplink,
            waiters: Arc::new(Mutex::new(HashMap::new())),
            diffed: Mutex::new(HashMap::new()),
            diff_scheduled: Mutex::new(HashMap::new()),
            renames_seen: Mutex::new(HashMap::new()),
            open_requests: Mutex::new(open_requests),
            changes: Mutex::new(changes),
            resumable: Mutex::new(resumable),
            terminal: super::terminal::TerminalNotices::new(
                settings.terminal_notice,
                settings.approvals_url.clone(),
                settings.session_of.clone(),
            ),
            settings,
            to_tell: Mutex::new(HashMap::new()),
            baseline,
            reviews: tokio::sync::Mutex::new(HashMap::new()),
            tally: tally::Tally::default(),
        });
        tokio::spawn(engine.clone().accepted_loop(engine.uplink.accepted()));
        tokio::spawn(engine.clone().held_loop(held));
        tokio::spawn(engine.clone().update_loop(updates));
        tokio::spawn(engine.clone().notice_loop(notices));
        tokio::spawn(engine.clone().note_loop(note_rx));
        tokio::spawn(engine.clone().expiry_loop());
        if !released.is_empty() {
            tokio::spawn(engine.clone().settle_released(released));
        }
        if !reviews_before.is_empty() {
            tokio::spawn(engine.clone().review_again(reviews_before));
        }
        Ok(GateHandles {
            engine,
            decider: Arc::new(GateDecider::new(state)),
            metrics,
        })
    }

    /// Whether a pre-image of `path` is kept or its review-mode change is not settled (its
    /// close-writes are worth a diff or a review).
    pub fn tracks(&self, path: &[u8]) -> bool {
        self.state.is_tracked_path(path) || self.state.is_reviewing(path)
    }

    /// The policy's question about `ops` on `path` by `session` of `agent` (a write).
    fn session_query<'a>(
        &self,
        path: &'a [u8],
        session: u64,
        agent: &'a str,
        ops: OpSet,
    ) -> GateQuery<'a> {
        GateQuery {
            path,
            session: Some(SessionRef {
                id: session,
                agent,
                within_scope: self.state.within_scope(session, path),
            }),
            ops,
            write: true,
        }
    }

    /// A session's operation the gate could not hold (`ops`: unlink, chmod, chown,
    /// truncate), seen in the event stream: whether it completes a review-mode change of
    /// `path` (then its review is due; see [`review`]). Marks the path when the operation
    /// came from a process the decider did not see (an unconfined session).
    pub fn completes_review(&self, path: &[u8], session: u64, agent: &str, ops: OpSet) -> bool {
        if self.state.is_reviewing(path) {
            return true;
        }
        let q = self.session_query(path, session, agent, ops);
        let Some(m) = self.state.policy().unheld_rule(&q) else {
            return false;
        };
        if m.builtin || m.rule.verdict != Verdict::Ask || m.rule.mode != Mode::Review {
            return false;
        }
        if self
            .state
            .grants()
            .find(&m.rule.name, session, agent, path, ops, SystemTime::now())
            .is_some()
        {
            return false;
        }
        self.state.mark_review(path, session, &m.rule);
        true
    }

    /// Session `id` ended: its session-scoped grants can no longer cover anything. They
    /// stay until they expire or are revoked (which settles their changes); the approval
    /// service is told, so that `grants list` shows them as ended.
    pub async fn session_ended(&self, id: u64) {
        let grants: Vec<u64> = self
            .state
            .grants()
            .iter()
            .filter(|g| g.scope == crate::policy::GrantScope::Session { session_id: id })
            .map(|g| g.id)
            .collect();
        if grants.is_empty() {
            return;
        }
        self.audit("session_ended", json!({"session": id, "grants": grants}))
            .await;
    }

    /// After the held operations of restored sessions were taken again: their requests
    /// that no operation came back for are closed (`hold_lost`; the operation never
    /// happened, its caller is gone).
    pub async fn close_unresumed(&self, resumed: &[u64]) {
        let left: Vec<(u64, (u64, Vec<u8>))> = {
            let mut map = lock(&self.resumable);
            let gone: Vec<u64> = map
                .keys()
                .filter(|k| !resumed.contains(k))
                .copied()
                .collect();
            gone.into_iter()
                .filter_map(|k| map.remove(&k).map(|v| (k, v)))
                .collect()
        };
        for (id, (session, path)) in left {
            GateMetrics::inc(&self.state.metrics.holds_lost);
            warn!(request = id, session, path = %encode(&path), "a held operation did not come back after the restart: its request is closed");
            self.mark_answered(id).await;
            self.audit(
                "hold_lost",
                json!({"host_request_id": id, "session": session, "path": encode(&path),
                       "why": "the held operation's caller was gone after the daemon restarted; nothing was performed"}),
            )
            .await;
        }
    }

    /// The pending request a held operation taken again after a restart waits on.
    pub(super) fn take_resumable(&self, request_id: u64) -> Option<u64> {
        lock(&self.resumable)
            .remove(&request_id)
            .map(|_| request_id)
    }

    /// The policy the gate runs now.
    pub fn policy(&self) -> Arc<Policy> {
        self.state.policy()
    }

    /// Whether `path` is inside `session`'s declared scope (see [`GateState::within_scope`]).
    pub fn within_scope(&self, session: u64, path: &[u8]) -> Option<bool> {
        self.state.within_scope(session, path)
    }

    /// The live grant that approved `ops` on `path` for `session` (an `ask` rule's grant
    /// whose rule keeps approved changes, `on_expiry = "flag"`), if any: an operation made
    /// under it moves the baseline like an approved write does.
    pub fn approving_grant(
        &self,
        path: &[u8],
        session: u64,
        agent: &str,
        ops: OpSet,
    ) -> Option<u64> {
        let q = self.session_query(path, session, agent, ops);
        let policy = self.state.policy();
        let m = policy.unheld_rule(&q)?;
        if m.builtin || m.rule.verdict != Verdict::Ask || m.rule.on_expiry != OnExpiry::Flag {
            return None;
        }
        self.state
            .grants()
            .find(&m.rule.name, session, agent, path, ops, SystemTime::now())
            .map(|g| g.id)
    }

    /// Puts `policy` in force (a configuration reload): every decision from now on uses it.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.state.set_policy(policy);
    }

    // ---- audit -------------------------------------------------------------------------

    async fn ledger(&self, kind: &'static str, body: Value) {
        self.tally.note(kind, &body);
        if let Err(e) = self.ledger.append_async(kind, body).await {
            GateMetrics::inc(&self.state.metrics.ledger_errors);
            warn!(kind, error = %e, "cannot append to the ledger");
        }
    }

    /// Session `id` ended: what was kept per session for scope checks goes.
    pub fn forget_session_scope(&self, id: u64) {
        self.state.scope_seen.forget(id);
        self.state.forget_scope(id);
    }

    /// The paths outside sessions' scopes already recorded or refused.
    pub fn scope_seen(&self) -> &super::out_of_scope::Seen {
        &self.state.scope_seen
    }

    /// Session `id` started: its counts start (see [`tally`]).
    pub fn session_began(&self, id: u64) {
        self.tally.begin(id);
    }

    /// Session `id`'s counts of ledgered records, forgotten here.
    pub fn session_counts(&self, id: u64) -> SessionCounts {
        self.tally.take(id)
    }

    /// A host ledger record (a session's start or end record).
    pub async fn record(&self, kind: &'static str, body: Value) {
        self.ledger(kind, body).await;
    }

    /// A host ledger record that is also reported to the approval service.
    async fn audit(&self, kind: &'static str, body: Value) {
        if let Err(e) = self.uplink.report(kind, body.clone()).await {
            GateMetrics::inc(&self.state.metrics.report_errors);
            warn!(kind, error = %e, "cannot spool a report for the approval service");
        }
        self.ledger(kind, body).await;
    }

    async fn note_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Note>) {
        while let Some(n) = rx.recv().await {
            if n.kind == "scope_denied" {
                // Outside the session's declared scope: a host record (the supervisor
                // counts and logs them), not a gate decision to report to the service.
                self.ledger(
                    n.kind,
                    json!({"path": encode(&n.path), "session": n.session, "pid": n.pid}),
                )
                .await;
                continue;
            }
            warn!(kind = n.kind, path = %encode(&n.path), session = n.session, pid = n.pid, rule = %n.rule, "gate denied an open");
            self.audit(
                n.kind,
                json!({"path": encode(&n.path), "session": n.session, "pid": n.pid, "rule": n.rule}),
            )
            .await;
        }
    }

    // ---- held opens --------------------------------------------------------------------
}
