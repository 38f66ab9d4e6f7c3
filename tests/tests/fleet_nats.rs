//! End-to-end: `[output.nats]` against a real nats-server (JetStream, started here in a
//! temporary directory, killed on drop) and the real kernel. A session's writes reach a
//! JetStream consumer, every one, on `confgate.events.<host>.<kind>`; the server stopped
//! for 10 s under load and started again on the same port and store: everything buffered
//! is delivered and nothing dropped; events buffered while it is down survive a kill -9 of
//! the daemon; a tiny buffer with the server down: the events that
//! do not fit are dropped, counted exactly and ledgered; OCSF output reaches the stream as
//! OCSF; the approval service publishes a decision made while the broker was down.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::nats::{NatsServer, messages_of};
use e2e::*;
use serde_json::Value;

const STREAM: &str = "CONFGATE_EVENTS";

/// The server, or `None` (printed skip) when not root or without nats-server.
fn nats_server(test: &str) -> Option<NatsServer> {
    if !require_root(test) {
        return None;
    }
    match NatsServer::start() {
        Ok(s) => Some(s),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn daemon(url: &str, extra: &str) -> Daemon {
    let section = format!("[output.nats]\nservers = [{url:?}]\n{extra}\n");
    Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |_: &Path| section.clone())),
        ..DaemonOptions::default()
    })
}

/// Every message in the daemon's stream: (subject, payload).
fn stream_messages(url: &str) -> Vec<(String, Value)> {
    messages_of(url, STREAM)
}

/// The payloads of every message in the daemon's stream.
fn published(url: &str) -> Vec<Value> {
    stream_messages(url).into_iter().map(|(_, v)| v).collect()
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Waits until the daemon's buffer is empty and stays so for a moment.
fn drained(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet = 0;
    while quiet < 3 {
        assert!(
            Instant::now() < deadline,
            "NATS buffer never drained\n{}",
            d.log()
        );
        if d.stat("nats_buffered_events") == 0 && d.stat("nats_connected") == 1 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Also: events buffered while the broker is down survive a crash of the daemon.
#[test]
fn every_event_reaches_a_jetstream_consumer() {
    let Some(nats) = nats_server("every_event_reaches_a_jetstream_consumer") else {
        return;
    };
    let d = daemon(&nats.url(), "");
    ok(&d.in_session(
        "claude",
        "tune",
        "for i in $(seq 1 40); do echo $i > f$i.conf; done",
    ));
    d.settle();
    drained(&d);
    let file = d.all_events();
    let got = stream_messages(&nats.url());
    let payloads: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    let missing: Vec<_> = ids(&file).difference(&ids(&payloads)).cloned().collect();
    assert!(missing.is_empty(), "missing on the bus: {missing:?}");
    for i in 1..=40 {
        assert!(
            has(&payloads, "create", &d.w(&format!("f{i}.conf"))),
            "f{i}"
        );
    }
    for (subject, v) in &got {
        let host = v["host"].as_str().expect("host field");
        assert!(v["boot_id"].is_string(), "{v}");
        let kind = v["kind"].as_str().expect("kind");
        assert_eq!(
            subject,
            &format!("confgate.events.{}.{}", token(host), token(kind))
        );
    }
    assert_eq!(d.stat("nats_events_dropped"), 0);

    // Then the broker away and the daemon killed (-9) with events only in its buffer: they
    // are sent after the restart.
    let mut nats = nats;
    let mut d = d;
    nats.down();
    ok(&d.in_session(
        "claude",
        "crash",
        "for i in $(seq 1 20); do echo $i > c$i.conf; done",
    ));
    d.settle();
    let before = ids(&d.all_events());
    let delivered = ids(&payloads).len() as u64;
    // Everything since is in the buffer on disk (the gauge counts only synced records).
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.stat("nats_buffered_events") < before.len() as u64 - delivered {
        assert!(Instant::now() < deadline, "not all buffered\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    d.kill();
    d.start_again();
    nats.up();
    drained(&d);
    let got = published(&nats.url());
    let missing: Vec<_> = before.difference(&ids(&got)).cloned().collect();
    assert!(missing.is_empty(), "lost in the crash: {missing:?}");
    assert_eq!(d.stat("nats_events_dropped"), 0);
}

#[test]
fn a_broker_outage_under_load_loses_nothing() {
    let Some(mut nats) = nats_server("a_broker_outage_under_load_loses_nothing") else {
        return;
    };
    let d = daemon(&nats.url(), "");
    // ~12 s of writes; the server is away for 10 s of them.
    let writer = d
        .session_command(
            "claude",
            Some("load"),
            "for i in $(seq 1 110); do echo $i > l$((i % 20)).conf; sleep 0.1; done",
        )
        .spawn()
        .expect("session");
    std::thread::sleep(Duration::from_secs(1));
    nats.down();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        d.stat("nats_buffered_events") > 0,
        "events buffered while down"
    );
    nats.up();
    let out = writer.wait_with_output().expect("session");
    ok(&out);
    d.settle();
    drained(&d);
    let file = d.all_events();
    let got = published(&nats.url());
    let missing: Vec<_> = ids(&file).difference(&ids(&got)).cloned().collect();
    assert!(missing.is_empty(), "{} missing: {missing:?}", missing.len());
    assert_eq!(d.stat("nats_events_dropped"), 0);
    assert!(d.stat("nats_publish_errors") > 0, "the outage was seen");
}

#[test]
fn past_a_full_buffer_drops_are_counted_exactly_and_ledgered() {
    let test = "past_a_full_buffer_drops_are_counted_exactly_and_ledgered";
    let Some(mut nats) = nats_server(test) else {
        return;
    };
    nats.down();
    let d = daemon(&nats.url(), "buffer_max_bytes = 8192");
    ok(&d.in_session(
        "claude",
        "fill",
        "for i in $(seq 1 60); do echo $i > d$i.conf; done",
    ));
    d.settle();
    d.wait_stat("nats_events_dropped", |n| n > 0);
    let ledgered = poll(
        "a drop record in the ledger",
        Duration::from_secs(5),
        || {
            d.ledger()
                .into_iter()
                .find(|r| r["kind"] == "nats_events_dropped")
        },
    );
    assert!(ledgered.to_string().contains("\"dropped\""), "{ledgered}");
    nats.up();
    drained(&d);
    let file = d.all_events();
    let got = published(&nats.url());
    let missing = ids(&file).difference(&ids(&got)).count() as u64;
    let dropped = d.stat("nats_events_dropped");
    assert!(missing > 0);
    assert_eq!(missing, dropped, "every missing event is a counted drop");
}

#[test]
fn the_approval_service_publishes_requests_and_decisions() {
    use e2e::gate::{Gate, id_of, rule, wait_child};
    let Some(nats) = nats_server("the_approval_service_publishes_requests_and_decisions") else {
        return;
    };
    let url = nats.url();
    let for_config = url.clone();
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(move |root: &Path| {
            let url = &for_config;
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).expect("mkdir gated");
            let svc = root.join("approver.toml");
            std::fs::write(
                &svc,
                format!(
                    "listen = [\"unix:{sock}\"]\nstore = \"{r}/approver/approver.redb\"\n\
                     ledger = \"{r}/approver/ledger.jsonl\"\n[nats]\nservers = [{url:?}]\n",
                    sock = root.join("approver.sock").display(),
                    r = root.display()
                ),
            )
            .expect("approver.toml");
            format!(
                "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\nlocal_config = \"{}\"\n\n[gate]\n{}",
                root.join("approver.sock").display(),
                svc.display(),
                rule(
                    &watched.display().to_string(),
                    "ask-hold",
                    "mode = \"hold\"\ntimeout = \"20s\"\nfail = \"deny\""
                )
            )
        })),
        ..DaemonOptions::default()
    });
    let g = Gate { d };
    let f = g.gated("app.conf");
    std::fs::write(&f, "keep\n").expect("seed");
    let child = g.spawn_with_reason("claude", "tune", "echo evil > gated/app.conf");
    let r = g.wait_request(&f);
    // The decision is made while the broker is away: the service buffers its record and
    // publishes it when the broker is back.
    let mut nats = nats;
    nats.down();
    ok(&g.cli(&["approvals", "deny", &id_of(&r), "--note", "no"]));
    let out = wait_child(child, Duration::from_secs(15));
    assert!(!out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(2));
    nats.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let m = messages_of(&url, "CONFGATE_APPROVALS");
        if m.iter()
            .any(|(s, _)| s == "confgate.approvals.request_denied")
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no decision on the bus: {m:?}\n--- daemon log ---\n{}",
            g.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let submit = got
        .iter()
        .find(|(s, _)| s == "confgate.approvals.request_submitted")
        .unwrap_or_else(|| panic!("no request record on the bus: {got:?}"));
    assert_eq!(submit.1["body"]["context"]["reason"], "tune");
    assert!(
        submit.1["hash"].is_string(),
        "a ledger record: {}",
        submit.1
    );
    for (s, v) in &got {
        assert_eq!(
            s,
            &format!("confgate.approvals.{}", v["kind"].as_str().expect("kind"))
        );
    }
}

#[test]
fn ocsf_output_reaches_the_stream_as_ocsf() {
    let Some(nats) = nats_server("ocsf_output_reaches_the_stream_as_ocsf") else {
        return;
    };
    let section = format!("[output.nats]\nservers = [{:?}]\n", nats.url());
    let d = Daemon::start_with(DaemonOptions {
        output_toml: "format = \"ocsf\"\n".into(),
        toml_for_dir: Some(Box::new(move |_: &Path| section.clone())),
        ..DaemonOptions::default()
    });
    ok(&d.in_session(
        "claude",
        "ocsf",
        "for i in $(seq 1 10); do echo $i > o$i.conf; done",
    ));
    // (`settle` looks for its marker in confgate's format: wait for the last write.)
    let last = d.w("o10.conf");
    poll(
        "the last write in the events file",
        Duration::from_secs(10),
        || {
            d.all_events()
                .iter()
                .any(|e| e["class_uid"] == 1001 && e["file"]["path"] == last)
                .then_some(())
        },
    );
    drained(&d);
    // The file and the stream hold the same OCSF records (metadata.uid is confgate's id).
    let uids = |v: &[Value]| -> BTreeSet<String> {
        v.iter()
            .map(|e| {
                e["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no metadata.uid: {e}"))
                    .to_owned()
            })
            .collect()
    };
    let file = d.all_events();
    let got = stream_messages(&nats.url());
    let payloads: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    let missing: Vec<_> = uids(&file).difference(&uids(&payloads)).cloned().collect();
    assert!(missing.is_empty(), "missing on the bus: {missing:?}");
    for i in 1..=10 {
        let path = d.w(&format!("o{i}.conf"));
        assert!(
            payloads
                .iter()
                .any(|e| e["class_uid"] == 1001 && e["file"]["path"] == path),
            "no File System Activity for {path}"
        );
    }
    for (subject, e) in &got {
        let class = e["class_uid"].as_u64().unwrap_or_else(|| panic!("{e}"));
        assert!(class == 1001 || class == 0, "{e}");
        let activity = e["activity_id"].as_u64().expect("activity_id");
        assert_eq!(e["type_uid"].as_u64(), Some(class * 100 + activity), "{e}");
        assert_eq!(e["metadata"]["version"], "1.8.0");
        let host = e["device"]["hostname"].as_str().expect("device.hostname");
        assert!(
            subject.starts_with(&format!("confgate.events.{}.", token(host))),
            "{subject}"
        );
    }
    assert_eq!(d.stat("nats_events_dropped"), 0);
}
