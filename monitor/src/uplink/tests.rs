//! Uplink tests against a minimal in-test approval service (a tonic server implementing
//! the generated `Approver` trait over a Unix socket). The end-to-end test against the real
//! service lives with the approval service.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use confgate_proto::v1::approver_server::{Approver, ApproverServer};
use confgate_proto::v1::*;

use super::*;
use crate::store::STORE_FILE;

/// State of the fake service, shared across its restarts.
#[derive(Default)]
struct FakeState {
    /// Submit calls in arrival order (resubmissions included).
    submit_calls: Vec<u64>,
    /// Distinct requests by host_request_id.
    requests: BTreeMap<u64, SubmitRequest>,
    reports: BTreeMap<u64, ReportRequest>,
    /// Every update ever published, in seq order.
    updates: Vec<HostUpdate>,
    /// `after_seq` of every Updates call.
    after_seqs: Vec<u64>,
    /// Answer Submit with this error instead.
    reject_submits: Option<tonic::Code>,
}

struct Fake {
    state: Mutex<FakeState>,
    live: broadcast::Sender<HostUpdate>,
    /// true: the service is "down" (streams end, calls fail).
    down: watch::Sender<bool>,
    /// false: Submit calls wait (an acknowledgement that takes its time) until it is true.
    acks: watch::Sender<bool>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::default(),
            live: broadcast::channel(64).0,
            down: watch::channel(false).0,
            acks: watch::channel(true).0,
        })
    }

    fn publish_decision(&self, host_request_id: u64) -> u64 {
        let mut st = self.state.lock().unwrap();
        let seq = st.updates.len() as u64 + 1;
        let u = HostUpdate {
            seq,
            host_request_id,
            update: Some(host_update::Update::Decision(Decision {
                request_id: 1000 + host_request_id,
                state: RequestState::Denied as i32,
                decided_by: "cert:alice".into(),
                ..Decision::default()
            })),
        };
        st.updates.push(u.clone());
        let _ = self.live.send(u);
        seq
    }

    fn check_up(&self) -> Result<(), Status> {
        if *self.down.borrow() {
            Err(Status::unavailable("fake service is down"))
        } else {
            Ok(())
        }
    }
}

/// The fake as a tonic service (a local type, for the orphan rule).
struct FakeSvc(Arc<Fake>);

impl std::ops::Deref for FakeSvc {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Approver for FakeSvc {
    async fn submit(&self, r: Request<SubmitRequest>) -> Result<Response<ApprovalRequest>, Status> {
        self.check_up()?;
        let req = r.into_inner();
        self.state
            .lock()
            .unwrap()
            .submit_calls
            .push(req.host_request_id);
        let mut acks = self.acks.subscribe();
        while !*acks.borrow_and_update() {
            acks.changed()
                .await
                .map_err(|_| Status::unavailable("fake gone"))?;
        }
        let mut st = self.state.lock().unwrap();
        if let Some(code) = st.reject_submits {
            return Err(Status::new(code, "rejected by the fake"));
        }
        let id = req.host_request_id;
        st.requests.entry(id).or_insert(req.clone());
        Ok(Response::new(ApprovalRequest {
            id: 1000 + id,
            host_request_id: id,
            context: req.context,
            state: RequestState::Pending as i32,
            ..ApprovalRequest::default()
        }))
    }

    async fn report(&self, r: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        self.check_up()?;
        let req = r.into_inner();
        self.state
            .lock()
            .unwrap()
            .reports
            .entry(req.host_seq)
            .or_insert(req);
        Ok(Response::new(ReportResponse {}))
    }

    type UpdatesStream = BoxStream<HostUpdate>;
    async fn updates(
        &self,
        r: Request<UpdatesRequest>,
    ) -> Result<Response<Self::UpdatesStream>, Status> {
        self.check_up()?;
        let after = r.into_inner().after_seq;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut live = self.live.subscribe();
        let mut down = self.down.subscribe();
        let replay: Vec<HostUpdate> = {
            let mut st = self.state.lock().unwrap();
            st.after_seqs.push(after);
            st.updates
                .iter()
                .filter(|u| u.seq > after)
                .cloned()
                .collect()
        };
        tokio::spawn(async move {
            let mut last = after;
            for u in replay {
                last = u.seq;
                if tx.send(Ok(u)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    u = live.recv() => match u {
                        Ok(u) if u.seq > last => {
                            last = u.seq;
                            if tx.send(Ok(u)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    changed = down.changed() => {
                        let is_down = changed.is_err() || *down.borrow_and_update();
                        if is_down {
                            let _ = tx.send(Err(Status::unavailable("going down"))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_requests(
        &self,
        _: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchRequestsStream = BoxStream<ApprovalRequest>;
    async fn watch_requests(
        &self,
        _: Request<WatchRequestsRequest>,
    ) -> Result<Response<Self::WatchRequestsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_request(
        &self,
        _: Request<GetRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn decide(&self, _: Request<DecideRequest>) -> Result<Response<ApprovalRequest>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_grants(
        &self,
        _: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn revoke_grant(
        &self,
        _: Request<RevokeGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type AuditLogStream = BoxStream<LedgerEntry>;
    async fn audit_log(
        &self,
        _: Request<AuditLogRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn who_am_i(&self, _: Request<WhoAmIRequest>) -> Result<Response<Identity>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// One running instance of the fake on `socket`.
struct Server {
    join: tokio::task::JoinHandle<()>,
    fake: Arc<Fake>,
    socket: PathBuf,
}

impl Server {
    fn start(fake: &Arc<Fake>, socket: &Path) -> Server {
        let _ = std::fs::remove_file(socket);
        fake.down.send_replace(false);
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let svc = ApproverServer::new(FakeSvc(Arc::clone(fake)));
        let join = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Server {
            join,
            fake: Arc::clone(fake),
            socket: socket.to_owned(),
        }
    }

    /// The service dies: streams end, calls fail, new connections are refused.
    async fn kill(self) {
        self.fake.down.send_replace(true);
        self.join.abort();
        let _ = self.join.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn options() -> UplinkOptions {
    UplinkOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        rpc_timeout: Duration::from_secs(5),
        updates_capacity: 1,
        ..UplinkOptions::default()
    }
}

fn client(socket: &Path) -> ClientConfig {
    ClientConfig {
        endpoint: format!("unix:{}", socket.display()),
        ..ClientConfig::default()
    }
}

fn request(id: u64) -> SubmitRequest {
    crate::approver::testing::request(id, 3)
        .path("/etc/hosts")
        .created(1)
        .deadline(2)
        .build()
}

fn counter(h: &UplinkHandle, name: &str) -> u64 {
    h.counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Polls `cond` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn spooled_while_unreachable_survives_a_restart_and_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join(STORE_FILE);
    let socket = dir.path().join("approver.sock");
    {
        let store = Store::open(&store_path).unwrap();
        let (h, _rx) = Uplink::start_with(client(&socket), store, "web-1".into(), options());
        // No service: both calls return after the spool write.
        let started = std::time::Instant::now();
        h.submit(request(1)).await.unwrap();
        let seq = h
            .report("fallback_verdict", serde_json::json!({"verdict": "deny"}))
            .await
            .unwrap();
        assert_eq!(seq, 1);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!h.connected());
        eventually("connect failures", || {
            counter(&h, "uplink_connect_failures") >= 2
        })
        .await;
        assert_eq!(counter(&h, "uplink_spooled"), 2);
        eventually("both pending", || counter(&h, "uplink_spool_pending") == 2).await;
        assert!(h.submit(SubmitRequest::default()).await.is_err());
        h.shutdown().await;
    }
    // The daemon restarts (store reopened) and the service is up now.
    let store = Store::open(&store_path).unwrap();
    assert_eq!(spool::Spool::new(store.clone()).load().unwrap().len(), 2);
    let fake = Fake::new();
    let server = Server::start(&fake, &socket);
    let (h, _rx) = Uplink::start_with(client(&socket), store.clone(), "web-1".into(), options());
    eventually("spool drained", || {
        counter(&h, "uplink_spool_pending") == 0 && h.connected()
    })
    .await;
    {
        let st = fake.state.lock().unwrap();
        let req = &st.requests[&1];
        // The host name is filled in for requests that have none.
        assert_eq!(req.context.as_ref().unwrap().host, "web-1");
        assert_eq!(req.context.as_ref().unwrap().path, "/etc/hosts");
        assert_eq!(st.reports[&1].kind, "fallback_verdict");
        assert_eq!(st.reports[&1].json, r#"{"verdict":"deny"}"#);
    }
    // Entries from an earlier run count as resubmissions.
    assert_eq!(counter(&h, "uplink_resubmitted"), 2);
    assert_eq!(counter(&h, "uplink_reports_sent"), 1);
    assert!(spool::Spool::new(store).load().unwrap().is_empty());
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn resends_after_the_service_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("approver.sock");
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let fake = Fake::new();
    let server = Server::start(&fake, &socket);
    let (h, _rx) = Uplink::start_with(client(&socket), store.clone(), "web-1".into(), options());
    eventually("connected", || h.connected()).await;
    h.submit(request(1)).await.unwrap();
    eventually("first request acknowledged", || {
        counter(&h, "uplink_submitted") == 1
    })
    .await;
    assert!(fake.state.lock().unwrap().requests.contains_key(&1));

    server.kill().await;
    eventually("disconnected", || !h.connected()).await;
    h.submit(request(2)).await.unwrap();
    h.report("change", serde_json::json!({"path": "/etc/hosts"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fake.state.lock().unwrap().requests.contains_key(&2));
    assert_eq!(spool::Spool::new(store.clone()).load().unwrap().len(), 2);

    let server = Server::start(&fake, &socket);
    eventually("resent", || {
        let st = fake.state.lock().unwrap();
        st.requests.contains_key(&2) && st.reports.contains_key(&1)
    })
    .await;
    eventually("spool drained", || counter(&h, "uplink_spool_pending") == 0).await;
    assert!(spool::Spool::new(store).load().unwrap().is_empty());
    assert!(counter(&h, "uplink_reconnects") >= 1);
    assert!(counter(&h, "uplink_connect_failures") >= 1);
    // Request 1 was acknowledged before the outage and is not sent again.
    assert_eq!(
        fake.state
            .lock()
            .unwrap()
            .submit_calls
            .iter()
            .filter(|id| **id == 1)
            .count(),
        1
    );
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn update_cursor_is_persisted_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join(STORE_FILE);
    let socket = dir.path().join("approver.sock");
    let fake = Fake::new();
    for id in [10, 11, 12] {
        fake.publish_decision(id);
    }
    let server = Server::start(&fake, &socket);
    {
        let store = Store::open(&store_path).unwrap();
        let (h, mut rx) =
            Uplink::start_with(client(&socket), store.clone(), "web-1".into(), options());
        for (seq, id) in [(1, 10), (2, 11), (3, 12)] {
            match rx.recv().await.unwrap() {
                UplinkUpdate::Decision {
                    seq: s,
                    host_request_id,
                    decision,
                } => {
                    assert_eq!((s, host_request_id), (seq, id));
                    assert_eq!(decision.request_id, 1000 + id);
                }
                other => panic!("{other:?}"),
            }
        }
        // A live update after the replay.
        fake.publish_decision(13);
        assert_eq!(rx.recv().await.unwrap().seq(), 4);
        eventually("cursor stored", || {
            spool::Spool::new(store.clone()).cursor().unwrap() == 4
        })
        .await;
        assert_eq!(counter(&h, "uplink_updates_applied"), 4);
        h.shutdown().await;
    }
    fake.publish_decision(14);
    let store = Store::open(&store_path).unwrap();
    let (h, mut rx) = Uplink::start_with(client(&socket), store, "web-1".into(), options());
    // Only what came after the stored cursor.
    assert_eq!(rx.recv().await.unwrap().seq(), 5);
    assert_eq!(fake.state.lock().unwrap().after_seqs, [0, 4]);
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn updates_resume_from_the_cursor_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("approver.sock");
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let fake = Fake::new();
    let server = Server::start(&fake, &socket);
    let (h, mut rx) = Uplink::start_with(client(&socket), store, "web-1".into(), options());
    fake.publish_decision(1);
    assert_eq!(rx.recv().await.unwrap().seq(), 1);
    server.kill().await;
    eventually("disconnected", || !h.connected()).await;
    // Decided while this host was away.
    fake.publish_decision(2);
    let server = Server::start(&fake, &socket);
    assert_eq!(rx.recv().await.unwrap().seq(), 2);
    eventually("resubscribed", || {
        fake.state.lock().unwrap().after_seqs.len() == 2
    })
    .await;
    assert_eq!(fake.state.lock().unwrap().after_seqs, [0, 1]);
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn rejected_messages_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("approver.sock");
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let fake = Fake::new();
    fake.state.lock().unwrap().reject_submits = Some(tonic::Code::InvalidArgument);
    let server = Server::start(&fake, &socket);
    let (h, _rx) = Uplink::start_with(client(&socket), store.clone(), "web-1".into(), options());
    h.submit(request(5)).await.unwrap();
    eventually("rejected", || counter(&h, "uplink_rejected") == 1).await;
    assert!(spool::Spool::new(store.clone()).load().unwrap().is_empty());

    // A transient error keeps the message and retries it.
    fake.state.lock().unwrap().reject_submits = Some(tonic::Code::Unavailable);
    h.submit(request(6)).await.unwrap();
    eventually("retried", || {
        fake.state
            .lock()
            .unwrap()
            .submit_calls
            .iter()
            .filter(|id| **id == 6)
            .count()
            >= 2
    })
    .await;
    assert!(counter(&h, "uplink_send_errors") >= 1);
    assert_eq!(spool::Spool::new(store.clone()).load().unwrap().len(), 1);
    fake.state.lock().unwrap().reject_submits = None;
    eventually("accepted", || {
        fake.state.lock().unwrap().requests.contains_key(&6)
    })
    .await;
    eventually("spool drained", || counter(&h, "uplink_spool_pending") == 0).await;
    assert!(counter(&h, "uplink_resubmitted") >= 1);
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn decisions_are_delivered_while_a_submit_awaits_its_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("approver.sock");
    let fake = Fake::new();
    fake.acks.send_replace(false);
    let server = Server::start(&fake, &socket);
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let (h, mut rx) = Uplink::start_with(client(&socket), store, "web-1".into(), options());
    eventually("connected", || h.connected()).await;
    h.submit(request(1)).await.unwrap();
    h.submit(request(2)).await.unwrap();
    eventually("both submits reached the service", || {
        fake.state.lock().unwrap().submit_calls.len() == 2
    })
    .await;
    // Neither is acknowledged yet, and the decision of the first still comes through.
    fake.publish_decision(1);
    let u = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("decision delivered while the submits wait")
        .unwrap();
    assert_eq!(u.seq(), 1);
    assert_eq!(counter(&h, "uplink_submitted"), 0);
    assert_eq!(counter(&h, "uplink_spool_pending"), 2);
    fake.acks.send_replace(true);
    eventually("acknowledged", || {
        counter(&h, "uplink_submitted") == 2 && counter(&h, "uplink_spool_pending") == 0
    })
    .await;
    h.shutdown().await;
    server.kill().await;
}

#[tokio::test]
async fn submit_with_writes_the_callers_record_in_the_spool_transaction() {
    use crate::store::RecordTable;
    const MINE: RecordTable<String> = RecordTable::new("test_mine");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let (h, _rx) = Uplink::start_with(
        client(&dir.path().join("none.sock")),
        store.clone(),
        "h".into(),
        options(),
    );
    // Without an id: refused, and nothing the closure wrote is kept.
    let refused = h
        .submit_with(|tx| {
            tx.put(MINE, 1, &"lost".to_owned())?;
            Ok(SubmitRequest::default())
        })
        .await;
    assert!(
        matches!(refused, Err(UplinkError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(store.get(MINE, 1).unwrap(), None);
    assert_eq!(counter(&h, "uplink_spooled"), 0);
    // With one: the caller's record and the spool entry are committed together (visible
    // at once, durable once synced).
    let (id, unsynced) = h
        .submit_with(|tx| {
            let id = tx.next_id("test_mine")?;
            tx.put(MINE, id, &"kept".to_owned())?;
            Ok(request(id))
        })
        .await
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(store.get(MINE, 1).unwrap().as_deref(), Some("kept"));
    h.sync(unsynced).await.unwrap();
    let spooled = spool::Spool::new(store.clone()).load().unwrap();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].1.submit_request().unwrap().host_request_id, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn report_kind_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let (h, _rx) = Uplink::start_with(
        client(&dir.path().join("none.sock")),
        store,
        "h".into(),
        options(),
    );
    for bad in ["", "two words", "new\nline", &"k".repeat(65)] {
        assert!(
            matches!(
                h.report(bad, serde_json::json!({})).await,
                Err(UplinkError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(counter(&h, "uplink_spooled"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn reconnects_quickly_while_a_request_awaits_its_decision() {
    // Issue 21: an approval given while the host was reconnecting waited for the next
    // retry, up to the 10 s backoff. With a request awaiting its decision, attempts come
    // at most `awaiting_max_backoff` apart.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("approver.sock");
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let opts = UplinkOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(30),
        awaiting_max_backoff: Duration::from_millis(200),
        ..options()
    };
    let (h, _rx) = Uplink::start_with(client(&socket), store, "web-1".into(), opts);
    let mut r = request(1);
    r.deadline_unix_ms = crate::os::clock::now_ms() + 120_000;
    h.submit(r).await.unwrap();
    // Enough failures that the plain backoff would now wait 2.5 s or more.
    eventually("connect failures", || {
        counter(&h, "uplink_connect_failures") >= 9
    })
    .await;
    let fake = Fake::new();
    let server = Server::start(&fake, &socket);
    let started = std::time::Instant::now();
    eventually("connected", || h.connected()).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "reconnected after {:?}",
        started.elapsed()
    );
    h.shutdown().await;
    server.kill().await;
}
