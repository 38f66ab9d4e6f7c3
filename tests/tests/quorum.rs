//! End-to-end: quorum rules (`approvals = 2`, `approvers = ["group:sre", "carol"]`) with
//! the real daemon and its local approval service. Approvers are bearer tokens the
//! service's settings list (alice and bob in group `sre`, carol by name, dave in neither).
//! - 2 of N with one deny: alice's approval is recorded ("1 of 2 approvals (alice)"),
//!   alice again counts once and is told so, dave is refused, bob's deny ends it (the held
//!   write fails);
//! - 2 of N approved: alice and carol, and the held write proceeds;
//! - an approver inside the requesting session is refused and counts for nothing.
use std::process::Output;
use std::time::Duration;

use e2e::gate::{Gate, id_of, wait_child};
use e2e::*;

const TOKENS: [(&str, &str, &str); 4] = [
    ("alice", "tok-alice-5f1d", "[\"sre\"]"),
    ("bob", "tok-bob-93ac", "[\"sre\", \"dba\"]"),
    ("carol", "tok-carol-1e77", "[]"),
    ("dave", "tok-dave-c0de", "[\"dev\"]"),
];

fn sha256(s: &str) -> String {
    let o = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{s}' | sha256sum")])
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn gate() -> Gate {
    let d = Daemon::start_with(DaemonOptions {
        toml_for_dir: Some(Box::new(|root| {
            let watched = root.join("watched");
            std::fs::create_dir_all(watched.join("gated")).unwrap();
            let mut svc = format!(
                "listen = [\"unix:{sock}\"]\nstore = \"{dir}/approver.redb\"\nledger = \"{dir}/approver-ledger.jsonl\"\nworkstation_approvers = [{ws}]\n",
                sock = root.join("approver.sock").display(),
                dir = root.display(),
                ws = TOKENS
                    .iter()
                    .map(|(n, _, _)| format!("\"token:{n}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            for (name, token, groups) in TOKENS {
                svc.push_str(&format!(
                    "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\ngroups = {groups}\n",
                    sha256(token)
                ));
            }
            let svc_path = root.join("approver.toml");
            std::fs::write(&svc_path, svc).unwrap();
            format!(
                "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\nlocal_config = \"{}\"\n\
                 [gate]\n[[gate.rule]]\nname = \"two-sre\"\npaths = [\"{}/gated/**\"]\nverdict = \"ask\"\n\
                 mode = \"hold\"\ntimeout = \"25s\"\nfail = \"deny\"\napprovals = 2\n\
                 approvers = [\"group:sre\", \"carol\"]\nnotify = [\"webhook:siem\"]\n",
                root.join("approver.sock").display(),
                svc_path.display(),
                watched.display(),
            )
        })),
        ..DaemonOptions::default()
    });
    Gate { d }
}

/// `confgate approvals <args>` as approver `name` (its token).
fn as_approver(g: &Gate, name: &str, args: &[&str]) -> Output {
    let token = TOKENS.iter().find(|t| t.0 == name).unwrap().1;
    std::process::Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .arg("approvals")
        .args(args)
        .env("CONFGATE_APPROVER_TOKEN", token)
        .output()
        .expect("confgate approvals")
}

fn show(g: &Gate, id: &str) -> String {
    let o = g.cli(&["approvals", "show", id]);
    ok(&o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn two_of_n_with_one_deny_and_the_same_approver_twice() {
    if !require_root("two_of_n_with_one_deny_and_the_same_approver_twice") {
        return;
    }
    let g = gate();
    let f = g.gated("app.conf");
    std::fs::write(&f, "old\n").unwrap();
    let child = g.spawn_in_session("q", "echo new > gated/app.conf");
    let r = g.wait_request(&f);
    let id = id_of(&r);
    assert_eq!(r["context"]["quorum"]["approvals"], 2, "{r}");
    assert_eq!(r["context"]["quorum"]["notify"][0], "webhook:siem", "{r}");

    let o = as_approver(&g, "alice", &["approve", &id, "--ttl", "5m"]);
    ok(&o);
    assert!(
        output_text(&o).contains("1 of 2 approvals (alice)"),
        "{}",
        output_text(&o)
    );
    let view = show(&g, &id);
    assert!(view.contains("PENDING"), "{view}");
    assert!(view.contains("1 of 2 approvals (alice)"), "{view}");
    assert!(view.contains("group:sre, carol"), "{view}");
    let list = g.cli(&["approvals", "list"]);
    assert!(
        output_text(&list).contains("pending 1/2"),
        "{}",
        output_text(&list)
    );

    // The same approver again: counts once, and says so.
    let o = as_approver(&g, "alice", &["approve", &id, "--ttl", "5m"]);
    assert!(!o.status.success());
    let text = output_text(&o);
    assert!(
        text.contains("already approved") && text.contains("counts once"),
        "{text}"
    );
    // Not among the approvers.
    let o = as_approver(&g, "dave", &["approve", &id, "--ttl", "5m"]);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("not among the approvers"),
        "{}",
        output_text(&o)
    );
    assert!(show(&g, &id).contains("1 of 2 approvals (alice)"));

    // Any permitted deny ends it.
    ok(&as_approver(&g, "bob", &["deny", &id, "--note", "no"]));
    let o = wait_child(child, Duration::from_secs(30));
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("Operation not permitted"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "old\n");
    assert!(show(&g, &id).contains("DENIED"));
}

#[test]
fn two_distinct_permitted_approvers_let_the_write_through() {
    if !require_root("two_distinct_permitted_approvers_let_the_write_through") {
        return;
    }
    let g = gate();
    let f = g.gated("ok.conf");
    std::fs::write(&f, "old\n").unwrap();
    let child = g.spawn_in_session("q", "echo new > gated/ok.conf");
    let id = id_of(&g.wait_request(&f));
    ok(&as_approver(&g, "alice", &["approve", &id, "--ttl", "5m"]));
    let o = as_approver(&g, "carol", &["approve", &id, "--ttl", "5m"]);
    ok(&o);
    assert!(output_text(&o).contains("approved"), "{}", output_text(&o));
    let o = wait_child(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "new\n");
    let view = show(&g, &id);
    assert!(
        view.contains("APPROVED") && view.contains("2 of 2 approvals (alice, carol)"),
        "{view}"
    );
}

#[test]
fn an_approver_inside_the_requesting_session_is_refused() {
    if !require_root("an_approver_inside_the_requesting_session_is_refused") {
        return;
    }
    let g = gate();
    let f = g.gated("self.conf");
    std::fs::write(&f, "old\n").unwrap();
    // The agent writes (held), then approves its own request through a copy of the CLI
    // (the built-in rule denies sessions confgate's own binary) over the local socket.
    let copy = g.d.dir.path().join("cg-copy");
    std::fs::copy(confgate_bin(), &copy).unwrap();
    let idfile = g.d.dir.path().join("request-id");
    let done = g.d.dir.path().join("self-rc");
    let log = g.d.dir.path().join("self-log");
    let script = format!(
        "echo new > gated/self.conf & \
         while [ ! -s {idf} ]; do sleep 0.05; done; \
         {copy} --socket {dsock} approvals --approver unix:{sock} approve $(cat {idf}) --ttl 5m > {log} 2>&1; a=$?; \
         {copy} --socket {dsock} approvals --approver unix:{sock} approve $(cat {idf}) --ttl 5m --no-daemon >> {log} 2>&1; \
         echo self_rc=$a$? > {done}; \
         wait",
        idf = idfile.display(),
        done = done.display(),
        log = log.display(),
        dsock = g.d.socket.display(),
        copy = copy.display(),
        sock = g.d.dir.path().join("approver.sock").display(),
    );
    let child = g.spawn_in_session("q", &script);
    let id = id_of(&g.wait_request(&f));
    std::fs::write(&idfile, &id).unwrap();
    let rc = poll("the session's own attempt", Duration::from_secs(20), || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(rc.trim(), "self_rc=11", "{said}");
    assert!(
        said.contains("refusing to decide"),
        "the daemon attested a session process: {said}"
    );
    assert!(
        said.contains("inside agent session"),
        "the service took it: {said}"
    );
    eprintln!("the session's own approval: {rc} {said}");
    let view = show(&g, &id);
    assert!(
        view.contains("PENDING") && view.contains("0 of 2 approvals"),
        "{view}"
    );
    ok(&as_approver(&g, "bob", &["approve", &id, "--ttl", "5m"]));
    ok(&as_approver(&g, "alice", &["approve", &id, "--ttl", "5m"]));
    let o = wait_child(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "new\n");
    let view = show(&g, &id);
    assert!(view.contains("2 of 2 approvals (bob, alice)"), "{view}");
}
