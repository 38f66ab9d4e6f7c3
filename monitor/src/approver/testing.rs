//! What the tests of the service, its clients and the uplink share: one request builder, so
//! that a field added to the API is filled in one place, and one way to run the service in
//! process on a temporary Unix socket.
use std::path::Path;
use std::sync::Arc;

use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

use super::client::{ApproverChannel, ClientConfig, connect};
use super::config::ServiceConfig;
use super::{Server, SessionOracle};
use crate::os::clock::now_ms;

/// A client of the service, as [`connect`] returns it.
pub(crate) type Client = ApproverClient<ApproverChannel>;

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

/// A [`submit_request`] with the fields a test is about changed:
/// `request(1, 7).path("/etc/hosts").deadline(0).build()`.
pub(crate) fn request(host_request_id: u64, session: u64) -> RequestBuilder {
    RequestBuilder(submit_request(host_request_id, session))
}

/// See [`request`].
pub(crate) struct RequestBuilder(pb::SubmitRequest);

impl RequestBuilder {
    /// The host the request claims to come from.
    pub(crate) fn host(mut self, host: &str) -> Self {
        context(&mut self.0).host = host.into();
        self
    }

    pub(crate) fn path(mut self, path: &str) -> Self {
        context(&mut self.0).path = path.into();
        self
    }

    pub(crate) fn rule(mut self, rule: &str) -> Self {
        context(&mut self.0).rule = rule.into();
        self
    }

    /// The verdict if nobody answers in time (`deny`, `allow`).
    pub(crate) fn fail_verdict(mut self, verdict: &str) -> Self {
        context(&mut self.0).fail_verdict = verdict.into();
        self
    }

    /// When the request was filed (Unix ms; 0 lets the service fill it in).
    pub(crate) fn created(mut self, unix_ms: i64) -> Self {
        self.0.created_unix_ms = unix_ms;
        self
    }

    /// When the request is due (Unix ms; 0 means the service's default lifetime).
    pub(crate) fn deadline(mut self, unix_ms: i64) -> Self {
        self.0.deadline_unix_ms = unix_ms;
        self
    }

    pub(crate) fn build(self) -> pb::SubmitRequest {
        self.0
    }
}

/// A decision that approves request `id` with the defaults (note "fine").
pub(crate) fn approve(id: u64) -> pb::DecideRequest {
    pb::DecideRequest {
        id,
        approve: true,
        note: "fine".into(),
        ..Default::default()
    }
}

/// A decision that denies request `id` (note "no").
pub(crate) fn deny(id: u64) -> pb::DecideRequest {
    pb::DecideRequest {
        id,
        approve: false,
        note: "no".into(),
        ..Default::default()
    }
}

/// A service listening on `dir/approver.sock`, with its store and ledger under
/// `dir/state` and no tokens.
pub(crate) fn service_config(dir: &Path) -> ServiceConfig {
    ServiceConfig {
        listen: vec![format!("unix:{}", dir.join("approver.sock").display())],
        store: dir.join("state/approver.redb"),
        ledger: dir.join("state/ledger.jsonl"),
        ..ServiceConfig::default()
    }
}

/// A client of the service of [`service_config`]`(dir)`: root on its Unix socket, which
/// the service takes for the local host and an approver.
pub(crate) fn client_config(dir: &Path) -> ClientConfig {
    ClientConfig {
        endpoint: format!("unix:{}", dir.join("approver.sock").display()),
        ..ClientConfig::default()
    }
}

/// Starts the service of [`service_config`]`(dir)` in process and connects a client to it.
pub(crate) async fn start_in(dir: &Path) -> (Server, Client) {
    start(service_config(dir)).await
}

/// Starts the service of `cfg` in process and connects a client to its first listener,
/// which must be a Unix socket (as in [`service_config`]).
pub(crate) async fn start(cfg: ServiceConfig) -> (Server, Client) {
    start_with(cfg, None).await
}

/// [`start`] with a session oracle.
pub(crate) async fn start_with(
    cfg: ServiceConfig,
    oracle: Option<Arc<dyn SessionOracle>>,
) -> (Server, Client) {
    let endpoint = cfg.listen[0].clone();
    assert!(endpoint.starts_with("unix:"), "{endpoint}");
    let server = Server::start(cfg, oracle).await.unwrap();
    let client = connect(&ClientConfig {
        endpoint,
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    (server, client)
}
