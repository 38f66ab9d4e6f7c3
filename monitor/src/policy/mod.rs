//! Gate policy: which opens of gated files are allowed, denied, or asked about.
//!
//! - [`rules`]: the `[gate]` configuration section (`GateConfig`, `[[gate.rule]]`), its
//!   validation and compilation.
//! - [`builtin`]: the non-overridable self-protection rule and the paths it protects.
//! - [`ops`]: [`OpSet`], the operations an open performs.
//! - [`grants`]: live approvals ([`GrantSet`]).
//!
//! [`Policy::evaluate`] runs on the fanotify permission thread for every write open by a
//! session under a marked tree, so it never allocates, locks, or does I/O: it compares
//! bytes and runs pre-compiled glob sets. Order of evaluation:
//! 1. the built-in rule (sessions only, reads and writes): a match is final;
//! 2. read-only opens stop here (never gated by configured rules);
//! 3. the configured rules in order; the first whose operations, agents (or
//!    `outside_sessions`) and paths match decides.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use globset::Candidate;

pub mod builtin;
pub mod grants;
pub mod ops;
pub mod rules;

pub use builtin::{BUILTIN_RULE_NAME, ProtectedPaths};
pub use grants::{Grant, GrantError, GrantScope, GrantSet, PathGlob};
pub use ops::{OpSet, UnknownOp};
pub use rules::{
    FailVerdict, FanotifyMode, GateConfig, HumanDuration, Mode, OnExpiry, Quorum, Rule, RuleConfig,
    Verdict, default_gate_rules,
};

use builtin::Builtin;
use rules::CompiledRule;

/// A configuration problem of the `[gate]` section. `field` names it as in the file
/// (`gate.rule[2].paths[0]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The session of the process that opens, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef<'a> {
    pub id: u64,
    pub agent: &'a str,
    /// Whether the path is inside the session's declared scope; `None`: it declared none.
    pub within_scope: Option<bool>,
}

/// One open (or rename) to decide on.
#[derive(Clone, Copy, Debug)]
pub struct GateQuery<'a> {
    /// Path of the opened file as the kernel reports it; arbitrary bytes.
    pub path: &'a [u8],
    /// `None`: the process is outside any agent session.
    pub session: Option<SessionRef<'a>>,
    /// What the open does ([`OpSet::from_open_flags`]), or [`OpSet::RENAME`].
    pub ops: OpSet,
    /// Whether the open has write intent (write, create, truncate) or is a rename.
    /// Read-only opens only ever match the built-in rule.
    pub write: bool,
}

/// The rule that decides a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule: Arc<Rule>,
    /// Whether it is the built-in self-protection rule (always a deny).
    pub builtin: bool,
}

/// The compiled policy. Immutable; replace it as a whole to reload.
#[derive(Debug)]
pub struct Policy {
    builtin: Builtin,
    builtin_rule: Arc<Rule>,
    rules: Vec<CompiledRule>,
    any_path: globset::GlobSet,
    outside_sessions: bool,
    mark_roots: Vec<PathBuf>,
    /// What is marked whatever the rules: `gate.trees` and the protected trees, and
    /// `gate.files` and the protected files.
    base_marks: (Vec<PathBuf>, Vec<PathBuf>),
    request_ttl: Duration,
    max_preimage_bytes: u64,
    masker: Arc<crate::event::excerpt::Masker>,
}

impl Policy {
    /// Validates and compiles `config`; the first problem is returned (see
    /// [`GateConfig::problems`] for all of them). `protected` feeds the built-in rule.
    pub fn compile(config: &GateConfig, protected: &ProtectedPaths) -> Result<Policy, PolicyError> {
        let compiled = rules::compile_rules(config).map_err(|mut e| e.swap_remove(0))?;
        let builtin_rule = Arc::new(Rule {
            name: BUILTIN_RULE_NAME.to_owned(),
            verdict: Verdict::Deny,
            fail: FailVerdict::Deny,
            mode: Mode::Hold,
            timeout: Duration::ZERO,
            on_expiry: OnExpiry::Flag,
            ops: OpSet::ALL,
            outside_sessions: false,
            quorum: None,
        });
        let mut dirs = compiled.trees;
        dirs.extend(protected.trees().iter().cloned());
        let mut files = compiled.files;
        files.extend(protected.files().iter().cloned());
        let outside_sessions = compiled.rules.iter().any(|r| r.rule.outside_sessions);
        let mut base_dirs = config.trees.clone();
        base_dirs.extend(protected.trees().iter().cloned());
        let base_marks = (base_dirs, files.clone());
        Ok(Policy {
            builtin: Builtin::new(protected),
            builtin_rule,
            rules: compiled.rules,
            any_path: compiled.any_path,
            outside_sessions,
            mark_roots: mark_roots(dirs, files),
            base_marks,
            request_ttl: config.request_ttl.0,
            max_preimage_bytes: config.max_preimage_bytes,
            // Checked by `compile_rules` above.
            masker: Arc::new(
                crate::event::excerpt::Masker::new(&config.mask, &config.no_excerpt)
                    .unwrap_or_default(),
            ),
        })
    }

    /// The rule deciding `q`, or `None` when no rule applies (the open is allowed).
    /// Allocation-free.
    pub fn evaluate(&self, q: &GateQuery<'_>) -> Option<RuleMatch> {
        if q.session.is_some() && self.builtin.denies(q.path, q.write) {
            return Some(RuleMatch {
                rule: Arc::clone(&self.builtin_rule),
                builtin: true,
            });
        }
        if !q.write {
            return None;
        }
        let candidate = Candidate::from_bytes(q.path);
        if !self.any_path.is_match_candidate(&candidate) {
            return None;
        }
        self.rules
            .iter()
            .find(|r| {
                r.ops.is_none_or(|ops| ops.intersects(q.ops))
                    && match q.session {
                        None => r.rule.outside_sessions,
                        Some(s) => {
                            r.agents.as_ref().is_none_or(|a| {
                                a.is_match_candidate(&Candidate::from_bytes(s.agent.as_bytes()))
                            }) && r.within_scope.is_none_or(|w| s.within_scope == Some(w))
                        }
                    }
                    && r.paths.is_match_candidate(&candidate)
            })
            .map(|r| RuleMatch {
                rule: Arc::clone(&r.rule),
                builtin: false,
            })
    }

    /// The rule that makes a write the gate could not hold (a session's rename onto
    /// `q.path`: a rename opens nothing) unapproved unless a grant covers it: the deciding
    /// rule of `q`, except an allow rule. `None`: the gate has nothing to say about it.
    /// Allocation-free, so the event pipeline can ask it for every rename.
    pub fn unheld_rule(&self, q: &GateQuery<'_>) -> Option<RuleMatch> {
        self.evaluate(q)
            .filter(|m| m.builtin || m.rule.verdict != Verdict::Allow)
    }

    /// Whether the built-in rule protects `path` (quick check for read opens by sessions).
    pub fn is_protected(&self, path: &[u8]) -> bool {
        self.builtin.matches(path)
    }

    /// Whether some rule also applies to processes outside sessions (then the kernel side
    /// must report their write opens under marked trees too).
    pub fn gates_outside_sessions(&self) -> bool {
        self.outside_sessions
    }

    /// What to mark: the literal directory prefix of every rule glob, `gate.trees` and the
    /// protected trees, without entries nested in another (each is meant to be marked
    /// recursively); then `gate.files` and the protected files, which are always listed
    /// (an inode mark also gates hardlinks elsewhere). Sorted, no duplicates. Paths may not
    /// exist yet.
    pub fn mark_roots(&self) -> Vec<PathBuf> {
        self.mark_roots.clone()
    }

    /// What the gate watches for a session of `agent` (`scoped`: it declared a scope):
    /// the trees of the configured rules that can apply to it (a rule whose `agents` do
    /// not match it, or with `within_scope` when it has no scope, cannot), `gate.trees`,
    /// `gate.files` and confgate's protected paths, as [`Policy::mark_roots`] lists them;
    /// and the names of those rules, in evaluation order.
    pub fn gated_for(&self, agent: &str, scoped: bool) -> (Vec<PathBuf>, Vec<String>) {
        let who = Candidate::from_bytes(agent.as_bytes());
        let (mut dirs, files) = self.base_marks.clone();
        let mut names = Vec::new();
        for r in &self.rules {
            let agent_ok = r.agents.as_ref().is_none_or(|a| a.is_match_candidate(&who));
            if agent_ok && (scoped || r.within_scope.is_none()) {
                dirs.extend(r.roots.iter().cloned());
                names.push(r.rule.name.clone());
            }
        }
        (mark_roots(dirs, files), names)
    }

    /// The configured rule named `name` (e.g. to find the `on_expiry` of a request's rule);
    /// the built-in rule under [`BUILTIN_RULE_NAME`].
    pub fn rule(&self, name: &str) -> Option<Arc<Rule>> {
        if name == BUILTIN_RULE_NAME {
            return Some(Arc::clone(&self.builtin_rule));
        }
        self.rules
            .iter()
            .find(|r| r.rule.name == name)
            .map(|r| Arc::clone(&r.rule))
    }

    /// The configured rules, in evaluation order (the built-in rule is not among them).
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// `gate.request_ttl`.
    pub fn request_ttl(&self) -> Duration {
        self.request_ttl
    }

    /// `gate.mask` and `gate.no_excerpt`: what approvers see of a file's content.
    pub fn masker(&self) -> &Arc<crate::event::excerpt::Masker> {
        &self.masker
    }

    /// `gate.max_preimage_bytes`.
    pub fn max_preimage_bytes(&self) -> u64 {
        self.max_preimage_bytes
    }
}

fn mark_roots(mut dirs: Vec<PathBuf>, files: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    // Sorted order puts a directory right before the entries below it.
    let mut out: Vec<PathBuf> = Vec::with_capacity(dirs.len() + files.len());
    for d in dirs {
        if !out.iter().any(|kept| d.starts_with(kept)) {
            out.push(d);
        }
    }
    out.extend(files);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
