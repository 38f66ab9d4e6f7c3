//! End-to-end: notifications of the approval service (`confgate approver serve`) to a
//! local HTTPS receiver that answers as Slack's Web API and a webhook receiver do; Slack
//! interactive callbacks signed as Slack documents, approving a held write of a confined
//! session; refused callbacks; and the outbox across a restart of the service.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use e2e::receiver::{Receiver, Recorded};
use e2e::service::{
    ApprovalService, Approver, free_port, gate_asking, remote_daemon, spawn_session,
};
use e2e::slack;
use e2e::*;
use monitor::approver::sinks::slack::interactive::sign;
use monitor::approver::sinks::webhook;
use serde_json::{Value, json};

const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const WEBHOOK_SECRET: &str = "webhook-test-secret";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn finish(c: Child) -> Output {
    c.wait_with_output().expect("session output")
}

/// Secret files and the `[http]` + `[notify]` TOML of a service notifying `recv`.
fn notify_toml(secrets: &Path, recv: &Receiver, http_port: u16, slack: bool) -> String {
    std::fs::write(secrets.join("webhook.key"), format!("{WEBHOOK_SECRET}\n")).unwrap();
    std::fs::write(secrets.join("slack-token"), "xoxb-test-token\n").unwrap();
    std::fs::write(secrets.join("slack-secret"), format!("{SIGNING_SECRET}\n")).unwrap();
    std::fs::write(
        secrets.join("teams-url"),
        format!("{}/teams?sig=secret\n", recv.url),
    )
    .unwrap();
    let s = secrets.display();
    let ca = recv.ca_file.display();
    let url = &recv.url;
    let mut t = format!(
        "allow_plaintext = true\n[http]\nlisten = \"http://127.0.0.1:{http_port}\"\n\
         [notify]\nmax_backoff_secs = 1\n\
         [[notify.webhook]]\nname = \"siem\"\nurl = \"{url}/hook\"\nsecret_file = \"{s}/webhook.key\"\nca_file = \"{ca}\"\n"
    );
    if slack {
        t += &format!(
            "[[notify.slack]]\nchannel = \"#ops\"\nbot_token_file = \"{s}/slack-token\"\n\
             signing_secret_file = \"{s}/slack-secret\"\napi_base_url = \"{url}/api\"\nca_file = \"{ca}\"\n\
             users = {{ \"U0ALICE\" = \"alice\" }}\n\
             [[notify.teams]]\nname = \"ops\"\nurl_file = \"{s}/teams-url\"\nca_file = \"{ca}\"\napprovers = [\"alice\"]\n"
        );
    }
    t
}

/// POSTs `payload` to `/slack/interactive` as Slack does: form-encoded, signed with
/// `secret` at `ts` (or with `signature` instead). Returns status and body.
fn slack_callback(
    port: u16,
    payload: &Value,
    secret: &str,
    ts: i64,
    signature: Option<&str>,
) -> (u16, String) {
    let body = slack::form_body(payload);
    let ts = ts.to_string();
    let sig = signature
        .map(str::to_owned)
        .unwrap_or_else(|| sign(secret.as_bytes(), &ts, body.as_bytes()));
    slack::post_interactive(port, &body, &ts, &sig).expect("POST /slack/interactive")
}

fn button_click(user: &str, action: &str, request_id: u64, recv: &Receiver) -> Value {
    slack::button_click(user, action, request_id, &recv.url)
}

/// The request id on the decision buttons of a posted request message.
fn request_id_of(post: &Recorded) -> u64 {
    slack::request_id_of(post).expect("buttons with the request id")
}

fn post_about<'a>(r: &'a [Recorded], path: &str, needle: &str) -> Option<&'a Recorded> {
    r.iter()
        .find(|x| x.path == path && String::from_utf8_lossy(&x.body).contains(needle))
}

/// Delivered webhook calls of `event`, after checking each one's signature.
fn hooks<'a>(r: &'a [Recorded], event: &str) -> Vec<&'a Recorded> {
    r.iter()
        .filter(|x| x.path == "/hook" && x.status == 200)
        .filter(|x| x.header("x-confgate-event") == Some(event))
        .inspect(|x| {
            assert!(
                webhook::verify(
                    WEBHOOK_SECRET.as_bytes(),
                    x.header("x-confgate-timestamp").unwrap_or(""),
                    &x.body,
                    x.header("x-confgate-signature").unwrap_or(""),
                    now_secs(),
                    300,
                ),
                "bad webhook signature: {x:?}"
            );
        })
        .collect()
}

#[test]
fn a_signed_slack_click_approves_a_held_write_and_the_message_shows_who() {
    if !require_root("a_signed_slack_click_approves_a_held_write_and_the_message_shows_who") {
        return;
    }
    let recv = Receiver::start();
    let secrets = tempfile::tempdir().unwrap();
    let port = free_port();
    let svc = ApprovalService::start(
        "unix:{dir}/approver.sock",
        &notify_toml(secrets.path(), &recv, port, true),
    );
    let ep = svc.endpoint.clone();
    let d = remote_daemon(format!("endpoint = {ep:?}"), |w| gate_asking(w, "60s"));
    let approver = Approver::at(&d, &ep);
    let file = d.watched.join("gated/app.conf");
    // A secret in the file: approvers see the line, never the value.
    std::fs::write(&file, "a\nAPI_KEY=supersecret\n").unwrap();

    // The held write becomes a Slack message with the context and the buttons.
    let c = spawn_session(&d, "echo b > gated/app.conf", &[]);
    let r = recv.wait_for("chat.postMessage about app.conf", |r| {
        post_about(r, "/api/chat.postMessage", "app.conf").is_some()
    });
    let post = post_about(&r, "/api/chat.postMessage", "app.conf")
        .unwrap()
        .clone();
    assert_eq!(post.header("authorization"), Some("Bearer xoxb-test-token"));
    let msg = post.json();
    assert_eq!(msg["channel"], "#ops");
    let text = msg.to_string();
    for want in [
        "claude",
        "approve_15m",
        "approve_1h",
        "approve_custom",
        "deny",
        "Held until",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    // Slack's text neutralizes mrkdwn's `*` as `∗`.
    assert!(
        text.contains("Content now") && text.contains("API_KEY=∗∗∗∗∗∗∗∗"),
        "the excerpt, masked: {text}"
    );
    assert!(!text.contains("supersecret"), "{text}");
    let id = request_id_of(&post);
    // A Teams card with a signed action link to the web page for alice.
    let r = recv.wait_for("the Teams card", |r| {
        post_about(r, "/teams?sig=secret", "app.conf").is_some()
    });
    let card = post_about(&r, "/teams?sig=secret", "app.conf")
        .unwrap()
        .json();
    let content = &card["attachments"][0]["content"];
    assert_eq!(content["type"], "AdaptiveCard");
    let card_text = content.to_string();
    assert!(
        card_text.contains("API_KEY=********") && !card_text.contains("supersecret"),
        "{card_text}"
    );
    assert_eq!(content["actions"][0]["title"], "Approve / deny as alice");
    let link = content["actions"][0]["url"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/web/link/")),
        "{link}"
    );
    // And a signed webhook call.
    let r = recv.wait_for("webhook request.created", |r| {
        !hooks(r, "request.created").is_empty()
    });
    let created = hooks(&r, "request.created")[0].json();
    assert_eq!(created["request"]["id"], id);
    assert_eq!(created["sink"], "webhook:siem");
    let ctx = &created["request"]["context"];
    assert_eq!(ctx["excerpt_kind"], "content", "{ctx}");
    assert_eq!(ctx["excerpt"], "a\nAPI_KEY=********\n", "{ctx}");
    assert!(!created.to_string().contains("supersecret"));
    let shown = d.cli(&[
        "approvals",
        "--approver",
        &ep,
        "show",
        &id.to_string(),
        "--json",
    ]);
    ok(&shown);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("API_KEY=********") && !shown.contains("supersecret"),
        "{shown}"
    );

    // Refused: a bad signature, an old timestamp, a user not in the allow-list.
    let click = button_click("U0ALICE", "approve_1h", id, &recv);
    let (status, _) = slack_callback(port, &click, SIGNING_SECRET, now_secs(), Some("v0=00"));
    assert_eq!(status, 401);
    let (status, _) = slack_callback(port, &click, "not-the-secret", now_secs(), None);
    assert_eq!(status, 401);
    let (status, body) = slack_callback(port, &click, SIGNING_SECRET, now_secs() - 600, None);
    assert_eq!(status, 401, "{body}");
    let mallory = button_click("U0MALLORY", "approve_1h", id, &recv);
    let (status, _) = slack_callback(port, &mallory, SIGNING_SECRET, now_secs(), None);
    assert_eq!(status, 200);
    let r = recv.wait_for("the refusal told to the user", |r| {
        post_about(r, "/response", "not allowed").is_some()
    });
    assert_eq!(
        post_about(&r, "/response", "not allowed").unwrap().json()["response_type"],
        "ephemeral"
    );
    assert_eq!(approver.state_of(&id.to_string()), "pending");

    // Alice's click approves it: the held write proceeds.
    let (status, body) = slack_callback(port, &click, SIGNING_SECRET, now_secs(), None);
    assert_eq!(status, 200, "{body}");
    let o = finish(c);
    ok(&o);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "b\n");
    for r in recv.requests() {
        assert!(
            !String::from_utf8_lossy(&r.body).contains("supersecret"),
            "{}",
            r.path
        );
    }
    assert!(!svc.ledger().contains("supersecret"));
    assert_eq!(approver.state_of(&id.to_string()), "approved");

    // The message is updated in place with the outcome and who decided.
    let r = recv.wait_for("chat.update of the request", |r| {
        r.iter().any(|x| x.path == "/api/chat.update")
    });
    let upd = r
        .iter()
        .find(|x| x.path == "/api/chat.update")
        .unwrap()
        .json();
    assert_eq!(upd["channel"], "C0TEST");
    assert_eq!(upd["ts"], msg_ts(&recv, id));
    let t = upd.to_string();
    assert!(t.contains("Approved") && t.contains("alice"), "{t}");
    assert!(!t.contains("approve_15m"), "no buttons once decided: {t}");
    let r = recv.wait_for("webhook request.approved", |r| {
        !hooks(r, "request.approved").is_empty()
    });
    let approved = hooks(&r, "request.approved")[0].json();
    assert_eq!(approved["request"]["decision"]["decided_by"], "alice");
    assert!(
        svc.ledger().contains("slack:U0ALICE@T0TEST"),
        "{}",
        svc.ledger()
    );

    // Approve…: the modal opens, and its submission approves with its TTL and glob.
    let second = d.watched.join("gated/other.conf");
    std::fs::write(&second, "a\n").unwrap();
    let c = spawn_session(&d, "echo c > gated/other.conf", &[]);
    let r = recv.wait_for("chat.postMessage about other.conf", |r| {
        post_about(r, "/api/chat.postMessage", "other.conf").is_some()
    });
    let id2 = request_id_of(post_about(&r, "/api/chat.postMessage", "other.conf").unwrap());
    let (status, _) = slack_callback(
        port,
        &button_click("U0ALICE", "approve_custom", id2, &recv),
        SIGNING_SECRET,
        now_secs(),
        None,
    );
    assert_eq!(status, 200);
    let r = recv.wait_for("views.open", |r| {
        r.iter().any(|x| x.path == "/api/views.open")
    });
    let modal = r
        .iter()
        .find(|x| x.path == "/api/views.open")
        .unwrap()
        .json();
    assert_eq!(modal["trigger_id"], "12345.98765.abcd");
    assert_eq!(modal["view"]["private_metadata"], id2.to_string());
    let glob = format!("{}/gated/**", d.watched.display());
    let submission = json!({
        "type": "view_submission",
        "user": { "id": "U0ALICE" },
        "team": { "id": "T0TEST" },
        "view": {
            "id": "V0TEST",
            "callback_id": modal["view"]["callback_id"],
            "private_metadata": id2.to_string(),
            "state": { "values": {
                "ttl": { "ttl": { "type": "static_select", "selected_option": { "value": "900" } } },
                "scope": { "scope": { "type": "static_select", "selected_option": { "value": "session" } } },
                "glob": { "glob": { "type": "plain_text_input", "value": glob } },
                "note": { "note": { "type": "plain_text_input", "value": "config rollout" } },
            }},
        },
    });
    let (status, body) = slack_callback(port, &submission, SIGNING_SECRET, now_secs(), None);
    assert_eq!((status, body.as_str()), (200, ""));
    ok(&finish(c));
    assert_eq!(std::fs::read_to_string(&second).unwrap(), "c\n");
    let g = d.cli(&["grants", "--approver", &ep, "list", "--json"]);
    ok(&g);
    let grants = String::from_utf8_lossy(&g.stdout);
    assert!(
        grants.contains("gated/**") && grants.contains("config rollout"),
        "{grants}"
    );
}

/// The ts the receiver gave the message posted for request `id`.
fn msg_ts(recv: &Receiver, id: u64) -> Value {
    recv.requests()
        .into_iter()
        .find(|x| {
            x.path == "/api/chat.postMessage"
                && x.json()["blocks"].is_array()
                && request_id_of(x) == id
        })
        .expect("the request's post")
        .answer["ts"]
        .clone()
}

#[test]
fn notifications_pending_when_the_service_restarts_are_all_delivered() {
    if !require_root("notifications_pending_when_the_service_restarts_are_all_delivered") {
        return;
    }
    let recv = Receiver::start();
    recv.set_down(true);
    let secrets = tempfile::tempdir().unwrap();
    let mut svc = ApprovalService::start(
        "unix:{dir}/approver.sock",
        &notify_toml(secrets.path(), &recv, free_port(), false),
    );
    let ep = svc.endpoint.clone();
    let d = remote_daemon(format!("endpoint = {ep:?}"), |w| gate_asking(w, "2s"));
    for name in ["one", "two"] {
        std::fs::write(d.watched.join(format!("gated/{name}.conf")), "a\n").unwrap();
    }
    // Two requests, each expiring after 2 s: four notifications, none deliverable yet.
    let a = spawn_session(&d, "echo b > gated/one.conf", &[]);
    let b = spawn_session(&d, "echo b > gated/two.conf", &[]);
    for c in [a, b] {
        let o = finish(c);
        assert!(!o.status.success(), "{o:?}");
    }
    recv.wait_for("failed webhook attempts", |r| {
        r.iter()
            .filter(|x| x.path == "/hook" && x.status == 503)
            .count()
            >= 2
    });
    assert!(
        svc.log().contains("notification not delivered; will retry"),
        "{}",
        svc.log()
    );
    // The service dies mid-delivery; the receiver comes back; the service restarts.
    svc.kill();
    recv.set_down(false);
    svc.spawn();
    // Every delivery attempted so far (other events than these, such as host reports,
    // included) must end delivered: wait until it is, or fail at the deadline.
    let all_delivered = |r: &[Recorded]| {
        let ids = |ok: bool| -> BTreeSet<String> {
            r.iter()
                .filter(|x| x.path == "/hook" && (!ok || x.status == 200))
                .filter_map(|x| x.header("x-confgate-delivery").map(str::to_owned))
                .collect()
        };
        ids(true) == ids(false)
    };
    let r = recv.wait_for("every notification delivered", |r| {
        hooks(r, "request.created").len() >= 2
            && hooks(r, "request.expired").len() >= 2
            && all_delivered(r)
    });
    let ids = |event: &str| -> BTreeSet<u64> {
        hooks(&r, event)
            .iter()
            .map(|x| x.json()["request"]["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("request.created").len(), 2);
    assert_eq!(ids("request.created"), ids("request.expired"));
    // Retries keep their delivery id (receivers deduplicate on it).
    let delivered: BTreeSet<&str> = r
        .iter()
        .filter(|x| x.path == "/hook" && x.status == 200)
        .filter_map(|x| x.header("x-confgate-delivery"))
        .collect();
    let attempted: BTreeSet<&str> = r
        .iter()
        .filter(|x| x.path == "/hook")
        .filter_map(|x| x.header("x-confgate-delivery"))
        .collect();
    assert_eq!(
        delivered, attempted,
        "every attempted notification was delivered"
    );
}

#[test]
fn the_daemons_local_service_notifies_too() {
    if !require_root("the_daemons_local_service_notifies_too") {
        return;
    }
    let recv = Receiver::start();
    let (url, ca) = (recv.url.clone(), recv.ca_file.display().to_string());
    let port = free_port();
    let g = e2e::gate::Gate {
        d: Daemon::start_with(DaemonOptions {
            toml_for_dir: Some(Box::new(move |root| {
                let watched = root.join("watched");
                std::fs::create_dir_all(watched.join("gated")).unwrap();
                std::fs::write(root.join("webhook.key"), WEBHOOK_SECRET).unwrap();
                std::fs::write(root.join("slack-token"), "xoxb-test-token").unwrap();
                std::fs::write(root.join("slack-secret"), SIGNING_SECRET).unwrap();
                let r = root.display();
                let approver = root.join("approver.toml");
                std::fs::write(
                &approver,
                format!(
                    "listen = [\"unix:{r}/approver.sock\"]\nstore = \"{r}/appr/approver.redb\"\nledger = \"{r}/appr/ledger.jsonl\"\n\
                     allow_plaintext = true\n[http]\nlisten = \"http://127.0.0.1:{port}\"\n\
                     [[notify.webhook]]\nname = \"siem\"\nurl = \"{url}/hook\"\nsecret_file = \"{r}/webhook.key\"\nca_file = \"{ca}\"\n\
                     [[notify.slack]]\nchannel = \"#ops\"\nbot_token_file = \"{r}/slack-token\"\nsigning_secret_file = \"{r}/slack-secret\"\n\
                     api_base_url = \"{url}/api\"\nca_file = \"{ca}\"\nusers = {{ \"U0ALICE\" = \"alice\" }}\n"
                ),
            )
            .unwrap();
                format!(
                    "{}local_config = {:?}\n\n[gate]\n{}",
                    e2e::gate::local_approval(root),
                    approver.display().to_string(),
                    e2e::gate::rule(
                        &watched.display().to_string(),
                        "ask",
                        "timeout = \"30s\"\nfail = \"deny\""
                    )
                )
            })),
            ..DaemonOptions::default()
        }),
    };
    let f = g.gated("local.conf");
    std::fs::write(&f, "a\n").unwrap();
    let c = g.spawn_in_session("claude", "echo b > gated/local.conf");
    let req = g.wait_request(&f);
    let id = req["id"].as_u64().unwrap();
    let r = recv.wait_for("webhook request.created", |r| {
        !hooks(r, "request.created").is_empty()
    });
    assert_eq!(hooks(&r, "request.created")[0].json()["request"]["id"], id);
    // A correctly signed Slack click sent from inside an agent session is refused: the
    // service knows the sending process's session in local mode.
    let body = slack::form_body(&button_click("U0ALICE", "approve_1h", id, &recv));
    let body_file = g.d.dir.path().join("click.form");
    std::fs::write(&body_file, &body).unwrap();
    let ts = now_secs().to_string();
    let sig = sign(SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
    let script = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -H 'content-type: application/x-www-form-urlencoded' \
         -H 'x-slack-request-timestamp: {ts}' -H 'x-slack-signature: {sig}' \
         --data-binary @{} http://127.0.0.1:{port}/slack/interactive",
        body_file.display()
    );
    let inside = g.d.in_session("claude", "e2e", &script);
    let r = recv.wait_for("the in-session refusal", |r| {
        post_about(r, "/response", "agent session").is_some()
    });
    assert!(
        post_about(&r, "/response", "agent session").is_some(),
        "{inside:?}"
    );
    assert_eq!(g.pending().len(), 1, "still pending");
    ok(&g.cli(&["approvals", "approve", &id.to_string(), "--ttl", "1h"]));
    ok(&finish(c));
    let r = recv.wait_for("webhook request.approved", |r| {
        !hooks(r, "request.approved").is_empty()
    });
    let by = hooks(&r, "request.approved")[0].json()["request"]["decision"]["decided_by"].clone();
    assert!(by.as_str().unwrap().starts_with("unix:"), "{by}");
    g.d.wait_stat("approver_notify_sent", |n| n >= 2);
}
