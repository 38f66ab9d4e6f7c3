//! How grants look: the `grants list` table, one-line summaries, and the JSON form.
use serde_json::{Value, json};

use super::{dash, ellipsize, relative, render_table, term, utc_time, when};
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;

/// Longest glob shown in the `grants list` table, in characters.
const GLOB_COLUMN: usize = 60;

/// Lowercase name of a grant scope.
pub fn scope_name(scope: i32) -> &'static str {
    match pb::GrantScope::try_from(scope) {
        Ok(pb::GrantScope::Session) => "session",
        Ok(pb::GrantScope::Agent) => "agent",
        Ok(pb::GrantScope::Unspecified) | Err(_) => "unknown",
    }
}

/// Whom a grant covers: `session 42 on web-1` or `agent codex on web-1`.
fn covers(g: &pb::Grant) -> String {
    match pb::GrantScope::try_from(g.scope) {
        Ok(pb::GrantScope::Agent) => format!("agent {} on {}", dash(&g.agent), dash(&g.host)),
        _ => format!(
            "session {} ({}) on {}",
            g.session_id,
            dash(&g.agent),
            dash(&g.host)
        ),
    }
}

/// The state of a grant at `now_ms`: live, expired or revoked.
pub fn grant_state(g: &pb::Grant, now_ms: i64) -> &'static str {
    if g.revoked_unix_ms != 0 {
        "revoked"
    } else if g.expires_unix_ms <= now_ms {
        "expired"
    } else if g.session_ended_unix_ms != 0 {
        "session_ended"
    } else {
        "live"
    }
}

/// One line about a grant: id, whom, what, until when, by whom.
pub fn grant_summary(g: &pb::Grant, now_ms: i64) -> String {
    let mut s = format!(
        "{}: {}, {} [{}], request {}, by {}, ",
        g.id,
        covers(g),
        dash(&g.path_glob),
        dash(&g.operations.join(",")),
        g.request_id,
        dash(&g.granted_by),
    );
    if g.revoked_unix_ms != 0 {
        s.push_str(&format!(
            "revoked by {} at {}",
            dash(&g.revoked_by),
            when(g.revoked_unix_ms, now_ms)
        ));
    } else if g.expires_unix_ms <= now_ms {
        s.push_str(&format!("expired at {}", when(g.expires_unix_ms, now_ms)));
    } else {
        s.push_str(&format!("expires {}", when(g.expires_unix_ms, now_ms)));
    }
    if !g.note.is_empty() {
        s.push_str(&format!(", note: {}", term(&g.note)));
    }
    s
}

/// The `grants list` table.
pub fn render_list(grants: &[pb::Grant], all: bool, now_ms: i64) -> String {
    if grants.is_empty() {
        return if all {
            "no grants\n".to_owned()
        } else {
            "no live grants\n".to_owned()
        };
    }
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            let (who, session) = match pb::GrantScope::try_from(g.scope) {
                Ok(pb::GrantScope::Agent) => ("agent", "*".to_owned()),
                _ => ("session", g.session_id.to_string()),
            };
            let ends = match grant_state(g, now_ms) {
                "revoked" => format!("revoked {}", relative(g.revoked_unix_ms, now_ms)),
                "expired" => format!("expired {}", relative(g.expires_unix_ms, now_ms)),
                "session_ended" => format!(
                    "{} (session ended {})",
                    relative(g.expires_unix_ms, now_ms),
                    relative(g.session_ended_unix_ms, now_ms)
                ),
                _ => relative(g.expires_unix_ms, now_ms),
            };
            vec![
                g.id.to_string(),
                g.request_id.to_string(),
                dash(&g.host),
                who.to_owned(),
                session,
                dash(&g.agent),
                dash(&g.operations.join(",")),
                ends,
                dash(&g.granted_by),
                ellipsize(&dash(&g.path_glob), GLOB_COLUMN),
            ]
        })
        .collect();
    render_table(
        &[
            "ID", "REQUEST", "HOST", "SCOPE", "SESSION", "AGENT", "OPS", "EXPIRES", "BY", "GLOB",
        ],
        &rows,
    )
}

/// A grant as JSON (proto field names; times also as RFC 3339 UTC).
pub fn grant_json(g: &pb::Grant) -> Value {
    json!({
        "id": g.id,
        "request_id": g.request_id,
        "host": g.host,
        "scope": scope_name(g.scope),
        "session_id": g.session_id,
        "agent": g.agent,
        "path_glob": g.path_glob,
        "operations": g.operations,
        "created_unix_ms": g.created_unix_ms,
        "created": utc_time(g.created_unix_ms),
        "expires_unix_ms": g.expires_unix_ms,
        "expires": utc_time(g.expires_unix_ms),
        "granted_by": g.granted_by,
        "note": g.note,
        "revoked_unix_ms": g.revoked_unix_ms,
        "revoked": utc_time(g.revoked_unix_ms),
        "revoked_by": g.revoked_by,
        "state": grant_state(g, now_ms()),
        "session_ended_unix_ms": g.session_ended_unix_ms,
        "session_ended": utc_time(g.session_ended_unix_ms),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::render::tests::NOW;

    pub fn grant() -> pb::Grant {
        pb::Grant {
            id: 5,
            request_id: 17,
            host: "web-1".into(),
            scope: pb::GrantScope::Session as i32,
            session_id: 42,
            agent: "claude-code".into(),
            path_glob: "/etc/app.conf".into(),
            operations: vec!["write".into()],
            created_unix_ms: NOW - 1000,
            expires_unix_ms: NOW + 7_199_000,
            granted_by: "unix:root".into(),
            note: String::new(),
            revoked_unix_ms: 0,
            revoked_by: String::new(),
            session_ended_unix_ms: 0,
        }
    }

    #[test]
    fn summary_says_whom_what_and_until_when() {
        let s = grant_summary(&grant(), NOW);
        assert!(
            s.starts_with(
                "5: session 42 (claude-code) on web-1, /etc/app.conf [write], request 17, by \
                 unix:root, expires "
            ),
            "{s}"
        );
        assert!(s.ends_with("(in 1h 59m 59s)"), "{s}");
        let mut g = grant();
        g.scope = pb::GrantScope::Agent as i32;
        g.revoked_unix_ms = NOW - 60_000;
        g.revoked_by = "cert:bob".into();
        g.note = "done\u{7}".into();
        let s = grant_summary(&g, NOW);
        assert!(s.starts_with("5: agent claude-code on web-1"), "{s}");
        assert!(
            s.contains("revoked by cert:bob at ") && s.contains("(1m ago)"),
            "{s}"
        );
        assert!(s.ends_with("note: done\\u{7}"), "{s}");
    }

    #[test]
    fn states_and_table() {
        let live = grant();
        let mut expired = grant();
        expired.id = 6;
        expired.expires_unix_ms = NOW - 5_000;
        let mut revoked = grant();
        revoked.id = 7;
        revoked.revoked_unix_ms = NOW - 2_000;
        assert_eq!(grant_state(&live, NOW), "live");
        assert_eq!(grant_state(&expired, NOW), "expired");
        assert_eq!(grant_state(&revoked, NOW), "revoked");
        let s = render_list(&[live, expired, revoked], true, NOW);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4, "{s}");
        assert!(lines[0].starts_with("ID  REQUEST  HOST"), "{s}");
        assert!(lines[1].contains("in 1h 59m 59s"), "{s}");
        assert!(lines[2].contains("expired 5s ago"), "{s}");
        assert!(lines[3].contains("revoked 2s ago"), "{s}");
        assert_eq!(render_list(&[], false, NOW), "no live grants\n");
    }

    #[test]
    fn json_has_names_and_times() {
        let v = grant_json(&grant());
        assert_eq!(v["scope"], "session");
        assert_eq!(v["expires_unix_ms"], NOW + 7_199_000);
        assert_eq!(v["expires"], "2026-05-01T13:59:59.000Z");
        assert!(v["revoked"].is_null());
    }
}
