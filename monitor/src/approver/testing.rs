//! What the tests of the service, its clients and the uplink file: one request builder, so
//! that a field added to the API is filled in one place.
use confgate_proto::v1 as pb;

use crate::os::clock::now_ms;

/// A request as a host files it when the agent `codex` of session `session` holds a write
/// of `/etc/app.conf` under the rule `etc`: filed now, due in two minutes, denied if
/// nobody answers. Tests change the fields they are about.
pub(crate) fn submit_request(host_request_id: u64, session: u64) -> pb::SubmitRequest {
    let now = now_ms();
    pb::SubmitRequest {
        host_request_id,
        context: Some(pb::RequestContext {
            session_id: session,
            agent: "codex".into(),
            uid: 1000,
            user: "dev".into(),
            pid: 4242,
            command: vec!["sh".into(), "-c".into(), "echo x > /etc/app.conf".into()],
            ancestry: vec![pb::ProcessInfo {
                pid: 4242,
                comm: "sh".into(),
                argv: vec!["sh".into()],
            }],
            path: "/etc/app.conf".into(),
            operations: vec!["write".into()],
            reason: "update the port".into(),
            rule: "etc".into(),
            mode: "hold".into(),
            fail_verdict: "deny".into(),
            cwd: "/root".into(),
            ..pb::RequestContext::default()
        }),
        created_unix_ms: now,
        deadline_unix_ms: now + 120_000,
    }
}

/// The context of a request built by [`submit_request`].
pub(crate) fn context(r: &mut pb::SubmitRequest) -> &mut pb::RequestContext {
    r.context.get_or_insert_with(Default::default)
}
