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
use tracing::{debug, info, warn};

use super::changes::{self, CHANGES, Change};
use super::context;
use super::decider::{GateDecider, GateMetrics, GateState, Note, ops_of};
use super::listener::{Held, PermEvent};
use super::preimage::{self, PreImage};
use super::requests::{GRANTS, REQUEST_IDS, REQUESTS, RequestRecord};
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

/// What the event pipeline tells the gate.
#[derive(Debug)]
pub enum Notice {
    /// A gated file was closed after writing: record its diff.
    Closed { path: Vec<u8> },
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
    diff_scheduled: Mutex<std::collections::HashSet<Vec<u8>>>,
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
            diff_scheduled: Mutex::new(std::collections::HashSet::new()),
            open_requests: Mutex::new(open_requests),
            changes: Mutex::new(changes),
        });
        tokio::spawn(engine.clone().held_loop(held));
        tokio::spawn(engine.clone().update_loop(updates));
        tokio::spawn(engine.clone().notice_loop(notices));
        tokio::spawn(engine.clone().note_loop(note_rx));
        tokio::spawn(engine.clone().expiry_loop());
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
        let filed =
            self.file_now(ctx, &rule, rule.timeout, Some(waiter))
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
        let pending = lock(&self.open_requests).contains_key(&key);
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
        let filed = blocking(move || me.file_now(ctx, &r, lifetime, None))
            .await
            .flatten();
        if let Some((id, body)) = filed {
            lock(&self.open_requests).insert(key, id);
            self.ledger("request", body).await;
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
    fn file_now(
        &self,
        ctx: pb::RequestContext,
        rule: &Rule,
        lifetime: Duration,
        waiter: Option<Waiter>,
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
        };
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

    async fn forget_request(&self, id: u64) {
        let store = self.store.clone();
        let res = blocking(move || store.write(|tx| tx.remove(REQUESTS, id).map(|_| ()))).await;
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
               "scope": format!("{:?}", grant.scope),
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

    async fn update_loop(self: Arc<Self>, mut rx: mpsc::Receiver<UplinkUpdate>) {
        while let Some(u) = rx.recv().await {
            match u {
                UplinkUpdate::Decision {
                    host_request_id,
                    decision,
                    ..
                } => self.on_decision(host_request_id, decision).await,
                UplinkUpdate::Revoked { grant, .. } => {
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
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "denied", "by": d.decided_by, "note": d.note}),
                )
                .await;
                Outcome::Denied
            }
            pb::RequestState::Expired => {
                self.ledger(
                    "decision",
                    json!({"host_request_id": host_request_id, "request_id": d.request_id,
                           "state": "expired", "verdict": d.verdict}),
                )
                .await;
                Outcome::Expired(d.verdict == "allow")
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
        let res = blocking(move || {
            let diff = changes::diff(&store, &c);
            let reverted = match action {
                OnExpiry::Revert => Some(changes::revert(&store, &c)),
                OnExpiry::Flag => None,
            };
            (diff, reverted)
        })
        .await;
        let (diff, reverted) = match res {
            Some((d, r)) => (d.ok(), r),
            None => (None, None),
        };
        let base = json!({"path": change.path_text(), "grant": change.grant_id,
                          "session": change.session_id, "why": why, "diff": diff,
                          "pre_image_sha256": change.sha256});
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
                Notice::Closed { path } => {
                    // Closes of the same file within DIFF_DELAY are diffed once, after the
                    // last of them: an agent that opens and closes a file in a loop costs
                    // one read of it per DIFF_DELAY, not one per close.
                    if lock(&self.diff_scheduled).insert(path.clone()) {
                        let me = Arc::clone(&self);
                        tokio::spawn(async move {
                            tokio::time::sleep(DIFF_DELAY).await;
                            lock(&me.diff_scheduled).remove(&path);
                            me.on_closed(path).await;
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

    /// Records the diff of a gated file after a close-write. A change that a failure
    /// verdict let through (nobody approved it) is flagged right away.
    async fn on_closed(&self, path: Vec<u8>) {
        let tracked: Vec<Change> = lock(&self.changes)
            .values()
            .flatten()
            .filter(|c| c.path == path)
            .cloned()
            .collect();
        for c in tracked {
            if c.grant_id == 0 {
                let taken = {
                    let mut all = lock(&self.changes);
                    let list = all.entry(0).or_default();
                    let before = list.len();
                    list.retain(|x| x.id != c.id);
                    list.len() != before
                };
                if taken {
                    self.settle(c, OnExpiry::Flag, "allowed_by_failure_verdict")
                        .await;
                }
                continue;
            }
            let store = self.store.clone();
            let cc = c.clone();
            let recorded = lock(&self.diffed).get(&c.id).cloned();
            let res =
                blocking(move || changes::diff_if_changed(&store, &cc, recorded.as_deref())).await;
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

    /// A rename by a session onto a gated path: the gate could not hold it (a rename opens
    /// nothing). Without a live grant it is unapproved: flagged, or reverted when the rule's
    /// `on_expiry` is `revert` (or the path is confgate's own).
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
        if !m.builtin
            && m.rule.verdict == Verdict::Ask
            && self
                .state
                .grants()
                .find(session, agent, &to, ops, SystemTime::now())
                .is_some()
        {
            return;
        }
        GateMetrics::inc(&self.state.metrics.unapproved_renames);
        let revert = m.builtin || m.rule.on_expiry == OnExpiry::Revert;
        warn!(path = %encode(&to), session, agent, pid, revert, "unapproved rename into a gated tree");
        let mut body = json!({
            "path": encode(&to), "from": from.as_deref().map(encode), "session": session,
            "agent": agent, "pid": pid, "rule": m.rule.name,
            "action": if revert { "revert" } else { "flag" },
        });
        if !revert {
            GateMetrics::inc(&self.state.metrics.changes_flagged);
            self.audit("unapproved_rename", body).await;
            return;
        }
        // Undo: move the renamed-in file aside (quarantine), then restore the last kept
        // pre-image of that path if there is one.
        let pre: Option<Change> = lock(&self.changes)
            .values()
            .flatten()
            .filter(|c| c.path == to && c.existed)
            .max_by_key(|c| c.id)
            .cloned();
        let store = self.store.clone();
        let quarantine = self.settings.quarantine_dir.clone();
        let target = to.clone();
        let res = blocking(move || {
            let moved = quarantine_file(&quarantine, &target);
            let restored = pre.map(|c| changes::revert(&store, &c));
            (moved, restored)
        })
        .await;
        match res {
            Some((Ok(moved), restored)) => {
                GateMetrics::inc(&self.state.metrics.changes_reverted);
                body["quarantined_as"] = json!(encode(moved.as_os_str().as_bytes()));
                body["restored"] = json!(restored.and_then(Result::ok));
            }
            Some((Err(e), _)) => {
                GateMetrics::inc(&self.state.metrics.revert_errors);
                body["error"] = json!(e.to_string());
            }
            None => GateMetrics::inc(&self.state.metrics.revert_errors),
        }
        self.audit("unapproved_rename", body).await;
    }
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

/// Moves `path` into `dir` under a unique name; returns the new path.
fn quarantine_file(dir: &std::path::Path, path: &[u8]) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let src = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let dst = dir.join(format!("{}-{name}", crate::clock::now_ms()));
    match std::fs::rename(src, &dst) {
        Ok(()) => Ok(dst),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(src, &dst)?;
            std::fs::remove_file(src)?;
            Ok(dst)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("evil.conf");
        std::fs::write(&f, b"x").unwrap();
        let q = dir.path().join("q");
        let moved = quarantine_file(&q, f.as_os_str().as_bytes()).unwrap();
        assert!(!f.exists());
        assert_eq!(std::fs::read(moved).unwrap(), b"x");
    }

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
