//! Reloading the configuration (SIGHUP, `confgate reload`): the file is read once, hashed,
//! parsed and validated, and everything built from it (the gate's policy, the watch set,
//! the detection rules, the events file) is made before anything changes; a file or a
//! step that fails refuses the whole reload and the running configuration stays. Then the
//! event loop, which handles nothing else meanwhile, swaps them: kernel prefixes and
//! fanotify marks of new trees first (so that nothing under them goes unseen), the
//! pipeline's watch set and detection rules, the gate's marks then its policy (one
//! pointer, which the fanotify listener and the confined sessions' supervisors read per
//! decision), the paths new confined sessions are denied and hidden, and the events file
//! (reopened even when its path did not change: logrotate's `create` renamed it).
//!
//! Settings that are built into running parts (sockets, the state directory, the kernel
//! programs, the approval service, the gate's mode) keep their running values: each one
//! that differs in the file is named in the log, in the answer to `confgate reload` and in
//! the ledger, never silently ignored. Ledgered: `config_reloaded` and
//! `config_reload_refused`, with the file's SHA-256.
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tracing::{error, info, warn};

use super::{
    GateRuntime,
    consumers::Consumers,
    gate,
    shared::{Shared, lock},
};
use crate::{
    api::{pb, server::ApiError},
    config::{Config, watch::WatchSet},
    gate::session::handoff::ConfinePaths,
    metrics::Metrics,
    notify::NotifyWatcher,
    observe::{pipeline::Pipeline, procs::detect::Detector, sink},
    policy::Policy,
};

pub(super) use super::shared::ReloadAsk;

/// Files primed into the chmod/chown classification cache per watched tree.
pub(super) const ATTRIB_PRIME_LIMIT: usize = 100_000;

/// Settings read only at start-up (TOML paths: a whole table or one key of it).
const RESTART_ONLY: &[&str] = &[
    "daemon",
    "kernel",
    "correlation",
    "approval",
    "output.stdout",
    "output.format",
    "output.nats",
    "output.stats_interval_secs",
    "watch.rename_sources",
    "gate.enabled",
    "gate.fanotify",
    "gate.watchdog",
    "gate.terminal_notice",
    "gate.approvals_url",
    "baseline",
    "drift",
    "metrics",
];

/// What the daemon needs to reload.
pub(super) struct Reloader {
    /// The configuration file.
    path: PathBuf,
    /// The configuration in force (as read from the file, before the gate's roots join
    /// the watch paths; restart-only settings as at start).
    running: Config,
    /// Paths new confined sessions are denied and hidden (`None`: no supervise socket).
    confine: Option<ConfinePaths>,
}

/// Everything a validated file makes, built before anything is swapped.
struct Prepared {
    sha256: String,
    /// The file's configuration with the restart-only settings in force.
    cfg: Config,
    policy: Option<Policy>,
    watch: WatchSet,
    detector: Detector,
    events: (PathBuf, File),
    restart_required: Vec<String>,
}

/// What the loop's parts a reload swaps.
pub(super) struct Parts<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) pipeline: &'a mut Pipeline,
    pub(super) fan: &'a mut NotifyWatcher,
    pub(super) consumers: &'a mut Consumers,
    pub(super) gate: Option<&'a Arc<GateRuntime>>,
}

impl Reloader {
    pub(super) fn new(path: &Path, running: Config, confine: Option<ConfinePaths>) -> Self {
        Reloader {
            path: path.to_owned(),
            running,
            confine,
        }
    }

    /// Reloads (from SIGHUP when `ask` is `None`), answers `ask`, logs, counts and
    /// ledgers the outcome.
    pub(super) async fn reload(&mut self, parts: Parts<'_>, ask: Option<ReloadAsk>) {
        let via = if ask.is_some() {
            "confgate reload"
        } else {
            "SIGHUP"
        };
        let (bytes, prepared) = match std::fs::read(&self.path) {
            Ok(bytes) => {
                let p = self.prepare(&bytes);
                (Some(bytes), p)
            }
            Err(e) => (None, Err(anyhow::anyhow!("{}: {e}", self.path.display()))),
        };
        let sha256 = bytes.as_deref().map(hex_sha256);
        let metrics = parts.shared.metrics.clone();
        let answer = match prepared {
            Err(e) => {
                Metrics::inc(&metrics.config_reloads_refused);
                let message = format!("{e:#}");
                error!(path = %self.path.display(), via, error = %message, "configuration reload refused; the running configuration stays");
                let body = json!({"path": self.path.display().to_string(), "sha256": sha256,
                                  "via": via, "error": message});
                ledger(&parts, "config_reload_refused", body).await;
                // The events file is reopened all the same: logrotate renamed it and
                // expects the daemon to write the new one from now on.
                self.reopen_events(parts.consumers, &metrics);
                Err(ApiError::FailedPrecondition(message))
            }
            Ok(p) => {
                let response = self.commit(p, parts, via).await;
                Metrics::inc(&metrics.config_reloads);
                Ok(response)
            }
        };
        if let Some(ask) = ask {
            let _ = ask.send(answer);
        }
    }

    /// Reopens the running events file (a refused reload).
    fn reopen_events(&self, consumers: &mut Consumers, metrics: &Metrics) {
        let path = self.running.output.events_file.clone();
        match sink::open_file(&path) {
            Ok(file) => consumers.reopen(path, file),
            Err(e) => {
                Metrics::inc(&metrics.sink_errors);
                error!(error = %e, "cannot reopen the events file; events go on to the file open until now");
            }
        }
    }

    /// Validates `bytes` and builds everything from them; an error refuses the reload.
    fn prepare(&self, bytes: &[u8]) -> anyhow::Result<Prepared> {
        let text = crate::config::decode_text(&self.path, bytes.to_vec())?;
        let file = Config::parse(&text, &self.path)?;
        let restart_required = restart_only_changes(&self.running, &file);
        let mut cfg = file;
        keep_running(&mut cfg, &self.running);
        let mut watch_cfg = cfg.clone();
        let policy = if cfg.gate.enabled {
            let policy = gate::compile_policy(&cfg, &self.path)?;
            for root in gate::watched_roots(&policy, &cfg) {
                if !watch_cfg.watch.paths.iter().any(|p| root.starts_with(p)) {
                    watch_cfg.watch.paths.push(root);
                }
            }
            Some(policy)
        } else {
            None
        };
        let watch = WatchSet::new(&watch_cfg.watch).context("watch set")?;
        let detector = Detector::new(&cfg.detect).context("detect rules")?;
        let events_path = cfg.output.events_file.clone();
        let events = sink::open_file(&events_path).context("events output")?;
        Ok(Prepared {
            sha256: hex_sha256(bytes),
            cfg,
            policy,
            watch,
            detector,
            events: (events_path, events),
            restart_required,
        })
    }

    /// Swaps in what `p` holds (see the module's documentation for the order).
    async fn commit(&mut self, p: Prepared, parts: Parts<'_>, via: &str) -> pb::ReloadResponse {
        let Parts {
            shared,
            pipeline,
            fan,
            consumers,
            gate,
        } = parts;
        let mut notes = Vec::new();
        let applied = applied_changes(&self.running, &p.cfg);
        // New kernel prefixes and fanotify marks first. Prefixes and marks of paths no
        // longer watched stay (nothing removes one from a running group or trie): the
        // pipeline's watch set drops what they report.
        let old = pipeline.watch();
        let old_prefixes = old.kernel_prefixes();
        let old_trees = old.fanotify_trees();
        let old_files = old.fanotify_files();
        {
            let mut k = lock(&shared.kernel);
            for prefix in p.watch.kernel_prefixes() {
                if !old_prefixes.contains(&prefix)
                    && let Err(e) = k.add_prefix(&prefix)
                {
                    let note = format!(
                        "watched prefix {} not given to the kernel: {e}",
                        String::from_utf8_lossy(&prefix)
                    );
                    warn!("{note}");
                    notes.push(note);
                }
            }
        }
        for tree in p.watch.fanotify_trees() {
            if old_trees.contains(&tree) {
                continue;
            }
            if let Err(e) = fan.add_tree(&tree) {
                let note = format!("could not watch tree {}: {e}", tree.display());
                warn!("{note}");
                notes.push(note);
            }
            pipeline
                .correlator_mut()
                .prime_attributes(&tree, ATTRIB_PRIME_LIMIT);
        }
        for file in p.watch.fanotify_files() {
            if !old_files.contains(&file)
                && let Err(e) = fan.add_file(&file)
            {
                let note = format!("could not watch file {}: {e}", file.display());
                warn!("{note}");
                notes.push(note);
            }
        }
        pipeline.reconfigure(p.watch, p.detector);
        notes.extend(placement_caveats(&self.running, &p.cfg));
        if let (Some(g), Some(policy)) = (gate, p.policy) {
            let mark_roots = policy.mark_roots();
            g.set_policy(policy).await;
            if let Some(c) = &self.confine {
                let (denied, hidden) =
                    super::protected::confine_paths(&p.cfg, &self.path, &mark_roots);
                c.set(denied, hidden);
            }
            if applied.iter().any(|a| a == "gate policy")
                && !shared.registry.live().is_empty()
                && shared.registry.live_unconfined().len() < shared.registry.live().len()
            {
                notes.push(
                    "confined sessions already running keep the Landlock rules they started \
                     with: a path the new policy gates outside their denied paths is decided \
                     by the new policy only when their supervisor sees the operation"
                        .into(),
                );
            }
        }
        let (events_path, events_file) = p.events;
        consumers.reopen(events_path.clone(), events_file);
        self.running = p.cfg;
        let path = self.path.display().to_string();
        for s in &p.restart_required {
            warn!(setting = %s, "configuration reload: this setting changed in the file but takes effect only on a restart; the running value stays");
        }
        info!(path, sha256 = %p.sha256, via, applied = %applied.join(", "),
              restart_required = %p.restart_required.join(", "),
              events_file = %events_path.display(), "configuration reloaded");
        let body = json!({"path": path, "sha256": p.sha256, "via": via, "applied": applied,
                          "restart_required": p.restart_required, "notes": notes});
        ledger_to(shared, gate, "config_reloaded", body).await;
        pb::ReloadResponse {
            path,
            sha256: p.sha256,
            applied,
            restart_required: p.restart_required,
            notes,
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn ledger(parts: &Parts<'_>, kind: &'static str, body: Value) {
    ledger_to(parts.shared, parts.gate, kind, body).await;
}

/// Appends to the host ledger: the gate's when it runs, else the file opened for this
/// record (as start-up records damaged state files).
async fn ledger_to(
    shared: &Shared,
    gate: Option<&Arc<GateRuntime>>,
    kind: &'static str,
    body: Value,
) {
    let result: Result<(), String> = match gate {
        Some(g) => g
            .ledger()
            .append_async(kind, body)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => {
            let path = crate::ledger::default_path(&shared.state_dir);
            tokio::task::spawn_blocking(move || {
                crate::ledger::Ledger::open(&path)
                    .and_then(|mut l| l.append(kind, body))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        }
    };
    if let Err(e) = result {
        warn!(kind, error = %e, "cannot record the configuration reload in the ledger");
    }
}

/// What a reload of the gate's rules does not redo until a restart, said rather than left
/// silent: where the host-wide fanotify marks go for processes outside sessions
/// (`outside_sessions` rules in `gate.fanotify = "detected"` mode are placed as at start),
/// and the supervisors' index of hard links to gated files (taken at start).
fn placement_caveats(running: &Config, new: &Config) -> Vec<String> {
    let outside = |c: &Config| -> Vec<String> {
        c.gate
            .rules
            .iter()
            .filter(|r| r.outside_sessions)
            .map(|r| format!("{}:{:?}", r.name, r.paths))
            .collect()
    };
    let mut out = Vec::new();
    if outside(running) != outside(new)
        && new.gate.fanotify == crate::policy::FanotifyMode::Detected
    {
        let note = "rules with outside_sessions changed: with gate.fanotify = \"detected\" the \
                    host-wide marks for processes outside sessions are placed as at start until \
                    a restart"
            .to_owned();
        warn!("{note}");
        out.push(note);
    }
    if running.gate.rules != new.gate.rules {
        out.push(
            "hard links to gated files (writes to a gated inode through another path) are \
             indexed at start: links of newly gated paths are held from the next restart"
                .to_owned(),
        );
    }
    out
}

/// `cfg` (from the file) with the restart-only settings of `running`.
fn keep_running(cfg: &mut Config, running: &Config) {
    cfg.daemon = running.daemon.clone();
    cfg.kernel = running.kernel.clone();
    cfg.correlation = running.correlation.clone();
    cfg.approval = running.approval.clone();
    cfg.output.stdout = running.output.stdout;
    cfg.output.stats_interval_secs = running.output.stats_interval_secs;
    cfg.output.nats = running.output.nats.clone();
    cfg.watch.rename_sources = running.watch.rename_sources;
    cfg.gate.enabled = running.gate.enabled;
    cfg.gate.fanotify = running.gate.fanotify;
    cfg.gate.watchdog = running.gate.watchdog;
    cfg.gate.terminal_notice = running.gate.terminal_notice;
    cfg.gate.approvals_url = running.gate.approvals_url.clone();
    cfg.baseline = running.baseline.clone();
    cfg.drift = running.drift.clone();
    cfg.metrics = running.metrics.clone();
}

/// The restart-only settings (`table.key`) that differ between `running` and `file`.
fn restart_only_changes(running: &Config, file: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(running), serde_json::to_value(file)) else {
        return vec!["(settings could not be compared)".into()];
    };
    let mut out = Vec::new();
    for name in RESTART_ONLY {
        let (x, y) = (at(&a, name), at(&b, name));
        if x == y {
            continue;
        }
        match (x, y) {
            // A whole table: name each key that differs.
            (Some(Value::Object(x)), Some(Value::Object(y))) if !name.contains('.') => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    if x.get(k) != y.get(k) {
                        out.push(format!("{name}.{k}"));
                    }
                }
            }
            _ => out.push((*name).to_owned()),
        }
    }
    out
}

/// What takes effect now, in words (empty: nothing changed but the events file reopened).
fn applied_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if running.gate != new.gate {
        out.push("gate policy".to_owned());
    }
    if running.watch != new.watch {
        out.push("watch set".to_owned());
    }
    if running.detect != new.detect {
        out.push("detection rules".to_owned());
    }
    if running.output.events_file != new.output.events_file {
        out.push(format!(
            "events file (now {})",
            new.output.events_file.display()
        ));
    }
    out
}

fn at<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).expect("valid")
    }

    #[test]
    fn restart_only_settings_are_named_and_keep_their_running_values() {
        let running = parse("[daemon]\nstate_dir = \"/var/lib/a\"\n");
        let file = parse(
            "[daemon]\nstate_dir = \"/var/lib/b\"\n[gate]\nfanotify = \"always\"\n\
             [watch]\npaths = [\"/etc\", \"/srv\"]\n",
        );
        let changed = restart_only_changes(&running, &file);
        assert_eq!(changed, vec!["daemon.state_dir", "gate.fanotify"]);
        let mut cfg = file.clone();
        keep_running(&mut cfg, &running);
        assert_eq!(cfg.daemon.state_dir, PathBuf::from("/var/lib/a"));
        assert_eq!(cfg.gate.fanotify, running.gate.fanotify);
        // The rest is the file's.
        assert_eq!(cfg.watch, file.watch);
        assert_eq!(applied_changes(&running, &cfg), vec!["watch set"]);
        assert!(restart_only_changes(&running, &running).is_empty());
    }

    #[test]
    fn what_a_reload_does_not_redo_is_said() {
        let rule = |outside: bool| {
            format!(
                "[[gate.rule]]\nname = \"r\"\npaths = [\"/etc/x/**\"]\nverdict = \"ask\"\n{}",
                if outside {
                    "outside_sessions = true\n"
                } else {
                    ""
                }
            )
        };
        let running = parse(&rule(false));
        assert!(placement_caveats(&running, &running).is_empty());
        let notes = placement_caveats(&running, &parse(&rule(true)));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("outside_sessions"), "{notes:?}");
        assert!(notes[1].contains("hard links"), "{notes:?}");
    }
}
