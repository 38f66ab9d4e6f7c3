//! `confgate approvals ...`: list, watch, show, approve and deny approval requests.
//!
//! The commands talk to the approval service (`Approver` gRPC API) through
//! [`crate::approver::client::connect`]. By default they reach the service the daemon
//! configuration names (`[approval]`: the local socket in local mode, `[approval.client]`
//! in remote mode); `--approver`, `--ca`, `--cert`, `--key`, `--token` override it.
//!
//! Before `approve`/`deny` the CLI asks the local daemon for an attestation
//! (`Daemon.Attest`): the daemon identifies this process by its socket's peer credentials
//! and signs, for this request and decision, that it is in no agent session as the
//! kernel's session map says (it refuses inside one). The service accepts a certificate or
//! token decision only with such an attestation, unless the credential is marked as a
//! workstation credential (`--no-daemon`).
//!
//! Everything a request carries comes from a watched process: every string is made
//! terminal-safe before it is printed (`--json` prints the values as JSON strings).
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::connect::{ApproverArgs, check_note, explain};
use super::grants;
use super::render::{
    command_line, dash, ellipsize, print_list, relative, render_table, term, utc_time, when,
};
use crate::approver::client::{ApproverChannel, ClientConfig, connect};
use crate::config::Config;
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

/// Shortest grant lifetime `--ttl` accepts.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest grant lifetime `--ttl` accepts (the API's limit; the service may set a lower
/// `max_ttl`).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest path shown in the `approvals list` table, in characters.
const PATH_COLUMN: usize = 60;

/// Scope of a grant (`--scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// Only the session that asked.
    Session,
    /// Every session of the same agent on the same host.
    Agent,
}

impl From<ScopeArg> for pb::GrantScope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Session => pb::GrantScope::Session,
            ScopeArg::Agent => pb::GrantScope::Agent,
        }
    }
}

/// The `approvals` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List requests, newest first (pending ones unless --all).
    List {
        #[arg(long)]
        json: bool,
        /// Include decided and expired requests.
        #[arg(long)]
        all: bool,
        /// Show at most this many, newest first (1-1000; default 100). How many older ones
        /// are left out is always said.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Print every pending request, then each new request and state change as it happens.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One request with its full context and, once decided, its decision.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request: creates a grant for the session (or agent) and path.
    Approve {
        id: u64,
        /// Grant lifetime, e.g. "30m", "2h", "1d" (1 s .. 30 days; default: the service's,
        /// one hour).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Why (kept in both ledgers).
        #[arg(long)]
        note: Option<String>,
        /// Who the grant covers (default: session).
        #[arg(long, value_enum)]
        scope: Option<ScopeArg>,
        /// Widen the grant to this absolute path glob (default: the request's path).
        #[arg(long)]
        glob: Option<String>,
        /// This machine runs no confgate daemon (a workstation): send no attestation. The
        /// service accepts the decision only from a credential it lists in
        /// `workstation_approvers`.
        #[arg(long)]
        no_daemon: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending request.
    Deny {
        id: u64,
        /// Why (kept in both ledgers).
        #[arg(long)]
        note: Option<String>,
        /// See `approve --no-daemon`.
        #[arg(long)]
        no_daemon: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Parses `--ttl`: a humantime duration of whole seconds within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (\"30m\", \"2h\", \"1d\"): {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: a TTL is whole seconds"));
    }
    if d < MIN_TTL || d > MAX_TTL {
        return Err(format!(
            "{s:?}: a TTL is between 1s and {}",
            humantime::format_duration(MAX_TTL)
        ));
    }
    Ok(d)
}

/// A `--glob`: absolute and a valid glob.
pub fn check_glob(glob: &str) -> anyhow::Result<()> {
    if !glob.starts_with('/') {
        bail!("--glob {glob:?} is not an absolute path glob");
    }
    globset::Glob::new(glob).map_err(|e| anyhow!("--glob {glob:?}: {e}"))?;
    Ok(())
}

/// Asks the daemon at `socket` to attest that this process decides request `id` (as
/// `approve`) from outside every agent session.
pub async fn attest(socket: &Path, id: u64, approve: bool) -> anyhow::Result<pb::AttestResponse> {
    let mut daemon = crate::api::client::connect(socket).await.map_err(|e| {
        anyhow!(
            "no confgate daemon answers on {} ({e}). A decision needs this host's daemon to \
             attest that it does not come from an agent session: run it on a host whose daemon \
             is running (--config or --socket name the daemon's socket), or, on a workstation \
             whose credential the approval service lists in workstation_approvers, pass \
             --no-daemon",
            socket.display()
        )
    })?;
    match daemon
        .attest(pb::AttestRequest {
            request_id: id,
            approve,
        })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::PermissionDenied => bail!(
            "refusing to decide: {}; agents may not approve or deny requests. Decide from a \
             shell outside any agent session",
            term(s.message())
        ),
        Err(s) => bail!(
            "the local daemon did not attest this decision: {}",
            crate::api::client::explain(&s)
        ),
    }
}

/// Builds the Decide call, with the daemon's attestation if there is one.
pub fn decide_request(
    id: u64,
    approve: bool,
    ttl: Option<Duration>,
    note: Option<&str>,
    scope: Option<ScopeArg>,
    glob: Option<&str>,
    attestation: Option<&pb::AttestResponse>,
) -> anyhow::Result<pb::DecideRequest> {
    if let Some(n) = note {
        check_note(n)?;
    }
    if let Some(g) = glob {
        check_glob(g)?;
    }
    Ok(pb::DecideRequest {
        id,
        approve,
        ttl_seconds: ttl.map_or(0, |d| d.as_secs()),
        note: note.unwrap_or_default().to_owned(),
        scope: scope.map_or(pb::GrantScope::Unspecified, pb::GrantScope::from) as i32,
        path_glob: glob.unwrap_or_default().to_owned(),
        decider_host: attestation.map_or_else(crate::os::host::host_name, |a| a.host.clone()),
        decider_session: 0,
        attestation: attestation.map(|a| a.statement.clone()).unwrap_or_default(),
        attestation_signature: attestation.map(|a| a.signature.clone()).unwrap_or_default(),
    })
}

/// Runs an `approvals` subcommand with the daemon configuration `cfg` and daemon socket
/// `socket`. Returns the exit status.
pub fn run(
    cmd: &ApprovalsCommand,
    conn: &ApproverArgs,
    cfg: &Config,
    socket: &Path,
) -> anyhow::Result<i32> {
    let client_cfg = conn.client_config(cfg.approval.client_config());
    runtime()?.block_on(async {
        let mut out = std::io::stdout().lock();
        match cmd {
            ApprovalsCommand::List { json, all, limit } => {
                let mut c = service(&client_cfg).await?;
                let page = Page {
                    all: *all,
                    limit: limit.unwrap_or(0),
                };
                list(&mut c, page, *json, now_ms(), &mut out).await
            }
            ApprovalsCommand::Watch { json } => {
                let mut c = service(&client_cfg).await?;
                watch(&mut c, *json, &mut out).await
            }
            ApprovalsCommand::Show { id, json } => {
                let mut c = service(&client_cfg).await?;
                show(&mut c, *id, *json, now_ms(), &mut out).await
            }
            ApprovalsCommand::Approve {
                id,
                ttl,
                note,
                scope,
                glob,
                no_daemon,
                json,
            } => {
                let attestation = local_attestation(socket, *id, true, *no_daemon).await?;
                let req = decide_request(
                    *id,
                    true,
                    *ttl,
                    note.as_deref(),
                    *scope,
                    glob.as_deref(),
                    attestation.as_ref(),
                )?;
                let mut c = service(&client_cfg).await?;
                decide(&mut c, req, *json, now_ms(), &mut out).await
            }
            ApprovalsCommand::Deny {
                id,
                note,
                no_daemon,
                json,
            } => {
                let attestation = local_attestation(socket, *id, false, *no_daemon).await?;
                let req = decide_request(
                    *id,
                    false,
                    None,
                    note.as_deref(),
                    None,
                    None,
                    attestation.as_ref(),
                )?;
                let mut c = service(&client_cfg).await?;
                decide(&mut c, req, *json, now_ms(), &mut out).await
            }
        }?;
        Ok(0)
    })
}

async fn local_attestation(
    socket: &Path,
    id: u64,
    approve: bool,
    no_daemon: bool,
) -> anyhow::Result<Option<pb::AttestResponse>> {
    if no_daemon {
        tracing::info!(
            "--no-daemon: no attestation; the service accepts this only from a workstation credential"
        );
        return Ok(None);
    }
    attest(socket, id, approve).await.map(Some)
}

/// What `approvals list` asks for: pending or all, and how many (0: the service's 100).
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    pub all: bool,
    pub limit: u32,
}

/// `approvals list`. Requests left out by the limit are never silent: the table ends with
/// how many; with `--json` (whose output stays one array) that line goes to stderr.
pub async fn list(
    c: &mut ApproverClient<ApproverChannel>,
    page: Page,
    json: bool,
    now_ms: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let reply = c
        .list_requests(pb::ListRequestsRequest {
            all: page.all,
            limit: page.limit,
        })
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner();
    print_list(&reply.requests, json, request_json, out, || {
        let mut s = render_list(&reply.requests, page.all, now_ms);
        s.push_str(&hidden_line(reply.hidden));
        s
    })?;
    if json && reply.hidden > 0 {
        eprint!("{}", hidden_line(reply.hidden));
    }
    Ok(())
}

/// The line saying how many older requests a listing left out (empty for none).
pub fn hidden_line(hidden: u64) -> String {
    match hidden {
        0 => String::new(),
        1 => "1 older request not shown (--limit N shows up to 1000)\n".to_owned(),
        n => format!("{n} older requests not shown (--limit N shows up to 1000)\n"),
    }
}

/// `approvals watch`: runs until the stream ends (an error) or the process is stopped.
pub async fn watch(
    c: &mut ApproverClient<ApproverChannel>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut stream = c
        .watch_requests(pb::WatchRequestsRequest {})
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner();
    while let Some(r) = stream.message().await.map_err(|s| anyhow!(explain(&s)))? {
        if json {
            writeln!(out, "{}", request_json(&r))?;
        } else {
            out.write_all(render_watch_item(&r, now_ms()).as_bytes())?;
        }
        out.flush()?;
    }
    bail!("the approval service ended the watch stream")
}

/// `approvals show ID`.
pub async fn show(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
    json: bool,
    now_ms: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let r = c
        .get_request(pb::GetRequestRequest { id })
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner();
    if json {
        writeln!(out, "{}", request_json(&r))?;
    } else {
        out.write_all(render_request(&r, now_ms).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `approvals approve` / `approvals deny`: sends `req`, prints the outcome.
pub async fn decide(
    c: &mut ApproverClient<ApproverChannel>,
    req: pb::DecideRequest,
    json: bool,
    now_ms: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let id = req.id;
    let r = c
        .decide(req)
        .await
        .map_err(|s| anyhow!("request {id}: {}", explain(&s)))?
        .into_inner();
    if json {
        writeln!(out, "{}", request_json(&r))?;
    } else {
        out.write_all(render_decided(&r, now_ms).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

async fn service(cfg: &ClientConfig) -> anyhow::Result<ApproverClient<ApproverChannel>> {
    connect(cfg).await.map_err(anyhow::Error::from)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// Formatting (pure functions of the data and the current time).

/// Lowercase name of a request state.
pub fn state_name(state: i32) -> &'static str {
    match pb::RequestState::try_from(state) {
        Ok(pb::RequestState::Pending) => "pending",
        Ok(pb::RequestState::Approved) => "approved",
        Ok(pb::RequestState::Denied) => "denied",
        Ok(pb::RequestState::Expired) => "expired",
        Ok(pb::RequestState::Released) => "released",
        Ok(pb::RequestState::Unspecified) | Err(_) => "unknown",
    }
}

/// The `approvals list` table.
pub fn render_list(requests: &[pb::ApprovalRequest], all: bool, now_ms: i64) -> String {
    if requests.is_empty() {
        return if all {
            "no approval requests\n".to_owned()
        } else {
            "no pending approval requests\n".to_owned()
        };
    }
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let c = r.context.clone().unwrap_or_default();
            let deadline = if r.state == pb::RequestState::Pending as i32 {
                relative(r.deadline_unix_ms, now_ms)
            } else {
                "-".to_owned()
            };
            vec![
                r.id.to_string(),
                state_name(r.state).to_owned(),
                dash(&c.host),
                c.session_id.to_string(),
                dash(&c.agent),
                dash(&c.user),
                term(&c.operations.join(",")),
                deadline,
                ellipsize(&dash(&c.path), PATH_COLUMN),
            ]
        })
        .collect();
    render_table(
        &[
            "ID", "STATE", "HOST", "SESSION", "AGENT", "USER", "OPS", "DEADLINE", "PATH",
        ],
        &rows,
    )
}

/// The full human view of one request: everything an approver needs to decide.
pub fn render_request(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    let c = r.context.clone().unwrap_or_default();
    let mut s = format!("request {}  {}\n", r.id, state_name(r.state).to_uppercase());
    let mut field = |name: &str, value: String| {
        s.push_str(&format!("  {name:<13}{value}\n"));
    };
    field("host", dash(&c.host));
    field("session", c.session_id.to_string());
    field("agent", dash(&c.agent));
    field("user", format!("{} (uid {})", dash(&c.user), c.uid));
    field("pid", c.pid.to_string());
    field("command", command_line(&c.command));
    field("cwd", dash(&c.cwd));
    if c.ancestry.is_empty() {
        field("ancestry", "-".to_owned());
    }
    for (i, p) in c.ancestry.iter().enumerate() {
        field(
            if i == 0 { "ancestry" } else { "" },
            format!("{} {}: {}", p.pid, dash(&p.comm), command_line(&p.argv)),
        );
    }
    field("path", dash(&c.path));
    field("operations", dash(&c.operations.join(", ")));
    field(
        "reason",
        if c.reason.is_empty() {
            "(none given)".to_owned()
        } else {
            term(&c.reason)
        },
    );
    field("rule", dash(&c.rule));
    field("mode", dash(&c.mode));
    field("fail verdict", dash(&c.fail_verdict));
    field(
        "content",
        if c.content_sha256.is_empty() {
            "none (the file did not exist)".to_owned()
        } else {
            format!("sha256 {}", term(&c.content_sha256))
        },
    );
    field("created", when(r.created_unix_ms, now_ms));
    field("deadline", when(r.deadline_unix_ms, now_ms));
    if let Some(d) = &r.decision {
        field("decision", decision_line(d, now_ms));
        if let Some(g) = &d.grant {
            field("grant", grants::grant_summary(g, now_ms));
        }
    }
    s
}

fn decision_line(d: &pb::Decision, now_ms: i64) -> String {
    let mut s = format!(
        "{} by {} at {}",
        state_name(d.state),
        dash(&d.decided_by),
        when(d.decided_unix_ms, now_ms)
    );
    if !d.verdict.is_empty() {
        s.push_str(&format!(", verdict {}", term(&d.verdict)));
    }
    if !d.note.is_empty() {
        s.push_str(&format!(", note: {}", term(&d.note)));
    }
    s
}

/// What `approvals watch` prints for one stream item: the full view for a pending
/// request, one line for a state change.
pub fn render_watch_item(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    if r.state == pb::RequestState::Pending as i32 {
        let mut s = render_request(r, now_ms);
        s.push('\n');
        return s;
    }
    let path = r
        .context
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| dash(&c.path));
    match &r.decision {
        Some(d) => format!("request {} {}: {}\n", r.id, path, decision_line(d, now_ms)),
        None => format!("request {} {}: {}\n", r.id, path, state_name(r.state)),
    }
}

/// What `approve`/`deny` print on success.
pub fn render_decided(r: &pb::ApprovalRequest, now_ms: i64) -> String {
    let path = r
        .context
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| dash(&c.path));
    let mut s = format!("request {} ({path}): {}\n", r.id, state_name(r.state));
    if let Some(g) = r.decision.as_ref().and_then(|d| d.grant.as_ref()) {
        s.push_str(&format!("grant {}\n", grants::grant_summary(g, now_ms)));
    }
    s
}

/// A request as JSON (proto field names; times also as RFC 3339 UTC).
pub fn request_json(r: &pb::ApprovalRequest) -> Value {
    let context = r.context.as_ref().map(|c| {
        json!({
            "host": c.host,
            "session_id": c.session_id,
            "agent": c.agent,
            "uid": c.uid,
            "user": c.user,
            "pid": c.pid,
            "command": c.command,
            "ancestry": c.ancestry.iter().map(|p| json!({
                "pid": p.pid, "comm": p.comm, "argv": p.argv,
            })).collect::<Vec<_>>(),
            "cwd": c.cwd,
            "path": c.path,
            "operations": c.operations,
            "reason": c.reason,
            "content_sha256": c.content_sha256,
            "rule": c.rule,
            "mode": c.mode,
            "fail_verdict": c.fail_verdict,
        })
    });
    let decision = r.decision.as_ref().map(|d| {
        json!({
            "state": state_name(d.state),
            "decided_by": d.decided_by,
            "note": d.note,
            "decided_unix_ms": d.decided_unix_ms,
            "decided": utc_time(d.decided_unix_ms),
            "verdict": d.verdict,
            "grant": d.grant.as_ref().map(grants::grant_json),
        })
    });
    json!({
        "id": r.id,
        "host_request_id": r.host_request_id,
        "state": state_name(r.state),
        "created_unix_ms": r.created_unix_ms,
        "created": utc_time(r.created_unix_ms),
        "deadline_unix_ms": r.deadline_unix_ms,
        "deadline": utc_time(r.deadline_unix_ms),
        "context": context,
        "decision": decision,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::connect::MAX_NOTE;
    pub use crate::cli::render::tests::NOW;

    pub fn request() -> pb::ApprovalRequest {
        pb::ApprovalRequest {
            id: 17,
            host_request_id: 3,
            context: Some(pb::RequestContext {
                host: "web-1".into(),
                session_id: 42,
                agent: "claude-code".into(),
                uid: 1000,
                user: "alice".into(),
                pid: 4242,
                command: vec!["sh".into(), "-c".into(), "echo x > /etc/app.conf".into()],
                ancestry: vec![
                    pb::ProcessInfo {
                        pid: 4242,
                        comm: "sh".into(),
                        argv: vec!["sh".into(), "-c".into(), "echo x".into()],
                    },
                    pb::ProcessInfo {
                        pid: 4000,
                        comm: "claude".into(),
                        argv: vec!["claude".into()],
                    },
                ],
                path: "/etc/app\n.conf".into(),
                operations: vec!["write".into(), "truncate".into()],
                reason: "update the port\u{1b}[2J".into(),
                content_sha256: "ab".repeat(32),
                rule: "etc".into(),
                mode: "hold".into(),
                fail_verdict: "deny".into(),
                cwd: "/home/alice".into(),
            }),
            created_unix_ms: NOW - 60_000,
            deadline_unix_ms: NOW + 252_000,
            state: pb::RequestState::Pending as i32,
            decision: None,
        }
    }

    #[test]
    fn ttl_parsing_and_limits() {
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1s").unwrap(), MIN_TTL);
        assert_eq!(parse_ttl("30days").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl(" 1h 30m ").unwrap(), Duration::from_secs(5400));
        let e = parse_ttl("31d").unwrap_err();
        assert!(e.contains("between 1s and 30days"), "{e}");
        assert!(parse_ttl("0s").unwrap_err().contains("between"));
        assert!(parse_ttl("1500ms").unwrap_err().contains("whole seconds"));
        assert!(parse_ttl("soon").unwrap_err().contains("not a duration"));
        assert!(parse_ttl("-5m").is_err());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        conn: ApproverArgs,
        #[command(subcommand)]
        cmd: ApprovalsCommand,
    }

    #[test]
    fn approve_arguments_parse() {
        let cli = Cli::try_parse_from([
            "approvals",
            "approve",
            "17",
            "--ttl",
            "90m",
            "--scope",
            "agent",
            "--glob",
            "/etc/app/*",
            "--note",
            "ok",
            "--approver",
            "unix:/tmp/a.sock",
        ])
        .unwrap();
        match cli.cmd {
            ApprovalsCommand::Approve {
                id,
                ttl,
                scope,
                glob,
                note,
                ..
            } => {
                assert_eq!(id, 17);
                assert_eq!(ttl, Some(Duration::from_secs(5400)));
                assert_eq!(scope, Some(ScopeArg::Agent));
                assert_eq!(glob.as_deref(), Some("/etc/app/*"));
                assert_eq!(note.as_deref(), Some("ok"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.conn.approver.as_deref(), Some("unix:/tmp/a.sock"));
        let e = Cli::try_parse_from(["a", "approve", "1", "--ttl", "90d"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("between"), "{e}");
        assert!(Cli::try_parse_from(["a", "approve", "1", "--scope", "host"]).is_err());
        // deny takes no grant options.
        assert!(Cli::try_parse_from(["a", "deny", "1", "--ttl", "1h"]).is_err());
    }

    #[test]
    fn connection_flags_override_the_configuration() {
        let base = ClientConfig {
            endpoint: "https://appr.example:7443".into(),
            ca: Some("/etc/confgate/ca.pem".into()),
            token: Some("from-config".into()),
            ..ClientConfig::default()
        };
        let none = ApproverArgs::default();
        assert_eq!(none.client_config(base.clone()), base);
        let token = ApproverArgs {
            token: Some("t2".into()),
            ..ApproverArgs::default()
        };
        let c = token.client_config(base.clone());
        assert_eq!(c.token.as_deref(), Some("t2"));
        assert_eq!(c.ca, base.ca);
        let other = ApproverArgs {
            approver: Some("unix:/run/other.sock".into()),
            ..ApproverArgs::default()
        };
        let c = other.client_config(base);
        assert_eq!(c.endpoint, "unix:/run/other.sock");
        assert_eq!(
            (c.ca.clone(), c.token.clone()),
            (None, None),
            "config TLS/token not sent elsewhere"
        );
        assert!(c.problems().is_empty());
    }

    #[test]
    fn decide_request_carries_the_attestation_and_checks_inputs() {
        let att = pb::AttestResponse {
            statement: b"{}".to_vec(),
            signature: vec![7; 64],
            host: "desk".into(),
        };
        let me = Some(&att);
        let r = decide_request(
            17,
            true,
            Some(Duration::from_secs(600)),
            Some("ok"),
            Some(ScopeArg::Session),
            Some("/etc/app/**"),
            me,
        )
        .unwrap();
        assert_eq!(
            (r.id, r.approve, r.ttl_seconds, r.scope),
            (17, true, 600, pb::GrantScope::Session as i32)
        );
        assert_eq!((r.decider_host.as_str(), r.decider_session), ("desk", 0));
        assert_eq!(
            (r.attestation.as_slice(), r.attestation_signature.len()),
            (&b"{}"[..], 64)
        );
        let d = decide_request(17, false, None, None, None, None, None).unwrap();
        assert_eq!((d.ttl_seconds, d.scope, d.path_glob.as_str()), (0, 0, ""));
        assert!(d.attestation.is_empty() && d.attestation_signature.is_empty());
        assert!(decide_request(1, true, None, Some("a\nb"), None, None, me).is_err());
        assert!(decide_request(1, true, None, None, None, Some("etc/*"), me).is_err());
        assert!(decide_request(1, true, None, None, None, Some("/etc/[a"), me).is_err());
        let long = "x".repeat(MAX_NOTE + 1);
        assert!(decide_request(1, true, None, Some(&long), None, None, me).is_err());
    }

    #[test]
    fn request_view_shows_the_whole_context_safely() {
        let s = render_request(&request(), NOW);
        for needle in [
            "request 17  PENDING",
            "host         web-1",
            "session      42",
            "agent        claude-code",
            "user         alice (uid 1000)",
            "pid          4242",
            "command      sh -c 'echo x > /etc/app.conf'",
            "cwd          /home/alice",
            "ancestry     4242 sh: sh -c 'echo x'",
            "             4000 claude: claude",
            "path         /etc/app\\n.conf",
            "operations   write, truncate",
            "reason       update the port\\u{1b}[2J",
            "rule         etc",
            "mode         hold",
            "fail verdict deny",
            "content      sha256 abab",
            "(1m ago)",
            "(in 4m 12s)",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert!(
            !s.contains('\u{1b}'),
            "escape sequence reached the terminal"
        );
        let lines = s.lines().count();
        assert_eq!(lines, 19, "one line per field:\n{s}");
        let mut gone = request();
        if let Some(c) = gone.context.as_mut() {
            c.content_sha256.clear();
        }
        assert!(render_request(&gone, NOW).contains("none (the file did not exist)"));
    }

    #[test]
    fn decided_request_shows_decision_and_grant() {
        let mut r = request();
        r.state = pb::RequestState::Approved as i32;
        r.decision = Some(pb::Decision {
            request_id: 17,
            state: pb::RequestState::Approved as i32,
            decided_by: "unix:root".into(),
            note: "fine".into(),
            decided_unix_ms: NOW - 1000,
            verdict: String::new(),
            grant: Some(crate::cli::grants::tests::grant()),
        });
        let s = render_request(&r, NOW);
        assert!(s.contains("decision     approved by unix:root at "), "{s}");
        assert!(s.contains("note: fine"), "{s}");
        assert!(
            s.contains("grant        5: session 42 (claude-code) on web-1"),
            "{s}"
        );
        let w = render_watch_item(&r, NOW);
        assert_eq!(w.lines().count(), 1, "{w}");
        assert!(
            w.starts_with("request 17 /etc/app\\n.conf: approved by unix:root"),
            "{w}"
        );
        let d = render_decided(&r, NOW);
        assert!(
            d.starts_with("request 17 (/etc/app\\n.conf): approved\ngrant 5: "),
            "{d}"
        );
    }

    #[test]
    fn list_table_is_one_line_per_request() {
        let mut other = request();
        other.id = 18;
        if let Some(c) = other.context.as_mut() {
            c.path = format!("/etc/{}", "d/".repeat(100));
        }
        let s = render_list(&[request(), other], false, NOW);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].starts_with("ID  STATE"), "{s}");
        assert!(
            lines[1].contains("pending") && lines[1].contains("in 4m 12s"),
            "{s}"
        );
        assert!(lines[2].ends_with('…'), "long path shortened: {s}");
        assert_eq!(
            render_list(&[], false, NOW),
            "no pending approval requests\n"
        );
    }

    #[test]
    fn json_keeps_values_exact() {
        let v = request_json(&request());
        assert_eq!(v["id"], 17);
        assert_eq!(v["state"], "pending");
        assert_eq!(v["context"]["path"], "/etc/app\n.conf");
        assert_eq!(v["context"]["ancestry"][1]["comm"], "claude");
        assert_eq!(v["deadline_unix_ms"], NOW + 252_000);
        assert_eq!(v["deadline"], "2026-05-01T12:04:12.000Z");
        assert!(v["decision"].is_null());
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn command_lines_quote_what_is_not_one_word() {
        assert_eq!(
            command_line(&["vim".into(), "a b".into(), "".into(), "it's".into()]),
            "vim 'a b' '' 'it'\\''s'"
        );
        assert_eq!(command_line(&[]), "-");
    }
}
