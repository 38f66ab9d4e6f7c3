//! Tests of the daemon's gRPC service, against the fake daemon in [`crate::api::testing`]
//! (a file of their own, so that the service does not import its own test double).
use super::*;
use crate::api::testing::{FakeDaemon, TestServer};
use crate::api::{client, pb};
use tonic::Code;

fn register_req(agent: &str) -> pb::RegisterSessionRequest {
    pb::RegisterSessionRequest {
        agent: agent.into(),
        reason: "testing".into(),
        command: vec!["agent".into(), "--flag".into()],
        cwd: "/work".into(),
        confine: false,
        scope: vec![],
        exit_report_key: vec![],
    }
}

#[tokio::test]
async fn register_uses_the_kernel_pid_and_refuses_relabeling() {
    let fake = FakeDaemon::new(true);
    let server = TestServer::start(fake.clone()).await;
    let mut c = client::connect(&server.socket).await.unwrap();

    let s = c
        .register_session(register_req("claude-code"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.root_pid, std::process::id());
    assert_eq!(s.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(
        (s.agent.as_str(), s.reason.as_str(), s.source.as_str()),
        ("claude-code", "testing", "wrapper")
    );
    let calls = fake.registered();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].caller.pid, std::process::id());
    assert_eq!(calls[0].caller.gid, nix::unistd::getegid().as_raw());
    assert_eq!(calls[0].command, ["agent", "--flag"]);

    // Same process again: the (fake) daemon refuses, mapped to ALREADY_EXISTS.
    let err = c
        .register_session(register_req("innocent-tool"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn register_validates_input_before_the_daemon_sees_it() {
    let fake = FakeDaemon::new(true);
    let server = TestServer::start(fake.clone()).await;
    let mut c = client::connect(&server.socket).await.unwrap();
    let err = c
        .register_session(register_req("evil\u{1b}[2J"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut req = register_req("ok");
    req.reason = "line\nbreak".into();
    assert_eq!(
        c.register_session(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(fake.registered().is_empty());
    // Empty reason means none.
    let mut req = register_req("ok");
    req.reason.clear();
    c.register_session(req).await.unwrap();
    assert_eq!(fake.registered()[0].reason, None);
    server.stop().await;
}

#[tokio::test]
async fn non_admin_is_denied_the_admin_calls_but_may_register() {
    let fake = FakeDaemon::new(false);
    let server = TestServer::start(fake.clone()).await;
    let mut c = client::connect(&server.socket).await.unwrap();
    let denied = |r: Result<_, Status>| match r {
        Err(s) => s.code(),
        Ok(_) => Code::Ok,
    };
    assert_eq!(
        denied(
            c.list_sessions(pb::ListSessionsRequest {
                include_ended: true
            })
            .await
            .map(|_| ())
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(c.get_stats(pb::GetStatsRequest {}).await.map(|_| ())),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(
            c.subscribe_events(pb::SubscribeEventsRequest {})
                .await
                .map(|_| ())
        ),
        Code::PermissionDenied
    );
    c.register_session(register_req("codex")).await.unwrap();

    fake.set_admin(true);
    let list = c
        .list_sessions(pb::ListSessionsRequest {
            include_ended: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].agent, "codex");
    let stats = c
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.counters[0].name, "sessions");
    assert_eq!(stats.counters[0].value, 1);
    server.stop().await;
}

#[tokio::test]
async fn subscribe_streams_lines_and_survives_lag() {
    let fake = FakeDaemon::with_event_capacity(true, 4);
    let server = TestServer::start(fake.clone()).await;
    let mut c = client::connect(&server.socket).await.unwrap();
    let mut stream = c
        .subscribe_events(pb::SubscribeEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    // The handler subscribed before answering, so these are all delivered.
    for i in 0..3 {
        fake.publish(&format!("{{\"n\":{i}}}"));
    }
    for i in 0..3 {
        let rec = stream.message().await.unwrap().unwrap();
        assert_eq!(rec.json, format!("{{\"n\":{i}}}"));
    }

    // Overrun the 4-slot channel while nothing reads (current-thread runtime: the server
    // task cannot run in between): the oldest 6 are skipped and counted, the rest arrive.
    let lagged_before = subscriber_lagged_total();
    for i in 100..110 {
        fake.publish(&format!("{{\"n\":{i}}}"));
    }
    for i in 106..110 {
        let rec = stream.message().await.unwrap().unwrap();
        assert_eq!(rec.json, format!("{{\"n\":{i}}}"));
    }
    assert!(subscriber_lagged_total() >= lagged_before + 6);
    fake.publish("{\"n\":\"after\"}");
    assert_eq!(
        stream.message().await.unwrap().unwrap().json,
        "{\"n\":\"after\"}"
    );
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn serve_replaces_stale_socket_and_refuses_live_or_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/confgate.sock");

    // A stale socket (bound, then its listener dropped) is replaced.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = TestServer::start_at(FakeDaemon::new(true), socket.clone(), 0o660).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    client::connect(&socket).await.unwrap();

    // While it runs, a second server must not steal the path.
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    let second = serve(&socket, 0o600, FakeDaemon::new(true), async {
        let _ = rx.await;
    })
    .await;
    assert!(
        matches!(second, Err(RpcError::SocketInUse { .. })),
        "{second:?}"
    );
    server.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");

    // A regular file in the way is never deleted.
    std::fs::write(&socket, b"precious").unwrap();
    let r = serve(&socket, 0o600, FakeDaemon::new(true), async {}).await;
    assert!(matches!(r, Err(RpcError::NotASocket { .. })), "{r:?}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
}

#[tokio::test]
async fn connect_to_missing_socket_says_daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("confgate.sock");
    let err = client::connect(&socket).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("is `confgate daemon` running? socket "),
        "{msg}"
    );
    assert!(msg.contains("No such file"), "{msg}");
}

#[test]
fn api_errors_map_to_grpc_codes() {
    let code = |e: ApiError| Status::from(e).code();
    assert_eq!(
        code(ApiError::InvalidArgument("x".into())),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ApiError::AlreadyInSession { pid: 1, session: 2 }),
        Code::AlreadyExists
    );
    assert_eq!(
        code(ApiError::PermissionDenied("x".into())),
        Code::PermissionDenied
    );
    assert_eq!(
        code(ApiError::FailedPrecondition("x".into())),
        Code::FailedPrecondition
    );
    assert_eq!(code(ApiError::Unavailable("x".into())), Code::Unavailable);
    assert_eq!(code(ApiError::Internal("x".into())), Code::Internal);
    assert_eq!(
        code(SessionError::Invalid("bad".into()).into()),
        Code::InvalidArgument
    );
    assert_eq!(code(SessionError::NotFound(3).into()), Code::Internal);
}
