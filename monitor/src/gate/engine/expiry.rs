//! The end of grants (expiry, revocation) and of what a crash released: each change is
//! flagged or reverted, only the change its grant made.
use super::*;
use crate::baseline::service::BaselineService;

impl Engine {
    pub(super) async fn expiry_loop(self: Arc<Self>) {
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
    pub(super) async fn end_grant(&self, grant: Grant, why: &'static str) {
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
    pub(super) async fn settle(&self, change: Change, action: OnExpiry, why: &'static str) {
        lock(&self.diffed).remove(&change.id);
        let store = self.store.clone();
        let c = change.clone();
        // A change known not to be revertible is flagged, with its reason, under either
        // action.
        let action = match (&change.unrevertable, action) {
            (Some(_), OnExpiry::Revert) => OnExpiry::Flag,
            (_, a) => a,
        };
        let masker = self.state.policy().masker().clone();
        let baseline = self.baseline.clone();
        let res = blocking(move || {
            let diff = changes::diff(&store, &c, &masker);
            let reverted = match action {
                OnExpiry::Revert => Some(match baseline.filter(|b| to_baseline(b, &c)) {
                    // The last approved state, whatever was done since.
                    Some(b) => baseline_revert(&b, &c, why),
                    None => changes::revert_own(&store, &c),
                }),
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

    /// Records each hold that a crash released (see [`super::crash`]) and settles what it
    /// changed: diffed, then reverted under the rule's `on_expiry = "revert"` when its
    /// pre-image was kept, else flagged.
    pub(super) async fn settle_released(
        self: Arc<Self>,
        released: Vec<crate::gate::crash::Released>,
    ) {
        for r in released {
            GateMetrics::inc(&self.state.metrics.released_by_crash);
            let body = serde_json::to_value(r.record()).unwrap_or(Value::Null);
            error!(request = r.host_request_id, path = %encode(&r.record.path), session = r.record.session, changed = ?r.finding.changed(), "a held write was released by a daemon crash without a decision");
            self.audit("released_by_crash", body).await;
            if let crate::gate::crash::Finding::Changed { change, .. } = r.finding
                && self.take_unapproved(change.id)
            {
                let action = self.on_expiry_of(&r.record.rule);
                self.settle(change, action, "released_by_crash").await;
            }
        }
    }

    /// Takes the unapproved change `id` (grant 0) out of the kept ones; false if another
    /// task settled it already.
    pub(super) fn take_unapproved(&self, id: u64) -> bool {
        let mut all = lock(&self.changes);
        let list = all.entry(0).or_default();
        let before = list.len();
        list.retain(|c| c.id != id);
        list.len() != before
    }
}

/// Whether `change` is reverted to the baseline: its path is in it with content to put
/// back, or not in it and the change created it (then it is removed). A file that the
/// baseline does not know but that existed before the change is left to the pre-image:
/// restoring the baseline would remove it.
fn to_baseline(b: &BaselineService, c: &Change) -> bool {
    if !b.baseline.in_scope(&c.path) {
        return false;
    }
    match b.baseline.get(&c.path) {
        Ok(Some(_)) => b.restorable(&c.path),
        Ok(None) => !c.existed,
        Err(_) => false,
    }
}

/// Restores `c`'s path to the baseline (ledgered by the service as `baseline_revert`).
fn baseline_revert(
    b: &BaselineService,
    c: &Change,
    why: &str,
) -> Result<changes::Reverted, changes::ChangeError> {
    let body = b.revert_path(
        &c.path,
        json!({"grant": c.grant_id, "session": c.session_id}),
        why,
    );
    if let Some(e) = body["error"].as_str() {
        return Err(changes::ChangeError::Io {
            path: c.path_text(),
            source: std::io::Error::other(e.to_owned()),
        });
    }
    Ok(match body["result"].as_str() {
        Some("removed") => changes::Reverted::Removed,
        Some("unchanged") => changes::Reverted::Unchanged,
        _ => changes::Reverted::Restored,
    })
}
