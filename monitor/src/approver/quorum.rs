//! Quorum: who may decide a request and how many must approve it (the rule keys
//! `approvals`, `approvers`, `four_eyes`, carried with the request as its `quorum`).
//!
//! - An approver is **permitted** when the rule names no `approvers`, or names the
//!   identity (`token:alice`, or its bare name `alice`), or one of its groups
//!   (`group:sre`). Groups come from the service's configuration (`groups` of a `[[token]]`)
//!   and, for Unix-socket approvers, from the system's group database.
//! - With `four_eyes`, the session's user and the person who logged in to start it (the
//!   request's `user` and `login_user`) may not decide: an identity's person is its bare
//!   name (`unix:alice`, `token:alice` and `cert:alice` are all `alice`).
//! - Each distinct permitted approver's approval is recorded on the request; the Nth one
//!   decides it (its grant, with that approver's TTL, scope and glob). The same approver
//!   twice counts once. Any permitted deny ends the request.
//!
//! Decisions from inside the requesting session and from host identities are refused
//! before any of this (`approver::decider`), on every approval.
use std::collections::HashMap;

use super::config::ServiceConfig;
use super::identity::ApproverId;
use super::store::{ContextRec, QuorumRec, RequestRec};

/// Groups of approver identities, by identity name (`token:alice` -> `["sre"]`).
#[derive(Clone, Debug, Default)]
pub struct Groups {
    by_identity: HashMap<String, Vec<String>>,
}

impl Groups {
    /// From (identity name, groups) pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<String>)>) -> Groups {
        let mut by_identity: HashMap<String, Vec<String>> = HashMap::new();
        for (name, groups) in entries {
            by_identity.entry(name).or_default().extend(groups);
        }
        Groups { by_identity }
    }

    /// Groups from the service's configuration (`groups` of each `[[token]]`).
    pub fn from_config(cfg: &ServiceConfig) -> Groups {
        Groups::new(
            cfg.tokens
                .iter()
                .map(|t| (format!("token:{}", t.name), t.groups.clone())),
        )
    }

    /// The groups of `who`: configured ones, and a Unix approver's system groups.
    /// Blocking (the group database): call it on a blocking thread.
    pub fn of(&self, who: &ApproverId) -> Vec<String> {
        let mut out = self.by_identity.get(&who.name).cloned().unwrap_or_default();
        if who.unix {
            out.extend(system_groups(person(&who.name)));
        }
        out
    }
}

/// The names of the system groups of user `name` (primary and supplementary).
fn system_groups(name: &str) -> Vec<String> {
    let Ok(Some(user)) = nix::unistd::User::from_name(name) else {
        return Vec::new();
    };
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Vec::new();
    };
    let gids = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
    gids.into_iter()
        .filter_map(|g| nix::unistd::Group::from_gid(g).ok().flatten())
        .map(|g| g.name)
        .collect()
}

/// The person behind an identity name: what follows its kind (`unix:alice` -> `alice`).
pub fn person(name: &str) -> &str {
    name.split_once(':').map_or(name, |(_, rest)| rest)
}

/// The quorum of a request (the default when the rule set none).
pub fn of(req: &RequestRec) -> QuorumRec {
    req.context.quorum.clone().unwrap_or(QuorumRec {
        approvals: 1,
        ..QuorumRec::default()
    })
}

/// Why `who` (in `groups`) may not decide a request with context `c` and quorum `q`, or
/// `None` when it may.
pub fn refusal(
    who: &ApproverId,
    groups: &[String],
    c: &ContextRec,
    q: &QuorumRec,
) -> Option<String> {
    if !q.approvers.is_empty() && !q.approvers.iter().any(|a| names(a, who, groups)) {
        return Some(format!(
            "{} is not among the approvers of rule {:?} ({})",
            who.name,
            c.rule,
            q.approvers.join(", ")
        ));
    }
    if q.four_eyes {
        let me = person(&who.name);
        for (what, starter) in [("runs", &c.user), ("logged in to start", &c.login_user)] {
            if !starter.is_empty() && starter == me {
                return Some(format!(
                    "rule {:?} requires four eyes: {} {what} the requesting session and cannot approve it",
                    c.rule, who.name
                ));
            }
        }
    }
    None
}

/// Whether an `approvers` entry names `who`.
fn names(entry: &str, who: &ApproverId, groups: &[String]) -> bool {
    match entry.strip_prefix("group:") {
        Some(g) => groups.iter().any(|x| x == g),
        None if entry.contains(':') => entry == who.name,
        None => entry == person(&who.name),
    }
}

/// `1 of 2 approvals (alice)`: how far a request's quorum is.
pub fn progress(req: &RequestRec) -> String {
    let need = of(req).approvals.max(1);
    let who: Vec<&str> = req.approvals.iter().map(|a| person(&a.by)).collect();
    let mut s = format!(
        "{} of {need} approval{}",
        req.approvals.len(),
        if need == 1 { "" } else { "s" }
    );
    if !who.is_empty() {
        s.push_str(&format!(" ({})", who.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approver::store::{ApprovalRec, State};

    fn id(name: &str) -> ApproverId {
        ApproverId {
            name: name.into(),
            local: None,
            unix: false,
            workstation: false,
        }
    }

    fn ctx(user: &str, login: &str) -> ContextRec {
        ContextRec {
            rule: "r".into(),
            user: user.into(),
            login_user: login.into(),
            ..ContextRec::default()
        }
    }

    fn q(approvers: &[&str], four_eyes: bool) -> QuorumRec {
        QuorumRec {
            approvals: 2,
            approvers: approvers.iter().map(|s| (*s).to_owned()).collect(),
            four_eyes,
        }
    }

    #[test]
    fn approvers_name_identities_bare_names_and_groups() {
        let c = ctx("root", "");
        let q = q(&["group:sre", "alice", "token:ci"], false);
        let sre = vec!["sre".to_owned()];
        assert_eq!(refusal(&id("token:bob"), &sre, &c, &q), None);
        assert_eq!(refusal(&id("unix:alice"), &[], &c, &q), None);
        assert_eq!(refusal(&id("token:ci"), &[], &c, &q), None);
        assert!(refusal(&id("cert:ci"), &[], &c, &q).is_some());
        let why = refusal(&id("token:mallory"), &["dev".into()], &c, &q).unwrap();
        assert!(why.contains("not among the approvers"), "{why}");
        // No list: everyone.
        assert_eq!(
            refusal(&id("token:x"), &[], &c, &QuorumRec::default()),
            None
        );
    }

    #[test]
    fn four_eyes_refuses_the_sessions_user_and_login_user() {
        let q = q(&[], true);
        assert!(refusal(&id("unix:alice"), &[], &ctx("alice", ""), &q).is_some());
        assert!(refusal(&id("token:alice"), &[], &ctx("root", "alice"), &q).is_some());
        assert_eq!(
            refusal(&id("token:bob"), &[], &ctx("root", "alice"), &q),
            None
        );
        let mut lax = q.clone();
        lax.four_eyes = false;
        assert_eq!(
            refusal(&id("unix:alice"), &[], &ctx("alice", "alice"), &lax),
            None
        );
    }

    #[test]
    fn progress_names_who_approved() {
        let mut r = RequestRec {
            id: 1,
            host_request_id: 1,
            context: ContextRec {
                quorum: Some(q(&[], false)),
                ..ContextRec::default()
            },
            created_unix_ms: 0,
            deadline_unix_ms: 0,
            state: State::Pending,
            decision: None,
            approvals: Vec::new(),
            notify: Vec::new(),
            suggested_glob: String::new(),
            suggested_from: Vec::new(),
        };
        assert_eq!(progress(&r), "0 of 2 approvals");
        r.approvals.push(ApprovalRec {
            by: "token:alice".into(),
            unix_ms: 1,
            note: String::new(),
        });
        assert_eq!(progress(&r), "1 of 2 approvals (alice)");
        r.context.quorum = None;
        r.approvals.clear();
        assert_eq!(progress(&r), "0 of 1 approval");
    }
}
