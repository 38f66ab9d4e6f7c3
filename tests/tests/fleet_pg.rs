//! End-to-end: two replicas of `confgate approver serve` on one PostgreSQL database (a
//! throwaway cluster started here), daemons in remote mode spread across them with both
//! endpoints configured. An approval made on one replica reaches a host connected to the
//! other; a replica killed -9 right after acknowledging a decision loses neither its
//! acknowledged requests nor its decisions, and its hosts fail over; PostgreSQL stopped as
//! by a crash and started again: the service recovers, nothing acknowledged is lost.
use std::path::Path;
use std::process::{Child, Output};
use std::time::Duration;

use e2e::gate::{id_of, wait_child};
use e2e::service::{ApprovalService, Approver, gate_asking, remote_daemon, spawn_session};
use e2e::*;
use monitor::approver::pg::cluster::TestCluster;
use serde_json::Value;

/// The cluster, or a printed skip.
fn cluster(test: &str) -> Option<TestCluster> {
    if !require_root(test) {
        return None;
    }
    match TestCluster::start() {
        Ok(c) => Some(c),
        Err(why) => {
            skip(test, &format!("no PostgreSQL to run against: {why}"));
            None
        }
    }
}

/// `approver init-ca` with certificates for hosts `pg-a` and `pg-b`.
fn certificates(dir: &Path) {
    ok(&std::process::Command::new(confgate_bin())
        .args(["approver", "init-ca", "--dir"])
        .arg(dir)
        .args(["--host", "pg-a", "--host", "pg-b", "--approver", "alice"])
        .output()
        .expect("init-ca"));
}

/// A daemon that is host `name`, with the replicas' TLS endpoints in the order given.
fn host(tls: &Path, name: &str, endpoints: &[&ApprovalService]) -> Daemon {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|s| s.https.clone().expect("a replica"))
        .collect();
    let t = tls.display();
    remote_daemon(
        format!(
            "endpoint = {eps:?}\nca = \"{t}/ca.pem\"\ncert = \"{t}/host-{name}.pem\"\nkey = \"{t}/host-{name}.key\""
        ),
        |w| gate_asking(w, "60s"),
    )
}

/// Root on `svc`'s Unix socket decides request `id` (no attestation needed there).
fn decide(d: &Daemon, svc: &ApprovalService, verb: &str, id: &str) -> Output {
    let mut args = vec![verb, id, "--no-daemon"];
    if verb == "approve" {
        args.extend(["--ttl", "1h"]);
    }
    Approver::at(d, &svc.endpoint).run(&args)
}

/// A session writing `gated/<file>` (held until decided); prints `written` after it.
fn held_write(d: &Daemon, file: &str) -> Child {
    std::fs::write(d.watched.join("gated").join(file), "old\n").unwrap();
    spawn_session(d, &format!("echo new > gated/{file} && echo written"), &[])
}

fn finish(c: Child) -> Output {
    wait_child(c, Duration::from_secs(30))
}

fn written(d: &Daemon, c: Child, file: &str) {
    let o = finish(c);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "written\n",
        "{o:?}\n{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_to_string(d.watched.join("gated").join(file)).unwrap(),
        "new\n"
    );
}

fn pending(d: &Daemon, svc: &ApprovalService, file: &str) -> Value {
    Approver::at(d, &svc.endpoint).wait_pending(&d.watched.join("gated").join(file))
}

#[test]
fn approvals_made_on_one_replica_reach_hosts_connected_to_the_other() {
    let test = "approvals_made_on_one_replica_reach_hosts_connected_to_the_other";
    let Some(pg) = cluster(test) else { return };
    let tls = tempfile::tempdir().unwrap();
    certificates(tls.path());
    let r1 = ApprovalService::replica(tls.path(), &pg.url());
    let r2 = ApprovalService::replica(tls.path(), &pg.url());
    let a = host(tls.path(), "pg-a", &[&r1, &r2]);
    let b = host(tls.path(), "pg-b", &[&r2, &r1]);
    let (ca, cb) = (held_write(&a, "a.conf"), held_write(&b, "b.conf"));
    // Each request is filed on its host's replica and listed by both.
    let ra = pending(&a, &r2, "a.conf");
    let rb = pending(&b, &r1, "b.conf");
    assert_eq!(ra["context"]["host"], "pg-a");
    assert_eq!(rb["context"]["host"], "pg-b");
    assert_ne!(id_of(&ra), id_of(&rb), "ids from one sequence");
    // A's request approved on r2, B's denied on r1: each decision crosses replicas.
    ok(&decide(&a, &r2, "approve", &id_of(&ra)));
    ok(&decide(&b, &r1, "deny", &id_of(&rb)));
    written(&a, ca, "a.conf");
    let o = finish(cb);
    assert!(!o.status.success(), "denied: {o:?}");
    assert_eq!(
        std::fs::read_to_string(b.watched.join("gated/b.conf")).unwrap(),
        "old\n"
    );
    // Each host stayed on its first endpoint.
    assert_eq!(a.stat("uplink_failovers"), 0, "{}", a.log());
    assert_eq!(b.stat("uplink_failovers"), 0, "{}", b.log());
}

#[test]
fn a_replica_killed_mid_decision_loses_nothing_and_its_hosts_fail_over() {
    let test = "a_replica_killed_mid_decision_loses_nothing_and_its_hosts_fail_over";
    let Some(pg) = cluster(test) else { return };
    let tls = tempfile::tempdir().unwrap();
    certificates(tls.path());
    let mut r1 = ApprovalService::replica(tls.path(), &pg.url());
    let r2 = ApprovalService::replica(tls.path(), &pg.url());
    let a = host(tls.path(), "pg-a", &[&r1, &r2]);
    let (c1, c2) = (held_write(&a, "one.conf"), held_write(&a, "two.conf"));
    let one = pending(&a, &r1, "one.conf");
    let two = pending(&a, &r1, "two.conf");
    // r1 acknowledges the approval of `one` and is killed at once: its host may not have
    // been sent it yet. `two` is pending (acknowledged to the host) when r1 dies.
    ok(&decide(&a, &r1, "approve", &id_of(&one)));
    r1.kill();
    // The host fails over to r2 and gets `one`'s approval from the shared log.
    written(&a, c1, "one.conf");
    assert!(a.stat("uplink_failovers") >= 1, "{}", a.log());
    // `two` is still there, pending, and its approval on r2 reaches the host.
    let listed = Approver::at(&a, &r2.endpoint).list(true);
    let state = |r: &Value| {
        listed
            .iter()
            .find(|x| id_of(x) == id_of(r))
            .map(|x| x["state"].clone())
    };
    assert_eq!(state(&one), Some("approved".into()));
    assert_eq!(state(&two), Some("pending".into()));
    ok(&decide(&a, &r2, "approve", &id_of(&two)));
    written(&a, c2, "two.conf");
    // Filed once each: the host's failover resent nothing twice.
    let listed = Approver::at(&a, &r2.endpoint).list(true);
    assert_eq!(listed.len(), 2, "{listed:#?}");
}

#[test]
fn postgres_restarted_the_service_recovers_and_loses_nothing_acknowledged() {
    let test = "postgres_restarted_the_service_recovers_and_loses_nothing_acknowledged";
    let Some(pg) = cluster(test) else { return };
    let tls = tempfile::tempdir().unwrap();
    certificates(tls.path());
    let r1 = ApprovalService::replica(tls.path(), &pg.url());
    let r2 = ApprovalService::replica(tls.path(), &pg.url());
    let a = host(tls.path(), "pg-a", &[&r1, &r2]);
    let c1 = held_write(&a, "one.conf");
    let one = pending(&a, &r2, "one.conf");
    // The database dies as in a crash (no checkpoint): a decision now is refused, never
    // acknowledged.
    pg.stop(true).unwrap();
    let o = decide(&a, &r2, "approve", &id_of(&one));
    assert!(!o.status.success(), "no database, no decision: {o:?}");
    pg.restart().unwrap();
    // Back: the acknowledged request is still pending; approved on the replica the host is
    // not connected to, it reaches the host (r1 listens again).
    let id = id_of(&one);
    poll(
        "the decision after the restart",
        Duration::from_secs(20),
        || {
            decide(&a, &r2, "approve", &id)
                .status
                .success()
                .then_some(())
        },
    );
    written(&a, c1, "one.conf");
    // A new request after the restart is filed and decided as before.
    let c2 = held_write(&a, "two.conf");
    let two = pending(&a, &r1, "two.conf");
    ok(&decide(&a, &r1, "approve", &id_of(&two)));
    written(&a, c2, "two.conf");
    assert!(
        r1.log()
            .contains("listening for other replicas' changes again"),
        "{}",
        r1.log()
    );
}
