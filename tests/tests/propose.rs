//! End-to-end: changes an agent proposes (issue 17, item 5) on the real kernel, with the
//! real CLI, the in-process approval service and a confined session:
//! - `confgate propose` from inside a `confgate run` session: the approver sees the diff,
//!   the session's own attempt to approve it is refused, a person's approval applies it
//!   (exact content, mode and owner kept, baseline moved, ledgered with who proposed and
//!   who approved), and the session's `proposals ID --wait` sees `applied`;
//! - denied: unchanged; changed between proposal and approval: `conflict`, unchanged;
//!   a new file: created 0644; refusals (outside the trees, confgate's own file, too
//!   large);
//! - the same over MCP: `confgate mcp` in a session, driven over its stdin/stdout by a
//!   JSON-RPC client here, approve and deny.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use e2e::gate::{Gate, id_of, rule, wait_child};
use e2e::*;
use serde_json::{Value, json};

const HOLD: &str = "mode = \"hold\"\ntimeout = \"30s\"\nfail = \"deny\"";

fn gate() -> Gate {
    Gate::start_with(
        |root| {
            let g = root.join("watched/gated");
            std::fs::write(g.join("a.conf"), "a=1\nb=2\nAPI_KEY=old-secret\n").unwrap();
            std::fs::set_permissions(g.join("a.conf"), std::fs::Permissions::from_mode(0o640))
                .unwrap();
            std::os::unix::fs::chown(g.join("a.conf"), Some(1), Some(4)).unwrap();
            std::fs::write(g.join("b.conf"), "b=1\n").unwrap();
            std::fs::write(g.join("c.conf"), "c=1\n").unwrap();
            std::fs::write(g.join("m.conf"), "m=1\n").unwrap();
            std::fs::write(g.join("n.conf"), "n=1\n").unwrap();
        },
        |w| rule(w, "cfg", HOLD),
    )
}

fn bin() -> String {
    confgate_bin().display().to_string()
}

fn sock(g: &Gate) -> String {
    g.d.socket.display().to_string()
}

/// `confgate propose` by this test (outside any session): the proposal as JSON.
fn propose_here(g: &Gate, path: &Path, content: &str, reason: &str) -> Value {
    let from = g.d.dir.path().join("proposed.txt");
    std::fs::write(&from, content).unwrap();
    g.d.cli_json(&[
        "propose",
        &path.display().to_string(),
        "--from",
        &from.display().to_string(),
        "--reason",
        reason,
        "--json",
    ])
}

/// The pending approval request of proposal `p` (waits for the service's id).
fn request_of(g: &Gate, path: &Path) -> Value {
    let r = g.wait_request(path);
    assert_eq!(r["context"]["mode"], "propose", "{r}");
    r
}

fn drift_of(g: &Gate, p: &Path) -> Vec<Value> {
    let o = g.cli(&["drift", "--json", &p.display().to_string()]);
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_session_proposes_over_the_cli_and_a_person_decides() {
    if !require_root("a_session_proposes_over_the_cli_and_a_person_decides") {
        return;
    }
    let t0 = Instant::now();
    let g = gate();
    let a = g.gated("a.conf");
    let before = std::fs::metadata(&a).unwrap();
    let new = "a=1\nb=3\nAPI_KEY=new-secret\n";
    let marker = g.d.dir.path().join("self-approval-tried");
    let approver = format!("unix:{}", g.d.dir.path().join("approver.sock").display());
    // The agent proposes, tries to approve its own request, then waits for the outcome.
    let script = format!(
        "printf '{new_esc}' | {bin} --socket {sock} propose gated/a.conf --from - --reason 'raise b' --json > /tmp/.cg-propose-$$ ; echo filed_rc=$?; \
         cat /tmp/.cg-propose-$$; \
         id=$(sed -n 's/^  \"id\": \\([0-9]*\\),$/\\1/p' /tmp/.cg-propose-$$); \
         rid=$(sed -n 's/^  \"request_id\": \\([0-9]*\\),$/\\1/p' /tmp/.cg-propose-$$); rm -f /tmp/.cg-propose-$$; \
         {bin} --socket {sock} approvals --approver {approver} approve $rid --ttl 1m; echo self_rc=$?; \
         touch {marker}; \
         {bin} --socket {sock} proposals $id --wait --json; echo wait_rc=$?",
        new_esc = new.replace('\n', "\\n"),
        bin = bin(),
        sock = sock(&g),
        marker = marker.display(),
    );
    let child = g.spawn_with_reason("claude", "tuning", &script);
    let r = request_of(&g, &a);
    let ctx = &r["context"];
    assert_eq!(ctx["excerpt_kind"], "diff", "{r}");
    let excerpt = ctx["excerpt"].as_str().unwrap();
    assert!(
        excerpt.contains("\n-b=2\n") && excerpt.contains("\n+b=3\n"),
        "{excerpt}"
    );
    // Secrets masked in what approvers see; the changed line still shows.
    assert!(!excerpt.contains("secret"), "{excerpt}");
    assert!(excerpt.contains("+API_KEY=********"), "{excerpt}");
    assert_eq!(ctx["reason"], "raise b");
    assert_eq!(ctx["agent"], "claude");
    let session = ctx["session_id"].as_u64().unwrap();
    assert!(session > 0, "{r}");
    // The session's own approval was refused; the request is still pending.
    poll(
        "the session's self-approval attempt",
        Duration::from_secs(20),
        || marker.exists().then_some(()),
    );
    assert!(
        g.pending().iter().any(|p| p["id"] == r["id"]),
        "the session approved its own proposal"
    );
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "a=1\nb=2\nAPI_KEY=old-secret\n"
    );
    // A person approves.
    ok(&g.cli(&["approvals", "approve", &id_of(&r), "--note", "ok"]));
    let o = wait_child(child, Duration::from_secs(30));
    let out = output_text(&o);
    assert!(out.contains("filed_rc=0"), "{out}");
    assert!(out.contains("self_rc=1"), "{out}");
    assert!(out.contains("inside"), "the refusal says why: {out}");
    assert!(
        out.contains("\"state\": \"applied\"") && out.contains("wait_rc=0"),
        "{out}"
    );
    // Exactly the new content, mode and owner kept, no temporary file left.
    assert_eq!(std::fs::read_to_string(&a).unwrap(), new);
    let after = std::fs::metadata(&a).unwrap();
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!((after.uid(), after.gid()), (1, 4));
    let left: Vec<_> = std::fs::read_dir(g.gated(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("confgate"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Baseline moved (no drift there) and the ledger says who proposed and approved.
    assert!(drift_of(&g, &a).is_empty());
    let applied = g.wait_ledgered("proposal_applied", |_| true);
    assert_eq!(applied["proposed_by"]["session"], session, "{applied}");
    assert_eq!(applied["proposed_by"]["agent"], "claude", "{applied}");
    assert_eq!(applied["decided_by"], "unix:root", "{applied}");
    assert_eq!(applied["note"], "ok", "{applied}");
    let moved = g.wait_ledgered("baseline_moved", |b| {
        b["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("proposal "))
    });
    assert_eq!(moved["approved_by"], "unix:root", "{moved}");
    assert_eq!(moved["proposed_by"]["session"], session, "{moved}");
    let filed = g.ledgered("proposal_filed");
    assert!(
        !filed[0].to_string().contains("secret"),
        "the ledger holds the masked diff only: {}",
        filed[0]
    );

    // Denied: unchanged (this test proposes, outside any session).
    let b = g.gated("b.conf");
    let p = propose_here(&g, &b, "b=2\n", "try b");
    assert_eq!(p["state"], "pending");
    let r = request_of(&g, &b);
    assert_eq!(p["request_id"], r["id"]);
    ok(&g.cli(&["approvals", "deny", &id_of(&r), "--note", "no"]));
    let o = g.cli(&["proposals", &p["id"].to_string(), "--wait", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "b=1\n");
    g.wait_ledgered("proposal_denied", |v| v["decided_by"] == "unix:root");

    // Changed between the proposal and the approval: conflict, nothing written.
    let c = g.gated("c.conf");
    let p = propose_here(&g, &c, "c=2\n", "try c");
    let r = request_of(&g, &c);
    std::fs::write(&c, "c=changed\n").unwrap();
    ok(&g.cli(&["approvals", "approve", &id_of(&r)]));
    let o = g.cli(&["proposals", &p["id"].to_string(), "--wait", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("changed since the proposal"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "c=changed\n");
    let conflict = g.wait_ledgered("proposal_conflict", |_| true);
    assert!(
        conflict["detail"]
            .as_str()
            .unwrap()
            .contains("changed since"),
        "{conflict}"
    );

    // A new file: created 0644 root.
    let n = g.gated("new.conf");
    let p = propose_here(&g, &n, "new=1\n", "add new");
    assert!(p["base_sha256"].is_null(), "{p}");
    let r = request_of(&g, &n);
    assert_eq!(
        r["context"]["operations"],
        json!(["write", "create"]),
        "{r}"
    );
    ok(&g.cli(&["approvals", "approve", &id_of(&r)]));
    let o = g.cli(&["proposals", &p["id"].to_string(), "--wait"]);
    ok(&o);
    assert_eq!(std::fs::read_to_string(&n).unwrap(), "new=1\n");
    let m = std::fs::metadata(&n).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o644, 0, 0));

    // Refused: outside the trees, confgate's own configuration, too large.
    let from = g.d.dir.path().join("x.txt");
    std::fs::write(&from, "x\n").unwrap();
    let try_propose = |path: &str| {
        g.cli(&[
            "propose",
            path,
            "--from",
            &from.display().to_string(),
            "--reason",
            "r",
        ])
    };
    let o = try_propose("/tmp/confgate-not-watched.conf");
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("not under the watched or gated trees"),
        "{}",
        output_text(&o)
    );
    let o = try_propose(&g.d.config.display().to_string());
    assert!(!o.status.success(), "{}", output_text(&o));
    std::fs::write(&from, vec![b'x'; (1 << 20) + 1]).unwrap();
    let o = try_propose(&b.display().to_string());
    assert!(!o.status.success());
    assert!(output_text(&o).contains("1 MiB"), "{}", output_text(&o));
    assert!(g.stat("proposals_applied") >= 2);
    assert_eq!(g.stat("proposals_conflicts"), 1);
    eprintln!(
        "a_session_proposes_over_the_cli_and_a_person_decides: {:?}",
        t0.elapsed()
    );
}

/// A JSON-RPC client of `confgate mcp` over its stdin/stdout.
struct Mcp {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<ChildStderr>,
    next: u64,
}

impl Mcp {
    fn send(&mut self, v: &Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        if n == 0 {
            // Say why: `confgate run` or `confgate mcp` wrote it to stderr.
            let mut err = String::new();
            if let Some(mut e) = self.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("confgate mcp closed its output; stderr: {err}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Sends a request, returns its id (the answer is read with [`Mcp::answer`]).
    fn ask(&mut self, method: &str, params: Value) -> u64 {
        self.next += 1;
        let id = self.next;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    fn answer(&mut self, id: u64) -> Value {
        let v = self.recv();
        assert_eq!(v["id"], id, "answers in order here: {v}");
        v
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.ask(method, params);
        self.answer(id)
    }

    fn tool(&mut self, name: &str, args: Value) -> Value {
        let v = self.call("tools/call", json!({"name": name, "arguments": args}));
        let r = v["result"].clone();
        assert_eq!(r["isError"], false, "{v}");
        r["structuredContent"].clone()
    }
}

#[test]
fn a_session_proposes_over_mcp() {
    if !require_root("a_session_proposes_over_mcp") {
        return;
    }
    let t0 = Instant::now();
    let g = gate();
    let m = g.gated("m.conf");
    let n = g.gated("n.conf");
    let mut child =
        g.d.session_command(
            "claude",
            Some("mcp"),
            &format!("exec {} --socket {} mcp", bin(), sock(&g)),
        )
        .stdin(Stdio::piped())
        .spawn()
        .expect("confgate run -- confgate mcp");
    let mut c = Mcp {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()),
        stderr: child.stderr.take(),
        next: 0,
    };
    let init = c.call(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "e2e", "version": "1"}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let tools = c.call("tools/list", json!({}));
    assert_eq!(
        tools["result"]["tools"].as_array().unwrap().len(),
        3,
        "{tools}"
    );
    // Garbage gets JSON-RPC errors, and the server goes on.
    c.stdin
        .write_all(b"{\"jsonrpc\": \"2.0\", \"id\": 99, \n")
        .unwrap();
    assert_eq!(c.recv()["error"]["code"], -32700);
    let v = c.call("no/such/method", json!({}));
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert_eq!(c.call("ping", json!({}))["result"], json!({}));

    // Approved: applied.
    let p = c.tool(
        "propose_change",
        json!({"path": m.display().to_string(), "content": "m=2\n", "reason": "raise m"}),
    );
    assert_eq!(p["state"], "pending", "{p}");
    let r = request_of(&g, &m);
    assert_eq!(p["request_id"], r["id"], "{p}");
    assert!(
        r["context"]["excerpt"]
            .as_str()
            .unwrap()
            .contains("-m=1\n+m=2\n"),
        "{r}"
    );
    let session = r["context"]["session_id"].as_u64().unwrap();
    assert_eq!(p["session"], session);
    ok(&g.cli(&["approvals", "approve", &id_of(&r)]));
    let s = c.tool("request_status", json!({"id": p["id"], "wait": true}));
    assert_eq!(s["state"], "applied", "{s}");
    assert_eq!(std::fs::read_to_string(&m).unwrap(), "m=2\n");
    assert!(drift_of(&g, &m).is_empty());

    // Denied, with wait: the call answers once decided.
    let id = c.ask(
        "tools/call",
        json!({"name": "propose_change", "arguments": {"path": n.display().to_string(),
               "content": "n=2\n", "reason": "raise n", "wait": true}}),
    );
    let r = request_of(&g, &n);
    ok(&g.cli(&["approvals", "deny", &id_of(&r), "--note", "not now"]));
    let v = c.answer(id);
    let s = &v["result"]["structuredContent"];
    assert_eq!(s["state"], "denied", "{v}");
    assert_eq!(s["note"], "not now", "{v}");
    assert_eq!(std::fs::read_to_string(&n).unwrap(), "n=1\n");

    // Only this session's proposals, newest first; another caller's are not listed.
    let mine = c.tool("list_my_requests", json!({}));
    let states: Vec<&str> = mine["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["denied", "applied"], "{mine}");
    let other = propose_here(&g, &n, "n=3\n", "outside");
    let v = c.call(
        "tools/call",
        json!({"name": "request_status", "arguments": {"id": other["id"]}}),
    );
    assert_eq!(
        v["result"]["isError"], true,
        "another caller's proposal: {v}"
    );
    drop(c);
    let o = wait_child(child, Duration::from_secs(10));
    assert!(o.status.success(), "{}", output_text(&o));
    eprintln!("a_session_proposes_over_mcp: {:?}", t0.elapsed());
}

/// Remote mode: the proposal goes to a central `confgate approver serve` (TLS, host
/// certificate); an approver there (with this host's attestation) approves it, and the
/// host applies it.
#[test]
fn a_proposal_through_the_central_service() {
    if !require_root("a_proposal_through_the_central_service") {
        return;
    }
    let t0 = Instant::now();
    let svc = e2e::service::ApprovalService::start_tls("");
    let d = e2e::service::remote_daemon(svc.host_client(), |w| {
        std::fs::write(format!("{w}/gated/r.conf"), "r=1\n").unwrap();
        e2e::service::gate_asking(w, "30s")
    });
    e2e::service::wait_connected(&d, &svc);
    let alice = e2e::service::Approver::tls(&d, &svc, "alice");
    let f = d.watched.join("gated/r.conf");
    let child = d
        .session_command(
            "claude",
            Some("remote"),
            &format!(
                "printf 'r=2\\n' | {} --socket {} propose gated/r.conf --from - --reason 'raise r' --wait; echo rc=$?",
                bin(),
                d.socket.display()
            ),
        )
        .spawn()
        .expect("confgate run");
    let r = alice.wait_pending(&f);
    assert_eq!(r["context"]["mode"], "propose", "{r}");
    assert!(
        r["context"]["excerpt"]
            .as_str()
            .unwrap()
            .contains("-r=1\n+r=2\n"),
        "{r}"
    );
    ok(&alice.run(&["approve", &id_of(&r)]));
    let o = wait_child(child, Duration::from_secs(30));
    let out = output_text(&o);
    assert!(out.contains("applied") && out.contains("rc=0"), "{out}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "r=2\n");
    let applied = poll("proposal_applied", Duration::from_secs(10), || {
        d.ledger()
            .into_iter()
            .find(|v| v["kind"] == "proposal_applied")
    });
    assert_eq!(applied["body"]["decided_by"], "cert:alice", "{applied}");
    eprintln!("a_proposal_through_the_central_service: {:?}", t0.elapsed());
}
