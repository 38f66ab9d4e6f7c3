//! Held opens: the blocking preparation (pre-image, context, policy), asking the
//! approval service, waiting for its decision, failure verdicts, and filing requests.
use super::*;

impl Engine {
    pub(super) async fn held_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Held>) {
        while let Some(held) = rx.recv().await {
            tokio::spawn(self.clone().handle(held));
        }
    }

    /// On a blocking thread, everything a held open needs before it can wait: the
    /// pre-image through the event's own descriptor, the writer's context from `/proc` up to
    /// its session's root (almost every held open is an `ask`, whose request needs it), the
    /// policy's verdict and, for a hold that no grant covers, the request filed and on its
    /// way to the service. One hand-off between threads instead of three.
    pub(super) fn prepare(&self, held: Held) -> (Prepared, Next) {
        let ev = held.event();
        let session = self.state.sessions.get(ev.session);
        let root = session.as_ref().map_or(1, |s| s.root_pid);
        let pre = match (
            ev.op,
            preimage::capture(&ev.fd, self.state.policy().max_preimage_bytes()),
        ) {
            // A supervised operation on a path that does not exist yet: its pre-image is
            // "did not exist" (a revert removes what it creates).
            (Some(op), _) if !op.existed => Some(PreImage::absent()),
            (_, Ok(p)) => Some(p),
            (Some(_), Err(preimage::PreImageError::NotRegular { .. })) => None,
            (_, Err(e)) => {
                GateMetrics::inc(&self.state.metrics.preimage_errors);
                warn!(path = %encode(&ev.path), error = %e, "cannot read the pre-image");
                None
            }
        };
        let writer = context::writer(ev.tgid, root);
        let created = match (ev.op, &pre, ev.intent.as_ref()) {
            (Some(op), _, _) => !op.existed,
            (None, Some(p), Some(i)) => preimage::created_by_open(p, i),
            _ => false,
        };
        let agent = self.state.agent(ev.session);
        let agent = agent.as_deref().unwrap_or("");
        let q = GateQuery {
            path: &ev.path,
            session: (ev.session != 0).then_some(SessionRef {
                id: ev.session,
                agent,
                within_scope: self.state.within_scope(ev.session, &ev.path),
            }),
            ops: ops_of(ev, created),
            write: ev.is_write(),
        };
        let policy = self.state.policy();
        let outside = q.write && q.session.is_some_and(|s| s.within_scope == Some(false));
        let next = match policy.evaluate(&q) {
            _ if outside => Next::ScopeDenied,
            None => Next::Allow,
            Some(m) => match (m.builtin, m.rule.verdict) {
                (false, Verdict::Allow) => Next::Allow,
                (true, _) | (false, Verdict::Deny) => Next::Deny(m.rule),
                (false, Verdict::Ask) => {
                    let asked = Asked {
                        ev,
                        held: &held,
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
    pub(super) fn ask(&self, a: Asked<'_>, rule: Arc<Rule>) -> Next {
        let ev = a.ev;
        if let Some(g) = self.state.grants().find(
            &rule.name,
            ev.session,
            a.agent,
            &ev.path,
            a.ops,
            SystemTime::now(),
        ) {
            return Next::Granted(g.id);
        }
        if rule.mode == Mode::DenyAndRequest {
            return Next::DenyAndRequest(rule, a.ops);
        }
        if rule.mode == Mode::Review {
            // Deferred for a grant that ended meanwhile: reviewed at completion instead.
            self.state.mark_review(&ev.path, ev.session, &rule);
            GateMetrics::inc(&self.state.metrics.reviews_passed);
            return Next::Allow;
        }
        let t_ask = ev.received.elapsed();
        // A held operation taken again after a restart waits on the request it filed then.
        if let Some(request_id) = ev
            .op
            .and_then(|o| o.resumes)
            .and_then(|id| self.take_resumable(id))
        {
            let (tx, rx) = oneshot::channel();
            let keep = a.keep();
            lock(&self.waiters).insert(
                request_id,
                Waiter {
                    tx,
                    rule: rule.name.clone(),
                    keep,
                },
            );
            GateMetrics::inc(&self.state.metrics.holds_resumed);
            let body = json!({"host_request_id": request_id, "path": encode(&ev.path),
                              "session": ev.session, "pid": ev.tgid, "rule": rule.name,
                              "resumed": true});
            let filed = Filed {
                request_id,
                rx,
                t_ask,
                t_filed: ev.received.elapsed(),
            };
            return Next::Hold {
                rule,
                filed: Some((filed, body)),
            };
        }
        let about = Subject {
            writer: a.writer,
            session: a.session,
            path: &ev.path,
            ops: a.ops,
            pre: a.pre,
            created: a.created,
        };
        let ctx = self.request_context(about, &rule);
        let (tx, rx) = oneshot::channel();
        let keep = a.keep();
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
                Some(a.held),
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

    pub(super) async fn handle(self: Arc<Self>, held: Held) {
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
            Next::ScopeDenied => {
                let ev = p.held.event();
                let body = json!({"path": encode(&ev.path), "session": ev.session,
                                  "pid": ev.tgid, "source": "fanotify"});
                GateMetrics::inc(&self.state.metrics.scope_denied);
                GateMetrics::inc(&self.state.metrics.denied);
                warn!(path = %encode(&ev.path), session = ev.session, pid = ev.tgid, "gate refused a write outside the session's declared scope");
                self.deny(p.held, p.created).await;
                self.ledger("scope_denied", body).await;
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
                let kind = if body["resumed"] == true {
                    "hold_resumed"
                } else {
                    "request"
                };
                self.ledger(kind, body).await;
                self.await_decision(p.held, p.pre, p.created, &rule, filed)
                    .await
            }
        }
    }

    /// Denies, first removing the file if this very open created it.
    pub(super) async fn deny(&self, held: Held, created: bool) {
        // A supervised operation was never performed: there is nothing to remove.
        if created && held.event().op.is_none() {
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
    pub(super) async fn deny_and_request(
        self: &Arc<Self>,
        p: Prepared,
        ops: OpSet,
        rule: &Arc<Rule>,
    ) {
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
            let about = Subject {
                writer: &writer,
                session: session.as_ref(),
                path: &path,
                ops,
                pre: pre.as_ref(),
                created,
            };
            self.request_context(about, rule)
        });
        self.deny(held, created).await;
        let Some(ctx) = ctx else {
            return;
        };
        let me = Arc::clone(self);
        let r = Arc::clone(rule);
        let lifetime = self.state.policy().request_ttl();
        let filed = blocking(move || me.file_now(ctx, &r, lifetime, None, None, None))
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
    pub(super) async fn await_decision(
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
        if let Ok(Ok(Outcome::Approved(..) | Outcome::Denied | Outcome::Rejected)) = &outcome {
            crate::prom::histograms::observe(
                &crate::prom::histograms::APPROVAL_ROUND_TRIP,
                t_decided.saturating_sub(t_filed),
            );
        }
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
    pub(super) fn request_context(&self, about: Subject<'_>, rule: &Rule) -> pb::RequestContext {
        let Subject {
            writer,
            session,
            path,
            ops,
            pre,
            created,
        } = about;
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
            excerpt: pre
                .filter(|_| !created)
                .and_then(|p| p.content.as_deref())
                .and_then(|c| self.state.policy().masker().excerpt(path, c))
                .filter(|e| !e.text.is_empty())
                .map(|e| (e, "content")),
            rule: &rule.name,
            mode: rule.mode.as_str(),
            fail_verdict: rule.fail.as_str(),
            quorum: rule.quorum.as_ref().map(|q| pb::Quorum {
                approvals: q.approvals,
                approvers: q.approvers.clone(),
                four_eyes: q.four_eyes,
                notify: q.notify.clone(),
            }),
            masker: &self.state.policy().masker().clone(),
        })
    }

    /// Applies a failure verdict: counted, logged, in the ledger and reported.
    pub(super) async fn fallback(
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
    pub(super) fn file_now(
        &self,
        ctx: pb::RequestContext,
        rule: &Rule,
        lifetime: Duration,
        waiter: Option<Waiter>,
        held: Option<(&PreImage, bool)>,
        hold: Option<&Held>,
    ) -> Option<(u64, Value)> {
        let created = unix_ms(SystemTime::now());
        let deadline =
            created.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        let record = RequestRecord {
            rule: rule.name.clone(),
            session: ctx.session_id,
            path: crate::event::escape::decode(&ctx.path)
                .unwrap_or_else(|| ctx.path.clone().into()),
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
        let mut resumable = false;
        let filed = self.uplink.submit_now(|tx| {
            let id = tx.next_id(REQUEST_IDS)?;
            tx.put(REQUESTS, id, &record)?;
            if let Some(content) = keep_content {
                tx.put_blob(REQUEST_PREIMAGES, id, content)?;
            }
            allocated = id;
            // A supervised operation: what a restarted daemon needs to answer it.
            if let Some((key, rec)) = hold.and_then(|h| h.hold_record(id)) {
                tx.put(SESSION_HOLDS, key, &rec)?;
                resumable = true;
            }
            if let Some(w) = waiter {
                lock(&self.waiters).insert(id, w);
            }
            // Before the request can leave: its acknowledgement names the service's id.
            self.await_acceptance(id, &ctx, rule, lifetime);
            submit.host_request_id = id;
            Ok(submit)
        });
        let id = match filed {
            Ok((id, unsynced)) if resumable => {
                // The caller of a supervised operation waits on a notification that only
                // this record lets a restarted daemon answer: durable now, not in 50 ms.
                // (This runs on a blocking thread.)
                if self.uplink.sync_blocking(unsynced).is_err() {
                    GateMetrics::inc(&self.state.metrics.store_errors);
                    warn!(
                        request = id,
                        "cannot make a held operation's request durable"
                    );
                } else {
                    GateMetrics::inc(&self.state.metrics.requests_synced);
                }
                id
            }
            Ok((id, unsynced)) => {
                let uplink = self.uplink.clone();
                let metrics = Arc::clone(&self.state.metrics);
                tokio::spawn(async move {
                    // The grace is waited here, not on a blocking thread: a burst of
                    // requests must not park the blocking pool.
                    tokio::time::sleep(REQUEST_SYNC_GRACE).await;
                    match uplink.sync(unsynced).await {
                        Ok(()) => GateMetrics::inc(&metrics.requests_synced),
                        Err(e) => {
                            GateMetrics::inc(&metrics.store_errors);
                            warn!(request = id, error = %e, "cannot make the approval request durable");
                        }
                    }
                });
                id
            }
            Err(e) => {
                GateMetrics::inc(&self.state.metrics.request_errors);
                warn!(error = %e, "cannot record and spool the approval request");
                lock(&self.waiters).remove(&allocated);
                lock(&self.to_tell).remove(&allocated);
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

    /// A hold answered here (its timeout) while its request stays open at the service:
    /// not one that a crash released.
    pub(super) async fn mark_answered(&self, id: u64) {
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

    pub(super) async fn forget_request(&self, id: u64) {
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
    pub(super) async fn track(
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

    /// Remembers a kept pre-image (already in the store) until its grant ends.
    pub(super) fn keep_tracked(&self, change: Change) {
        self.state.track(change.grant_id, &change.path);
        lock(&self.changes)
            .entry(change.grant_id)
            .or_default()
            .push(change);
    }

    // ---- decisions from the approval service --------------------------------------------
}

/// Removes `path` if it is still the inode the held open refers to.
pub(super) fn remove_if_same(path: &[u8], held: Option<nix::sys::stat::FileStat>) -> bool {
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
