//! What the event pipeline tells the gate: close-writes (diffs, owned by the grant whose
//! session closed the file) and renames onto gated paths (covered, flagged or reverted).
use super::*;

impl Engine {
    pub(super) async fn notice_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Notice>) {
        while let Some(n) = rx.recv().await {
            match n {
                Notice::Closed { path, session, pid } => {
                    // Closes of the same file within DIFF_DELAY are diffed once, after the
                    // last of them (whose session owns the change): an agent that opens and
                    // closes a file in a loop costs one read of it per DIFF_DELAY, not one
                    // per close.
                    self.schedule_close(path, session, pid);
                }
                Notice::Renamed {
                    session,
                    agent,
                    pid,
                    from,
                    to,
                } => self.on_renamed(session, &agent, pid, from, to).await,
                Notice::ApprovedOp {
                    path,
                    grant,
                    session,
                } => self.move_paths(vec![path], grant, session).await,
            }
        }
    }

    /// A close-write (or another completed operation) of `path`: its diff and review are
    /// taken [`DIFF_DELAY`] later, once for all the closes meanwhile (the last closer's).
    pub(super) fn schedule_close(self: &Arc<Self>, path: Vec<u8>, session: u64, pid: u32) {
        if lock(&self.diff_scheduled)
            .insert(path.clone(), (session, pid))
            .is_none()
        {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(DIFF_DELAY).await;
                let (closer, pid) = lock(&me.diff_scheduled).remove(&path).unwrap_or((0, 0));
                if me.reviewing(&path) {
                    me.review_completed(path.clone(), closer, pid).await;
                }
                me.on_closed(path, closer).await;
            });
        } else {
            GateMetrics::inc(&self.state.metrics.diffs_coalesced);
        }
    }

    /// Records the diff of a gated file after a close-write. The change is the one of the
    /// grant that let the latest write open through (not of every grant live on the path:
    /// one write is one change, owned by the grant and session that made it), and the file
    /// as it is now becomes that change's post-image. A change that a failure verdict let
    /// through (nobody approved it) is flagged right away.
    pub(super) async fn on_closed(&self, path: Vec<u8>, closer: u64) {
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
            let max = self.state.policy().max_preimage_bytes();
            let masker = self.state.policy().masker().clone();
            let res = blocking(move || {
                changes::diff_own_close(&store, &cc, recorded.as_deref(), max, &masker)
            })
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
                self.move_baseline(&c).await;
            }
        }
    }

    /// An approved change was closed: the baseline of its path moves to it when its grant
    /// keeps it (`on_expiry = "flag"`). A grant whose rule reverts at its end approves
    /// only for its lifetime: the baseline stays, and `drift` shows the change as approved
    /// until its expiry.
    async fn move_baseline(&self, c: &Change) {
        let Some(grant) = self.state.grants().get(c.grant_id).cloned() else {
            return;
        };
        if grant.on_expiry != OnExpiry::Flag {
            return;
        }
        self.move_paths(vec![c.path.clone()], c.grant_id, c.session_id)
            .await;
    }

    /// Moves the baseline of `paths` (those in its scope) to what they are now, approved
    /// under `grant` (a closed change, or an approved rename, unlink, chmod, chown or
    /// truncate: a path that is gone leaves the baseline).
    pub(super) async fn move_paths(&self, paths: Vec<Vec<u8>>, grant: u64, session: u64) {
        let Some(b) = self.baseline.clone() else {
            return;
        };
        let paths: Vec<Vec<u8>> = paths
            .into_iter()
            .filter(|p| b.baseline.in_scope(p))
            .collect();
        if paths.is_empty() {
            return;
        }
        let shown: Vec<String> = paths.iter().map(|p| encode(p)).collect();
        let extra = json!({"grant": grant, "session": session});
        let source = format!("grant {grant}");
        match blocking(move || b.accept(&paths, &source, extra)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(paths = ?shown, error = %e, "cannot move the baseline to an approved change")
            }
            None => {}
        }
    }

    /// Which grant's change a close-write by a process of session `closer` belongs to: the
    /// latest writer grant whose change was made by that session, else (an agent-scoped
    /// grant used by another session of the agent) the latest writer grant. A close
    /// outside any session belongs to no grant: its edit stays someone else's.
    pub(super) fn owner_of_close(&self, path: &[u8], closer: u64) -> Option<u64> {
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
    pub(super) async fn on_renamed(
        self: &Arc<Self>,
        session: u64,
        agent: &str,
        pid: u32,
        from: Option<Vec<u8>>,
        to: Vec<u8>,
    ) {
        let ops = OpSet::RENAME;
        let q = GateQuery {
            path: &to,
            session: Some(SessionRef {
                id: session,
                agent,
                within_scope: self.state.within_scope(session, &to),
            }),
            ops,
            write: true,
        };
        let policy = self.state.policy();
        let Some(m) = policy.unheld_rule(&q) else {
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
        if !m.builtin && m.rule.verdict == Verdict::Ask && m.rule.mode == Mode::Review {
            // Review mode: the rename completes a change of `to` (and of `from`, when it
            // is reviewed too); each is reviewed against the baseline.
            let covered = self
                .state
                .grants()
                .find(&m.rule.name, session, agent, &to, ops, SystemTime::now())
                .is_some();
            if !covered {
                self.state.mark_review(&to, session, &m.rule);
                self.schedule_close(to, session, pid);
            }
            if let Some(from) = from.filter(|f| self.reviewing(f)) {
                self.schedule_close(from, session, pid);
            }
            return;
        }
        if !m.builtin && m.rule.verdict == Verdict::Ask {
            let now = SystemTime::now();
            let covering = self
                .state
                .grants()
                .find(&m.rule.name, session, agent, &to, ops, now)
                .map(|g| (g.id, g.on_expiry));
            if let Some((grant, on_expiry)) = covering {
                // An approved rename: under a grant that keeps its changes, the baseline
                // moves for both names (the old one left it, the new one holds the file).
                if on_expiry == OnExpiry::Flag {
                    let mut paths = vec![to];
                    paths.extend(from);
                    self.move_paths(paths, grant, session).await;
                }
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
        // Undo: put the path's baseline (its last approved state) back over the
        // renamed-in file (kept in quarantine).
        if let Some(b) = self.baseline.clone().filter(|b| b.restorable(&to)) {
            warn!(path = %encode(&to), session, agent, pid, "unapproved rename into a gated tree: restoring the baseline");
            let path = to.clone();
            match blocking(move || b.restore_replacing(&path)).await {
                Some(Ok(kept)) => {
                    if let Some((d, i)) = file_id(&to) {
                        lock(&self.renames_seen)
                            .insert(to.clone(), (d, i, std::time::Instant::now()));
                    }
                    GateMetrics::inc(&self.state.metrics.changes_reverted);
                    body["quarantined_as"] = json!(encode(kept.as_os_str().as_bytes()));
                    body["restored"] = json!("baseline");
                    self.audit("unapproved_rename", body).await;
                    return;
                }
                Some(Err(e)) => {
                    warn!(path = %encode(&to), error = %e, "cannot restore the baseline over an unapproved rename; trying the kept pre-image");
                    body["baseline_error"] = json!(e.to_string());
                }
                None => {}
            }
        }
        // Else the last kept pre-image of that path. Without one there is nothing to
        // restore: moving the file away would leave the path with nothing, so it is
        // flagged instead.
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
                "neither the baseline nor a pre-image of this path keeps its content: nothing to restore; the renamed-in file is left in place"
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
                // The restored file is a new inode at the path: the same rename reported
                // again (a second source) must find it handled, not revert it once more.
                if let Some((d, i)) = file_id(&to) {
                    lock(&self.renames_seen).insert(to.clone(), (d, i, std::time::Instant::now()));
                }
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
    pub(super) fn first_sight(&self, path: &[u8], dev: u64, ino: u64) -> bool {
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
    pub(super) async fn cover_temp_rename(
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
