//! The async side of the gate: held opens, requests to the approval service, waits,
//! grants, failure verdicts, diffs, expiry (flag or revert) and unapproved renames.
//!
//! Every held open is handled in its own task: the pre-image is read through the event's
//! descriptor (never by path, which would re-enter the gate) on a blocking thread, policy
//! is evaluated again with the exact operations (whether the open created the file is
//! known now), and then the open is allowed, denied, or asked about. Store writes, ledger
//! appends and `/proc` reads all run on blocking threads; the permission thread never waits
//! on any of them.
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use confgate_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::changes::{self, CHANGES, Change};
use super::context;
use super::decider::{GateDecider, GateMetrics, GateState, Note, ops_of};
use super::listener::{Held, PermEvent};
use super::preimage::{self, PreImage};
use super::requests::{
    GRANTS, REQUEST_IDS, REQUEST_PREIMAGES, REQUESTS, RequestPre, RequestRecord,
};
use crate::clock::unix_ms;
use crate::escape::encode;
use crate::ledger::SharedLedger;
use crate::policy::grants::{Grant, GrantSet};
use crate::policy::{
    FailVerdict, GateQuery, Mode, OnExpiry, OpSet, Policy, Rule, SessionRef, Verdict,
};
use crate::session::{SessionInfo, SessionRegistry};
use crate::store::Store;
use crate::uplink::{UplinkHandle, UplinkUpdate};

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
    Closed { path: Vec<u8>, session: u64 },
    /// A session renamed `from` (when known) onto `to`.
    Renamed {
        session: u64,
        agent: String,
        pid: u32,
        from: Option<Vec<u8>>,
        to: Vec<u8>,
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
    /// Paths with a diff scheduled (closes within [`DIFF_DELAY`] share it).
    diff_scheduled: Mutex<HashMap<Vec<u8>, u64>>,
    /// Files renamed onto gated paths lately: path -> (device, inode, when).
    renames_seen: Mutex<HashMap<Vec<u8>, (u64, u64, std::time::Instant)>>,
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
    agent: &'a str,
    ops: OpSet,
    session: Option<&'a SessionInfo>,
    pre: Option<&'a PreImage>,
    created: bool,
    writer: &'a context::Writer,
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
    /// tasks: held opens from `held`, service updates from `updates`, notices from
    /// `notices`, and the expiry timer.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        policy: Arc<Policy>,
        sessions: SessionRegistry,
        store: Store,
        ledger: SharedLedger,
        uplink: UplinkHandle,
        settings: EngineSettings,
        held: mpsc::Receiver<Held>,
        updates: mpsc::Receiver<UplinkUpdate>,
        notices: mpsc::Receiver<Notice>,
    ) -> Result<GateHandles, crate::store::StoreError> {
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
        let released = match super::crash::release_holds(&store) {
            Ok(r) => r,
            Err(e) => {
                GateMetrics::inc(&metrics.store_errors);
                error!(error = %e, "cannot close the holds a crash released; they stay pending");
                Vec::new()
            }
        };
        let mut changes: HashMap<u64, Vec<Change>> = HashMap::new();
        for (_, c) in store.scan(CHANGES)? {
            state.track(c.grant_id, &c.path);
            changes.entry(c.grant_id).or_default().push(c);
        }
        let mut open_requests = HashMap::new();
        for (id, r) in store.scan(REQUESTS)? {
            if r.mode == Mode::DenyAndRequest.as_str() {
                open_requests.insert((r.session, r.path.clone()), id);
            }
        }
        let engine = Arc::new(Engine {
            state: state.clone(),
            store,
            ledger,
            uplink,
            settings,
            waiters: Arc::new(Mutex::new(HashMap::new())),
            diffed: Mutex::new(HashMap::new()),
            diff_scheduled: Mutex::new(HashMap::new()),
            renames_seen: Mutex::new(HashMap::new()),
            open_requests: Mutex::new(open_requests),
            changes: Mutex::new(changes),
        });
        tokio::spawn(engine.clone().held_loop(held));
        tokio::spawn(engine.clone().update_loop(updates));
        tokio::spawn(engine.clone().notice_loop(notices));
        tokio::spawn(engine.clone().note_loop(note_rx));
        tokio::spawn(engine.clone().expiry_loop());
        if !released.is_empty() {
            tokio::spawn(engine.clone().settle_released(released));
        }
        Ok(GateHandles {
            engine,
            decider: Arc::new(GateDecider::new(state)),
            metrics,
        })
    }

    /// Whether a pre-image of `path` is kept (its close-writes are worth a diff).
    pub fn tracks(&self, path: &[u8]) -> bool {
        self.state.is_tracked_path(path)
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

    /// The policy the gate runs.
    pub fn policy(&self) -> &Policy {
        &self.state.policy
    }

    // ---- audit -------------------------------------------------------------------------

    async fn ledger(&self, kind: &'static str, body: Value) {
        if let Err(e) = self.ledger.append_async(kind, body).await {
            GateMetrics::inc(&self.state.metrics.ledger_errors);
            warn!(kind, error = %e, "cannot append to the ledger");
        }
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
            warn!(kind = n.kind, path = %encode(&n.path), session = n.session, pid = n.pid, rule = %n.rule, "gate denied an open");
            self.audit(
                n.kind,
                json!({"path": encode(&n.path), "session": n.session, "pid": n.pid, "rule": n.rule}),
            )
            .await;
        }
    }

    // ---- held opens --------------------------------------------------------------------

    async fn held_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Held>) {
        while let Some(held) = rx.recv().await {
            tokio::spawn(self.clone().handle(held));
        }
    }

    /// On a blocking thread, everything a held open needs before it can wait: the
    /// pre-image through the event's own descriptor, the writer's context from `/proc` up to
    /// its session's root (almost every held open is an `ask`, whose request needs it), the
    /// policy's verdict and, for a hold that no grant covers, the request filed and on its
    /// way to the service. One hand-off between threads instead of three.
    fn prepare(&self, held: Held) -> (Prepared, Next) {
        let ev = held.event();
        let session = self.state.sessions.get(ev.session);
        let root = session.as_ref().map_or(1, |s| s.root_pid);
        let pre = match preimage::capture(&ev.fd, self.state.policy.max_preimage_bytes()) {
            Ok(p) => Some(p),
            Err(e) => {
                GateMetrics::inc(&self.state.metrics.preimage_errors);
                warn!(path = %encode(&ev.path), error = %e, "cannot read the pre-image");
                None
            }
        };
        let writer = context::writer(ev.tgid, root);
        let created = match (&pre, ev.intent.as_ref()) {
            (Some(p), Some(i)) => preimage::created_by_open(p, i),
            _ => false,
        };
        let agent = self.state.agent(ev.session);
        let agent = agent.as_deref().unwrap_or("");
        let q = GateQuery {
            path: &ev.path,
            session: (ev.session != 0).then_some(SessionRef {
                id: ev.session,
                agent,
            }),
            ops: ops_of(ev, created),
            write: ev.is_write(),
        };
        let next = match self.state.policy.evaluate(&q) {
            None => Next::Allow,
            Some(m) => match (m.builtin, m.rule.verdict) {
                (false, Verdict::Allow) => Next::Allow,
                (true, _) | (false, Verdict::Deny) => Next::Deny(m.rule),
                (false, Verdict::Ask) => {
                    let asked = Asked {
                        ev,
                        agent,
                        ops: q.ops,
                        session: session.as_ref(),
                        pre: pre.as_ref(),
                        created,
                        writer: &writer,
                    };
                    self.ask(asked, m.rule)
                }
            },
        };
        let p = Prepared {
            held,
            pre,
            created,
            writer,
            session,
        };
        (p, next)
    }

    /// An `ask`: a live grant lets the open through; a hold files its request now.
    fn ask(&self, a: Asked<'_>, rule: Arc<Rule>) -> Next {
        let ev = a.ev;
        if let Some(g) =
            self.state
                .grants()
                .find(ev.session, a.agent, &ev.path, a.ops, SystemTime::now())
        {
            return Next::Granted(g.id);
        }
        if rule.mode == Mode::DenyAndRequest {
            return Next::DenyAndRequest(rule, a.ops);
        }
        let t_ask = ev.received.elapsed();
        let ctx = self.request_context(
            a.writer, a.session, &ev.path, a.ops, a.pre, a.created, &rule,
        );
        let (tx, rx) = oneshot::channel();
        let keep = a.pre.cloned().map(|pre| Keep {
            pre,
            path: ev.path.clone(),
            session: ev.session,
            created: a.created,
        });
        let waiter = Waiter {
            tx,
            rule: rule.name.clone(),
            keep,
        };
        let filed = self
            .file_now(
                ctx,
                &rule,
                rule.timeout,
                Some(waiter),
                a.pre.map(|p| (p, a.created)),
            )
            .map(|(request_id, body)| {
                let filed = Filed {
                    request_id,
                    rx,
                    t_ask,
                    t_filed: ev.received.elapsed(),
                };
                (filed, body)
            });
        Next::Hold { rule, filed }
    }

    async fn handle(self: Arc<Self>, held: Held) {
        let me = Arc::clone(&self);
        let Some((p, next)) = blocking(move || me.prepare(held)).await else {
            GateMetrics::inc(&self.state.metrics.preimage_errors);
            return;
        };
        match next {
            Next::Allow => {
                let _ = p.held.allow();
            }
            Next::Deny(rule) => {
                let ev = p.held.event();
                let body = json!({"path": encode(&ev.path), "session": ev.session,
                                  "pid": ev.tgid, "rule": rule.name});
                GateMetrics::inc(&self.state.metrics.denied_by_policy);
                self.deny(p.held, p.created).await;
                self.audit("denied_by_policy", body).await;
            }
            Next::Granted(grant_id) => {
                let ev = p.held.event();
                let (path, session_id) = (ev.path.clone(), ev.session);
                self.track(grant_id, &path, session_id, p.pre.as_ref(), p.created)
                    .await;
                GateMetrics::inc(&self.state.metrics.allowed_by_grant);
                let _ = p.held.allow();
            }
            Next::DenyAndRequest(rule, ops) => self.deny_and_request(p, ops, &rule).await,
            Next::Hold { rule, filed } => {
                let Some((filed, body)) = filed else {
                    self.fallback(
                        p.held,
                        rule.fail == FailVerdict::Allow,
                        p.pre,
                        p.created,
                        &rule.name,
                        "the request could not be filed",
                    )
                    .await;
                    return;
                };
                self.ledger("request", body).await;
                self.await_decision(p.held, p.pre, p.created, &rule, filed)
                    .await
            }
        }
    }

    /// Denies, first removing the file if this very open created it.
    async fn deny(&self, held: Held, created: bool) {
        if created {
            let path = held.event().path.clone();
            let fd_stat = nix::sys::stat::fstat(&held.event().fd).ok();
            let removed = blocking(move || remove_if_same(&path, fd_stat))
                .await
                .unwrap_or(false);
            if removed {
                GateMetrics::inc(&self.state.metrics.created_removed);
            }
        }
        GateMetrics::inc(&self.state.metrics.denied);
        let _ = held.deny();
    }

    /// Deny-and-request: the open is denied at once and a request filed (unless one for
    /// the same session and path is pending) for a retry after approval.
    async fn deny_and_request(self: &Arc<Self>, p: Prepared, ops: OpSet, rule: &Arc<Rule>) {
        let Prepared {
            held,
            pre,
            created,
            writer,
            session,
        } = p;
        let ev = held.event();
        let path = ev.path.clone();
        let key = (ev.session, path.clone());
        // The context was read while the writer was still held: once denied, it may exit
        // and take its `/proc` entry (command line, CONFGATE_REASON) with it.
        // Checked and claimed in one step: a retry that arrives while this request is being
        // filed (an agent retrying at once) must not file a second one. The claim holds
        // id 0 until the request has its id, and is released if filing fails.
        let pending = {
            let mut open = lock(&self.open_requests);
            match open.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(0);
                    false
                }
            }
        };
        let ctx = (!pending).then(|| {
            self.request_context(
                &writer,
                session.as_ref(),
                &path,
                ops,
                pre.as_ref(),
                created,
                rule,
            )
        });
        self.deny(held, created).await;
        let Some(ctx) = ctx else {
            return;
        };
        let me = Arc::clone(self);
        let r = Arc::clone(rule);
        let lifetime = self.state.policy.request_ttl();
        let filed = blocking(move || me.file_now(ctx, &r, lifetime, None, None))
            .await
            .flatten();
        match filed {
            Some((id, body)) => {
                lock(&self.open_requests).insert(key, id);
                self.ledger("request", body).await;
            }
            None => {
                lock(&self.open_requests).remove(&key);
            }
        }
    }

    /// A hold whose request is filed: waits for the decision (or the rule's timeout) and
    /// applies it.
    async fn await_decision(
        &self,
        held: Held,
        pre: Option<PreImage>,
        created: bool,
        rule: &Rule,
        filed: Filed,
    ) {
        let Filed {
            request_id,
            rx,
            t_ask,
            t_filed,
        } = filed;
        let ev = held.event();
        let path = ev.path.clone();
        let session_id = ev.session;
        let lifetime = rule.timeout;
        let fail_allows = rule.fail == FailVerdict::Allow;
        let outcome = tokio::time::timeout(lifetime, rx).await;
        lock(&self.waiters).remove(&request_id);
        let received = held.event().received;
        let t_decided = received.elapsed();
        match outcome {
            Ok(Ok(Outcome::Approved(grant_id, kept))) => {
                match kept {
                    Some(change) => self.keep_tracked(change),
                    None => {
                        self.track(grant_id, &path, session_id, pre.as_ref(), created)
                            .await
                    }
                }
                GateMetrics::inc(&self.state.metrics.approved);
                let _ = held.allow();
                let t_allowed = received.elapsed();
                debug!(
                    request = request_id,
                    pre_image_us = t_ask.as_micros(),
                    filed_us = (t_filed - t_ask).as_micros(),
                    decided_us = (t_decided - t_filed).as_micros(),
                    tracked_us = (t_allowed - t_decided).as_micros(),
                    total_us = t_allowed.as_micros(),
                    "held open approved"
                );
            }
            Ok(Ok(Outcome::Denied)) => {
                GateMetrics::inc(&self.state.metrics.denied_by_approver);
                self.deny(held, created).await;
            }
            Ok(Ok(Outcome::Rejected)) => {
                self.fallback(
                    held,
                    fail_allows,
                    pre,
                    created,
                    &rule.name,
                    "the approval service rejected the request",
                )
                .await
            }
            Ok(Ok(Outcome::Expired(allow))) => {
                self.fallback(
                    held,
                    allow,
                    pre,
                    created,
                    &rule.name,
                    "the approval service expired the request",
                )
                .await
            }
            Ok(Err(_)) | Err(_) => {
                GateMetrics::inc(&self.state.metrics.hold_timeouts);
                self.mark_answered(request_id).await;
                self.fallback(
                    held,
                    fail_allows,
                    pre,
                    created,
                    &rule.name,
                    "no answer before the rule's timeout",
                )
                .await
            }
        }
    }

    /// The context an approver sees: the writer and its ancestry (read from `/proc` while
    /// the writer was held), the session, the operation and reason.
    #[allow(clippy::too_many_arguments)]
    fn request_context(
        &self,
        writer: &context::Writer,
        session: Option<&SessionInfo>,
        path: &[u8],
        ops: OpSet,
        pre: Option<&PreImage>,
        created: bool,
        rule: &Rule,
    ) -> pb::RequestContext {
        context::request_context(context::ContextInput {
            host: &self.settings.host,
            session,
            writer,
            path,
            operations: ops.to_strings(),
            content_sha256: pre
                .filter(|_| !created)
                .map(|p| preimage::hex(&p.sha256))
                .unwrap_or_default(),
            rule: &rule.name,
            mode: rule.mode.as_str(),
            fail_verdict: rule.fail.as_str(),
        })
    }

    /// Applies a failure verdict: counted, logged, in the ledger and reported.
    async fn fallback(
        &self,
        held: Held,
        allow: bool,
        pre: Option<PreImage>,
        created: bool,
        rule: &str,
        why: &str,
    ) {
        let ev = held.event();
        let path = ev.path.clone();
        let session = ev.session;
        warn!(path = %encode(&path), session, rule, allow, why, "gate applied a failure verdict");
        let body = json!({
            "path": encode(&path), "session": session, "pid": ev.tgid, "rule": rule,
            "verdict": if allow { "allow" } else { "deny" }, "why": why,
        });
        if allow {
            GateMetrics::inc(&self.state.metrics.fallback_allow);
            // Nobody approved this change: keep the pre-image so that it is diffed and
            // flagged at close like any unapproved change.
            self.track(0, &path, session, pre.as_ref(), created).await;
            let _ = held.allow();
        } else {
            GateMetrics::inc(&self.state.metrics.fallback_deny);
            self.deny(held, created).await;
        }
        self.audit("fallback_verdict", body).await;
    }

    /// Files a request with the approval service: recorded in the store and spooled (one
    /// commit that does not wait for the disk), handed to the uplink at once, and made
    /// durable in the background (usually by the commit of its decision, see
    /// [`REQUEST_SYNC_GRACE`]). Returns the host request id and the body of its ledger line,
    /// or `None` if it could not even be spooled (counted; the caller applies the failure
    /// verdict). Blocks: call it on a blocking thread.
    ///
    /// A hold keeps the held file's pre-image with its request (`held`: the pre-image and
    /// whether the open created the file) so that a write a crash let through is found and
    /// undone at the next start.
    fn file_now(
        &self,
        ctx: pb::RequestContext,
        rule: &Rule,
        lifetime: Duration,
        waiter: Option<Waiter>,
        held: Option<(&PreImage, bool)>,
    ) -> Option<(u64, Value)> {
        let created = unix_ms(SystemTime::now());
        let deadline =
            created.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        let record = RequestRecord {
            rule: rule.name.clone(),
            session: ctx.session_id,
            path: crate::escape::decode(&ctx.path).unwrap_or_else(|| ctx.path.clone().into()),
            mode: rule.mode.as_str().to_owned(),
            created_unix_ms: created,
            deadline_unix_ms: deadline,
            pre: held.map(|(p, created)| RequestPre::of(p, created)),
            answered: false,
        };
        let keep_content = held
            .filter(|_| record.pre.as_ref().is_some_and(|p| p.content_kept))
            .and_then(|(p, _)| p.content.as_deref());
        // One transaction records the request (for a decision after a restart) and spools it
        // for the service. The waiter is registered inside it, before the request can leave:
        // a decision can then never arrive before its waiter.
        let mut allocated = 0;
        let mut submit = pb::SubmitRequest {
            host_request_id: 0,
            context: Some(ctx.clone()),
            created_unix_ms: created,
            deadline_unix_ms: deadline,
        };
        let filed = self.uplink.submit_now(|tx| {
            let id = tx.next_id(REQUEST_IDS)?;
            tx.put(REQUESTS, id, &record)?;
            if let Some(content) = keep_content {
                tx.put_blob(REQUEST_PREIMAGES, id, content)?;
            }
            allocated = id;
            if let Some(w) = waiter {
                lock(&self.waiters).insert(id, w);
            }
            submit.host_request_id = id;
            Ok(submit)
        });
        let id = match filed {
            Ok((id, unsynced)) => {
                let uplink = self.uplink.clone();
                let metrics = Arc::clone(&self.state.metrics);
                tokio::spawn(async move {
                    // The grace is waited here, not on a blocking thread: a burst of
                    // requests must not park the blocking pool.
                    tokio::time::sleep(REQUEST_SYNC_GRACE).await;
                    if let Err(e) = uplink.sync(unsynced).await {
                        GateMetrics::inc(&metrics.store_errors);
                        warn!(request = id, error = %e, "cannot make the approval request durable");
                    }
                });
                id
            }
            Err(e) => {
                GateMetrics::inc(&self.state.metrics.request_errors);
                warn!(error = %e, "cannot record and spool the approval request");
                lock(&self.waiters).remove(&allocated);
                return None;
            }
        };
        let body = json!({
            "host_request_id": id, "path": ctx.path, "session": ctx.session_id,
            "agent": ctx.agent, "pid": ctx.pid, "user": ctx.user, "command": ctx.command,
            "operations": ctx.operations, "reason": ctx.reason, "rule": ctx.rule,
            "mode": ctx.mode, "fail_verdict": ctx.fail_verdict,
            "content_sha256": ctx.content_sha256, "deadline_unix_ms": deadline,
        });
        info!(request = id, path = %ctx.path, session = ctx.session_id, agent = %ctx.agent, rule = %ctx.rule, reason = %ctx.reason, "approval requested");
        GateMetrics::inc(&self.state.metrics.requests);
        Some((id, body))
    }

    /// Records each hold that a crash released (see [`super::crash`]) and settles what it
    /// changed: diffed, then reverted under the rule's `on_expiry = "revert"` when its
    /// pre-image was kept, else flagged.
    async fn settle_released(self: Arc<Self>, released: Vec<super::crash::Released>) {
        for r in released {
            GateMetrics::inc(&self.state.metrics.released_by_crash);
            let body = serde_json::to_value(r.record()).unwrap_or(Value::Null);
            error!(request = r.host_request_id, path = %encode(&r.record.path), session = r.record.session, changed = ?r.finding.changed(), "a held write was released by a daemon crash without a decision");
            self.audit("released_by_crash", body).await;
            if let super::crash::Finding::Changed { change, .. } = r.finding
                && self.take_unapproved(change.id)
            {
                let action = self.on_expiry_of(&r.record.rule);
                self.settle(change, action, "released_by_crash").await;
            }
        }
    }

    /// Takes the unapproved change `id` (grant 0) out of the kept ones; false if another
    /// task settled it already.
    fn take_unapproved(&self, id: u64) -> bool {
        let mut all = lock(&self.changes);
        let list = all.entry(0).or_default();
        let before = list.len();
        list.retain(|c| c.id != id);
        list.len() != before
    }

    /// A hold answered here (its timeout) while its request stays open at the service:
    /// not one that a crash released.
    async fn mark_answered(&self, id: u64) {
        let store = self.store.clone();
        let res = blocking(move || {
            store.write_lazy(|tx| {
                if let Some(mut r) = tx.get(REQUESTS, id)? {
                    r.answered = true;
                    tx.put(REQUESTS, id, &r)?;
                }
                tx.remove_blob(REQUEST_PREIMAGES, id).map(|_| ())
            })
        })
        .await;
        if !matches!(res, Some(Ok(()))) {
            GateMetrics::inc(&self.state.metrics.store_errors);
        }
    }

    async fn forget_request(&self, id: u64) {
        let store = self.store.clone();
        let res = blocking(move || {
            store.write(|tx| {
                tx.remove(REQUESTS, id)?;
                tx.remove_blob(REQUEST_PREIMAGES, id).map(|_| ())
            })
        })
        .await;
        if !matches!(res, Some(Ok(()))) {
            GateMetrics::inc(&self.state.metrics.store_errors);
        }
    }

    /// Keeps the pre-image of `path` under `grant_id`, once per grant and path.
    async fn track(
        &self,
        grant_id: u64,
        path: &[u8],
        session: u64,
        pre: Option<&PreImage>,
        created: bool,
    ) {
        if self.state.is_tracked(grant_id, path) {
            self.state.touch_writer(grant_id, path);
            return;
        }
        let Some(pre) = pre.cloned() else {
            return;
        };
        let store = self.store.clone();
        let p = path.to_vec();
        let res =
            blocking(move || changes::record(&store, &pre, &p, grant_id, session, !created)).await;
        match res {
            Some(Ok(change)) => self.keep_tracked(change),
            Some(Err(e)) => {
                GateMetrics::inc(&self.state.metrics.preimage_errors);
                warn!(path = %encode(path), error = %e, "cannot keep the pre-image");
            }
            None => GateMetrics::inc(&self.state.metrics.preimage_errors),
        }
    }

    /// The ledger record of a new grant.
    fn grant_body(&self, grant: &Grant, host_request_id: u64, d: &pb::Decision) -> Value {
        json!({"grant": grant.id, "host_request_id": host_request_id,
               "request_id": d.request_id, "by": d.decided_by, "note": d.note,
               "scope": grant.scope,
               "operations": grant.ops.to_strings(),
               "expires_unix_ms": unix_ms(grant.expires_at),
               "path_glob": grant.path_glob.as_str(), "rule": grant.rule,
               "on_expiry": grant.on_expiry.as_str()})
    }

    /// Remembers a kept pre-image (already in the store) until its grant ends.
    fn keep_tracked(&self, change: Change) {
        self.state.track(change.grant_id, &change.path);
        lock(&self.changes)
            .entry(change.grant_id)
            .or_default()
            .push(change);
    }

    // ---- decisions from the approval service --------------------------------------------

    /// Applies the service's updates. Decisions of different requests are independent and
    /// are applied concurrently (each waits for its own commit and ledger line: applied
    /// one after the other, 2000 decisions took ~17 s of fsyncs before the last writer was
    /// released); a decision repeated while the first is being applied is dropped, and a
    /// revocation waits for every decision before it (its grant may be among them).
    async fn update_loop(self: Arc<Self>, mut rx: mpsc::Receiver<UplinkUpdate>) {
        let mut applying = tokio::task::JoinSet::new();
        let in_flight: Arc<Mutex<std::collections::HashSet<u64>>> = Arc::default();
        while let Some(u) = rx.recv().await {
            while applying.try_join_next().is_some() {}
            match u {
                UplinkUpdate::Decision {
                    host_request_id,
                    decision,
                    ..
                } => {
                    if !lock(&in_flight).insert(host_request_id) {
                        continue;
                    }
                    let me = Arc::clone(&self);
                    let flight = Arc::clone(&in_flight);
                    applying.spawn(async move {
                        me.on_decision(host_request_id, decision).await;
                        lock(&flight).remove(&host_request_id);
                    });
                }
                UplinkUpdate::Revoked { grant, .. } => {
                    while applying.join_next().await.is_some() {}
                    let removed = self.state.grants_mut().remove(grant.id);
                    if let Some(g) = removed {
                        GateMetrics::inc(&self.state.metrics.grants_revoked);
                        self.end_grant(g, "revoked").await;
                    }
                }
                UplinkUpdate::Rejected {
                    host_request_id,
                    error,
                } => self.on_rejected(host_request_id, error).await,
            }
        }
    }

    /// The service refused a request: never silent (counted, logged, ledgered), and the
    /// open waiting on it gets its rule's failure verdict now rather than at its timeout.
    async fn on_rejected(&self, host_request_id: u64, error: String) {
        GateMetrics::inc(&self.state.metrics.requests_rejected);
        warn!(request = host_request_id, %error, "the approval service rejected the request; its failure verdict applies");
        self.ledger(
            "request_rejected",
            json!({"host_request_id": host_request_id, "error": error}),
        )
        .await;
        lock(&self.open_requests).retain(|_, id| *id != host_request_id);
        self.forget_request(host_request_id).await;
        if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
            let _ = w.tx.send(Outcome::Rejected);
        }
    }

    /// The on_expiry of the rule that filed the request (`flag` if the rule is gone).
    fn on_expiry_of(&self, rule: &str) -> OnExpiry {
        self.state
            .policy
            .rule(rule)
            .map_or(OnExpiry::Flag, |r| r.on_expiry)
    }

    async fn on_decision(&self, host_request_id: u64, d: pb::Decision) {
        // The rule that filed the request: from its waiting open, else from its record.
        let waiting = lock(&self.waiters)
            .get(&host_request_id)
            .map(|w| w.rule.clone());
        let filed_rule = match waiting {
            Some(rule) => Some(rule),
            None => {
                let store = self.store.clone();
                blocking(move || store.get(REQUESTS, host_request_id))
                    .await
                    .and_then(Result::ok)
                    .flatten()
                    .map(|r| r.rule)
            }
        };
        let state = pb::RequestState::try_from(d.state).unwrap_or(pb::RequestState::Unspecified);
        // Whether the request's record is already gone (removed with the grant).
        let mut request_ended = false;
        let outcome = match state {
            pb::RequestState::Approved => {
                let Some(pg) = d.grant.as_ref() else {
                    GateMetrics::inc(&self.state.metrics.update_errors);
                    warn!(
                        request = host_request_id,
                        "approval without a grant: ignored"
                    );
                    return;
                };
                let rule = filed_rule.clone().unwrap_or_else(|| "unknown".to_owned());
                let grant = match Grant::from_proto(pg, &rule, self.on_expiry_of(&rule)) {
                    Ok(g) => g,
                    Err(e) => {
                        GateMetrics::inc(&self.state.metrics.update_errors);
                        warn!(request = host_request_id, error = %e, "invalid grant: ignored");
                        return;
                    }
                };
                let known = self.state.grants().get(grant.id).is_some();
                // The open waiting on this request leaves the map now: its pre-image is kept
                // in the grant's own commit (one disk wait, not two).
                let mut waiter = lock(&self.waiters).remove(&host_request_id);
                let keep = waiter
                    .as_mut()
                    .and_then(|w| w.keep.take())
                    .filter(|k| !self.state.is_tracked(grant.id, &k.path));
                let mut kept = None;
                if !known || keep.is_some() {
                    // Grant, end of its request and the pre-image in one commit, with the
                    // ledger line written meanwhile.
                    let store = self.store.clone();
                    let g = grant.clone();
                    let end_request = !known && filed_rule.is_some();
                    let save = blocking(move || {
                        store.write(|tx| {
                            if !known {
                                tx.put(GRANTS, g.id, &g)?;
                            }
                            if end_request {
                                tx.remove(REQUESTS, host_request_id)?;
                                tx.remove_blob(REQUEST_PREIMAGES, host_request_id)?;
                            }
                            keep.map(|k| {
                                changes::record_in(tx, &k.pre, &k.path, g.id, k.session, !k.created)
                            })
                            .transpose()
                        })
                    });
                    if !known {
                        info!(grant = grant.id, request = host_request_id, by = %d.decided_by, path_glob = %grant.path_glob.as_str(), "approved: grant live");
                    }
                    let audit = async {
                        if !known {
                            self.ledger("grant", self.grant_body(&grant, host_request_id, &d))
                                .await;
                        }
                    };
                    let (saved, ()) = tokio::join!(save, audit);
                    match saved {
                        Some(Ok(change)) => {
                            request_ended = end_request;
                            kept = change;
                        }
                        other => {
                            GateMetrics::inc(&self.state.metrics.store_errors);
                            warn!(grant = grant.id, error = ?other.map(|r| r.err()), "cannot persist the grant; it holds until restart");
                        }
                    }
                    if !known {
                        self.state.grants_mut().insert(grant.clone());
                        self.state.count_grants();
                    }
                }
                if let Some(w) = waiter.take() {
                    let _ = w.tx.send(Outcome::Approved(grant.id, kept));
                }
                Outcome::Approved(grant.id, None)
            }
            pb::RequestState::Denied => {
                info!(request = host_request_id, by = %d.decided_by, "denied by approver");
                // A denied writer does not wait for the ledger: nothing it could do
                // depends on that line being on disk (the service keeps the decision).
                if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
                    let _ = w.tx.send(Outcome::Denied);
                }
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "denied", "by": d.decided_by, "note": d.note}),
                )
                .await;
                Outcome::Denied
            }
            pb::RequestState::Expired => {
                if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
                    let _ = w.tx.send(Outcome::Expired(d.verdict == "allow"));
                }
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "expired", "verdict": d.verdict}),
                )
                .await;
                Outcome::Expired(d.verdict == "allow")
            }
            pb::RequestState::Released => {
                // This host closed it itself at start (a crash released the hold): the
                // service confirms. Nothing waits on it.
                debug!(
                    request = host_request_id,
                    "the service closed a request a crash released"
                );
                return;
            }
            _ => {
                GateMetrics::inc(&self.state.metrics.update_errors);
                warn!(
                    request = host_request_id,
                    state = d.state,
                    "decision in an unexpected state: ignored"
                );
                return;
            }
        };
        lock(&self.open_requests).retain(|_, id| *id != host_request_id);
        if filed_rule.is_some() && !request_ended {
            self.forget_request(host_request_id).await;
        }
        if let Some(w) = lock(&self.waiters).remove(&host_request_id) {
            let _ = w.tx.send(outcome);
        }
    }

    // ---- grant expiry ------------------------------------------------------------------

    async fn expiry_loop(self: Arc<Self>) {
        loop {
            let expired = self.state.grants_mut().take_expired(SystemTime::now());
            for g in expired {
                GateMetrics::inc(&self.state.metrics.grants_expired);
                self.end_grant(g, "expired").await;
            }
            let next = self.state.grants().next_expiry();
            let wait = next
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(EXPIRY_POLL)
                .clamp(Duration::from_millis(10), EXPIRY_POLL);
            tokio::time::sleep(wait).await;
        }
    }

    /// A grant ended (expired or revoked): flag or revert every change made under it.
    async fn end_grant(&self, grant: Grant, why: &'static str) {
        self.state.count_grants();
        let store = self.store.clone();
        let id = grant.id;
        if !matches!(
            blocking(move || store.write(|tx| tx.remove(GRANTS, id).map(|_| ()))).await,
            Some(Ok(()))
        ) {
            GateMetrics::inc(&self.state.metrics.store_errors);
        }
        let changes = lock(&self.changes).remove(&grant.id).unwrap_or_default();
        info!(
            grant = grant.id,
            why,
            changes = changes.len(),
            on_expiry = grant.on_expiry.as_str(),
            "grant ended"
        );
        self.audit(
            "grant_ended",
            json!({"grant": grant.id, "why": why, "changes": changes.len(),
                   "path_glob": grant.path_glob.as_str(),
                   "on_expiry": grant.on_expiry.as_str()}),
        )
        .await;
        for c in changes {
            self.settle(c, grant.on_expiry, why).await;
        }
    }

    /// Flags or reverts one change, then forgets it.
    async fn settle(&self, change: Change, action: OnExpiry, why: &'static str) {
        lock(&self.diffed).remove(&change.id);
        let store = self.store.clone();
        let c = change.clone();
        // A change known not to be revertible is flagged, with its reason, under either
        // action.
        let action = match (&change.unrevertable, action) {
            (Some(_), OnExpiry::Revert) => OnExpiry::Flag,
            (_, a) => a,
        };
        let res = blocking(move || {
            let diff = changes::diff(&store, &c);
            let reverted = match action {
                OnExpiry::Revert => Some(changes::revert_own(&store, &c)),
                OnExpiry::Flag => None,
            };
            (diff, reverted)
        })
        .await;
        let (diff, reverted) = match res {
            Some((d, r)) => (d.ok(), r),
            None => (None, None),
        };
        let mut base = json!({"path": change.path_text(), "grant": change.grant_id,
                          "session": change.session_id, "why": why, "diff": diff,
                          "pre_image_sha256": change.sha256});
        if let Some(u) = &change.unrevertable {
            base["unrevertable"] = json!(u);
        }
        match reverted {
            None => {
                GateMetrics::inc(&self.state.metrics.changes_flagged);
                warn!(path = %change.path_text(), grant = change.grant_id, why, "change no longer covered by an approval: flagged");
                self.audit("change_flagged", base).await;
            }
            Some(Ok(r)) => {
                GateMetrics::inc(&self.state.metrics.changes_reverted);
                info!(path = %change.path_text(), grant = change.grant_id, result = ?r, "change reverted to its pre-image");
                let mut body = base;
                body["result"] = json!(r);
                self.audit("reverted", body).await;
            }
            Some(Err(changes::ChangeError::Conflict { why, .. })) => {
                GateMetrics::inc(&self.state.metrics.changes_flagged);
                GateMetrics::inc(&self.state.metrics.revert_conflicts);
                warn!(path = %change.path_text(), grant = change.grant_id, why = %why, "change not reverted: later changes conflict with it; flagged");
                let mut body = base;
                body["not_reverted"] = json!(why);
                self.audit("change_flagged", body).await;
            }
            Some(Err(e)) => {
                GateMetrics::inc(&self.state.metrics.revert_errors);
                warn!(path = %change.path_text(), error = %e, "cannot revert");
                let mut body = base;
                body["error"] = json!(e.to_string());
                self.audit("revert_failed", body).await;
            }
        }
        self.state.untrack(change.grant_id, &change.path);
        let store = self.store.clone();
        let id = change.id;
        if !matches!(
            blocking(move || changes::forget(&store, id)).await,
            Some(Ok(()))
        ) {
            GateMetrics::inc(&self.state.metrics.store_errors);
        }
    }

    // ---- notices from the event pipeline ------------------------------------------------

    async fn notice_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Notice>) {
        while let Some(n) = rx.recv().await {
            match n {
                Notice::Closed { path, session } => {
                    // Closes of the same file within DIFF_DELAY are diffed once, after the
                    // last of them (whose session owns the change): an agent that opens and
                    // closes a file in a loop costs one read of it per DIFF_DELAY, not one
                    // per close.
                    if lock(&self.diff_scheduled)
                        .insert(path.clone(), session)
                        .is_none()
                    {
                        let me = Arc::clone(&self);
                        tokio::spawn(async move {
                            tokio::time::sleep(DIFF_DELAY).await;
                            let closer = lock(&me.diff_scheduled).remove(&path).unwrap_or(0);
                            me.on_closed(path, closer).await;
                        });
                    } else {
                        GateMetrics::inc(&self.state.metrics.diffs_coalesced);
                    }
                }
                Notice::Renamed {
                    session,
                    agent,
                    pid,
                    from,
                    to,
                } => self.on_renamed(session, &agent, pid, from, to).await,
            }
        }
    }

    /// Records the diff of a gated file after a close-write. The change is the one of the
    /// grant that let the latest write open through (not of every grant live on the path:
    /// one write is one change, owned by the grant and session that made it), and the file
    /// as it is now becomes that change's post-image. A change that a failure verdict let
    /// through (nobody approved it) is flagged right away.
    async fn on_closed(&self, path: Vec<u8>, closer: u64) {
        let writer = self.owner_of_close(&path, closer);
        let tracked: Vec<Change> = lock(&self.changes)
            .values()
            .flatten()
            .filter(|c| c.path == path)
            .cloned()
            .collect();
        for c in tracked {
            if c.grant_id == 0 {
                if self.take_unapproved(c.id) {
                    self.settle(c, OnExpiry::Flag, "allowed_by_failure_verdict")
                        .await;
                }
                continue;
            }
            if writer != Some(c.grant_id) {
                continue;
            }
            let store = self.store.clone();
            let cc = c.clone();
            let recorded = lock(&self.diffed).get(&c.id).cloned();
            let max = self.state.policy.max_preimage_bytes();
            let res =
                blocking(move || changes::diff_own_close(&store, &cc, recorded.as_deref(), max))
                    .await;
            if let Some(Ok(None)) = res {
                GateMetrics::inc(&self.state.metrics.diffs_unchanged);
            }
            if let Some(Ok(Some(d))) = res {
                GateMetrics::inc(&self.state.metrics.diffs);
                lock(&self.diffed).insert(c.id, d.after_sha256.clone());
                self.ledger(
                    "change",
                    json!({"grant": c.grant_id, "session": c.session_id, "diff": d}),
                )
                .await;
            }
        }
    }

    /// Which grant's change a close-write by a process of session `closer` belongs to: the
    /// latest writer grant whose change was made by that session, else (an agent-scoped
    /// grant used by another session of the agent) the latest writer grant. A close
    /// outside any session belongs to no grant: its edit stays someone else's.
    fn owner_of_close(&self, path: &[u8], closer: u64) -> Option<u64> {
        if closer == 0 {
            return None;
        }
        let writers = self.state.writers(path);
        let all = lock(&self.changes);
        let by_session = writers.iter().rev().find(|g| {
            all.get(g)
                .is_some_and(|cs| cs.iter().any(|c| c.path == path && c.session_id == closer))
        });
        by_session.or(writers.last()).copied()
    }

    /// A rename by a session onto a gated path: the gate could not hold it (a rename opens
    /// nothing). It is handled once per file that arrived at the path (the same rename seen
    /// twice, or a failed one, changes nothing). A rename of a file that a live grant let
    /// this session write, within one directory (an editor's or `sed -i`'s or dpkg's temp
    /// file moved onto its final name), is covered by that grant: the approver decided on
    /// that content. Otherwise it is unapproved: flagged, or reverted when the rule's
    /// `on_expiry` is `revert` (or the path is confgate's own) and a pre-image of the path
    /// is kept; with nothing to restore it is flagged, never removed.
    async fn on_renamed(
        &self,
        session: u64,
        agent: &str,
        pid: u32,
        from: Option<Vec<u8>>,
        to: Vec<u8>,
    ) {
        let ops = OpSet::RENAME;
        let q = GateQuery {
            path: &to,
            session: Some(SessionRef { id: session, agent }),
            ops,
            write: true,
        };
        let Some(m) = self.state.policy.unheld_rule(&q) else {
            return;
        };
        // What is at the target now: nothing (moved on already) is nothing to act on, and
        // a file already handled at this path is not handled twice.
        let Some((dev, ino)) = file_id(&to) else {
            debug!(path = %encode(&to), "rename target gone before it was handled");
            return;
        };
        if !self.first_sight(&to, dev, ino) {
            GateMetrics::inc(&self.state.metrics.renames_repeated);
            return;
        }
        if !m.builtin && m.rule.verdict == Verdict::Ask {
            let now = SystemTime::now();
            if self
                .state
                .grants()
                .find(session, agent, &to, ops, now)
                .is_some()
            {
                return;
            }
            if let Some(from) = from.as_deref()
                && self.cover_temp_rename(session, from, &to, (dev, ino)).await
            {
                return;
            }
        }
        GateMetrics::inc(&self.state.metrics.unapproved_renames);
        let revert = m.builtin || m.rule.on_expiry == OnExpiry::Revert;
        let mut body = json!({
            "path": encode(&to), "from": from.as_deref().map(encode), "session": session,
            "agent": agent, "pid": pid, "rule": m.rule.name,
            "action": if revert { "revert" } else { "flag" },
        });
        if !revert {
            warn!(path = %encode(&to), session, agent, pid, "unapproved rename into a gated tree: flagged");
            GateMetrics::inc(&self.state.metrics.changes_flagged);
            self.audit("unapproved_rename", body).await;
            return;
        }
        // Undo: put the last kept pre-image of that path back over the renamed-in file
        // (kept in quarantine). Without one there is nothing to restore: moving the file
        // away would leave the path with nothing, so it is flagged instead.
        let pre: Option<Change> = lock(&self.changes)
            .values()
            .flatten()
            .filter(|c| c.path == to && c.existed && c.content_kept)
            .max_by_key(|c| c.id)
            .cloned();
        let Some(pre) = pre else {
            GateMetrics::inc(&self.state.metrics.renames_unrestorable);
            GateMetrics::inc(&self.state.metrics.changes_flagged);
            error!(path = %encode(&to), session, agent, pid, "unapproved rename into a gated tree cannot be reverted: no pre-image of the path is kept; the renamed-in file is left in place (flagged)");
            body["action"] = json!("flag");
            body["why"] = json!(
                "no pre-image of this path is kept: nothing to restore; the renamed-in file is left in place"
            );
            self.audit("unapproved_rename", body).await;
            return;
        };
        warn!(path = %encode(&to), session, agent, pid, "unapproved rename into a gated tree: reverting");
        let store = self.store.clone();
        let quarantine = self.settings.quarantine_dir.clone();
        let res = blocking(move || changes::restore_replacing(&store, &pre, &quarantine)).await;
        match res {
            Some(Ok(kept)) => {
                GateMetrics::inc(&self.state.metrics.changes_reverted);
                body["quarantined_as"] = json!(encode(kept.as_os_str().as_bytes()));
                body["restored"] = json!("restored");
            }
            Some(Err(e)) => {
                GateMetrics::inc(&self.state.metrics.revert_errors);
                error!(path = %encode(&to), error = %e, "cannot revert an unapproved rename");
                body["error"] = json!(e.to_string());
            }
            None => GateMetrics::inc(&self.state.metrics.revert_errors),
        }
        self.audit("unapproved_rename", body).await;
    }

    /// Whether the file `(dev, ino)` at `path` is seen here for the first time (a rename
    /// reported twice, or twice by two sources, is handled once).
    fn first_sight(&self, path: &[u8], dev: u64, ino: u64) -> bool {
        let now = std::time::Instant::now();
        let mut seen = lock(&self.renames_seen);
        seen.retain(|_, (_, _, at)| now.duration_since(*at) < RENAME_MEMORY);
        match seen.get(path) {
            Some(&(d, i, _)) if (d, i) == (dev, ino) => false,
            _ => {
                seen.insert(path.to_vec(), (dev, ino, now));
                true
            }
        }
    }

    /// A session renamed `from` onto `to` in the same directory, and the file that arrived
    /// is the very file (device and inode) a live grant let this session write at `from`:
    /// the approval covers it. The kept change moves to `to` (diffs follow it); the content
    /// it replaced was not kept, so at the grant's end it is flagged, not reverted.
    async fn cover_temp_rename(
        &self,
        session: u64,
        from: &[u8],
        to: &[u8],
        (dev, ino): (u64, u64),
    ) -> bool {
        let parent = |p: &[u8]| {
            std::path::Path::new(std::ffi::OsStr::from_bytes(p))
                .parent()
                .map(|d| d.as_os_str().as_bytes().to_vec())
        };
        if parent(from).is_none() || parent(from) != parent(to) {
            return false;
        }
        let now = SystemTime::now();
        let found = {
            let all = lock(&self.changes);
            all.values()
                .flatten()
                .filter(|c| {
                    c.grant_id != 0
                        && c.path == from
                        && c.session_id == session
                        && (c.dev, c.ino) == (dev, ino)
                        && dev != 0
                })
                .find(|c| {
                    self.state
                        .grants()
                        .get(c.grant_id)
                        .is_some_and(|g| g.expires_at > now)
                })
                .cloned()
        };
        let Some(old) = found else {
            return false;
        };
        let moved = Change {
            path: to.to_vec(),
            existed: true,
            unrevertable: Some(format!(
                "approved under grant {} as {} and renamed onto this path; the file it replaced was not kept",
                old.grant_id,
                encode(from)
            )),
            ..old.clone()
        };
        {
            let mut all = lock(&self.changes);
            if let Some(list) = all.get_mut(&old.grant_id) {
                for c in list.iter_mut().filter(|c| c.id == old.id) {
                    *c = moved.clone();
                }
            }
        }
        self.state.untrack(old.grant_id, from);
        self.state.track(old.grant_id, to);
        let store = self.store.clone();
        let rec = moved.clone();
        if !matches!(
            blocking(move || store.write(|tx| tx.put(CHANGES, rec.id, &rec))).await,
            Some(Ok(()))
        ) {
            GateMetrics::inc(&self.state.metrics.store_errors);
        }
        GateMetrics::inc(&self.state.metrics.renames_covered);
        info!(from = %encode(from), to = %encode(to), grant = old.grant_id, session, "approved file renamed onto its final name: covered by its grant");
        self.ledger(
            "rename_covered",
            json!({"path": encode(to), "from": encode(from), "grant": old.grant_id,
                   "session": session}),
        )
        .await;
        true
    }
}

/// Device and inode of what is at `path` now (not following a final symlink).
fn file_id(path: &[u8]) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m =
        std::fs::symlink_metadata(std::path::Path::new(std::ffi::OsStr::from_bytes(path))).ok()?;
    Some((m.dev(), m.ino()))
}

/// Removes `path` if it is still the inode the held open refers to.
fn remove_if_same(path: &[u8], held: Option<nix::sys::stat::FileStat>) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let Some(held) = held else {
        return false;
    };
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.ino() == held.st_ino && m.dev() == held.st_dev => {
            std::fs::remove_file(p).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_if_same_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"x").unwrap();
        let st = nix::sys::stat::stat(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, b"y").unwrap();
        // Same name, maybe same inode number reused: compare dev+ino of what we hold.
        let now = nix::sys::stat::stat(&f).unwrap();
        let removed = remove_if_same(f.as_os_str().as_bytes(), Some(st));
        assert_eq!(removed, now.st_ino == st.st_ino);
        let held_now = nix::sys::stat::stat(&f).ok();
        if f.exists() {
            assert!(remove_if_same(f.as_os_str().as_bytes(), held_now));
        }
        assert!(!f.exists());
    }
}
