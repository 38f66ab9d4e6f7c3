//! The `confgate` command line (clap): what `main.rs` parses, and what `cargo xtask deb`
//! renders as man pages and shell completions ([`command`]).
use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory as _, Parser, Subcommand};

/// The whole command line as clap's [`clap::Command`] (for man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Parser)]
#[command(
    name = "confgate",
    version,
    about = "Detect, attribute and gate configuration writes by AI agents"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "CONFGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Daemon socket (default: daemon.socket from the configuration).
    #[arg(long, global = true, env = "CONFGATE_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the host daemon (root): load the eBPF programs, watch the configured paths.
    Daemon,
    /// Run a command as an agent session: every write it or its descendants make is attributed.
    Run {
        /// Agent name shown in events and approvals.
        // OsString: a name that is not UTF-8 is refused by confgate (exit 125), not by clap.
        #[arg(long)]
        agent: OsString,
        /// Why the agent runs (travels with its events).
        #[arg(long)]
        reason: Option<OsString>,
        /// Do not confine the session (no Landlock, no seccomp supervision): observation and
        /// the fanotify gate only. For kernels without Landlock ABI 6 (Linux < 6.12).
        #[arg(long)]
        no_confine: bool,
        /// Declared scope: an absolute glob of paths the session may write at all (repeatable;
        /// `*` stays within one component, `**` crosses them). Writes outside it are refused
        /// at once (EACCES), counted and recorded as `scope_denied`. Needs confinement.
        #[arg(long = "scope", value_name = "GLOB")]
        scope: Vec<String>,
        /// Read more scope globs from FILE, one per line (blank lines and `#` comments skipped).
        #[arg(long, value_name = "FILE")]
        scope_file: Option<std::path::PathBuf>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// PATH shims that start agents under `confgate run`: install, remove.
    Shim {
        #[command(subcommand)]
        command: ShimCommand,
    },
    /// List agent sessions; `sessions show ID`: one session's report.
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        #[arg(long)]
        json: bool,
        /// Include ended sessions.
        #[arg(long)]
        all: bool,
        /// Only sessions of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions started since: an RFC 3339 time or a duration back from now (2h).
        #[arg(long)]
        since: Option<String>,
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// Show the daemon's counters (kernel drops, fallbacks, errors).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Stream events from the running daemon (NDJSON, or compact lines), optionally filtered.
    Events {
        #[command(flatten)]
        filters: crate::cli::events::Filters,
        /// Output format: the daemon's NDJSON lines, or one compact line per event.
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: crate::cli::events::Output,
    },
    /// Make the running daemon re-read its configuration (as SIGHUP does): a file that
    /// does not validate is refused (exit 1, line and column shown) and the running
    /// configuration stays; settings that need a restart are listed.
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Approval requests of the gate: list, watch, show, approve, deny.
    Approvals {
        #[command(flatten)]
        conn: crate::cli::connect::ApproverArgs,
        #[command(subcommand)]
        command: crate::cli::approvals::ApprovalsCommand,
    },
    /// Grants created by approvals: list, revoke.
    Grants {
        #[command(flatten)]
        conn: crate::cli::connect::ApproverArgs,
        #[command(subcommand)]
        command: crate::cli::grants::GrantsCommand,
    },
    /// Every difference between the live tree and the approved baseline, attributed, with
    /// a diff (exit 1 when there is any).
    Drift {
        /// Paths (files or directories) to compare; default: every watched and gated tree.
        paths: Vec<OsString>,
        #[arg(long)]
        json: bool,
    },
    /// Put paths back to the approved baseline (or to the state ledger record SEQ left
    /// them in): content, mode and owner in place; deleted files recreated, created ones
    /// removed (root).
    Revert {
        #[arg(required = true)]
        paths: Vec<OsString>,
        /// What to revert to: `baseline`, or SEQ, a ledger record (`baseline_moved`,
        /// `baseline_revert`, `drift_detected`; see `confgate audit log`).
        #[arg(long, value_name = "baseline|SEQ", value_parser = crate::cli::baseline::parse_to, default_value = "baseline")]
        to: u64,
        #[arg(long)]
        json: bool,
    },
    /// The approved baseline: accept what a path is now as approved (root, outside any
    /// agent session).
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Read and check the host's hash-chained audit ledger.
    Audit {
        #[command(subcommand)]
        command: crate::cli::audit::AuditCommand,
    },
    /// Check the embedded stores without changing them.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The approval service: run it, or make its certificates.
    Approver {
        #[command(subcommand)]
        command: ApproverCommand,
    },
    /// Validate a configuration file (errors with line and column).
    CheckConfig {
        /// File to check (default: --config or /etc/confgate/config.toml). An approval
        /// service's approver.toml is recognised by its keys.
        path: Option<PathBuf>,
        /// Check it as an approval service's approver.toml (default path
        /// /etc/confgate/approver.toml).
        #[arg(long)]
        approver: bool,
    },
    /// Propose the exact new content of a configuration file (for agents): filed as an
    /// approval request with the diff; on approval the daemon writes it atomically (mode
    /// and owner kept) unless the file changed since (conflict). Prints the request id; with
    /// --wait, the outcome (exit 0 applied, 2 denied, 3 conflict, 4 expired, 5 other).
    Propose {
        /// The file to change (under the watched or gated trees).
        path: OsString,
        /// Where the new content is: a file, or - for standard input (at most 1 MiB).
        #[arg(long, value_name = "FILE|-")]
        from: PathBuf,
        /// Why (approvers see it).
        #[arg(long)]
        reason: String,
        /// How long approvers have (default: gate.request_ttl; 10s .. 7d).
        #[arg(long, value_parser = parse_proposal_ttl)]
        ttl: Option<std::time::Duration>,
        /// Wait for the decision and print the outcome.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Your own proposals (this agent session's; outside sessions: your user's), or one of
    /// them by id; with --wait, wait for its decision (exit status as `propose --wait`).
    Proposals {
        /// A proposal id (default: list them all).
        id: Option<u64>,
        /// Wait for the decision of ID.
        #[arg(long, requires = "id")]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve the Model Context Protocol over stdio (JSON-RPC 2.0, one message a line) for
    /// an agent: tools propose_change, request_status, list_my_requests.
    Mcp,
}

/// Parses `propose --ttl`.
fn parse_proposal_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (\"30m\", \"2h\", \"1d\"): {e}"))?;
    if d < crate::propose::MIN_TTL || d > crate::propose::MAX_TTL {
        return Err(format!("{s:?}: between 10s and 7d"));
    }
    Ok(d)
}

#[derive(Subcommand)]
pub enum BaselineCommand {
    /// Move the baseline of each path (a directory: everything below it) to what it is now.
    Accept {
        #[arg(required = true)]
        paths: Vec<OsString>,
        /// Why (kept in the ledger).
        #[arg(long)]
        note: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// One session's report: its start record, changes, gate decisions and who made them,
    /// grants and expiry, flags and reverts, and what of it is drift now (root).
    Show {
        /// The session's id.
        id: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ShimCommand {
    /// Install shims for AGENT commands (default: every known agent found in PATH: claude,
    /// codex, aider, gemini, cursor-agent, opencode, goose, amp, qwen, crush). Each execs
    /// `confgate run --agent NAME -- <the real binary>`, resolved now from PATH outside DIR;
    /// a named agent that is not found is an error, an unnamed one is skipped.
    Install {
        /// Commands to shim.
        agents: Vec<String>,
        /// Shim directory (put it first in PATH).
        #[arg(long, default_value = crate::cli::shim::DEFAULT_DIR)]
        dir: PathBuf,
        /// Declared scope baked into the shims (`confgate run --scope GLOB`); repeatable.
        #[arg(long = "scope", value_name = "GLOB")]
        scope: Vec<String>,
    },
    /// Remove confgate's shims from DIR (files that are not confgate shims stay).
    Remove {
        /// Shim directory.
        #[arg(long, default_value = crate::cli::shim::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Check each store file (default: <daemon.state_dir>/confgate.redb and the local
    /// approval service's approver/approver.redb): exit 0 when intact, 1 when damaged or
    /// holding records that do not decode, 2 when a file could not be checked (e.g. the
    /// daemon holds it: stop it first).
    Check {
        /// Store files to check instead of the defaults.
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ApproverCommand {
    /// Run the approval service (settings: --config, default /etc/confgate/approver.toml).
    Serve,
    /// Make a CA and issue host, approver and server certificates (rcgen, ECDSA P-256).
    InitCa {
        /// Directory of the CA and certificates (created 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Issue a host certificate (CN=NAME, OU=host); repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Issue an approver certificate (CN=NAME, OU=approver); repeatable.
        #[arg(long = "approver", value_name = "NAME")]
        approvers: Vec<String>,
        /// Name or IP of the service for its certificate (the first is its CN); repeatable.
        /// Added to localhost, 127.0.0.1, ::1 and this host's name, which are always in it.
        #[arg(long = "server-name", value_name = "DNS")]
        server_names: Vec<String>,
        /// Replace an existing CA and existing certificate files.
        #[arg(long)]
        force: bool,
    },
}
