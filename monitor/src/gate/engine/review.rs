//! Review mode (`mode = "review"`): a session's operation on a path the rule covers
//! proceeds at once (the decider lets it through and marks the path); when the operation
//! completes (the writer closes the file, or a rename onto it, an unlink, chmod, chown or
//! truncate was performed) the path's difference from the approved baseline is sent for
//! approval with its unified diff. Approved: the baseline moves to it (under
//! `on_expiry = "revert"` it holds only for the grant's lifetime); denied, expired at the
//! service, refused, or not answered before the rule's timeout: the path is restored to
//! the baseline.
//!
//! One request per path at a time, showing the latest difference: a later change of a
//! path whose request is still undecided files a new request with the new diff and closes
//! the old one (reported `review_superseded`; the service shows it released), so an
//! approver never approves a diff that is no longer what the file holds. An approval that
//! arrives while the file is no longer what its diff showed (changed in the ~100 ms before
//! the new request) is not applied to the baseline: the path is reviewed again
//! (`review_stale`). A path that is back at its baseline withdraws its request.
use super::*;
use crate::baseline::{self as bl, BaselineError, FileKind};
use crate::event::excerpt::{Excerpt, Masker};

/// What a review shows: a path's difference from its baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct View {
    /// `modified`, `created`, `deleted`.
    pub change: &'static str,
    /// The two states compared (kind, hash, mode, owner): equal views show the same change.
    pub key: String,
    /// SHA-256 of the live content (empty when deleted).
    pub after_sha256: String,
    /// The diff as approvers see it: git-style header lines for what is not content
    /// (`new file`, `deleted file`, `old mode`/`new mode`, `old owner`/`new owner`,
    /// symlink targets), then the unified diff of the content (masked, escaped, bounded).
    pub excerpt: Excerpt,
}

/// One undecided review.
pub(super) struct Review {
    pub request_id: u64,
    pub session: u64,
    pub rule: Arc<Rule>,
    pub shown: View,
}

/// The path's difference from the baseline now (`None`: there is none). Blocks.
pub(super) fn view_of(
    b: &BaselineService,
    path: &[u8],
    masker: &Masker,
) -> Result<Option<View>, BaselineError> {
    let base = b.baseline.get(path)?;
    let live = bl::read_live(path, b.max_file_bytes())?;
    let after = live.as_ref().map(|l| &l.entry);
    if bl::same_state(base.as_ref(), after) {
        return Ok(None);
    }
    let state = |e: Option<&bl::Entry>| {
        e.map(|e| format!("{:?} {} {:o} {}:{}", e.kind, e.sha256, e.mode, e.uid, e.gid))
            .unwrap_or_else(|| "none".into())
    };
    let key = format!("{} -> {}", state(base.as_ref()), state(after));
    let mut head: Vec<String> = Vec::new();
    let change = match (&base, after) {
        (None, Some(a)) => {
            head.push(format!("new file mode {:04o}", a.mode));
            "created"
        }
        (Some(bb), None) => {
            head.push(format!("deleted file mode {:04o}", bb.mode));
            "deleted"
        }
        (Some(bb), Some(a)) => {
            if bb.mode != a.mode {
                head.push(format!("old mode {:04o}", bb.mode));
                head.push(format!("new mode {:04o}", a.mode));
            }
            if (bb.uid, bb.gid) != (a.uid, a.gid) {
                head.push(format!("old owner {}:{}", bb.uid, bb.gid));
                head.push(format!("new owner {}:{}", a.uid, a.gid));
            }
            "modified"
        }
        (None, None) => return Ok(None),
    };
    for (side, e) in [("old", base.as_ref()), ("new", after)] {
        if let Some(t) = e.and_then(|e| e.target.as_deref()) {
            head.push(format!("{side} symlink -> {}", encode(t)));
        }
    }
    let is_file = |e: Option<&bl::Entry>| e.is_none_or(|e| e.kind == FileKind::File);
    let content_differs = base.as_ref().map(|e| &e.sha256) != after.map(|e| &e.sha256);
    let mut text = String::new();
    for h in &head {
        text.push_str(h);
        text.push('\n');
    }
    let mut truncated = false;
    let mut masked = 0;
    if content_differs && is_file(base.as_ref()) && is_file(after) {
        let before = match &base {
            Some(e) => b.baseline.content(path, e).ok().flatten(),
            None => Some(Vec::new()),
        };
        let now = match &live {
            Some(l) => l.content.clone(),
            None => Some(Vec::new()),
        };
        match (before, now) {
            (Some(before), Some(now)) => match masker.diff(path, &before, &now) {
                Some(d) => {
                    text.push_str(&d.text);
                    truncated = d.truncated;
                    masked = d.masked;
                }
                None if masker.withholds(path) => {
                    text.push_str("[confgate: content withheld (gate.no_excerpt)]\n")
                }
                None => text.push_str("[confgate: binary content changed]\n"),
            },
            _ => text.push_str("[confgate: content changed; kept by hash only (size limits)]\n"),
        }
    }
    Ok(Some(View {
        change,
        key,
        after_sha256: after.map(|e| e.sha256.clone()).unwrap_or_default(),
        excerpt: Excerpt {
            text,
            truncated,
            masked,
        },
    }))
}

impl Engine {
    /// Whether `path` has a review-mode change not yet settled (its closes matter).
    pub(super) fn reviewing(&self, path: &[u8]) -> bool {
        self.state.is_reviewing(path)
    }

    /// A review-mode operation on `path` completed (`closer`: the session that completed
    /// it, 0 when unknown; `pid`: its process): files, replaces or withdraws the path's
    /// request.
    pub(super) async fn review_completed(self: &Arc<Self>, path: Vec<u8>, closer: u64, pid: u32) {
        let Some((marked, rule)) = self.state.reviewer(&path) else {
            return;
        };
        let session = if closer != 0 { closer } else { marked };
        let Some(b) = self.baseline.clone() else {
            // Without a baseline there is nothing to compare with or restore: flagged.
            GateMetrics::inc(&self.state.metrics.review_errors);
            GateMetrics::inc(&self.state.metrics.changes_flagged);
            self.state.unmark_review(&path);
            error!(path = %encode(&path), session, "a review-mode change cannot be reviewed: the baseline is not available; flagged");
            self.audit(
                "change_flagged",
                json!({"path": encode(&path), "session": session, "rule": rule.name,
                       "why": "review mode needs the baseline, which is not available"}),
            )
            .await;
            return;
        };
        let mut reviews = self.reviews.lock().await;
        let masker = self.state.policy().masker().clone();
        let (bb, p) = (Arc::clone(&b), path.clone());
        let view = match blocking(move || view_of(&bb, &p, &masker)).await {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                GateMetrics::inc(&self.state.metrics.review_errors);
                warn!(path = %encode(&path), error = %e, "cannot compare a reviewed path with its baseline");
                self.ledger(
                    "review_failed",
                    json!({"path": encode(&path), "session": session, "error": e.to_string()}),
                )
                .await;
                return;
            }
            None => return,
        };
        let Some(view) = view else {
            // Back at its baseline (or never changed): nothing to approve.
            self.state.unmark_review(&path);
            match reviews.remove(&path) {
                Some(r) => {
                    GateMetrics::inc(&self.state.metrics.reviews_withdrawn);
                    lock(&self.waiters).remove(&r.request_id);
                    info!(path = %encode(&path), request = r.request_id, "review withdrawn: the path is back at its baseline");
                    self.forget_request(r.request_id).await;
                    self.audit(
                        "review_withdrawn",
                        json!({"host_request_id": r.request_id, "path": encode(&path),
                               "session": r.session,
                               "why": "the path is back at its baseline"}),
                    )
                    .await;
                }
                None => GateMetrics::inc(&self.state.metrics.reviews_unchanged),
            }
            return;
        };
        if reviews.get(&path).is_some_and(|r| r.shown == view) {
            // The request shows this very change already.
            return;
        }
        let agent = self.state.agent(session);
        let covered = self
            .state
            .grants()
            .find(
                &rule.name,
                session,
                agent.as_deref().unwrap_or(""),
                &path,
                ops_of_change(view.change),
                SystemTime::now(),
            )
            .is_some();
        if covered && !reviews.contains_key(&path) {
            // Approved already: a live grant (a review approved under `on_expiry =
            // "revert"`, or another approval) covers it; its own tracking settles it.
            return;
        }
        let Some((id, rx)) = self.file_review(&path, session, pid, &rule, &view).await else {
            // Nobody can approve it: what no answer means.
            drop(reviews);
            self.review_restore(
                &b,
                &path,
                0,
                session,
                &rule,
                "the review request could not be filed",
                None,
            )
            .await;
            return;
        };
        let previous = reviews.insert(
            path.clone(),
            Review {
                request_id: id,
                session,
                rule: Arc::clone(&rule),
                shown: view,
            },
        );
        drop(reviews);
        if let Some(old) = previous {
            GateMetrics::inc(&self.state.metrics.reviews_superseded);
            lock(&self.waiters).remove(&old.request_id);
            self.forget_request(old.request_id).await;
            self.audit(
                "review_superseded",
                json!({"host_request_id": old.request_id, "superseded_by": id,
                       "path": encode(&path), "session": old.session}),
            )
            .await;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.await_review(path, id, rx, rule.timeout).await });
    }

    /// At start: the reviews the previous run left undecided are closed (the service
    /// releases them) and their paths reviewed again, with the diff they have now and a
    /// new timeout. A path whose rule is no longer a review rule is left to `drift`.
    pub(super) async fn review_again(self: Arc<Self>, before: Vec<(u64, RequestRecord)>) {
        for (id, r) in before {
            self.forget_request(id).await;
            let rule = self
                .state
                .policy()
                .rule(&r.rule)
                .filter(|rule| rule.mode == Mode::Review && rule.verdict == Verdict::Ask);
            info!(request = id, path = %encode(&r.path), again = rule.is_some(), "an undecided review of the previous run is closed");
            self.audit(
                "review_superseded",
                json!({"host_request_id": id, "path": encode(&r.path), "session": r.session,
                       "why": "the daemon restarted before a decision",
                       "reviewed_again": rule.is_some()}),
            )
            .await;
            if let Some(rule) = rule {
                self.state.mark_review(&r.path, r.session, &rule);
                self.schedule_close(r.path, r.session, 0);
            }
        }
    }

    /// Files the request of a review (its ledger line carries the diff).
    async fn file_review(
        self: &Arc<Self>,
        path: &[u8],
        session: u64,
        pid: u32,
        rule: &Arc<Rule>,
        view: &View,
    ) -> Option<(u64, oneshot::Receiver<Outcome>)> {
        let info = self.state.sessions.get(session);
        let root = info.as_ref().map_or(1, |s| s.root_pid);
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            rule: rule.name.clone(),
            keep: None,
        };
        let me = Arc::clone(self);
        let (p, r, v) = (path.to_vec(), Arc::clone(rule), view.clone());
        let filed = blocking(move || {
            let mut writer = context::writer(pid, root);
            if writer.uid == u32::MAX
                && let Some(s) = &info
            {
                // The writer exited before its change was reviewed: the session's.
                writer.uid = s.uid;
                writer.command = s.command.clone();
                writer.cwd = s.cwd.clone();
            }
            let ops = ops_of_change(v.change).to_strings();
            let ctx = context::request_context(context::ContextInput {
                host: &me.settings.host,
                session: info.as_ref(),
                writer: &writer,
                path: &p,
                operations: ops,
                content_sha256: v.after_sha256.clone(),
                excerpt: (!v.excerpt.text.is_empty()).then(|| (v.excerpt.clone(), "diff")),
                rule: &r.name,
                mode: r.mode.as_str(),
                fail_verdict: r.fail.as_str(),
                quorum: r.quorum.as_ref().map(|q| pb::Quorum {
                    approvals: q.approvals,
                    approvers: q.approvers.clone(),
                    four_eyes: q.four_eyes,
                    notify: q.notify.clone(),
                }),
                masker: &me.state.policy().masker().clone(),
            });
            me.file_now(ctx, &r, r.timeout, Some(waiter), None, None)
        })
        .await
        .flatten();
        let Some((id, mut body)) = filed else {
            GateMetrics::inc(&self.state.metrics.review_errors);
            return None;
        };
        GateMetrics::inc(&self.state.metrics.reviews_filed);
        body["change"] = json!(view.change);
        body["diff"] = json!(view.excerpt.text);
        body["diff_truncated"] = json!(view.excerpt.truncated);
        self.ledger("request", body).await;
        Some((id, rx))
    }

    /// Waits for the decision of review request `id` (or its timeout) and applies it,
    /// unless a later change replaced or withdrew the request meanwhile.
    async fn await_review(
        self: Arc<Self>,
        path: Vec<u8>,
        id: u64,
        rx: oneshot::Receiver<Outcome>,
        lifetime: Duration,
    ) {
        let outcome = tokio::time::timeout(lifetime, rx).await;
        let mut reviews = self.reviews.lock().await;
        if reviews.get(&path).map(|r| r.request_id) != Some(id) {
            return;
        }
        let Some(r) = reviews.remove(&path) else {
            return;
        };
        lock(&self.waiters).remove(&id);
        let Some(b) = self.baseline.clone() else {
            return;
        };
        let why = match outcome {
            Ok(Ok(Outcome::Approved(grant_id, _))) => {
                let stale = self.review_approved(&b, &path, &r, grant_id).await;
                drop(reviews);
                if stale {
                    self.schedule_close(path, r.session, 0);
                }
                return;
            }
            Ok(Ok(Outcome::Denied)) => {
                GateMetrics::inc(&self.state.metrics.reviews_denied);
                "denied"
            }
            Ok(Ok(Outcome::Expired(_))) => {
                // The service's deadline is the rule's timeout: the same case, told first
                // by the service.
                GateMetrics::inc(&self.state.metrics.reviews_timed_out);
                "no answer before the rule's timeout"
            }
            Ok(Ok(Outcome::Rejected)) => {
                GateMetrics::inc(&self.state.metrics.review_errors);
                "the approval service rejected the request"
            }
            Ok(Err(_)) | Err(_) => {
                GateMetrics::inc(&self.state.metrics.reviews_timed_out);
                self.mark_answered(id).await;
                "no answer before the rule's timeout"
            }
        };
        self.review_restore(&b, &path, id, r.session, &r.rule, why, Some(&r.shown))
            .await;
        drop(reviews);
    }

    /// An approved review: the baseline moves to the path as it is (rule `on_expiry =
    /// "flag"`), or stays while the grant lasts (`"revert"`: the change is kept under the
    /// grant, whose end restores the baseline). Returns true when the path is no longer
    /// what the approver saw (nothing applied: reviewed again).
    async fn review_approved(
        &self,
        b: &Arc<BaselineService>,
        path: &[u8],
        r: &Review,
        grant_id: u64,
    ) -> bool {
        let masker = self.state.policy().masker().clone();
        let (bb, p) = (Arc::clone(b), path.to_vec());
        let now = blocking(move || view_of(&bb, &p, &masker)).await;
        let mut body = json!({"path": encode(path), "host_request_id": r.request_id,
                              "grant": grant_id, "session": r.session, "rule": r.rule.name,
                              "diff": r.shown.excerpt.text});
        if !matches!(&now, Some(Ok(Some(v))) if v.key == r.shown.key) {
            warn!(path = %encode(path), request = r.request_id, "approved review is stale: the path changed since its diff was shown; reviewing it again");
            self.ledger("review_stale", body).await;
            return true;
        }
        GateMetrics::inc(&self.state.metrics.reviews_approved);
        let on_expiry = self
            .state
            .grants()
            .get(grant_id)
            .map_or(r.rule.on_expiry, |g| g.on_expiry);
        if on_expiry == OnExpiry::Flag {
            let (bb, p) = (Arc::clone(b), path.to_vec());
            let extra = json!({"grant": grant_id, "session": r.session,
                               "host_request_id": r.request_id});
            let source = format!("review {}", r.request_id);
            match blocking(move || bb.accept(&[p], &source, extra)).await {
                Some(Ok(_)) => body["baseline"] = json!("moved"),
                other => {
                    GateMetrics::inc(&self.state.metrics.review_errors);
                    let e = other.and_then(|r| r.err()).map(|e| e.to_string());
                    warn!(path = %encode(path), error = ?e, "cannot move the baseline to an approved review");
                    body["error"] =
                        json!(e.unwrap_or_else(|| "the baseline move did not run".into()));
                }
            }
        } else {
            // Approved for the grant's lifetime: kept under the grant, with the baseline as
            // its pre-image, so that its end restores the baseline.
            let (bb, p) = (Arc::clone(b), path.to_vec());
            let pre = blocking(move || baseline_pre_image(&bb, &p))
                .await
                .flatten();
            match pre {
                Some((pre, existed)) => {
                    self.track(grant_id, path, r.session, Some(&pre), !existed)
                        .await;
                    body["baseline"] = json!("kept until the grant ends");
                }
                None => {
                    GateMetrics::inc(&self.state.metrics.review_errors);
                    body["error"] = json!("the baseline's state of the path cannot be read");
                }
            }
        }
        info!(path = %encode(path), request = r.request_id, grant = grant_id, "review approved");
        self.audit("review_approved", body).await;
        false
    }

    /// Restores `path` to its baseline after a deny or no answer (ledgered by the baseline
    /// as `baseline_revert`, and here as `review_reverted`).
    #[allow(clippy::too_many_arguments)]
    async fn review_restore(
        &self,
        b: &Arc<BaselineService>,
        path: &[u8],
        id: u64,
        session: u64,
        rule: &Rule,
        why: &'static str,
        shown: Option<&View>,
    ) {
        let (bb, p) = (Arc::clone(b), path.to_vec());
        let extra = json!({"host_request_id": id, "session": session, "rule": rule.name});
        let res = blocking(move || bb.revert_path(&p, extra, why)).await;
        let mut body = json!({"path": encode(path), "host_request_id": id, "session": session,
                              "rule": rule.name, "why": why,
                              "diff": shown.map(|v| v.excerpt.text.clone())});
        match res {
            Some(r) if r.get("error").is_none() => {
                GateMetrics::inc(&self.state.metrics.changes_reverted);
                body["result"] = r["result"].clone();
                warn!(path = %encode(path), request = id, why, "review not approved: restored to the baseline");
            }
            other => {
                GateMetrics::inc(&self.state.metrics.review_errors);
                GateMetrics::inc(&self.state.metrics.revert_errors);
                let e = other
                    .and_then(|r| r["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "the restore did not run".into());
                error!(path = %encode(path), request = id, why, error = %e, "review not approved and the baseline cannot be restored: the change stays (flagged)");
                body["error"] = json!(e);
            }
        }
        self.audit("review_reverted", body).await;
    }
}

/// The operations a review's request names (and its grant then covers).
fn ops_of_change(change: &str) -> OpSet {
    match change {
        "created" => OpSet::CREATE | OpSet::WRITE,
        "deleted" => OpSet::REMOVE,
        _ => OpSet::WRITE,
    }
}

/// The baseline's state of `path` as a pre-image (and whether the path is in it): what
/// the end of a grant that approved a review under `on_expiry = "revert"` restores.
fn baseline_pre_image(b: &BaselineService, path: &[u8]) -> Option<(PreImage, bool)> {
    let Some(e) = b.baseline.get(path).ok()? else {
        return Some((PreImage::absent(), false));
    };
    let content = b.baseline.content(path, &e).ok().flatten();
    let mut sha = [0u8; 32];
    for (i, byte) in sha.iter_mut().enumerate() {
        *byte = u8::from_str_radix(e.sha256.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let pre = PreImage {
        content,
        size: e.size,
        sha256: sha,
        mode: libc::S_IFREG | e.mode,
        uid: e.uid,
        gid: e.gid,
        dev: 0,
        ino: 0,
        nlink: 1,
        ctime: SystemTime::UNIX_EPOCH,
    };
    Some((pre, true))
}
