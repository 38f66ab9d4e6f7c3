//! Scenario 13: confgate for a fleet (issue 19).
//!
//! - **The approval service under 200 hosts.** 200 simulated hosts, in-process gRPC
//!   clients each with its own certificate (`approver init-ca --host` × 200), file requests
//!   over mutual TLS, one outstanding request per host, as a daemon's uplink does; an
//!   auto-approver (root, on the first service's Unix socket, the real `WatchRequests` /
//!   `Decide` client) approves each at once, up to 64 decisions under way. Measured per host request: **Submit → its
//!   decision on the host's `Updates` stream**; requests/s is the decisions received over
//!   the run's wall time. Two stores side by side in each round, each on a fresh store:
//!   one service on **redb** (the embedded default, one process) and **two replicas on one
//!   PostgreSQL** (hosts split between them, the approver on the first: half of the
//!   decisions cross replicas through `LISTEN/NOTIFY`).
//! - **Events to NATS JetStream from one host.** The daemon's publisher (`monitor::nats::
//!   Sink`: the on-disk buffer, its writer thread, the acknowledged publisher) against a
//!   real nats-server: N event-sized messages offered as fast as the acknowledgements
//!   allow (at most 8192 unacknowledged, half the publisher's channel, so none is dropped
//!   for a full channel); events/s is N over the time until JetStream acknowledged the
//!   last, and the stream is checked to hold exactly N. Drops must be 0.
//!
//! Measured without a daemon (the off rounds): the service and the publisher are what is
//! measured. PostgreSQL and nats-server come from scripts/bootstrap.sh; without them the
//! run fails (a benchmark that quietly measured less would be a silent pass).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use confgate_proto::v1 as pb;
use e2e::nats::{NatsServer, message_count};
use e2e::service::ApprovalService;
use monitor::approver::client::{ClientConfig, connect};
use monitor::approver::pg::cluster::TestCluster;
use monitor::nats::{NatsConfig, Record, Sink};
use serde_json::{Value, json};

use super::auto_approver::AutoApprover;
use super::scenario::{Cx, Daemon, Mode, Row, Scenario};
use super::stats::Summary;

/// Simulated hosts.
const HOSTS: usize = 200;
/// Decisions the auto-approver makes at once.
const APPROVER_INFLIGHT: usize = 64;
/// Unacknowledged messages the NATS run allows itself (the publisher's channel holds
/// 16384).
const NATS_WINDOW: u64 = 8192;

/// One store's figures in one round.
#[derive(Clone, Debug, Default)]
struct Run {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// p99 of the hosts on the approver's replica, and of those on the other one.
    p99_local_ms: f64,
    p99_cross_ms: f64,
    decided: u64,
    approved: u64,
    errors: u64,
}

#[derive(Default)]
pub struct Fleet {
    dir: Option<tempfile::TempDir>,
    pg: Option<TestCluster>,
    nats: Option<NatsServer>,
    /// Per store ("redb", "postgres"), one per round.
    runs: HashMap<&'static str, Vec<Run>>,
    /// NATS: events/s per round, and drops over every round.
    nats_rate: Vec<f64>,
    nats_dropped: u64,
    nats_events: u64,
    problem: Option<String>,
}

impl Fleet {
    fn secs(cx: &Cx) -> u64 {
        if cx.plan.quick { 3 } else { 10 }
    }

    fn nats_events(cx: &Cx) -> u64 {
        if cx.plan.quick { 20_000 } else { 100_000 }
    }

    fn tls(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map_or_else(PathBuf::new, |d| d.path().join("tls"))
    }

    /// Certificates, the PostgreSQL cluster and nats-server, once.
    fn prepare(&mut self, cx: &Cx) -> anyhow::Result<()> {
        if self.dir.is_some() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let mut c = std::process::Command::new(&cx.confgate);
        c.args(["approver", "init-ca", "--dir"])
            .arg(dir.path().join("tls"))
            .args(["--approver", "bench"]);
        for i in 0..HOSTS {
            c.args(["--host", &host_name(i)]);
        }
        let o = c.output().context("confgate approver init-ca")?;
        ensure!(
            o.status.success(),
            "init-ca: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.pg = Some(
            TestCluster::start()
                .map_err(|why| anyhow::anyhow!("scenario 13 needs PostgreSQL: {why}"))?,
        );
        self.nats = Some(
            NatsServer::start()
                .map_err(|why| anyhow::anyhow!("scenario 13 needs nats-server: {why}"))?,
        );
        self.dir = Some(dir);
        Ok(())
    }

    /// One store's run: its services, the approver, the hosts.
    fn measure_store(&self, cx: &Cx, store: &'static str, round: usize) -> anyhow::Result<Run> {
        let tls = self.tls();
        let services: Vec<ApprovalService> = match store {
            "redb" => vec![ApprovalService::replica(&tls, "{dir}/approver.redb")],
            _ => {
                let pg = self.pg.as_ref().context("no PostgreSQL")?;
                let url = pg
                    .create_db(&format!("fleet_r{round}"))
                    .map_err(|e| anyhow::anyhow!("createdb: {e}"))?;
                let a = ApprovalService::replica(&tls, &url);
                let b = ApprovalService::replica(&tls, &url);
                vec![a, b]
            }
        };
        let socket = services[0]
            .endpoint
            .strip_prefix("unix:")
            .context("the service's Unix endpoint")?
            .to_owned();
        let approver = AutoApprover::start_with(Path::new(&socket), APPROVER_INFLIGHT)?;
        let endpoints: Vec<String> = services.iter().filter_map(|s| s.https.clone()).collect();
        let hosts = run_hosts(&tls, &endpoints, Duration::from_secs(Self::secs(cx)));
        let approved = approver.stop()?;
        drop(services);
        let (by_replica, errors, wall) = hosts?;
        let rtts: Vec<f64> = by_replica.concat();
        let mut run = percentiles(&rtts);
        // Hosts on the approver's replica, and on the other (their decisions cross).
        run.p99_local_ms = super::stats::percentiles(&by_replica[0]).1;
        run.p99_cross_ms = by_replica
            .get(1)
            .map_or(f64::NAN, |v| super::stats::percentiles(v).1);
        run.decided = rtts.len() as u64;
        run.requests_per_sec = rtts.len() as f64 / wall.as_secs_f64();
        run.approved = approved;
        run.errors = errors;
        Ok(run)
    }

    /// The NATS run of one round: events/s, drops.
    fn measure_nats(&self, cx: &Cx, round: usize) -> anyhow::Result<(f64, u64)> {
        let nats = self.nats.as_ref().context("no nats-server")?;
        let dir = self.dir.as_ref().context("not prepared")?;
        let n = Self::nats_events(cx);
        let stream = format!("BENCH_R{round}");
        let mut cfg = NatsConfig::with_names(&format!("bench.r{round}"), &stream);
        cfg.servers = vec![nats.url()];
        cfg.buffer_dir = Some(dir.path().join(format!("nats-buffer-{round}")));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (secs, dropped) = rt.block_on(async {
            let sink = Sink::start(&cfg, dir.path(), Arc::new(|_| {}))?;
            let c = sink.counters().clone();
            let payload = sample_event();
            let t0 = Instant::now();
            for i in 0..n {
                while i.saturating_sub(c.acked.load(Ordering::Relaxed)) >= NATS_WINDOW {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                sink.send(Record {
                    subject: format!("bench.r{round}.bench-host.file_write"),
                    id: format!("bench-host:r{round}:{i}"),
                    payload: payload.clone(),
                });
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while c.acked.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed) < n {
                ensure!(
                    Instant::now() < deadline,
                    "NATS: {} of {n} acknowledged after 120 s",
                    c.acked.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let secs = t0.elapsed().as_secs_f64();
            let dropped = c.dropped.load(Ordering::Relaxed);
            sink.close();
            anyhow::Ok((secs, dropped))
        })?;
        let url = nats.url();
        let held = std::thread::spawn(move || message_count(&url, &stream))
            .join()
            .map_err(|_| anyhow::anyhow!("reading the stream panicked"))?;
        ensure!(
            held + dropped == n,
            "NATS: the stream holds {held} of {n} messages ({dropped} dropped)"
        );
        Ok((n as f64 / secs, dropped))
    }

    fn summary(&self, store: &str, f: fn(&Run) -> f64) -> Summary {
        Summary::of(
            self.runs
                .get(store)
                .map_or_else(Vec::new, |v| v.iter().map(f).collect()),
        )
    }
}

fn host_name(i: usize) -> String {
    format!("fleet-{i:03}")
}

/// An event line of the size the daemon publishes (a file write by a session).
fn sample_event() -> Vec<u8> {
    json!({
        "schema": 4, "id": "bench-host:0:1", "host": "bench-host",
        "boot_id": "5f0c2c8e-2b7a-4f0e-9d4e-0d7a1c3b9e21", "kind": "file_write",
        "time": "2026-12-07T22:00:00.000000000Z", "path": "/etc/app/settings.conf",
        "pid": 4242, "tid": 4242, "uid": 0, "comm": "python3",
        "exe": "/usr/bin/python3.12", "session": {"id": 17, "agent": "claude"},
        "command": ["python3", "tools/apply.py", "--env", "prod"],
        "ancestry": [{"pid": 4200, "comm": "bash"}, {"pid": 4100, "comm": "claude"}],
        "flags": "O_WRONLY|O_TRUNC", "bytes": 512, "result": 0,
        "content_sha256": "3b9f0a7c2e1d4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c",
    })
    .to_string()
    .into_bytes()
}

fn percentiles(ms: &[f64]) -> Run {
    let (p50_ms, p99_ms) = super::stats::percentiles(ms);
    Run {
        p50_ms,
        p99_ms,
        ..Run::default()
    }
}

/// The hosts, spread over `endpoints`, for `run_for`: round trips (ms) of the requests
/// decided in that time per endpoint its hosts used, failed calls, and the wall time.
fn run_hosts(
    tls: &Path,
    endpoints: &[String],
    run_for: Duration,
) -> anyhow::Result<(Vec<Vec<f64>>, u64, Duration)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let errors = Arc::new(AtomicU64::new(0));
        // Every host connects and opens its stream first; then all start together.
        let mut hosts = Vec::with_capacity(HOSTS);
        for i in 0..HOSTS {
            let name = host_name(i);
            let cfg = ClientConfig {
                endpoint: endpoints[i % endpoints.len()].clone(),
                ca: Some(tls.join("ca.pem")),
                cert: Some(tls.join(format!("host-{name}.pem"))),
                key: Some(tls.join(format!("host-{name}.key"))),
                ..ClientConfig::default()
            };
            let mut client = connect(&cfg)
                .await
                .with_context(|| format!("host {name} connecting"))?;
            let updates = client
                .updates(pb::UpdatesRequest::default())
                .await
                .with_context(|| format!("host {name}: Updates"))?
                .into_inner();
            hosts.push((name, client, updates));
        }
        let start = Instant::now();
        let end = start + run_for;
        let mut tasks = Vec::with_capacity(HOSTS);
        for (i, (name, mut client, mut updates)) in hosts.into_iter().enumerate() {
            let replica = i % endpoints.len();
            let errors = errors.clone();
            tasks.push(tokio::spawn(async move {
                let mut rtts = Vec::new();
                let mut k = 0u64;
                while Instant::now() < end {
                    k += 1;
                    let t0 = Instant::now();
                    let submitted = client
                        .submit(pb::SubmitRequest {
                            host_request_id: k,
                            context: Some(pb::RequestContext {
                                host: name.clone(),
                                session_id: 1,
                                agent: "bench".into(),
                                path: format!("/etc/fleet/{name}/f{k}.conf"),
                                operations: vec!["write".into()],
                                rule: "fleet".into(),
                                mode: "hold".into(),
                                fail_verdict: "deny".into(),
                                command: vec!["sh".into(), "-c".into(), "echo x > f".into()],
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await;
                    if submitted.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Its decision (updates of earlier requests, re-sent, are skipped).
                    loop {
                        match tokio::time::timeout(Duration::from_secs(30), updates.message()).await
                        {
                            Ok(Ok(Some(u))) if u.host_request_id == k => {
                                if matches!(u.update, Some(pb::host_update::Update::Decision(_)))
                                    && Instant::now() <= end
                                {
                                    rtts.push(t0.elapsed().as_secs_f64() * 1e3);
                                }
                                break;
                            }
                            Ok(Ok(Some(_))) => {}
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                return (replica, rtts);
                            }
                        }
                    }
                }
                (replica, rtts)
            }));
        }
        let mut by_replica = vec![Vec::new(); endpoints.len()];
        for t in tasks {
            let (replica, rtts) = t.await.context("a host task")?;
            by_replica[replica].extend(rtts);
        }
        Ok((by_replica, errors.load(Ordering::Relaxed), run_for))
    })
}

impl Scenario for Fleet {
    fn id(&self) -> u32 {
        13
    }

    fn key(&self) -> &'static str {
        "scenario13_fleet"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Off]
    }

    fn measure(
        &mut self,
        cx: &Cx,
        round: usize,
        _mode: Mode,
        _daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        if let Err(e) = self.prepare(cx) {
            self.problem = Some(format!("{e:#}"));
            return Err(e);
        }
        for store in ["redb", "postgres"] {
            let run = self
                .measure_store(cx, store, round)
                .with_context(|| format!("scenario 13, {store}"))?;
            eprintln!(
                "  scenario 13 ({store}): {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms \
                 (approver's replica {:.1}, other {:.1}), {} decided, {} errors",
                run.requests_per_sec,
                run.p50_ms,
                run.p99_ms,
                run.p99_local_ms,
                run.p99_cross_ms,
                run.decided,
                run.errors
            );
            self.runs.entry(store).or_default().push(run);
        }
        let (rate, dropped) = self.measure_nats(cx, round)?;
        eprintln!("  scenario 13 (NATS): {rate:.0} events/s acknowledged, {dropped} dropped");
        self.nats_rate.push(rate);
        self.nats_dropped += dropped;
        self.nats_events += Self::nats_events(cx);
        Ok(())
    }

    fn results(&self) -> Value {
        let store = |s: &str| {
            let runs = self.runs.get(s).cloned().unwrap_or_default();
            json!({
                "requests_per_sec": self.summary(s, |r| r.requests_per_sec),
                "round_trip_p50_ms": self.summary(s, |r| r.p50_ms),
                "round_trip_p99_ms": self.summary(s, |r| r.p99_ms),
                "round_trip_p99_ms_approvers_replica": self.summary(s, |r| r.p99_local_ms),
                "round_trip_p99_ms_other_replica": self.summary(s, |r| r.p99_cross_ms),
                "decided": runs.iter().map(|r| r.decided).sum::<u64>(),
                "approved": runs.iter().map(|r| r.approved).sum::<u64>(),
                "errors": runs.iter().map(|r| r.errors).sum::<u64>(),
            })
        };
        json!({
            "hosts": HOSTS,
            "redb_one_service": store("redb"),
            "postgres_two_replicas": store("postgres"),
            "nats": {
                "events_per_sec": Summary::of(self.nats_rate.clone()),
                "events": self.nats_events,
                "dropped": self.nats_dropped,
            },
            "problem": self.problem,
        })
    }

    fn rows(&self) -> Vec<Row> {
        let cell = |s: &str| {
            let rate = self.summary(s, |r| r.requests_per_sec);
            if rate.is_empty() {
                return String::new();
            }
            let mut out = format!(
                "{}; p50 {} / p99 {}",
                rate.show("req/s", 0),
                self.summary(s, |r| r.p50_ms).show("ms", 1),
                self.summary(s, |r| r.p99_ms).show("ms", 1)
            );
            let cross = self.summary(s, |r| r.p99_cross_ms);
            if cross.median.is_finite() {
                out.push_str(&format!(
                    " (p99 of hosts on the approver's replica {}, on the other {})",
                    self.summary(s, |r| r.p99_local_ms).show("ms", 1),
                    cross.show("ms", 1)
                ));
            }
            out
        };
        let ratio = {
            let (r, p) = (
                self.summary("redb", |r| r.requests_per_sec).median,
                self.summary("postgres", |r| r.requests_per_sec).median,
            );
            if r > 0.0 && p.is_finite() {
                format!("{:.2}", p / r)
            } else {
                String::new()
            }
        };
        let nats = Summary::of(self.nats_rate.clone());
        vec![
            Row {
                scenario: format!("13 fleet: {HOSTS} hosts, auto-approver"),
                measure: "requests/s and host round trip (Submit → decision on its Updates \
                          stream); off: redb, one service; on: PostgreSQL, two replicas; \
                          ratio: PostgreSQL / redb requests/s"
                    .into(),
                off: cell("redb"),
                on: cell("postgres"),
                ratio,
                ..Row::default()
            },
            Row {
                scenario: "13 NATS JetStream, one host's publisher".into(),
                measure: "events/s acknowledged (buffered, published, acked); events dropped"
                    .into(),
                on: format!(
                    "{}; {} of {} dropped",
                    nats.show("events/s", 0),
                    self.nats_dropped,
                    self.nats_events
                ),
                target: "0 dropped".into(),
                verdict: super::scenario::verdict(self.nats_dropped == 0 && !nats.is_empty()),
                ..Row::default()
            },
        ]
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.problem {
            anyhow::bail!("scenario 13: {p}");
        }
        for s in ["redb", "postgres"] {
            let runs = self.runs.get(s).map_or(&[][..], |v| v.as_slice());
            ensure!(
                runs.iter().all(|r| r.decided > 0),
                "scenario 13 ({s}): a round decided nothing"
            );
            ensure!(!runs.is_empty(), "scenario 13 ({s}): not measured");
        }
        ensure!(!self.nats_rate.is_empty(), "scenario 13: NATS not measured");
        Ok(())
    }
}
