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
//!
//! The connection and the attestation are [`super::connect`]; what a request looks like is
//! [`super::render::approvals`].
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Subcommand, ValueEnum};

use super::connect::{ApproverArgs, check_note, explain, local_attestation, runtime, service};
use super::render::approvals::{
    hidden_line, render_decided, render_list, render_request, render_watch_item, request_json,
};
use super::render::print_list;
use crate::approver::client::ApproverChannel;
use crate::config::Config;
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

/// Shortest grant lifetime `--ttl` accepts.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest grant lifetime `--ttl` accepts (the API's limit; the service may set a lower
/// `max_ttl`).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

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
        #[arg(long, conflicts_with_all = ["suggested", "session_set"])]
        glob: Option<String>,
        /// Widen the grant to the request's suggested glob (the narrowest directory of what
        /// its session asked for so far; `approvals show` lists it), session scope.
        #[arg(long, conflicts_with = "session_set")]
        suggested: bool,
        /// Approve every pending request of this request's session with one glob covering
        /// them all and the session's earlier requests (session scope). Needs the glob you
        /// reviewed (`--expect-glob`) or the ids you reviewed (`--ids`).
        #[arg(long)]
        session_set: bool,
        /// With `--suggested` or `--session-set`: the glob you reviewed (`approvals list` /
        /// `show`); refused when the suggestion is now a different one.
        #[arg(long, value_name = "GLOB")]
        expect_glob: Option<String>,
        /// With `--session-set`: approve only these requests of the set (comma-separated
        /// ids, as reviewed); refused when one is not in the set.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        ids: Vec<u64>,
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
        operations: Vec::new(),
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
                suggested,
                session_set,
                expect_glob,
                ids: reviewed,
                no_daemon,
                json,
            } => {
                let mut c = service(&client_cfg).await?;
                let reviewed = super::approvals_set::Reviewed {
                    glob: expect_glob.as_deref(),
                    ids: reviewed,
                };
                let (ids, glob, scope, ops) = if *session_set {
                    let set = super::approvals_set::session_set(&mut c, *id, &reviewed).await?;
                    (
                        set.ids,
                        Some(set.glob),
                        Some(ScopeArg::Session),
                        set.operations,
                    )
                } else if *suggested {
                    let set = super::approvals_set::suggested(&mut c, *id, &reviewed).await?;
                    (
                        set.ids,
                        Some(set.glob),
                        Some(ScopeArg::Session),
                        set.operations,
                    )
                } else {
                    if expect_glob.is_some() || !reviewed.ids.is_empty() {
                        anyhow::bail!(
                            "--expect-glob and --ids go with --suggested or --session-set"
                        );
                    }
                    (vec![*id], glob.clone(), *scope, Vec::new())
                };
                for id in ids {
                    let attestation = local_attestation(socket, id, true, *no_daemon).await?;
                    let mut req = decide_request(
                        id,
                        true,
                        *ttl,
                        note.as_deref(),
                        scope,
                        glob.as_deref(),
                        attestation.as_ref(),
                    )?;
                    // A burst's grant: the operations its requests asked for.
                    req.operations = ops.clone();
                    decide(&mut c, req, *json, now_ms(), &mut out).await?;
                }
                Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::connect::MAX_NOTE;

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
}
