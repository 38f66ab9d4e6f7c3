//! The terminal notice of a filed request, written once the approval service acknowledged
//! it (the notice names the service's request id: the one `confgate approvals approve`
//! takes).
use super::*;
use crate::gate::terminal::{Notice as TtyNotice, Waiting};

/// Most filed requests waiting for their acknowledgement before expired ones are pruned.
const PRUNE_ABOVE: usize = 256;

/// What the notice of one filed request says, until the service acknowledges it.
pub(super) struct ToTell {
    session: u64,
    writer_pid: u32,
    ops: Vec<String>,
    path: String,
    waiting: Waiting,
    /// After this, the notice is no longer worth writing (the wait is over).
    until: std::time::Instant,
}

impl Engine {
    /// Remembers the notice of request `id` (filed now for `ctx` under `rule`, waiting at
    /// most `lifetime`). Only for sessions, and only when notices are on.
    pub(super) fn await_acceptance(
        &self,
        id: u64,
        ctx: &pb::RequestContext,
        rule: &Rule,
        lifetime: Duration,
    ) {
        if !self.settings.terminal_notice || ctx.session_id == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let waiting = match rule.mode {
            Mode::Hold => Waiting::Held(lifetime),
            Mode::DenyAndRequest => Waiting::Denied(lifetime),
            // Nothing waits on a review: the session is not interrupted.
            Mode::Review => return,
        };
        let mut map = lock(&self.to_tell);
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, t| t.until > now);
        }
        map.insert(
            id,
            ToTell {
                session: ctx.session_id,
                writer_pid: ctx.pid,
                ops: ctx.operations.clone(),
                path: ctx.path.clone(),
                waiting,
                until: now + lifetime,
            },
        );
    }

    /// Writes the notice of each request the service acknowledges.
    pub(super) async fn accepted_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::broadcast::Receiver<(u64, u64)>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let (host_id, service_id) = match rx.recv().await {
                Ok(v) => v,
                Err(RecvError::Lagged(n)) => {
                    self.state
                        .metrics
                        .terminal_dropped
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(t) = lock(&self.to_tell).remove(&host_id) else {
                continue;
            };
            if t.until <= std::time::Instant::now() {
                continue;
            }
            let me = Arc::clone(&self);
            // `/proc` and the terminal device: off the runtime's threads, not waited for.
            drop(tokio::task::spawn_blocking(move || {
                let root = me.state.sessions.get(t.session).map_or(0, |s| s.root_pid);
                let n = TtyNotice {
                    request_id: service_id,
                    session: t.session,
                    ops: &t.ops,
                    path: &t.path,
                    waiting: t.waiting,
                };
                me.terminal
                    .notify(&n, root, t.writer_pid, &me.state.metrics);
            }));
        }
    }
}
