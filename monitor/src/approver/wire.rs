//! Between the wire types (`confgate.v1`) and the stored records, with the input checks
//! of everything a host or approver sends (`INVALID_ARGUMENT` with the field named).
//!
//! **The encoding contract of a request context** (one check, [`check_context`], run by
//! the host before it spools a request and by the service when it receives one):
//! - byte strings — `path`, `cwd`, each `command` and ancestry `argv` entry, ancestry
//!   `comm` — are in the form `escape::encode` produces ([`check_bytes`]): any character
//!   but NUL, newlines and ESC included, with `\\` and `\xNN` as the only escapes;
//! - names and free text — `agent`, `user`, `rule`, `mode`, `reason` — hold no control
//!   characters ([`check_text`]; the host escapes the reason, the others are its own);
//! - the limits below, which the host applies when it builds the context
//!   (`gate::context`).
//!
//! Whoever shows these strings to people makes control characters visible
//! (`escape::for_terminal`).
use tonic::Status;

use super::store::{
    ApprovalRec, ContextRec, DecisionRec, GrantRec, NewRequest, ProcessRec, QuorumRec, RequestRec,
    Scope, State,
};
use confgate_proto::v1 as pb;

/// Longest path or glob (escaped form), in bytes.
pub const MAX_PATH: usize = 16 * 1024;
/// Longest short name (agent, user, rule, mode, host), in bytes.
pub const MAX_NAME: usize = 256;
/// Longest free text (reason, note, one argv entry), in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most argv entries kept per command line.
pub const MAX_ARGV: usize = 256;
/// Most ancestry entries.
pub const MAX_ANCESTRY: usize = 64;
/// Largest encoded request context, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 256 * 1024;
/// Latest accepted deadline, relative to now (30 days).
/// Longest `context.excerpt` (a few bytes over the host's own bound: its cut marker).
pub const MAX_EXCERPT: usize = crate::event::excerpt::MAX_BYTES + 256;
/// Most bytes of one line of `context.excerpt`.
pub const MAX_EXCERPT_LINE: usize = MAX_TEXT;
pub const MAX_DEADLINE_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most approvals a rule may require, and most entries of its `approvers` and `notify`.
pub const MAX_QUORUM: u32 = 16;
pub const MAX_QUORUM_ENTRIES: usize = 64;
/// Operations a request may name (the names of [`crate::policy::OpSet`]).
pub const OPERATIONS: [&str; 9] = [
    "write", "create", "truncate", "rename", "remove", "chmod", "chown", "xattr", "link",
];

/// `INVALID_ARGUMENT` naming `field`.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// A string of at most `max` bytes without control characters.
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "contains control characters (escape them as the event contract says)",
        ));
    }
    Ok(())
}

/// A byte string in the event contract's encoding (see the module documentation) of at
/// most `max` bytes.
pub fn check_bytes(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    if !crate::event::escape::is_encoded(s) {
        return Err(invalid(
            field,
            "not in the event contract's encoding (a NUL, or a backslash that does not start \\\\ or \\xNN of an invalid byte)",
        ));
    }
    Ok(())
}

/// Checks a request context against the contract of the module documentation.
pub fn check_context(c: &pb::RequestContext) -> Result<(), Status> {
    if prost::Message::encoded_len(c) > MAX_CONTEXT_BYTES {
        return Err(invalid(
            "context",
            format!("larger than {MAX_CONTEXT_BYTES} bytes"),
        ));
    }
    for (field, v, max) in [
        ("context.agent", &c.agent, MAX_NAME),
        ("context.user", &c.user, MAX_NAME),
        ("context.reason", &c.reason, MAX_TEXT),
        ("context.rule", &c.rule, MAX_NAME),
        ("context.mode", &c.mode, MAX_NAME),
    ] {
        check_text(field, v, max)?;
    }
    check_bytes("context.path", &c.path, MAX_PATH)?;
    check_bytes("context.cwd", &c.cwd, MAX_PATH)?;
    if !c.path.starts_with('/') {
        return Err(invalid("context.path", "must be an absolute path"));
    }
    check_argv("context.command", &c.command)?;
    if c.ancestry.len() > MAX_ANCESTRY {
        return Err(invalid(
            "context.ancestry",
            format!("more than {MAX_ANCESTRY} entries"),
        ));
    }
    for (i, p) in c.ancestry.iter().enumerate() {
        check_bytes(&format!("context.ancestry[{i}].comm"), &p.comm, MAX_NAME)?;
        check_argv(&format!("context.ancestry[{i}].argv"), &p.argv)?;
    }
    check_text("context.login_user", &c.login_user, MAX_NAME)?;
    if let Some(q) = &c.quorum {
        check_quorum(q)?;
    }
    if c.operations.is_empty() {
        return Err(invalid("context.operations", "empty"));
    }
    if c.operations.len() > OPERATIONS.len() {
        return Err(invalid("context.operations", "too many entries"));
    }
    for op in &c.operations {
        if !OPERATIONS.contains(&op.as_str()) {
            return Err(invalid(
                "context.operations",
                format!("{:?} is not one of {OPERATIONS:?}", truncate(op)),
            ));
        }
    }
    if !matches!(c.fail_verdict.as_str(), "allow" | "deny") {
        return Err(invalid(
            "context.fail_verdict",
            format!(
                "{:?} is neither \"allow\" nor \"deny\"",
                truncate(&c.fail_verdict)
            ),
        ));
    }
    check_excerpt(&c.excerpt)?;
    if !matches!(c.excerpt_kind.as_str(), "" | "content" | "diff")
        || c.excerpt.is_empty() != c.excerpt_kind.is_empty()
    {
        return Err(invalid(
            "context.excerpt_kind",
            "must be \"content\" or \"diff\" with an excerpt, empty without one",
        ));
    }
    if !(c.content_sha256.is_empty()
        || (c.content_sha256.len() == 64
            && c.content_sha256.bytes().all(|b| b.is_ascii_hexdigit())))
    {
        return Err(invalid(
            "context.content_sha256",
            "neither empty nor 64 hex digits",
        ));
    }
    Ok(())
}

/// An excerpt: lines of text without control characters, each bounded.
fn check_excerpt(s: &str) -> Result<(), Status> {
    if s.len() > MAX_EXCERPT {
        return Err(invalid(
            "context.excerpt",
            format!("longer than {MAX_EXCERPT} bytes"),
        ));
    }
    for line in s.split('\n') {
        check_text("context.excerpt", line, MAX_EXCERPT_LINE)?;
    }
    Ok(())
}

/// Checks a Submit from `host` and makes the record to store. `now_ms` fills a missing
/// creation time; `default_lifetime_ms` a missing deadline.
pub fn new_request(
    r: pb::SubmitRequest,
    host: &str,
    now_ms: i64,
    default_lifetime_ms: i64,
) -> Result<NewRequest, Status> {
    if r.host_request_id == 0 {
        return Err(invalid("host_request_id", "must not be 0"));
    }
    let c = r.context.ok_or_else(|| invalid("context", "missing"))?;
    check_context(&c)?;
    let created = if r.created_unix_ms == 0 {
        now_ms
    } else {
        r.created_unix_ms
    };
    if created < 0 || created > now_ms.saturating_add(MAX_DEADLINE_MS) {
        return Err(invalid("created_unix_ms", "out of range"));
    }
    let deadline = if r.deadline_unix_ms == 0 {
        created.saturating_add(default_lifetime_ms)
    } else {
        r.deadline_unix_ms
    };
    if deadline < 0 || deadline > now_ms.saturating_add(MAX_DEADLINE_MS) {
        return Err(invalid(
            "deadline_unix_ms",
            "out of range (at most 30 days ahead)",
        ));
    }
    let quorum = quorum_rec(c.quorum.as_ref());
    let notify = c
        .quorum
        .as_ref()
        .map(|q| q.notify.clone())
        .unwrap_or_default();
    let likely_final = super::burst::describe(&c.path).unwrap_or_default();
    Ok(NewRequest {
        host_request_id: r.host_request_id,
        notify,
        suggested_glob: String::new(),
        suggested_from: Vec::new(),
        created_unix_ms: created,
        deadline_unix_ms: deadline,
        context: ContextRec {
            // The identity's host, whatever the host wrote.
            host: host.to_owned(),
            session_id: c.session_id,
            agent: c.agent,
            uid: c.uid,
            user: c.user,
            pid: c.pid,
            command: c.command,
            ancestry: c
                .ancestry
                .into_iter()
                .map(|p| ProcessRec {
                    pid: p.pid,
                    comm: p.comm,
                    argv: p.argv,
                })
                .collect(),
            path: c.path,
            operations: c.operations,
            reason: c.reason,
            content_sha256: c.content_sha256.to_ascii_lowercase(),
            rule: c.rule,
            mode: c.mode,
            fail_verdict: c.fail_verdict,
            cwd: c.cwd,
            quorum,
            login_user: c.login_user,
            likely_final,
            excerpt: c.excerpt,
            excerpt_kind: c.excerpt_kind,
        },
    })
}

/// A rule's quorum: bounded counts, names without control characters or spaces.
fn check_quorum(q: &pb::Quorum) -> Result<(), Status> {
    if q.approvals > MAX_QUORUM {
        return Err(invalid(
            "context.quorum.approvals",
            format!("more than {MAX_QUORUM}"),
        ));
    }
    for (field, list) in [
        ("context.quorum.approvers", &q.approvers),
        ("context.quorum.notify", &q.notify),
    ] {
        if list.len() > MAX_QUORUM_ENTRIES {
            return Err(invalid(
                field,
                format!("more than {MAX_QUORUM_ENTRIES} entries"),
            ));
        }
        for (i, v) in list.iter().enumerate() {
            let f = format!("{field}[{i}]");
            check_text(&f, v, MAX_NAME)?;
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                return Err(invalid(&f, "empty, or contains whitespace"));
            }
        }
    }
    Ok(())
}

/// The stored form of a quorum (`None` for the default: one approval by anyone).
fn quorum_rec(q: Option<&pb::Quorum>) -> Option<QuorumRec> {
    let q = q?;
    let rec = QuorumRec {
        approvals: q.approvals.max(1),
        approvers: q.approvers.clone(),
        four_eyes: q.four_eyes,
    };
    (rec != QuorumRec {
        approvals: 1,
        ..QuorumRec::default()
    })
    .then_some(rec)
}

fn check_argv(field: &str, argv: &[String]) -> Result<(), Status> {
    if argv.len() > MAX_ARGV {
        return Err(invalid(field, format!("more than {MAX_ARGV} entries")));
    }
    for (i, a) in argv.iter().enumerate() {
        check_bytes(&format!("{field}[{i}]"), a, MAX_TEXT)?;
    }
    Ok(())
}

/// The first 64 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

impl From<State> for pb::RequestState {
    fn from(s: State) -> Self {
        match s {
            State::Pending => pb::RequestState::Pending,
            State::Approved => pb::RequestState::Approved,
            State::Denied => pb::RequestState::Denied,
            State::Expired => pb::RequestState::Expired,
            State::Released => pb::RequestState::Released,
        }
    }
}

/// The wire form of a grant.
pub fn grant(g: &GrantRec) -> pb::Grant {
    pb::Grant {
        id: g.id,
        request_id: g.request_id,
        host: g.host.clone(),
        scope: match g.scope {
            Scope::Session => pb::GrantScope::Session,
            Scope::Agent => pb::GrantScope::Agent,
        } as i32,
        session_id: g.session_id,
        agent: g.agent.clone(),
        path_glob: g.path_glob.clone(),
        operations: g.operations.clone(),
        created_unix_ms: g.created_unix_ms,
        expires_unix_ms: g.expires_unix_ms,
        granted_by: g.granted_by.clone(),
        note: g.note.clone(),
        revoked_unix_ms: g.revoked_unix_ms.unwrap_or(0),
        revoked_by: g.revoked_by.clone().unwrap_or_default(),
        session_ended_unix_ms: g.session_ended_unix_ms.unwrap_or(0),
    }
}

/// The wire form of a decision of request `request_id`, with its grant.
pub fn decision(request_id: u64, d: &DecisionRec, g: Option<&GrantRec>) -> pb::Decision {
    pb::Decision {
        request_id,
        state: pb::RequestState::from(d.state) as i32,
        decided_by: d.decided_by.clone(),
        note: d.note.clone(),
        decided_unix_ms: d.decided_unix_ms,
        verdict: d.verdict.clone(),
        grant: g.map(grant),
    }
}

/// The wire form of a recorded approval.
pub fn approval(a: &ApprovalRec) -> pb::Approval {
    pb::Approval {
        by: a.by.clone(),
        unix_ms: a.unix_ms,
        note: a.note.clone(),
    }
}

/// The wire form of a request; `g` is its grant, if any.
pub fn request(r: &RequestRec, g: Option<&GrantRec>) -> pb::ApprovalRequest {
    let c = &r.context;
    pb::ApprovalRequest {
        id: r.id,
        host_request_id: r.host_request_id,
        context: Some(pb::RequestContext {
            host: c.host.clone(),
            session_id: c.session_id,
            agent: c.agent.clone(),
            uid: c.uid,
            user: c.user.clone(),
            pid: c.pid,
            command: c.command.clone(),
            ancestry: c
                .ancestry
                .iter()
                .map(|p| pb::ProcessInfo {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    argv: p.argv.clone(),
                })
                .collect(),
            path: c.path.clone(),
            operations: c.operations.clone(),
            reason: c.reason.clone(),
            content_sha256: c.content_sha256.clone(),
            rule: c.rule.clone(),
            mode: c.mode.clone(),
            fail_verdict: c.fail_verdict.clone(),
            cwd: c.cwd.clone(),
            quorum: (c.quorum.is_some() || !r.notify.is_empty()).then(|| {
                let q = c.quorum.clone().unwrap_or_default();
                pb::Quorum {
                    approvals: q.approvals.max(1),
                    approvers: q.approvers,
                    four_eyes: q.four_eyes,
                    notify: r.notify.clone(),
                }
            }),
            login_user: c.login_user.clone(),
            likely_final: c.likely_final.clone(),
            excerpt: c.excerpt.clone(),
            excerpt_kind: c.excerpt_kind.clone(),
        }),
        created_unix_ms: r.created_unix_ms,
        deadline_unix_ms: r.deadline_unix_ms,
        state: pb::RequestState::from(r.state) as i32,
        decision: r.decision.as_ref().map(|d| decision(r.id, d, g)),
        approvals: r.approvals.iter().map(approval).collect(),
        suggested_glob: r.suggested_glob.clone(),
        suggested_from: r.suggested_from.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit() -> pb::SubmitRequest {
        pb::SubmitRequest {
            host_request_id: 1,
            context: Some(pb::RequestContext {
                host: "liar".into(),
                session_id: 3,
                agent: "codex".into(),
                path: "/etc/hosts".into(),
                operations: vec!["write".into()],
                fail_verdict: "deny".into(),
                ..Default::default()
            }),
            created_unix_ms: 0,
            deadline_unix_ms: 0,
        }
    }

    #[test]
    fn fills_defaults_and_overrides_the_host() {
        let n = new_request(submit(), "web-1", 1000, 500).unwrap();
        assert_eq!(n.context.host, "web-1");
        assert_eq!((n.created_unix_ms, n.deadline_unix_ms), (1000, 1500));
    }

    #[test]
    fn accepts_what_the_host_encodes() {
        use crate::event::escape::encode;
        let mut r = submit();
        let c = r.context.as_mut().unwrap();
        let long = format!("/etc/{}/x\n.conf", "d\x1b".repeat(2000));
        let long_raw = [long.as_bytes(), b"\xff"].concat();
        assert!(long_raw.len() >= 3900);
        c.path = encode(&long_raw);
        c.cwd = encode(b"/tmp/new\nline\\dir\xfe");
        c.command = vec![
            encode(b"sh"),
            encode(b"-c"),
            encode(b"true\necho evil \x1b[2J \xff\xfe >> /etc/x"),
        ];
        c.ancestry = vec![pb::ProcessInfo {
            pid: 7,
            comm: encode(b"a\nb\x1b\xff"),
            argv: c.command.clone(),
        }];
        let n = new_request(r, "web-1", 1000, 500).expect("the host's encoding is accepted");
        assert_eq!(
            crate::event::escape::decode(&n.context.path),
            Some(long_raw)
        );
    }

    #[test]
    fn byte_fields_outside_the_encoding_are_refused() {
        let field = |f: &dyn Fn(&mut pb::RequestContext)| {
            let mut r = submit();
            f(r.context.as_mut().unwrap());
            let e = new_request(r, "h", 1000, 500).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            e.message().split(':').next().unwrap().to_owned()
        };
        assert_eq!(field(&|c| c.path = "/etc/a\\q".into()), "context.path");
        assert_eq!(field(&|c| c.path = "/etc/a\0b".into()), "context.path");
        assert_eq!(field(&|c| c.cwd = "/x\\x41".into()), "context.cwd");
        assert_eq!(
            field(&|c| c.command = vec!["ok".into(), "trailing\\".into()]),
            "context.command[1]"
        );
        assert_eq!(
            field(&|c| c.ancestry = vec![pb::ProcessInfo {
                pid: 1,
                comm: "\0".into(),
                argv: vec![],
            }]),
            "context.ancestry[0].comm"
        );
        assert_eq!(
            field(&|c| c.command = vec!["x".repeat(MAX_TEXT + 1)]),
            "context.command[0]"
        );
        // Free text stays free of control characters (the host escapes the reason).
        assert_eq!(field(&|c| c.reason = "a\u{1b}b".into()), "context.reason");
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        let field = |f: &dyn Fn(&mut pb::SubmitRequest)| {
            let mut r = submit();
            f(&mut r);
            let e = new_request(r, "h", 1000, 500).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            e.message().split(':').next().unwrap().to_owned()
        };
        fn ctx(r: &mut pb::SubmitRequest) -> &mut pb::RequestContext {
            r.context.as_mut().unwrap()
        }
        assert_eq!(field(&|r| r.host_request_id = 0), "host_request_id");
        assert_eq!(field(&|r| r.context = None), "context");
        assert_eq!(field(&|r| ctx(r).path = "relative".into()), "context.path");
        assert_eq!(
            field(&|r| ctx(r).path = format!("/{}", "a".repeat(MAX_PATH))),
            "context.path"
        );
        assert_eq!(field(&|r| ctx(r).agent = "a\nb".into()), "context.agent");
        assert_eq!(
            field(&|r| ctx(r).operations = vec!["delete".into()]),
            "context.operations"
        );
        assert_eq!(field(&|r| ctx(r).operations.clear()), "context.operations");
        assert_eq!(
            field(&|r| ctx(r).fail_verdict = "maybe".into()),
            "context.fail_verdict"
        );
        assert_eq!(
            field(&|r| ctx(r).content_sha256 = "xyz".into()),
            "context.content_sha256"
        );
        assert_eq!(
            field(&|r| ctx(r).command = vec!["x".into(); MAX_ARGV + 1]),
            "context.command"
        );
        assert_eq!(
            field(&|r| ctx(r).ancestry = vec![pb::ProcessInfo::default(); MAX_ANCESTRY + 1]),
            "context.ancestry"
        );
        assert_eq!(
            field(&|r| ctx(r).command = vec!["x".repeat(MAX_TEXT); 100]),
            "context"
        );
        assert_eq!(field(&|r| r.deadline_unix_ms = -5), "deadline_unix_ms");
        assert_eq!(
            field(&|r| r.deadline_unix_ms = i64::MAX),
            "deadline_unix_ms"
        );
    }
}
