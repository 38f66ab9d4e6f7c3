//! Grants: approvals that let matching opens through without asking again until they
//! expire or are revoked.
//!
//! A [`Grant`] comes from an approval decision of the approval service
//! (`confgate.v1.Grant`, converted with validation by [`Grant::from_proto`]), is kept in
//! the daemon's store (it is serde-able; the glob is stored as its pattern and compiled
//! again on load) and in memory in a [`GrantSet`], which the gate consults on the hot path.
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use confgate_proto::v1;
use globset::{Candidate, GlobMatcher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ops::{OpSet, UnknownOp};
use super::rules::{OnExpiry, Rule, path_glob};
use crate::os::clock::from_unix_ms;

/// Longest agent name accepted in a grant, in bytes.
pub const MAX_AGENT: usize = 256;
/// Longest path glob accepted in a grant, in bytes: the exact glob of the longest path a
/// request can name (`PATH_MAX` bytes, each possibly `\xNN` and escaped again).
pub const MAX_PATH_GLOB: usize = 64 * 1024;
/// `granted_by` and `note` longer than this (bytes) are cut (and end with `...`).
pub const MAX_TEXT: usize = 4096;

/// Who a grant covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrantScope {
    /// Only the session that asked.
    Session { session_id: u64 },
    /// Every session of this agent on this host.
    Agent { agent: String },
}

/// A compiled path glob (`*` stays within a component, `**` crosses them), serialized as
/// its pattern.
#[derive(Clone)]
pub struct PathGlob {
    pattern: String,
    matcher: GlobMatcher,
}

impl PathGlob {
    /// Compiles an absolute path glob.
    pub fn new(pattern: &str) -> Result<PathGlob, GrantError> {
        let bad = |message: String| GrantError::PathGlob {
            pattern: shorten(pattern, 200),
            message,
        };
        if pattern.len() > MAX_PATH_GLOB {
            return Err(bad(format!("longer than {MAX_PATH_GLOB} bytes")));
        }
        if !pattern.starts_with('/') {
            return Err(bad("not absolute".into()));
        }
        if pattern.contains('\0') {
            return Err(bad("contains a NUL byte".into()));
        }
        let glob = path_glob(pattern).map_err(bad)?;
        Ok(PathGlob {
            pattern: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `path` (arbitrary bytes) matches. A grant's glob is written against the
    /// paths approvers see, i.e. in the event contract's encoding (`escape::encode`), so
    /// the path is matched in that form: as it is when it holds no backslash and is valid
    /// UTF-8 (allocation-free), else encoded.
    pub fn is_match(&self, path: &[u8]) -> bool {
        if !path.contains(&b'\\') && std::str::from_utf8(path).is_ok() {
            return self
                .matcher
                .is_match_candidate(&Candidate::from_bytes(path));
        }
        let encoded = crate::event::escape::encode(path);
        self.matcher
            .is_match_candidate(&Candidate::from_bytes(encoded.as_bytes()))
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.pattern)
    }
}

impl PartialEq for PathGlob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}
impl Eq for PathGlob {}

impl Serialize for PathGlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for PathGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        PathGlob::new(&pattern).map_err(serde::de::Error::custom)
    }
}

/// One approval in force on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The approval service's grant id.
    pub id: u64,
    /// The approval service's request id that the grant answers.
    pub request_id: u64,
    pub scope: GrantScope,
    pub path_glob: PathGlob,
    /// Operations covered; an open passes only if all of its operations are.
    pub ops: OpSet,
    pub expires_at: SystemTime,
    /// Name of the policy rule that asked.
    pub rule: String,
    /// What to do with changes made under the grant once it ends.
    pub on_expiry: OnExpiry,
    pub granted_by: String,
    pub note: String,
}

/// Why a `confgate.v1.Grant` is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant has id 0")]
    ZeroId,
    #[error("grant {id}: scope is unspecified or unknown ({scope})")]
    Scope { id: u64, scope: i32 },
    #[error("grant {id}: session scope without a session id")]
    NoSession { id: u64 },
    #[error("grant {id}: agent scope without a valid agent name (1..={MAX_AGENT} bytes)")]
    NoAgent { id: u64 },
    #[error("grant path glob {pattern}: {message}")]
    PathGlob { pattern: String, message: String },
    #[error("grant {id}: {source}")]
    Ops { id: u64, source: UnknownOp },
    #[error("grant {id}: covers no operation")]
    NoOps { id: u64 },
    #[error("grant {id}: expiry {expires_unix_ms} ms is not a time after the epoch")]
    Expiry { id: u64, expires_unix_ms: i64 },
    #[error("grant {id}: already revoked")]
    Revoked { id: u64 },
}

impl Grant {
    /// Builds a grant from the approval service's message, validating everything in it
    /// (it comes from the network). `rule` and `on_expiry` come from the request's policy
    /// rule, which the proto grant does not carry. Over-long `granted_by`/`note` are cut.
    pub fn from_proto(g: &v1::Grant, rule: &str, on_expiry: OnExpiry) -> Result<Grant, GrantError> {
        let id = g.id;
        if id == 0 {
            return Err(GrantError::ZeroId);
        }
        if g.revoked_unix_ms != 0 {
            return Err(GrantError::Revoked { id });
        }
        let scope = match v1::GrantScope::try_from(g.scope) {
            Ok(v1::GrantScope::Session) if g.session_id != 0 => GrantScope::Session {
                session_id: g.session_id,
            },
            Ok(v1::GrantScope::Session) => return Err(GrantError::NoSession { id }),
            Ok(v1::GrantScope::Agent)
                if !g.agent.is_empty()
                    && g.agent.len() <= MAX_AGENT
                    && !g.agent.chars().any(char::is_control) =>
            {
                GrantScope::Agent {
                    agent: g.agent.clone(),
                }
            }
            Ok(v1::GrantScope::Agent) => return Err(GrantError::NoAgent { id }),
            Ok(v1::GrantScope::Unspecified) | Err(_) => {
                return Err(GrantError::Scope { id, scope: g.scope });
            }
        };
        let path_glob = PathGlob::new(&g.path_glob)?;
        let ops =
            OpSet::from_names(&g.operations).map_err(|source| GrantError::Ops { id, source })?;
        if ops.is_empty() {
            return Err(GrantError::NoOps { id });
        }
        let expires_at = from_unix_ms(g.expires_unix_ms).ok_or(GrantError::Expiry {
            id,
            expires_unix_ms: g.expires_unix_ms,
        })?;
        Ok(Grant {
            id,
            request_id: g.request_id,
            scope,
            path_glob,
            ops,
            expires_at,
            rule: rule.to_owned(),
            on_expiry,
            granted_by: shorten(&g.granted_by, MAX_TEXT),
            note: shorten(&g.note, MAX_TEXT),
        })
    }

    /// Whether the grant is live at `now` and covers this session, agent, path and every
    /// operation in `ops`. Allocation-free.
    pub fn covers(
        &self,
        session_id: u64,
        agent: &str,
        path: &[u8],
        ops: OpSet,
        now: SystemTime,
    ) -> bool {
        now < self.expires_at
            && self.ops.contains(ops)
            && match &self.scope {
                GrantScope::Session { session_id: s } => *s == session_id,
                GrantScope::Agent { agent: a } => a == agent,
            }
            && self.path_glob.is_match(path)
    }
}

/// `(&proto grant, &rule)`: [`Grant::from_proto`] with the rule's name and `on_expiry`.
impl TryFrom<(&v1::Grant, &Rule)> for Grant {
    type Error = GrantError;
    fn try_from((g, rule): (&v1::Grant, &Rule)) -> Result<Grant, GrantError> {
        Grant::from_proto(g, &rule.name, rule.on_expiry)
    }
}

/// At most `max` bytes of `s` (cut at a character boundary, then `...`).
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The grants in force on this host, by grant id.
#[derive(Clone, Debug, Default)]
pub struct GrantSet {
    grants: BTreeMap<u64, Grant>,
}

impl GrantSet {
    pub fn new() -> GrantSet {
        GrantSet::default()
    }

    /// Adds (or replaces, by id) a grant; returns the one it replaced.
    pub fn insert(&mut self, grant: Grant) -> Option<Grant> {
        self.grants.insert(grant.id, grant)
    }

    /// Removes a grant (revocation); returns it if it was there.
    pub fn remove(&mut self, id: u64) -> Option<Grant> {
        self.grants.remove(&id)
    }

    /// A live grant covering the open under `rule`: granted for that rule (a grant
    /// approved under a lenient rule never covers a path a stricter rule asks for), same
    /// session (session scope) or agent (agent scope), path matching its glob, every
    /// operation of `ops` covered, not expired at `now`. Allocation-free.
    pub fn find(
        &self,
        rule: &str,
        session_id: u64,
        agent: &str,
        path: &[u8],
        ops: OpSet,
        now: SystemTime,
    ) -> Option<&Grant> {
        self.grants
            .values()
            .find(|g| g.rule == rule && g.covers(session_id, agent, path, ops, now))
    }

    /// Removes and returns every grant expired at `now` (expiry `<= now`), by id.
    pub fn take_expired(&mut self, now: SystemTime) -> Vec<Grant> {
        let ids: Vec<u64> = self
            .grants
            .values()
            .filter(|g| g.expires_at <= now)
            .map(|g| g.id)
            .collect();
        ids.iter().filter_map(|id| self.grants.remove(id)).collect()
    }

    /// The earliest expiry among the grants, to schedule [`GrantSet::take_expired`].
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.grants.values().map(|g| g.expires_at).min()
    }

    /// Every grant, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn get(&self, id: u64) -> Option<&Grant> {
        self.grants.get(&id)
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// The glob that matches exactly `path` (in the event contract's encoding, as grants are
/// matched): glob metacharacters in brackets, and backslashes (the encoding's escapes)
/// escaped, since grant globs take `\\` as an escape.
pub fn exact_glob(path: &str) -> String {
    globset::escape(path).replace('\\', "\\\\")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn proto(id: u64) -> v1::Grant {
        v1::Grant {
            id,
            request_id: 40 + id,
            host: "web-1".into(),
            scope: v1::GrantScope::Session as i32,
            session_id: 7,
            agent: "codex".into(),
            path_glob: "/etc/nginx/**".into(),
            operations: vec!["write".into(), "truncate".into()],
            created_unix_ms: 1_000,
            expires_unix_ms: 2_000_000,
            granted_by: "cert:alice".into(),
            note: "reload".into(),
            revoked_unix_ms: 0,
            revoked_by: String::new(),
            session_ended_unix_ms: 0,
        }
    }

    fn grant(id: u64) -> Grant {
        Grant::from_proto(&proto(id), "system-config", OnExpiry::Flag).unwrap()
    }

    #[test]
    fn from_proto_keeps_everything() {
        let g = grant(3);
        assert_eq!(g.id, 3);
        assert_eq!(g.request_id, 43);
        assert_eq!(g.scope, GrantScope::Session { session_id: 7 });
        assert_eq!(g.path_glob.as_str(), "/etc/nginx/**");
        assert_eq!(g.ops, OpSet::WRITE | OpSet::TRUNCATE);
        assert_eq!(g.expires_at, t(2_000));
        assert_eq!(g.rule, "system-config");
        assert_eq!(g.granted_by, "cert:alice");
        let rule = Rule {
            name: "r".into(),
            verdict: super::super::Verdict::Ask,
            fail: super::super::FailVerdict::Deny,
            mode: super::super::Mode::Hold,
            timeout: Duration::from_secs(1),
            on_expiry: OnExpiry::Revert,
            ops: OpSet::ALL,
            outside_sessions: false,
            quorum: None,
        };
        let g = Grant::try_from((&proto(4), &rule)).unwrap();
        assert_eq!((g.rule.as_str(), g.on_expiry), ("r", OnExpiry::Revert));
    }

    #[test]
    fn from_proto_rejects_bad_input() {
        let bad = |f: &dyn Fn(&mut v1::Grant)| {
            let mut g = proto(9);
            f(&mut g);
            Grant::from_proto(&g, "r", OnExpiry::Flag).unwrap_err()
        };
        assert_eq!(bad(&|g| g.id = 0), GrantError::ZeroId);
        assert_eq!(bad(&|g| g.scope = 0), GrantError::Scope { id: 9, scope: 0 });
        assert_eq!(
            bad(&|g| g.scope = 77),
            GrantError::Scope { id: 9, scope: 77 }
        );
        assert_eq!(bad(&|g| g.session_id = 0), GrantError::NoSession { id: 9 });
        let agent = |f: &dyn Fn(&mut v1::Grant)| {
            bad(&|g| {
                g.scope = v1::GrantScope::Agent as i32;
                f(g)
            })
        };
        assert_eq!(agent(&|g| g.agent.clear()), GrantError::NoAgent { id: 9 });
        assert_eq!(
            agent(&|g| g.agent = "a\nb".into()),
            GrantError::NoAgent { id: 9 }
        );
        assert_eq!(
            agent(&|g| g.agent = "a".repeat(300)),
            GrantError::NoAgent { id: 9 }
        );
        assert!(matches!(
            bad(&|g| g.path_glob = "etc/**".into()),
            GrantError::PathGlob { .. }
        ));
        assert!(matches!(
            bad(&|g| g.path_glob = "/etc/[".into()),
            GrantError::PathGlob { .. }
        ));
        assert!(matches!(
            bad(&|g| g.path_glob = "/a\0b".into()),
            GrantError::PathGlob { .. }
        ));
        match bad(&|g| g.path_glob = format!("/{}", "x".repeat(MAX_PATH_GLOB))) {
            GrantError::PathGlob { pattern, .. } => assert!(pattern.len() < 300),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            bad(&|g| g.operations = vec!["chmode".into()]),
            GrantError::Ops { id: 9, .. }
        ));
        assert_eq!(bad(&|g| g.operations.clear()), GrantError::NoOps { id: 9 });
        assert_eq!(
            bad(&|g| g.expires_unix_ms = -5),
            GrantError::Expiry {
                id: 9,
                expires_unix_ms: -5
            }
        );
        assert!(matches!(
            bad(&|g| g.expires_unix_ms = 0),
            GrantError::Expiry { .. }
        ));
        assert_eq!(
            bad(&|g| g.revoked_unix_ms = 5),
            GrantError::Revoked { id: 9 }
        );
    }

    #[test]
    fn long_texts_are_cut() {
        let mut p = proto(1);
        p.note = "é".repeat(5000);
        let g = Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap();
        assert!(g.note.len() <= MAX_TEXT && g.note.ends_with("..."));
    }

    #[test]
    fn find_checks_scope_path_ops_and_time() {
        let mut set = GrantSet::new();
        set.insert(grant(1)); // session 7, /etc/nginx/**, write+truncate, until t(2000)
        let now = t(1_000);
        let w = OpSet::WRITE;
        let path = b"/etc/nginx/sites/default";
        assert_eq!(
            set.find("system-config", 7, "codex", path, w, now)
                .map(|g| g.id),
            Some(1)
        );
        assert_eq!(
            set.find("system-config", 7, "codex", path, w | OpSet::TRUNCATE, now)
                .map(|g| g.id),
            Some(1)
        );
        // Another session of the same agent: session scope does not cover it.
        assert!(
            set.find("system-config", 8, "codex", path, w, now)
                .is_none()
        );
        // An operation the grant does not cover.
        assert!(
            set.find("system-config", 7, "codex", path, w | OpSet::CREATE, now)
                .is_none()
        );
        // Outside the glob (and `*`-free prefix trick).
        assert!(
            set.find("system-config", 7, "codex", b"/etc/nginx2/x", w, now)
                .is_none()
        );
        assert!(
            set.find("system-config", 7, "codex", b"/etc/passwd", w, now)
                .is_none()
        );
        // Non-UTF-8 path under the glob.
        assert!(
            set.find("system-config", 7, "codex", b"/etc/nginx/\xff\xfe", w, now)
                .is_some()
        );
        // Expired: exactly at expiry it is no longer live.
        assert!(
            set.find("system-config", 7, "codex", path, w, t(2_000))
                .is_none()
        );

        let mut p = proto(2);
        p.scope = v1::GrantScope::Agent as i32;
        p.path_glob = "/etc/hosts".into();
        set.insert(Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap());
        assert_eq!(
            set.find("r", 99, "codex", b"/etc/hosts", w, now)
                .map(|g| g.id),
            Some(2)
        );
        assert!(
            set.find("r", 99, "claude-code", b"/etc/hosts", w, now)
                .is_none()
        );
        // A grant covers only under the rule it was granted for.
        assert!(
            set.find("stricter", 99, "codex", b"/etc/hosts", w, now)
                .is_none()
        );
        // `*` in a grant glob stays in one component.
        let mut p = proto(3);
        p.path_glob = "/srv/*.env".into();
        set.insert(Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap());
        assert!(set.find("r", 7, "x", b"/srv/a.env", w, now).is_some());
        assert!(set.find("r", 7, "x", b"/srv/a/b.env", w, now).is_none());
        assert!(
            set.find("system-config", 7, "x", b"/srv/a.env", w, now)
                .is_none()
        );
    }

    #[test]
    fn the_exact_grant_of_a_hostile_path_matches_that_path_only() {
        let now = t(1);
        let w = OpSet::WRITE;
        let raw: &[u8] = b"/etc/a\\x41 b*[c]\n\x1b\xff\xfe.conf";
        let encoded = crate::event::escape::encode(raw);
        let mut p = proto(9);
        p.path_glob = exact_glob(&encoded);
        let g = Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap();
        assert!(g.path_glob.is_match(raw), "{:?}", p.path_glob);
        for other in [
            &b"/etc/a\\x41 b*[c]\n\x1b\xff\xfd.conf"[..],
            b"/etc/aA b*[c]\n\x1b\xff\xfe.conf",
            b"/etc/a\\x41 bX[c]\n\x1b\xff\xfe.conf",
            encoded.as_bytes(),
        ] {
            assert!(!g.path_glob.is_match(other), "{other:?}");
        }
        // The longest path a request can name still makes a valid grant.
        p.path_glob = exact_glob(&crate::event::escape::encode(
            &[b"/".as_slice(), &[0xff; 4094]].concat(),
        ));
        Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap();
        let mut set = GrantSet::new();
        let mut p = proto(10);
        p.path_glob = exact_glob(&encoded);
        set.insert(Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap());
        assert!(set.find("r", 7, "x", raw, w, now).is_some());
    }

    #[test]
    fn expiry_and_removal() {
        let mut set = GrantSet::new();
        assert_eq!(set.next_expiry(), None);
        for (id, exp) in [(1, 50), (2, 10), (3, 30)] {
            let mut p = proto(id);
            p.expires_unix_ms = exp * 1000;
            set.insert(Grant::from_proto(&p, "r", OnExpiry::Flag).unwrap());
        }
        assert_eq!(set.next_expiry(), Some(t(10)));
        assert!(set.take_expired(t(9)).is_empty());
        let gone: Vec<u64> = set.take_expired(t(30)).iter().map(|g| g.id).collect();
        assert_eq!(gone, [2, 3]);
        assert_eq!(set.next_expiry(), Some(t(50)));
        assert_eq!(set.len(), 1);
        assert_eq!(set.remove(1).map(|g| g.id), Some(1));
        assert!(set.remove(1).is_none());
        assert!(set.is_empty());
        // Replacing by id.
        assert!(set.insert(grant(5)).is_none());
        assert!(set.insert(grant(5)).is_some());
        assert_eq!(set.iter().count(), 1);
    }

    #[test]
    fn serde_round_trip_recompiles_the_glob() {
        let g = grant(6);
        let json = serde_json::to_string(&g).unwrap();
        let back: Grant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        assert!(back.path_glob.is_match(b"/etc/nginx/x"));
        let broken = json.replace("/etc/nginx/**", "relative/**");
        assert!(serde_json::from_str::<Grant>(&broken).is_err());
    }
}
