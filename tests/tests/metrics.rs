//! End-to-end: the Prometheus endpoints (`[metrics] listen`) of a real daemon and of a
//! real `confgate approver serve`, scraped over HTTP and parsed with a Prometheus
//! text-format parser (`prometheus-parse`): names and types, the same values as
//! `confgate stats`, counters, gauges and histograms that move with a real approval.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::gate::{id_of, wait_child};
use e2e::service::{
    ApprovalService, Approver, free_port, gate_asking, remote_daemon, spawn_session,
};
use e2e::*;
use prometheus_parse::{Scrape, Value as PValue};

/// `GET path` on `port` (HTTP/1.1, one request): (status, headers lowercased, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response with headers");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, head.to_lowercase(), body.to_owned())
}

/// A scrape of `port`, parsed: metric name (with its labels) -> value.
struct Scraped {
    text: String,
    samples: BTreeMap<String, PValue>,
}

impl Scraped {
    fn of(port: u16) -> Scraped {
        let (status, head, text) = http_get(port, "/metrics", None);
        assert_eq!(status, 200, "{head}\n{text}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
        let mut samples = BTreeMap::new();
        for s in scrape.samples {
            assert!(s.metric.starts_with("confgate_"), "{}", s.metric);
            let key = if s.labels.is_empty() {
                s.metric.clone()
            } else {
                format!("{}{{{}}}", s.metric, s.labels)
            };
            assert!(
                samples.insert(key.clone(), s.value).is_none(),
                "{key} twice in\n{text}"
            );
        }
        Scraped { text, samples }
    }

    fn counter(&self, name: &str) -> f64 {
        match self.samples.get(name) {
            Some(PValue::Counter(v)) => *v,
            other => panic!("{name} is not a counter: {other:?}\n{}", self.text),
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.samples.get(name) {
            Some(PValue::Gauge(v)) => *v,
            other => panic!("{name} is not a gauge: {other:?}\n{}", self.text),
        }
    }

    /// Observations of histogram `name` (its `+Inf` bucket).
    fn observations(&self, name: &str) -> f64 {
        match self.samples.get(name) {
            Some(PValue::Histogram(b)) => b
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count)
                .expect("+Inf bucket"),
            other => panic!("{name} is not a histogram: {other:?}\n{}", self.text),
        }
    }
}

/// Polls scrapes of `port` until `pred` holds (15 s at most).
fn wait_scrape(port: u16, what: &str, pred: impl Fn(&Scraped) -> bool) -> Scraped {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = Scraped::of(port);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_and_service_endpoints_follow_a_real_approval() {
    if !require_root("daemon_and_service_endpoints_follow_a_real_approval") {
        return;
    }
    let svc_port = free_port();
    let svc = ApprovalService::start(
        "unix:{dir}/approver.sock",
        &format!("[metrics]\nlisten = \"127.0.0.1:{svc_port}\""),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svc.log().contains("metrics endpoint listening") {
        assert!(Instant::now() < deadline, "{}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = free_port();
    let ep = svc.endpoint.clone();
    let d = remote_daemon(format!("endpoint = {ep:?}"), move |w| {
        format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
            gate_asking(w, "20s")
        )
    });

    // Every value `confgate stats` shows is exported under its Prometheus name and type.
    let before = Scraped::of(port);
    let stats = d.cli_json(&["stats", "--json"]);
    let stats = stats.as_object().expect("stats object");
    let gauges: BTreeSet<&str> = [
        "sessions_live",
        "gate_grants_live",
        "gate_marks_placed",
        "gate_held_now",
        "gate_oldest_hold_seconds",
        "uplink_spool_pending",
        "uplink_connected",
    ]
    .into();
    for name in stats.keys() {
        if gauges.contains(name.as_str()) {
            before.gauge(&format!("confgate_{name}"));
        } else {
            before.counter(&format!("confgate_{name}_total"));
        }
    }
    for g in &gauges {
        assert!(stats.contains_key(*g), "{g} missing from confgate stats");
    }
    before.counter("confgate_kernel_ringbuf_drops_total");
    for h in [
        "confgate_gate_decision_seconds",
        "confgate_approval_round_trip_seconds",
        "confgate_event_pipeline_delay_seconds",
    ] {
        before.observations(h);
    }
    assert!(
        before
            .text
            .contains("confgate_build_info{version=\"0.1.0\",service=\"daemon\"} 1"),
        "{}",
        before.text
    );
    assert!(before.gauge("confgate_start_time_seconds") > 1.7e9);
    // The shipped alert rules name only metrics the daemon exports.
    let rules = std::fs::read_to_string(workspace().join("deploy/confgate.rules.yml")).unwrap();
    let families: BTreeSet<String> = before
        .samples
        .keys()
        .map(|k| k.split('{').next().unwrap().to_owned())
        .collect();
    for (i, _) in rules.match_indices("confgate_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let service_only = name.starts_with("confgate_approver_");
        assert!(
            service_only || families.contains(&name),
            "deploy/confgate.rules.yml names {name}, which the daemon does not export"
        );
    }

    // A session's write is held for an approver: the held gauge and the service's
    // pending gauge show it; the approval moves the counters and histograms.
    let f = d.watched.join("gated/app.conf");
    let child = spawn_session(&d, "echo approved > gated/app.conf", &[]);
    let approver = Approver::at(&d, &ep);
    let r = approver.wait_pending(&f);
    let held = wait_scrape(port, "the held write", |s| {
        s.gauge("confgate_gate_held_now") >= 1.0 && s.gauge("confgate_sessions_live") >= 1.0
    });
    assert_eq!(held.gauge("confgate_uplink_connected"), 1.0);
    let service = Scraped::of(svc_port);
    assert_eq!(service.counter("confgate_approver_submitted_total"), 1.0);
    assert_eq!(service.gauge("confgate_approver_requests_pending"), 1.0);
    assert!(
        service.text.contains("service=\"approver\""),
        "{}",
        service.text
    );
    assert!(
        !service.text.contains("histogram"),
        "the service exports no daemon histograms:\n{}",
        service.text
    );

    ok(&approver.run(&["approve", &id_of(&r), "--ttl", "1h"]));
    ok(&wait_child(child, Duration::from_secs(20)));
    let events_before = before.counter("confgate_events_emitted_total");
    // The write's event, not only the ledger records' (audit events count in
    // events_emitted too, without a pipeline delay).
    let delays_before = before.observations("confgate_event_pipeline_delay_seconds");
    let after = wait_scrape(port, "the approval and its events", |s| {
        s.counter("confgate_gate_approved_total") == 1.0
            && s.counter("confgate_events_emitted_total") > events_before
            && s.observations("confgate_event_pipeline_delay_seconds") > delays_before
    });
    assert_eq!(after.gauge("confgate_gate_held_now"), 0.0);
    assert_eq!(
        after.observations("confgate_approval_round_trip_seconds"),
        before.observations("confgate_approval_round_trip_seconds") + 1.0
    );
    assert!(
        after.observations("confgate_gate_decision_seconds")
            > before.observations("confgate_gate_decision_seconds")
    );
    // `confgate stats` reads the same values.
    assert_eq!(d.stat("gate_approved"), 1);
    let service = wait_scrape(svc_port, "the service's approval", |s| {
        s.counter("confgate_approver_approved_total") == 1.0
    });
    assert_eq!(service.gauge("confgate_approver_requests_pending"), 0.0);

    // OpenMetrics when the scraper asks for it; nothing but /metrics is served.
    let (status, head, body) = http_get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE confgate_gate_approved counter\n"),
        "{body}"
    );
    assert_eq!(http_get(port, "/", None).0, 404);
}

/// A configuration of a daemon in `dir` whose `[metrics]` is `metrics`.
fn config_in(dir: &std::path::Path, metrics: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("w")).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let text = format!(
        "detect = []\n[daemon]\nsocket = {:?}\nstate_dir = {:?}\nsupervise_socket = {:?}\n\
         [output]\nevents_file = {:?}\nstdout = \"off\"\n[watch]\npaths = [{:?}]\nproject_roots = []\n\
         [approval]\nlocal_socket = {:?}\n[metrics]\n{metrics}\n",
        p("d.sock"),
        p("state"),
        p("sup.sock"),
        p("events.ndjson"),
        p("w"),
        p("a.sock"),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `confgate --config <config> daemon` to its exit (60 s at most): (success, stderr).
fn daemon_exit(config: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(confgate_bin())
        .arg("--config")
        .arg(config)
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("confgate daemon");
    let status = poll("the daemon to exit", Duration::from_secs(60), || {
        child.try_wait().expect("wait")
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}

#[test]
fn the_daemon_refuses_a_bad_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    // Not IP:PORT: refused while reading the configuration, with its line and column.
    let config = config_in(dir.path(), "listen = \"localhost:9464\"");
    let (ok, err) = daemon_exit(&config);
    assert!(!ok, "{err}");
    assert!(
        err.contains("metrics.listen") && err.contains(":15:") && err.contains("IP:PORT"),
        "{err}"
    );
    let check = Command::new(confgate_bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("metrics.listen"),
        "{check:?}"
    );

    if !require_root("the_daemon_refuses_a_bad_metrics_address (address in use)") {
        return;
    }
    // A port another process holds: the daemon stops at start-up and says why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = config_in(dir.path(), &format!("listen = \"127.0.0.1:{port}\""));
    let (ok, err) = daemon_exit(&config);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "metrics.listen = \"127.0.0.1:{port}\": cannot listen"
        )) && err.contains("in use"),
        "{err}"
    );
}
