//! How approval requests look: the `approvals list` table, the full view of one request,
//! the `watch` lines, and the JSON form (pure functions of the data and the current time).
use serde_json::{Value, json};

use super::grants::{grant_json, grant_summary};
use super::{command_line, dash, ellipsize, relative, render_table, term, utc_time, when};
use confgate_proto::v1 as pb;

/// Longest path shown in the `approvals list` table, in characters.
const PATH_COLUMN: usize = 60;

/// The line saying how many older requests a listing left out (empty for none).
pub fn hidden_line(hidden: u64) -> String {
    match hidden {
        0 => String::new(),
        1 => "1 older request not shown (--limit N shows up to 1000)\n".to_owned(),
        n => format!("{n} older requests not shown (--limit N shows up to 1000)\n"),
    }
}

/// Lowercase name of a request state.
pub fn state_name(state: i32) -> &'static str {
    match pb::RequestState::try_from(state) {
        Ok(pb::RequestState::Pending) => "pending",
        Ok(pb::RequestState::Approved) => "approved",
        Ok(pb::RequestState::Denied) => "denied",
        Ok(pb::RequestState::Expired) => "expired",
        Ok(pb::RequestState::Released) => "released",
        Ok(pb::RequestState::Unspecified) | Err(_) => "unknown",
    }
}

/// The `approvals list` table.
pub fn render_list(requests: &[pb::ApprovalRequest], all: bool, now_ms: i64) -> String {
    if requests.is_empty() {
        return if all {
            "no approval requests\n".to_owned()
        } else {
            "no pending approval requests\n".to_owned()
        };
    }
    // A session's requests together (sessions in the order of their newest request).
    let mut order: Vec<(&str, u64)> = Vec::new();
    for r in requests {
        let key = session_key(r);
        if !order.contains(&key) {
            order.push(key);
        }
    }
    let mut sorted: Vec<&pb::ApprovalRequest> = requests.iter().collect();
    sorted.sort_by_key(|r| order.iter().position(|k| *k == session_key(r)));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|r| {
            let c = r.context.clone().unwrap_or_default();
            let deadline = if r.state == pb::RequestState::Pending as i32 {
                relative(r.deadline_unix_ms, now_ms)
            } else {
                "-".to_owned()
            };
            let state = match quorum_progress(r) {
                Some((have, need, _)) if r.state == pb::RequestState::Pending as i32 => {
                    format!("pending {have}/{need}")
                }
                _ => state_name(r.state).to_owned(),
            };
            vec![
                r.id.to_string(),
                state,
                dash(&c.host),
                c.session_id.to_string(),
                dash(&c.agent),
                dash(&c.user),
                term(&c.operations.join(",")),
                deadline,
                path_cell(&c),
            ]
        })
        .collect();
    let mut s = render_table(
        &[
            "ID", "STATE", "HOST", "SESSION", "AGENT", "USER", "OPS", "DEADLINE", "PATH",
        ],
        &rows,
    );
    s.push_str(&session_sets(&sorted, &order));
    s
}

/// (host, session) of a request.
fn session_key(r: &pb::ApprovalRequest) -> (&str, u64) {
    r.context
        .as_ref()
        .map_or(("", 0), |c| (c.host.as_str(), c.session_id))
}

/// The path, with the likely final name of a temporary one.
fn path_cell(c: &pb::RequestContext) -> String {
    let path = ellipsize(&dash(&c.path), PATH_COLUMN);
    if c.likely_final.is_empty() {
        path
    } else {
        format!(
            "{path} -> {}",
            ellipsize(&term(&c.likely_final), PATH_COLUMN)
        )
    }
}

/// One line per session with several pending requests and a suggested glob: how many, the glob,
/// and the command that approves the set.
fn session_sets(sorted: &[&pb::ApprovalRequest], order: &[(&str, u64)]) -> String {
    let mut s = String::new();
    for key in order.iter().filter(|k| k.1 != 0) {
        let pending: Vec<&&pb::ApprovalRequest> = sorted
            .iter()
            .filter(|r| session_key(r) == *key && r.state == pb::RequestState::Pending as i32)
            .collect();
        // The newest request's suggestion covers the most.
        // One request is its own set (`approvals show` has its suggestion).
        if pending.len() < 2 {
            continue;
        }
        let Some(newest) = pending.iter().max_by_key(|r| r.id) else {
            continue;
        };
        if newest.suggested_glob.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "session {} on {}: {} pending, suggested glob {} (approve the set: confgate approvals approve --session-set {} --expect-glob {})\n",
            key.1,
            dash(key.0),
            pending.len(),
            term(&newest.suggested_glob),
            newest.id,
            shell_quoted(&term(&newest.suggested_glob))
        ));
    }
    s
}

/// The full human view of one request: everything an approver needs to decide.
pub fn render_request(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    let c = r.context.clone().unwrap_or_default();
    let mut s = format!("request {}  {}\n", r.id, state_name(r.state).to_uppercase());
    let mut field = |name: &str, value: String| {
        s.push_str(&format!("  {name:<13}{value}\n"));
    };
    field("host", dash(&c.host));
    field("session", c.session_id.to_string());
    field("agent", dash(&c.agent));
    field("user", format!("{} (uid {})", dash(&c.user), c.uid));
    field("pid", c.pid.to_string());
    field("command", command_line(&c.command));
    field("cwd", dash(&c.cwd));
    if c.ancestry.is_empty() {
        field("ancestry", "-".to_owned());
    }
    for (i, p) in c.ancestry.iter().enumerate() {
        field(
            if i == 0 { "ancestry" } else { "" },
            format!("{} {}: {}", p.pid, dash(&p.comm), command_line(&p.argv)),
        );
    }
    field("path", dash(&c.path));
    if !c.likely_final.is_empty() {
        field("likely final", term(&c.likely_final));
    }
    field("operations", dash(&c.operations.join(", ")));
    field(
        "reason",
        if c.reason.is_empty() {
            "(none given)".to_owned()
        } else {
            term(&c.reason)
        },
    );
    field("rule", dash(&c.rule));
    if let Some(line) = approvals_line(r) {
        field("approvals", line);
    }
    if let Some(q) = &c.quorum {
        if !q.approvers.is_empty() {
            field("approvers", term(&q.approvers.join(", ")));
        }
        if q.four_eyes {
            field(
                "four eyes",
                "the session's user and login user cannot approve".to_owned(),
            );
        }
        if !q.notify.is_empty() {
            field("notify", term(&q.notify.join(", ")));
        }
    }
    field("mode", dash(&c.mode));
    field("fail verdict", dash(&c.fail_verdict));
    field(
        "content",
        if c.content_sha256.is_empty() {
            "none (the file did not exist)".to_owned()
        } else {
            format!("sha256 {}", term(&c.content_sha256))
        },
    );
    for (i, line) in c.excerpt.lines().enumerate() {
        let label = match (i, c.excerpt_kind.as_str()) {
            (0, "diff") => "change",
            (0, _) => "content now",
            _ => "",
        };
        field(label, term(line));
    }
    if !r.suggested_glob.is_empty() {
        field(
            "suggested",
            format!(
                "{} (session scope; approve --suggested {}, or --session-set {} --expect-glob {} for all its pending requests)",
                term(&r.suggested_glob),
                r.id,
                r.id,
                shell_quoted(&term(&r.suggested_glob))
            ),
        );
        for (i, p) in r.suggested_from.iter().enumerate() {
            field(if i == 0 { "  covering" } else { "" }, dash(p));
        }
    }
    field("created", when(r.created_unix_ms, now_ms));
    field("deadline", when(r.deadline_unix_ms, now_ms));
    if let Some(d) = &r.decision {
        field("decision", decision_line(d, now_ms));
        if let Some(g) = &d.grant {
            field("grant", grant_summary(g, now_ms));
        }
    }
    s
}

/// (approvals so far, approvals needed, who approved) of a request whose rule needs
/// several, or that has approvals recorded; `None` for the usual single approval.
pub fn quorum_progress(r: &pb::ApprovalRequest) -> Option<(usize, u32, Vec<String>)> {
    let need = r
        .context
        .as_ref()
        .and_then(|c| c.quorum.as_ref())
        .map_or(1, |q| q.approvals.max(1));
    if need <= 1 && r.approvals.is_empty() {
        return None;
    }
    let who = r
        .approvals
        .iter()
        .map(|a| term(a.by.split_once(':').map_or(a.by.as_str(), |(_, p)| p)))
        .collect();
    Some((r.approvals.len(), need, who))
}

/// `1 of 2 approvals (alice)`, for requests whose rule needs several.
pub fn approvals_line(r: &pb::ApprovalRequest) -> Option<String> {
    let (have, need, who) = quorum_progress(r)?;
    let mut s = format!(
        "{have} of {need} approval{}",
        if need == 1 { "" } else { "s" }
    );
    if !who.is_empty() {
        s.push_str(&format!(" ({})", who.join(", ")));
    }
    Some(s)
}

fn decision_line(d: &pb::Decision, now_ms: i64) -> String {
    let mut s = format!(
        "{} by {} at {}",
        state_name(d.state),
        dash(&d.decided_by),
        when(d.decided_unix_ms, now_ms)
    );
    if !d.verdict.is_empty() {
        s.push_str(&format!(", verdict {}", term(&d.verdict)));
    }
    if !d.note.is_empty() {
        s.push_str(&format!(", note: {}", term(&d.note)));
    }
    s
}

/// What `approvals watch` prints for one stream item: the full view for a pending
/// request, one line for a state change.
pub fn render_watch_item(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    if r.state == pb::RequestState::Pending as i32 {
        let mut s = render_request(r, now_ms);
        s.push('\n');
        return s;
    }
    let path = r
        .context
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| dash(&c.path));
    match &r.decision {
        Some(d) => format!("request {} {}: {}\n", r.id, path, decision_line(d, now_ms)),
        None => format!("request {} {}: {}\n", r.id, path, state_name(r.state)),
    }
}

/// What `approve`/`deny` print on success.
pub fn render_decided(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    let path = r
        .context
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| dash(&c.path));
    let mut s = format!("request {} ({path}): {}", r.id, state_name(r.state));
    if let Some(line) = approvals_line(r) {
        s.push_str(&format!(", {line}"));
    }
    s.push('\n');
    if let Some(g) = r.decision.as_ref().and_then(|d| d.grant.as_ref()) {
        s.push_str(&format!("grant {}\n", grant_summary(g, now_ms)));
    }
    s
}

/// A request as JSON (proto field names; times also as RFC 3339 UTC).
pub fn request_json(r: &pb::ApprovalRequest) -> Value {
    let context = r.context.as_ref().map(|c| {
        json!({
            "host": c.host,
            "session_id": c.session_id,
            "agent": c.agent,
            "uid": c.uid,
            "user": c.user,
            "pid": c.pid,
            "command": c.command,
            "ancestry": c.ancestry.iter().map(|p| json!({
                "pid": p.pid, "comm": p.comm, "argv": p.argv,
            })).collect::<Vec<_>>(),
            "cwd": c.cwd,
            "path": c.path,
            "operations": c.operations,
            "reason": c.reason,
            "content_sha256": c.content_sha256,
            "rule": c.rule,
            "mode": c.mode,
            "fail_verdict": c.fail_verdict,
            "login_user": c.login_user,
            "likely_final": c.likely_final,
            "excerpt": c.excerpt,
            "excerpt_kind": c.excerpt_kind,
            "quorum": c.quorum.as_ref().map(|q| json!({
                "approvals": q.approvals.max(1), "approvers": q.approvers,
                "four_eyes": q.four_eyes, "notify": q.notify,
            })),
        })
    });
    let decision = r.decision.as_ref().map(|d| {
        json!({
            "state": state_name(d.state),
            "decided_by": d.decided_by,
            "note": d.note,
            "decided_unix_ms": d.decided_unix_ms,
            "decided": utc_time(d.decided_unix_ms),
            "verdict": d.verdict,
            "grant": d.grant.as_ref().map(grant_json),
        })
    });
    json!({
        "id": r.id,
        "host_request_id": r.host_request_id,
        "state": state_name(r.state),
        "created_unix_ms": r.created_unix_ms,
        "created": utc_time(r.created_unix_ms),
        "deadline_unix_ms": r.deadline_unix_ms,
        "deadline": utc_time(r.deadline_unix_ms),
        "context": context,
        "decision": decision,
        "approvals": r.approvals.iter().map(|a| json!({
            "by": a.by, "unix_ms": a.unix_ms, "note": a.note,
        })).collect::<Vec<_>>(),
        "progress": approvals_line(r),
        "suggested_glob": r.suggested_glob,
        "suggested_from": r.suggested_from,
    })
}

/// `s` in single quotes for a shell (`/etc/nginx/**` must not expand).
fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::render::tests::NOW;

    pub fn request() -> pb::ApprovalRequest {
        pb::ApprovalRequest {
            id: 17,
            host_request_id: 3,
            context: Some(pb::RequestContext {
                host: "web-1".into(),
                session_id: 42,
                agent: "claude-code".into(),
                uid: 1000,
                user: "alice".into(),
                pid: 4242,
                command: vec!["sh".into(), "-c".into(), "echo x > /etc/app.conf".into()],
                ancestry: vec![
                    pb::ProcessInfo {
                        pid: 4242,
                        comm: "sh".into(),
                        argv: vec!["sh".into(), "-c".into(), "echo x".into()],
                    },
                    pb::ProcessInfo {
                        pid: 4000,
                        comm: "claude".into(),
                        argv: vec!["claude".into()],
                    },
                ],
                path: "/etc/app\n.conf".into(),
                operations: vec!["write".into(), "truncate".into()],
                reason: "update the port\u{1b}[2J".into(),
                content_sha256: "ab".repeat(32),
                rule: "etc".into(),
                mode: "hold".into(),
                fail_verdict: "deny".into(),
                cwd: "/home/alice".into(),
                quorum: None,
                login_user: String::new(),
                likely_final: String::new(),
                excerpt: "PORT=80\nAPI_KEY=********\n".into(),
                excerpt_kind: "content".into(),
            }),
            created_unix_ms: NOW - 60_000,
            deadline_unix_ms: NOW + 252_000,
            state: pb::RequestState::Pending as i32,
            decision: None,
            approvals: Vec::new(),
            suggested_glob: String::new(),
            suggested_from: Vec::new(),
        }
    }

    #[test]
    fn request_view_shows_the_whole_context_safely() {
        let s = render_request(&request(), NOW);
        for needle in [
            "request 17  PENDING",
            "host         web-1",
            "session      42",
            "agent        claude-code",
            "user         alice (uid 1000)",
            "pid          4242",
            "command      sh -c 'echo x > /etc/app.conf'",
            "cwd          /home/alice",
            "ancestry     4242 sh: sh -c 'echo x'",
            "             4000 claude: claude",
            "path         /etc/app\\n.conf",
            "operations   write, truncate",
            "reason       update the port\\u{1b}[2J",
            "rule         etc",
            "mode         hold",
            "fail verdict deny",
            "content      sha256 abab",
            "content now  PORT=80",
            "             API_KEY=********",
            "(1m ago)",
            "(in 4m 12s)",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert!(
            !s.contains('\u{1b}'),
            "escape sequence reached the terminal"
        );
        let lines = s.lines().count();
        assert_eq!(lines, 21, "one line per field and excerpt line:\n{s}");
        let mut gone = request();
        if let Some(c) = gone.context.as_mut() {
            c.content_sha256.clear();
        }
        assert!(render_request(&gone, NOW).contains("none (the file did not exist)"));
    }

    #[test]
    fn decided_request_shows_decision_and_grant() {
        let mut r = request();
        r.state = pb::RequestState::Approved as i32;
        r.decision = Some(pb::Decision {
            request_id: 17,
            state: pb::RequestState::Approved as i32,
            decided_by: "unix:root".into(),
            note: "fine".into(),
            decided_unix_ms: NOW - 1000,
            verdict: String::new(),
            grant: Some(crate::cli::render::grants::tests::grant()),
        });
        let s = render_request(&r, NOW);
        assert!(s.contains("decision     approved by unix:root at "), "{s}");
        assert!(s.contains("note: fine"), "{s}");
        assert!(
            s.contains("grant        5: session 42 (claude-code) on web-1"),
            "{s}"
        );
        let w = render_watch_item(&r, NOW);
        assert_eq!(w.lines().count(), 1, "{w}");
        assert!(
            w.starts_with("request 17 /etc/app\\n.conf: approved by unix:root"),
            "{w}"
        );
        let d = render_decided(&r, NOW);
        assert!(
            d.starts_with("request 17 (/etc/app\\n.conf): approved\ngrant 5: "),
            "{d}"
        );
    }

    #[test]
    fn list_table_is_one_line_per_request() {
        let mut other = request();
        other.id = 18;
        if let Some(c) = other.context.as_mut() {
            c.path = format!("/etc/{}", "d/".repeat(100));
        }
        let s = render_list(&[request(), other], false, NOW);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].starts_with("ID  STATE"), "{s}");
        assert!(
            lines[1].contains("pending") && lines[1].contains("in 4m 12s"),
            "{s}"
        );
        assert!(lines[2].ends_with('…'), "long path shortened: {s}");
        assert_eq!(
            render_list(&[], false, NOW),
            "no pending approval requests\n"
        );
    }

    #[test]
    fn json_keeps_values_exact() {
        let v = request_json(&request());
        assert_eq!(v["id"], 17);
        assert_eq!(v["state"], "pending");
        assert_eq!(v["context"]["path"], "/etc/app\n.conf");
        assert_eq!(v["context"]["ancestry"][1]["comm"], "claude");
        assert_eq!(v["deadline_unix_ms"], NOW + 252_000);
        assert_eq!(v["deadline"], "2026-05-01T12:04:12.000Z");
        assert!(v["decision"].is_null());
        assert!(!v.to_string().contains('\n'));
    }
}
