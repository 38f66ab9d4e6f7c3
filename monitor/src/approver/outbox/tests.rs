use std::collections::HashSet;
use std::sync::Arc;

use super::route::Route;
use super::sender::{backoff_ms, eligible};
use super::*;
use crate::approver::store::{NewRequest, RedbStore, Resolution};

fn routes() -> Arc<Router> {
    Arc::new(Router::new(vec![
        Route {
            id: "webhook:siem".into(),
            aliases: vec![],
            events: vec!["request.*".into(), "host.*".into()],
        },
        Route {
            id: "slack:#ops".into(),
            aliases: vec!["slack:C123".into()],
            events: vec!["request.created".into(), "request.denied".into()],
        },
    ]))
}

/// A request as a host files it (through the wire conversion, so that fields added to
/// the record are filled in one place).
fn new_request(hid: u64) -> NewRequest {
    let r = crate::approver::testing::submit_request(hid, 7);
    crate::approver::wire::new_request(r, "h1", crate::os::clock::now_ms(), 600_000).unwrap()
}

fn sinks_of(entries: &[OutboxEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (e.sink.clone(), e.event.event.clone()))
        .collect()
}

#[test]
fn changes_write_their_notifications_in_their_own_transaction_and_a_reopen_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    {
        let s = RedbStore::open(&path).unwrap().with_outbox(routes());
        let (r, created, u) = s.submit(new_request(1)).unwrap();
        assert!(created);
        s.sync(u).unwrap();
        // A resubmission announces nothing.
        let _ = s.submit(new_request(1)).unwrap();
        let deny = Resolution::Deny {
            by: "alice".into(),
            note: "no".into(),
        };
        s.resolve(r.id, deny, 5).unwrap().unwrap();
        assert!(
            s.note_report_of(
                "h1",
                1,
                6,
                "change_flagged",
                &serde_json::json!({"path": "/etc/x"})
            )
            .unwrap()
        );
        // The same report again is a duplicate: nothing more.
        assert!(
            !s.note_report_of("h1", 1, 7, "change_flagged", &serde_json::json!({}))
                .unwrap()
        );
    }
    // Nothing was delivered: after a restart, every notification is still waiting.
    let s = RedbStore::open(&path).unwrap();
    let all = entries(s.raw_store()).unwrap();
    assert_eq!(
        sinks_of(&all),
        [
            ("webhook:siem".into(), "request.created".into()),
            ("slack:#ops".into(), "request.created".into()),
            ("webhook:siem".into(), "request.denied".into()),
            ("slack:#ops".into(), "request.denied".into()),
            ("webhook:siem".into(), "host.change_flagged".into()),
        ]
    );
    let denied = &all[2].event;
    assert_eq!(
        denied
            .request
            .as_ref()
            .unwrap()
            .decision
            .as_ref()
            .unwrap()
            .decided_by,
        "alice"
    );
    // Delivered entries leave; a Slack message's place is kept for its update.
    let msg = SlackMessage {
        channel: "C1".into(),
        ts: "1.2".into(),
    };
    let rid = all[1].event.request_id().unwrap();
    delivered(
        s.raw_store(),
        all[1].id,
        Some((rid, "slack:#ops", msg.clone())),
    )
    .unwrap();
    delivered(s.raw_store(), all[0].id, None).unwrap();
    assert_eq!(
        slack_message(s.raw_store(), rid, "slack:#ops").unwrap(),
        Some(msg)
    );
    assert_eq!(
        slack_message(s.raw_store(), rid, "slack:other").unwrap(),
        None
    );
    retry_at(s.raw_store(), all[2].id, 99, "down").unwrap();
    give_up(s.raw_store(), all[4].id).unwrap();
    let left = entries(s.raw_store()).unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!((left[0].attempts, left[0].next_attempt_unix_ms), (1, 99));
    assert_eq!(left[0].last_error, "down");
}

#[test]
fn a_rules_notify_list_picks_the_sinks() {
    let r = routes();
    let named = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // No list: every sink whose filter accepts the event.
    assert_eq!(
        r.targets_named("request.created", &[]),
        ["webhook:siem", "slack:#ops"]
    );
    assert_eq!(r.targets_named("request.approved", &[]), ["webhook:siem"]);
    assert_eq!(r.targets_named("grant.revoked", &[]), Vec::<&str>::new());
    // By id, alias or kind; the filter still applies.
    assert_eq!(
        r.targets_named("request.created", &named(&["slack:#ops"])),
        ["slack:#ops"]
    );
    assert_eq!(
        r.targets_named("request.created", &named(&["slack:C123"])),
        ["slack:#ops"]
    );
    assert_eq!(
        r.targets_named("request.created", &named(&["webhook"])),
        ["webhook:siem"]
    );
    assert_eq!(
        r.targets_named("request.approved", &named(&["slack:#ops"])),
        Vec::<&str>::new()
    );
    assert_eq!(
        r.targets_named("request.created", &named(&["teams:x"])),
        Vec::<&str>::new()
    );
    // The list is read from the stored request, wherever the record keeps it.
    let s = RedbStore::open(&tempfile::tempdir().unwrap().path().join("a.redb")).unwrap();
    let req = s.submit(new_request(1)).unwrap().0;
    assert!(Event::request_created(&req).routes().is_empty());
}

#[test]
fn route_names_match_ids_aliases_and_kinds() {
    let r = Route {
        id: "slack:#ops".into(),
        aliases: vec!["slack:C123".into()],
        events: vec!["request.*".into()],
    };
    assert!(r.wants("request.expired"));
    assert!(!r.wants("grant.revoked"));
    assert!(route::pattern_matches("host.*", "host.reverted"));
    assert!(!route::pattern_matches(
        "host.reverted",
        "host.revert_failed"
    ));
}

fn entry(id: u64, sink: &str, request: Option<u64>, next: i64) -> OutboxEntry {
    let mut ev = Event::report("h", "reverted", &serde_json::json!({}), 0);
    if let Some(rid) = request {
        let s = RedbStore::open(&tempfile::tempdir().unwrap().path().join("a.redb")).unwrap();
        let mut r = s.submit(new_request(1)).unwrap().0;
        r.id = rid;
        ev = Event::request_created(&r);
    }
    OutboxEntry {
        id,
        sink: sink.into(),
        event: ev,
        created_unix_ms: 0,
        attempts: 0,
        next_attempt_unix_ms: next,
        last_error: String::new(),
    }
}

#[test]
fn entries_go_out_in_order_per_sink_and_request_when_due() {
    let es = vec![
        entry(1, "slack:a", Some(10), 500), // not due: holds back 3
        entry(2, "webhook:w", Some(10), 0),
        entry(3, "slack:a", Some(10), 0),
        entry(4, "slack:a", Some(11), 0),
        entry(5, "slack:a", None, 0),
        entry(6, "slack:a", None, 0),
    ];
    let ids = |v: Vec<OutboxEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(eligible(&es, &HashSet::new(), 100)), [2, 4, 5, 6]);
    assert_eq!(ids(eligible(&es, &HashSet::new(), 500)), [1, 2, 4, 5, 6]);
    // In flight: not started twice, and still holding back the next of its request.
    let busy: HashSet<u64> = [1, 5].into();
    assert_eq!(ids(eligible(&es, &busy, 500)), [2, 4, 6]);
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    assert_eq!(backoff_ms(0, 300_000, 0.0), 500);
    assert_eq!(backoff_ms(0, 300_000, 1.0), 1000);
    assert_eq!(backoff_ms(3, 300_000, 0.0), 4000);
    assert_eq!(backoff_ms(3, 300_000, 1.0), 8000);
    let mid = backoff_ms(3, 300_000, 0.5);
    assert!((4000..=8000).contains(&mid));
    assert_eq!(backoff_ms(40, 300_000, 1.0), 300_000);
    assert_eq!(backoff_ms(40, 300_000, 0.0), 150_000);
    assert!(backoff_ms(u32::MAX, 10, 0.3) <= 10);
}
