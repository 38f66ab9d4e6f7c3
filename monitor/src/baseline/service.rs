//! The baseline inside the daemon: taken at the first start, moved by approved changes and
//! `confgate baseline accept`, compared by `confgate drift` and the periodic drift check,
//! restored by `confgate revert`. Every move, revert and drift found is a ledger record.
//!
//! Everything here blocks on disk I/O: call it from a blocking thread.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::attribute::History;
use super::drift::{self, Item};
use super::restore;
use super::{Baseline, BaselineError, Entry, Limits};
use crate::event::escape::encode;
use crate::event::excerpt::Masker;
use crate::ledger::SharedLedger;

/// Settings of the service.
pub struct Settings {
    pub state_dir: PathBuf,
    pub roots: Vec<PathBuf>,
    pub limits: Limits,
    pub events_file: PathBuf,
    pub masker: Arc<Masker>,
    /// Where files renamed over a path that is restored are kept.
    pub quarantine: PathBuf,
}

/// Who asked for a revert or an accept (the CLI caller, from its peer credentials).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Requester {
    pub uid: u32,
    pub pid: u32,
    /// The caller's agent session (0: none).
    pub session: u64,
}

/// The daemon's baseline.
pub struct BaselineService {
    pub baseline: Baseline,
    ledger: SharedLedger,
    ledger_path: PathBuf,
    events_file: PathBuf,
    masker: Arc<Masker>,
    max_file_bytes: u64,
    quarantine: PathBuf,
    /// Keys of the drifts already recorded by the periodic check.
    reported: Mutex<HashSet<String>>,
}

/// `roots` without the ones inside another (walked once), in order.
pub fn outermost(mut roots: Vec<PathBuf>) -> Vec<PathBuf> {
    roots.sort();
    roots.dedup();
    let all = roots.clone();
    roots.retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
    roots
}

impl BaselineService {
    /// Opens the baseline and takes it if this is the first start (ledgered as
    /// `baseline_taken`).
    pub fn start(s: Settings, ledger: SharedLedger) -> Result<BaselineService, BaselineError> {
        let baseline = Baseline::open(&s.state_dir, outermost(s.roots), s.limits)?;
        if let Some(t) = baseline.take_initial()? {
            let body = json!({"roots": baseline.roots().iter().map(|r| r.display().to_string()).collect::<Vec<_>>(),
                              "files": t.files, "bytes_stored": t.bytes_stored,
                              "skipped_too_large": t.skipped_too_large,
                              "skipped_total_limit": t.skipped_total_limit,
                              "unreadable": t.unreadable, "millis": t.millis});
            if let Err(e) = ledger.append("baseline_taken", body) {
                warn!(error = %e, "cannot record the initial baseline in the ledger");
            }
        }
        // Drifts recorded before this start are not recorded again.
        let mut reported = HashSet::new();
        if let Ok(recs) = crate::ledger::read(&ledger_path(&s.state_dir), None) {
            for r in recs.iter().filter(|r| r.kind == "drift_detected") {
                if let Some(k) = r.body["key"].as_str() {
                    reported.insert(k.to_owned());
                }
            }
        }
        Ok(BaselineService {
            baseline,
            ledger,
            ledger_path: ledger_path(&s.state_dir),
            events_file: s.events_file,
            masker: s.masker,
            max_file_bytes: s.limits.max_file_bytes,
            quarantine: s.quarantine,
            reported: Mutex::new(reported),
        })
    }

    fn record(&self, kind: &str, body: Value) {
        if let Err(e) = self.ledger.append(kind, body) {
            warn!(kind, error = %e, "cannot append to the ledger");
        }
    }

    /// Every difference under `paths` (all roots when empty), attributed.
    pub fn drift(&self, paths: &[Vec<u8>]) -> Result<Vec<Item>, BaselineError> {
        let mut items = drift::compare(&self.baseline, paths, &self.masker, self.max_file_bytes)?;
        if items.is_empty() {
            // Nothing to attribute: the ledger and the events file are not read (the
            // periodic check of an undrifted tree costs the tree's walk only).
            return Ok(items);
        }
        let ledger: Vec<crate::ledger::LedgerRecord> =
            crate::ledger::read_lenient(&self.ledger_path, None)
                .map(|o| o.records.into_iter().map(|(_, r)| r).collect())
                .unwrap_or_default();
        let history = History::load(&self.events_file, &ledger);
        for it in &mut items {
            let since = it.baseline_since_ms.unwrap_or(0);
            let mtime = it.live.as_ref().map(|l| l.mtime_ms);
            it.attribution = history.attribute(&it.path, since, mtime);
        }
        Ok(items)
    }

    /// One periodic check: each drift not recorded before is ledgered (`drift_detected`)
    /// and returned.
    pub fn check(&self) -> Vec<Item> {
        self.baseline
            .counters
            .drift_checks
            .fetch_add(1, Ordering::Relaxed);
        let items = match self.drift(&[]) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "drift check failed");
                return Vec::new();
            }
        };
        let mut new = Vec::new();
        for it in items {
            let fresh = self
                .reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(it.key.clone());
            if !fresh {
                continue;
            }
            self.baseline
                .counters
                .drift_detected
                .fetch_add(1, Ordering::Relaxed);
            warn!(path = %it.path, change = it.change, what = ?it.what, by = %it.attribution.by, "drift from the approved baseline");
            self.record(
                "drift_detected",
                serde_json::to_value(&it).unwrap_or(Value::Null),
            );
            new.push(it);
        }
        new
    }

    /// Puts each path back to its baseline (all are checked to be in scope first).
    pub fn revert(&self, paths: &[Vec<u8>], who: &Requester) -> Result<Vec<Value>, BaselineError> {
        for p in paths {
            if !self.baseline.in_scope(p) {
                return Err(BaselineError::NotInScope(encode(p)));
            }
        }
        // What is undone, for the ledger (one comparison for all the paths).
        let undone = self.drift(paths).unwrap_or_default();
        let mut out = Vec::new();
        for p in paths {
            let diff = undone.iter().find(|i| i.raw == *p);
            out.push(self.revert_one(p, json!({"by": who}), "revert", diff));
        }
        Ok(out)
    }

    /// Puts each path back to the state ledger record `seq` left it in (see
    /// [`super::revert_to`]). Every path is checked first (in scope, recorded there, its
    /// content kept): nothing is touched unless all can be. The baseline does not move
    /// (`baseline accept` approves the result); each path is ledgered as a
    /// `baseline_revert` with `to_seq`.
    pub fn revert_to(
        &self,
        paths: &[Vec<u8>],
        seq: u64,
        who: &Requester,
    ) -> Result<Vec<Value>, BaselineError> {
        for p in paths {
            if !self.baseline.in_scope(p) {
                return Err(BaselineError::NotInScope(encode(p)));
            }
        }
        let records = crate::ledger::read_lenient(&self.ledger_path, None)
            .map_err(|e| BaselineError::NotRecorded(format!("cannot read the ledger: {e}")))?;
        let Some(rec) = records
            .records
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.seq == seq)
        else {
            return Err(BaselineError::NotRecorded(format!(
                "the ledger in use has no record {seq}"
            )));
        };
        let mut wants = Vec::new();
        for p in paths {
            let want = super::revert_to::state_at(&rec, p)?;
            if let Some(e) = &want {
                super::revert_to::check_kept(&self.baseline, p, e, seq)?;
            }
            wants.push(want);
        }
        let mut out = Vec::new();
        for (p, want) in paths.iter().zip(wants) {
            let mut body = json!({"path": encode(p), "why": "revert", "to_seq": seq,
                                  "to_kind": rec.kind, "by": who,
                                  "to": want.as_ref().map(drift::State::from)});
            let c = &self.baseline.counters;
            match restore::restore_to(&self.baseline, p, want) {
                Ok(r) => {
                    c.reverts.fetch_add(1, Ordering::Relaxed);
                    info!(path = %encode(p), result = ?r, seq, "restored to a ledger record's state");
                    body["result"] = json!(r);
                }
                Err(e) => {
                    c.revert_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(path = %encode(p), error = %e, seq, "cannot restore to a ledger record's state");
                    body["error"] = json!(e.to_string());
                }
            }
            self.record("baseline_revert", body.clone());
            out.push(body);
        }
        Ok(out)
    }

    /// [`BaselineService::revert_one`], with what is undone compared first.
    pub fn revert_path(&self, path: &[u8], extra: Value, why: &str) -> Value {
        let undone = self.drift(&[path.to_vec()]).unwrap_or_default();
        let diff = undone.iter().find(|i| i.raw == path);
        self.revert_one(path, extra, why, diff)
    }

    /// Puts `path` back to its baseline, ledgered as `baseline_revert` with `extra`'s
    /// fields and what is undone (`diff`); the record's body is returned (with `error`
    /// when it failed).
    fn revert_one(&self, path: &[u8], extra: Value, why: &str, diff: Option<&Item>) -> Value {
        let mut body = json!({"path": encode(path), "why": why,
                              "to": self.baseline.get(path).ok().flatten().map(|e| drift::State::from(&e))});
        if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
            b.extend(x);
        }
        if let Some(d) = diff {
            body["undone"] = json!({"change": d.change, "what": d.what, "diff": d.diff,
                                    "attribution": d.attribution});
        }
        let c = &self.baseline.counters;
        match restore::restore(&self.baseline, path) {
            Ok(r) => {
                c.reverts.fetch_add(1, Ordering::Relaxed);
                info!(path = %encode(path), result = ?r, why, "restored to the baseline");
                body["result"] = json!(r);
            }
            Err(e) => {
                c.revert_errors.fetch_add(1, Ordering::Relaxed);
                warn!(path = %encode(path), error = %e, why, "cannot restore to the baseline");
                body["error"] = json!(e.to_string());
            }
        }
        self.record("baseline_revert", body.clone());
        body
    }

    /// Largest file whose content is compared (`baseline.max_file_bytes`).
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// Whether `path` is in the baseline and its content can be put back.
    pub fn restorable(&self, path: &[u8]) -> bool {
        matches!(self.baseline.get(path), Ok(Some(e)) if e.stored || e.kind == super::FileKind::Symlink)
    }

    /// Restores `path` by replacing what was renamed over it (see
    /// [`restore::restore_replacing`]); returns where that file was kept.
    pub fn restore_replacing(&self, path: &[u8]) -> Result<PathBuf, BaselineError> {
        let r = restore::restore_replacing(&self.baseline, path, &self.quarantine);
        let c = &self.baseline.counters;
        match &r {
            Ok(_) => c.reverts.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.revert_errors.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    /// Moves the baseline of `paths` to what they are now, ledgered as `baseline_moved`
    /// (one record per call, listing each path's before and after).
    pub fn accept(
        &self,
        paths: &[Vec<u8>],
        source: &str,
        extra: Value,
    ) -> Result<Value, BaselineError> {
        let moved = self.baseline.accept(paths, source)?;
        let state = |e: &Option<Entry>| e.as_ref().map(drift::State::from);
        let files: Vec<Value> = moved
            .iter()
            .map(|(p, b, a)| json!({"path": encode(p), "before": state(b), "after": state(a)}))
            .collect();
        let mut body = json!({"source": source, "paths": paths.iter().map(|p| encode(p)).collect::<Vec<_>>(),
                              "files": files});
        if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
            b.extend(x);
        }
        if !moved.is_empty() {
            info!(source, files = moved.len(), "baseline moved");
            self.record("baseline_moved", body.clone());
        }
        Ok(body)
    }

    /// The periodic drift check, every `every` (not started for 0).
    pub async fn drift_loop(self: Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            let me = Arc::clone(&self);
            if tokio::task::spawn_blocking(move || me.check())
                .await
                .is_err()
            {
                warn!("drift check: its thread ended abnormally");
            }
        }
    }

    /// Counters for `confgate stats`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.baseline.snapshot()
    }
}

fn ledger_path(state_dir: &Path) -> PathBuf {
    crate::ledger::default_path(state_dir)
}
