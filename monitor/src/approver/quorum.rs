//! Quorum: who may decide a request and how many must approve it (the rule keys
//! `approvals`, `approvers`, `four_eyes`, carried with the request as its `quorum`).
//!
//! - Every approver identity has a **person** ([`People::person`]): the one `[[person]]`
//!   of `approver.toml` lists the identity under, else, for identities whose names the
//!   service controls (`unix:`, `token:`, `cert:`), their bare name (`unix:alice`,
//!   `token:alice` and `cert:alice` are all `alice`). Identities named by others (`oidc:`,
//!   `slack:`, ...) have a person only through `[[person]]`: an OpenID provider's account
//!   `alice` is not the Unix user `alice`.
//! - An approver is **permitted** when the rule names no `approvers`, or names the full
//!   identity (`token:alice`), its person (`alice`), or one of its groups (`group:sre`).
//!   Groups come from `[[token]]` and `[[person]]` `groups`, from the channel (a web
//!   sign-in's groups claim) and, for Unix-socket approvers, the system's group database.
//! - With `four_eyes`, the session's user and the person who logged in to start it (the
//!   request's `user` and `login_user`) may not decide; an identity with no person is
//!   refused (it could be either). A rule needing several approvals also refuses
//!   identities with no person: they could not be counted once.
//! - Each person's approval is recorded on the request with its terms; the Nth person's
//!   decides it, granting the intersection of every approval's terms (`service::tally`).
//!   The same person again, through any channel, is refused. Any permitted deny ends the
//!   request.
//!
//! Decisions from inside the requesting session and from host identities are refused
//! before any of this (`approver::decider`), on every approval.
use std::collections::HashMap;

use super::config::ServiceConfig;
use super::identity::ApproverId;
use super::store::{ContextRec, QuorumRec, RequestRec};

/// Persons and groups of approver identities.
#[derive(Clone, Debug, Default)]
pub struct People {
    /// Configured groups by identity name (`token:alice` -> `["sre"]`).
    by_identity: HashMap<String, Vec<String>>,
    /// The person of a mapped identity (`oidc:00u1` -> `alice`).
    person_of: HashMap<String, String>,
    /// Configured groups by person.
    by_person: HashMap<String, Vec<String>>,
}

/// Identity kinds whose names the service itself vouches for (configured tokens, its CA's
/// certificates, this host's users): their bare name is their person.
const OWN_KINDS: [&str; 3] = ["unix", "token", "cert"];

impl People {
    /// From (identity name, groups) pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<String>)>) -> People {
        let mut by_identity: HashMap<String, Vec<String>> = HashMap::new();
        for (name, groups) in entries {
            by_identity.entry(name).or_default().extend(groups);
        }
        People {
            by_identity,
            ..People::default()
        }
    }

    /// Adds person `name`, who is `identities`, in `groups`.
    pub fn with_person(mut self, name: &str, identities: &[String], groups: &[String]) -> People {
        for id in identities {
            self.person_of.insert(id.clone(), name.to_owned());
        }
        self.by_person
            .entry(name.to_owned())
            .or_default()
            .extend(groups.iter().cloned());
        self
    }

    /// From the service's configuration (`[[token]]` groups, `[[person]]`).
    pub fn from_config(cfg: &ServiceConfig) -> People {
        let mut p = People::new(
            cfg.tokens
                .iter()
                .map(|t| (format!("token:{}", t.name), t.groups.clone())),
        );
        for person in &cfg.persons {
            p = p.with_person(&person.name, &person.identities, &person.groups);
        }
        p
    }

    /// The person behind `who`, if known (see the module's documentation).
    pub fn person(&self, who: &ApproverId) -> Option<String> {
        if let Some(p) = self.person_of.get(&who.name) {
            return Some(p.clone());
        }
        match who.name.split_once(':') {
            Some((kind, bare)) if OWN_KINDS.contains(&kind) && !bare.is_empty() => {
                Some(bare.to_owned())
            }
            _ => None,
        }
    }

    /// The groups of `who`: configured ones (identity and person), the channel's, and a
    /// Unix approver's system groups. Blocking (the group database): call it on a
    /// blocking thread.
    pub fn groups(&self, who: &ApproverId) -> Vec<String> {
        let mut out = self.by_identity.get(&who.name).cloned().unwrap_or_default();
        if let Some(p) = self.person(who) {
            out.extend(self.by_person.get(&p).cloned().unwrap_or_default());
        }
        out.extend(who.groups.iter().cloned());
        if who.unix {
            out.extend(system_groups(person(&who.name)));
        }
        out.sort();
        out.dedup();
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

/// What follows an identity name's kind (`unix:alice` -> `alice`).
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

/// Why `who` (person `me`, in `groups`) may not decide a request with context `c` and
/// quorum `q`, or `None` when it may.
pub fn refusal(
    who: &ApproverId,
    me: Option<&str>,
    groups: &[String],
    c: &ContextRec,
    q: &QuorumRec,
) -> Option<String> {
    if !q.approvers.is_empty() && !q.approvers.iter().any(|a| names(a, who, me, groups)) {
        return Some(format!(
            "{} is not among the approvers of rule {:?} ({})",
            who.name,
            c.rule,
            q.approvers.join(", ")
        ));
    }
    let Some(me) = me else {
        if q.four_eyes {
            return Some(format!(
                "rule {:?} requires four eyes and {} is no known person (list it in a \
                 [[person]] of the approval service's configuration)",
                c.rule, who.name
            ));
        }
        if q.approvals > 1 {
            return Some(format!(
                "rule {:?} needs {} different persons and {} is no known person (list it in \
                 a [[person]] of the approval service's configuration)",
                c.rule, q.approvals, who.name
            ));
        }
        return None;
    };
    if q.four_eyes {
        for (what, starter) in [("runs", &c.user), ("logged in to start", &c.login_user)] {
            if !starter.is_empty() && starter == me {
                return Some(format!(
                    "rule {:?} requires four eyes: {} ({me}) {what} the requesting session and cannot approve it",
                    c.rule, who.name
                ));
            }
        }
    }
    None
}

/// Whether an `approvers` entry names `who` (person `me`).
fn names(entry: &str, who: &ApproverId, me: Option<&str>, groups: &[String]) -> bool {
    match entry.strip_prefix("group:") {
        Some(g) => groups.iter().any(|x| x == g),
        None if entry.contains(':') => entry == who.name,
        None => me == Some(entry),
    }
}

/// `1 of 2 approvals (alice)`: how far a request's quorum is.
pub fn progress(req: &RequestRec) -> String {
    let need = of(req).approvals.max(1);
    let who: Vec<&str> = req
        .approvals
        .iter()
        .map(|a| {
            if a.person.is_empty() {
                person(&a.by)
            } else {
                &a.person
            }
        })
        .collect();
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
            groups: Vec::new(),
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

    fn people() -> People {
        People::new([("token:bob".to_owned(), vec!["sre".to_owned()])]).with_person(
            "alice",
            &["oidc:00u1".into(), "slack:U1".into()],
            &["ops".into()],
        )
    }

    /// `refusal` with `who`'s person and groups from [`people`].
    fn check(who: &ApproverId, c: &ContextRec, q: &QuorumRec) -> Option<String> {
        let p = people();
        let me = p.person(who);
        refusal(who, me.as_deref(), &p.groups(who), c, q)
    }

    #[test]
    fn persons_come_from_the_mapping_or_the_services_own_names() {
        let p = people();
        assert_eq!(p.person(&id("oidc:00u1")).as_deref(), Some("alice"));
        assert_eq!(p.person(&id("slack:U1")).as_deref(), Some("alice"));
        assert_eq!(p.person(&id("token:alice")).as_deref(), Some("alice"));
        assert_eq!(p.person(&id("unix:alice")).as_deref(), Some("alice"));
        assert_eq!(p.person(&id("cert:alice")).as_deref(), Some("alice"));
        // Names an outside party chose are nobody until mapped.
        assert_eq!(p.person(&id("oidc:alice")), None);
        assert_eq!(p.person(&id("slack:U2")), None);
        assert_eq!(p.groups(&id("slack:U1")), vec!["ops".to_owned()]);
    }

    #[test]
    fn approvers_name_identities_persons_and_groups() {
        let c = ctx("root", "");
        let q = q(&["group:sre", "alice", "token:ci"], false);
        assert_eq!(check(&id("token:bob"), &c, &q), None);
        assert_eq!(check(&id("unix:alice"), &c, &q), None);
        assert_eq!(check(&id("oidc:00u1"), &c, &q), None);
        assert_eq!(check(&id("token:ci"), &c, &q), None);
        assert!(check(&id("cert:ci"), &c, &q).is_some());
        // An OpenID account that calls itself alice is not alice.
        let why = check(&id("oidc:alice"), &c, &q).unwrap();
        assert!(why.contains("not among the approvers"), "{why}");
        let why = check(&id("token:mallory"), &c, &q).unwrap();
        assert!(why.contains("not among the approvers"), "{why}");
        // No list: everyone with a person.
        let any = QuorumRec::default();
        assert_eq!(check(&id("token:x"), &c, &any), None);
    }

    #[test]
    fn groups_of_the_web_sign_in_and_of_mapped_persons_count() {
        let c = ctx("root", "");
        let q = q(&["group:sre"], false);
        let mut web = id("oidc:00u1");
        assert!(check(&web, &c, &q).is_some());
        web.groups = vec!["sre".into()];
        assert_eq!(check(&web, &c, &q), None);
        let ops = self::q(&["group:ops"], false);
        assert_eq!(check(&id("slack:U1"), &c, &ops), None);
        assert!(check(&id("slack:U2"), &c, &ops).is_some());
    }

    #[test]
    fn four_eyes_refuses_the_sessions_user_and_login_user() {
        let q = q(&[], true);
        assert!(check(&id("unix:alice"), &ctx("alice", ""), &q).is_some());
        assert!(check(&id("token:alice"), &ctx("root", "alice"), &q).is_some());
        // Through another channel, alice is still alice.
        let why = check(&id("oidc:00u1"), &ctx("alice", ""), &q).unwrap();
        assert!(why.contains("four eyes"), "{why}");
        assert!(check(&id("slack:U1"), &ctx("root", "alice"), &q).is_some());
        assert_eq!(check(&id("token:bob"), &ctx("root", "alice"), &q), None);
        // Nobody known cannot be told apart from the session's user.
        let why = check(&id("oidc:zz9"), &ctx("root", "alice"), &q).unwrap();
        assert!(why.contains("no known person"), "{why}");
        let mut lax = q.clone();
        lax.four_eyes = false;
        assert_eq!(check(&id("unix:alice"), &ctx("alice", "alice"), &lax), None);
        // Several approvals: an unknown person could count twice.
        assert!(check(&id("oidc:zz9"), &ctx("root", ""), &lax).is_some());
        lax.approvals = 1;
        assert_eq!(check(&id("oidc:zz9"), &ctx("root", ""), &lax), None);
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
            person: String::new(),
            terms: None,
        });
        assert_eq!(progress(&r), "1 of 2 approvals (alice)");
        r.context.quorum = None;
        r.approvals.clear();
        assert_eq!(progress(&r), "0 of 1 approval");
    }
}
