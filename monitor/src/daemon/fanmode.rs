//! The host-wide fanotify permission gate as `gate.fanotify` says: its group, listener and
//! watchdog, and when its marks are placed.
//!
//! - `always`: marks from start-up to shutdown (placed before the daemon says it is ready).
//! - `detected`: a task places the marks while at least one live session is not confined
//!   (an auto-detected agent, `confgate run --no-confine`, or a wrapped session before its
//!   confinement is attached) and removes them when the last one ends or is confined, woken
//!   by the session registry's changes. When policy gates processes outside sessions
//!   (a rule with `outside_sessions = true`), the marks stay placed, as in `always`.
//! - `off`: no permission group.
//!
//! Every placement and removal is logged, counted (`gate_marks_placed`,
//! `gate_marks_placements`, `gate_marks_removals`) and ledgered (`gate_marks_placed`,
//! `gate_marks_removed`, with the reason); so is every watchdog episode (`gate_watchdog`).
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::gate::watchdog::Episode;
use crate::gate::{
    Decider, Held, IntentSource, Listener, Marks, PermGroup, Placement, WatchdogOptions,
};
use crate::ledger::SharedLedger;
use crate::policy::{FanotifyMode, GateConfig, Policy};
use crate::sessions::{SessionInfo, SessionRegistry};

/// The running permission gate.
pub(super) struct FanGate {
    pub(super) placement: Arc<Placement>,
    listener: Mutex<Listener>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Why the marks should be placed now (`None`: they should not).
pub(super) fn reason(
    mode: FanotifyMode,
    outside_sessions: bool,
    unconfined: &[SessionInfo],
) -> Option<Value> {
    match mode {
        FanotifyMode::Off => None,
        FanotifyMode::Always => Some(json!({"reason": "gate.fanotify = \"always\""})),
        FanotifyMode::Detected if outside_sessions => Some(json!({
            "reason": "policy gates processes outside sessions (a rule has outside_sessions = true)"
        })),
        FanotifyMode::Detected if unconfined.is_empty() => None,
        FanotifyMode::Detected => {
            let sessions: Vec<Value> = unconfined
                .iter()
                .map(|s| json!({"session": s.id, "agent": s.agent, "source": s.source.to_string()}))
                .collect();
            Some(json!({"reason": "unconfined sessions are live", "sessions": sessions}))
        }
    }
}

/// What [`FanGate::start`] needs.
pub(super) struct FanParts {
    pub(super) policy: Arc<Policy>,
    pub(super) sessions: SessionRegistry,
    pub(super) ledger: SharedLedger,
    pub(super) intent: Arc<IntentSource>,
    pub(super) decider: Arc<dyn Decider>,
    pub(super) held: mpsc::Sender<Held>,
}

impl FanGate {
    /// Starts the group, its listener and watchdog, and places the marks (now, or from a
    /// task in `detected` mode). `None` in `off` mode.
    pub(super) async fn start(cfg: &GateConfig, parts: FanParts) -> anyhow::Result<Option<Self>> {
        let mode = cfg.fanotify;
        if mode == FanotifyMode::Off {
            info!(
                "gate: gate.fanotify = \"off\": no fanotify permission group; unconfined sessions are observed, not held"
            );
            return Ok(None);
        }
        let group = Arc::new(PermGroup::new().context("fanotify permission group")?);
        let placement = Arc::new(Placement::new(
            Marks::new(group.clone()),
            parts.policy.mark_roots(),
        ));
        let (episodes_tx, episodes_rx) = mpsc::unbounded_channel();
        let sink = Box::new(move |e: Episode| {
            let _ = episodes_tx.send(e);
        });
        let listener = Listener::start_with(
            group,
            parts.intent,
            parts.decider,
            parts.held,
            Some(WatchdogOptions {
                deadline: cfg.watchdog.0,
                sink: Some(sink),
            }),
        )
        .context("gate listener")?;
        let mut tasks = vec![tokio::spawn(ledger_episodes(
            episodes_rx,
            parts.ledger.clone(),
        ))];
        let outside = parts.policy.gates_outside_sessions();
        if mode == FanotifyMode::Always || outside {
            if mode == FanotifyMode::Detected {
                info!(
                    "gate: gate.fanotify = \"detected\", but a rule gates processes outside \
                     sessions: the marks stay placed as with \"always\""
                );
            }
            if let Some(why) = reason(mode, outside, &[]) {
                let p = placement.clone();
                let placed = tokio::task::spawn_blocking(move || p.place())
                    .await
                    .context("placing the gate's marks")?;
                ledger_placed(&parts.ledger, why, &placed).await;
            }
        } else {
            tasks.push(tokio::spawn(reconcile(
                placement.clone(),
                parts.sessions,
                parts.ledger,
            )));
        }
        Ok(Some(FanGate {
            placement,
            listener: Mutex::new(listener),
            tasks: Mutex::new(tasks),
        }))
    }

    /// A reloaded policy names `roots`: if the marks are placed, they are placed again so
    /// that the new roots are marked before the policy is swapped in (ledgered as every
    /// placement is). Marks of roots no longer named stay until the next removal.
    pub(super) async fn reroot(&self, roots: Vec<std::path::PathBuf>, ledger: &SharedLedger) {
        if !self.placement.set_roots(roots) {
            return;
        }
        let p = self.placement.clone();
        match tokio::task::spawn_blocking(move || p.place()).await {
            Ok(placed) => {
                ledger_placed(ledger, json!({"reason": "configuration reloaded"}), &placed).await;
            }
            Err(e) => warn!(error = %e, "gate: placing the marks of the reloaded policy failed"),
        }
    }

    /// Listener counters and the placement's.
    pub(super) fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut out = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters();
        out.extend(self.placement.counters());
        out
    }

    /// Stops placing and removing, then the listener (marks removed; queued opens
    /// answered).
    pub(super) fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
        self.listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    }
}

/// `detected` mode: place the marks while unconfined sessions are live, remove them when
/// the last one is gone. Runs until aborted (or the registry is dropped).
async fn reconcile(placement: Arc<Placement>, sessions: SessionRegistry, ledger: SharedLedger) {
    let mut changes = sessions.changes();
    loop {
        changes.mark_unchanged();
        let unconfined = sessions.live_unconfined();
        let why = reason(FanotifyMode::Detected, false, &unconfined);
        match (why, placement.is_placed()) {
            (Some(why), false) => {
                let p = placement.clone();
                match tokio::task::spawn_blocking(move || p.place()).await {
                    Ok(placed) => ledger_placed(&ledger, why, &placed).await,
                    Err(e) => warn!(error = %e, "gate: placing the marks failed"),
                }
            }
            (None, true) => {
                let why = json!({"reason": "no unconfined session is live"});
                match placement.remove() {
                    Ok(()) => {
                        info!("gate: marks removed: no unconfined session is live");
                        audit(&ledger, "gate_marks_removed", why).await;
                    }
                    Err(e) => warn!(error = %e, "gate: removing the marks failed"),
                }
            }
            _ => {}
        }
        // Also wake when a session's confinement grace ends (it may still be unconfined).
        let grace = sessions.next_confinement_deadline();
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = async {
                match grace {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

async fn ledger_placed(ledger: &SharedLedger, mut why: Value, placed: &crate::gate::Placed) {
    info!(
        reason = %why["reason"],
        trees = placed.trees,
        marks = placed.marks,
        errors = placed.errors,
        "gate: marks placed"
    );
    why["marks"] = json!(placed.marks);
    why["errors"] = json!(placed.errors);
    audit(ledger, "gate_marks_placed", why).await;
}

async fn ledger_episodes(mut rx: mpsc::UnboundedReceiver<Episode>, ledger: SharedLedger) {
    while let Some(e) = rx.recv().await {
        let body = match e {
            Episode::Fired { deadline, answered } => json!({
                "phase": "fired",
                "deadline_ms": deadline.as_millis() as u64,
                "answered": answered,
            }),
            Episode::Recovered { stalled, answered } => json!({
                "phase": "recovered",
                "stalled_ms": stalled.as_millis() as u64,
                "answered": answered,
            }),
        };
        audit(&ledger, "gate_watchdog", body).await;
    }
}

async fn audit(ledger: &SharedLedger, kind: &str, body: Value) {
    if let Err(e) = ledger.append_async(kind, body).await {
        warn!(kind, error = %e, "gate: cannot write to the ledger");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::SessionSource;

    fn session(id: u64) -> SessionInfo {
        SessionInfo {
            id,
            agent: "aider".into(),
            reason: None,
            root_pid: 1,
            uid: 0,
            user: "root".into(),
            started: String::new(),
            source: SessionSource::Detected {
                rule: "aider".into(),
            },
            command: Vec::new(),
            cwd: String::new(),
            events: 0,
            ended: None,
            scope: Vec::new(),
        }
    }

    #[test]
    fn marks_follow_the_mode_and_the_sessions() {
        use FanotifyMode::*;
        assert!(reason(Off, true, &[session(1)]).is_none());
        assert!(reason(Detected, false, &[]).is_none());
        let why = reason(Detected, false, &[session(7)]).unwrap();
        assert_eq!(why["sessions"][0]["session"], 7);
        assert_eq!(why["sessions"][0]["source"], "detect:aider");
        assert!(
            reason(Detected, true, &[]).unwrap()["reason"]
                .as_str()
                .unwrap()
                .contains("outside sessions")
        );
        assert!(reason(Always, false, &[]).is_some());
    }
}
