//! `confgate`: the daemon and the commands people type.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use monitor::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "confgate",
    version,
    about = "Detect, attribute and gate configuration writes by AI agents"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "CONFGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Daemon socket (default: daemon.socket from the configuration).
    #[arg(long, global = true, env = "CONFGATE_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// PATH shims that start agents under `confgate run`: install, remove.
    Shim {
        #[command(subcommand)]
        command: ShimCommand,
    },
    /// List agent sessions.
    Sessions {
        #[arg(long)]
        json: bool,
        /// Include ended sessions.
        #[arg(long)]
        all: bool,
    },
    /// Show the daemon's counters (kernel drops, fallbacks, errors).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Stream events from the running daemon (NDJSON, or compact lines), optionally filtered.
    Events {
        #[command(flatten)]
        filters: monitor::cli::events::Filters,
        /// Output format: the daemon's NDJSON lines, or one compact line per event.
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: monitor::cli::events::Output,
    },
    /// Approval requests of the gate: list, watch, show, approve, deny.
    Approvals {
        #[command(flatten)]
        conn: monitor::cli::connect::ApproverArgs,
        #[command(subcommand)]
        command: monitor::cli::approvals::ApprovalsCommand,
    },
    /// Grants created by approvals: list, revoke.
    Grants {
        #[command(flatten)]
        conn: monitor::cli::connect::ApproverArgs,
        #[command(subcommand)]
        command: monitor::cli::grants::GrantsCommand,
    },
    /// Every difference between the live tree and the approved baseline, attributed, with
    /// a diff (exit 1 when there is any).
    Drift {
        /// Paths (files or directories) to compare; default: every watched and gated tree.
        paths: Vec<OsString>,
        #[arg(long)]
        json: bool,
    },
    /// Put paths back to the approved baseline: content, mode and owner in place; deleted
    /// files recreated, created ones removed (root).
    Revert {
        #[arg(required = true)]
        paths: Vec<OsString>,
        /// What to revert to (only the baseline for now).
        #[arg(long, value_parser = ["baseline"], default_value = "baseline")]
        to: String,
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
        command: monitor::cli::audit::AuditCommand,
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
}

#[derive(Subcommand)]
enum BaselineCommand {
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
enum ShimCommand {
    /// Install shims for AGENT commands (default: every known agent found in PATH: claude,
    /// codex, aider, gemini, cursor-agent, opencode, goose, amp, qwen, crush). Each execs
    /// `confgate run --agent NAME -- <the real binary>`, resolved now from PATH outside DIR;
    /// a named agent that is not found is an error, an unnamed one is skipped.
    Install {
        /// Commands to shim.
        agents: Vec<String>,
        /// Shim directory (put it first in PATH).
        #[arg(long, default_value = monitor::cli::shim::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Remove confgate's shims from DIR (files that are not confgate shims stay).
    Remove {
        /// Shim directory.
        #[arg(long, default_value = monitor::cli::shim::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
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
enum ApproverCommand {
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

/// Logs go to stderr; `CONFGATE_LOG` overrides the level (daemon: info, commands: warn).
/// A service (the daemon, `approver serve`) whose stderr is systemd's journal stream logs
/// to the journal's native socket instead, each field of an event as a journal field
/// (`CONFGATE_SESSION=3`, ...; `journalctl -u confgate CONFGATE_SESSION=3`).
fn init_logging(daemon: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONFGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let journal = monitor::os::journal::logs_to_journal(
        daemon,
        monitor::os::journal::stderr_is_journal(),
        monitor::os::journal::socket_exists(),
    );
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier("confgate".to_owned())
                    .with_field_prefix(Some("CONFGATE".to_owned()));
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!(
                "confgate: cannot log to the journal ({}: {e}); logging to stderr",
                monitor::os::journal::SOCKET
            ),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    Ok(Config::load_or_default(&path, explicit)?)
}

/// The ledger `audit` reads: the approval service's when `--config` names an
/// `approver.toml`, else the daemon's (`<daemon.state_dir>/ledger.jsonl`).
fn default_ledger(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.config
        && std::fs::read_to_string(p)
            .is_ok_and(|t| monitor::cli::check_approver::looks_like_approver(&t))
    {
        return Ok(monitor::approver::config::ServiceConfig::load(p)?.ledger);
    }
    Ok(monitor::ledger::default_path(
        &load_config(cli)?.daemon.state_dir,
    ))
}

fn socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.socket {
        Some(s) => Ok(s.clone()),
        None => Ok(load_config(cli)?.daemon.socket),
    }
}

/// The daemon holds secrets in its memory and environment (tokens, keys): no core dumps,
/// and `/proc/<pid>/{environ,mem,maps,fd}` need CAP_SYS_PTRACE, even for processes of the
/// same uid (an agent session running as root without that capability).
fn make_undumpable() {
    if let Err(e) = monitor::os::limits::set_undumpable() {
        eprintln!("confgate: warning: prctl(PR_SET_DUMPABLE, 0) failed: {e}");
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

/// The daemon and the approval service may be given secrets in their environment: the
/// block `/proc/<pid>/environ` shows is zeroed once every variable was copied
/// ([`monitor::os::environ`]). Must run before any thread starts.
fn hide_environ() -> Result<monitor::os::environ::Hidden, monitor::os::environ::EnvironError> {
    // SAFETY: called from `main` right after the arguments were parsed, before the logger,
    // the tokio runtime or anything else starts a thread (hide_initial also checks
    // /proc/self/task and refuses if another thread exists).
    unsafe { monitor::os::environ::hide_initial() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = matches!(
        cli.command,
        Command::Daemon
            | Command::Approver {
                command: ApproverCommand::Serve
            }
    );
    let hidden = service.then(hide_environ);
    init_logging(service);
    match hidden {
        Some(Ok(h)) => tracing::info!(
            kept = h.kept,
            dropped = h.dropped,
            zeroed_bytes = h.zeroed,
            "start-up environment copied and hidden from /proc/self/environ"
        ),
        Some(Err(e)) => tracing::warn!(
            "the start-up environment stays readable in /proc/{}/environ: {e}",
            std::process::id()
        ),
        None => {}
    }
    let result: anyhow::Result<i32> = (|| match &cli.command {
        Command::Daemon => {
            make_undumpable();
            let cfg = load_config(&cli)?;
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            // Blocking work (pre-images, store commits, ledger appends, /proc reads) is
            // short; a burst of held opens queues for these threads instead of starting
            // hundreds (2000 held opens started 517 threads with tokio's default of 512).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(monitor::daemon::MAX_BLOCKING_THREADS)
                .build()
                .context("tokio runtime")?;
            rt.block_on(monitor::daemon::run(cfg, &path))?;
            Ok(0)
        }
        Command::Run {
            agent,
            reason,
            no_confine,
            command,
        } => {
            // confgate's own failures exit 125 (like env(1)), before the command ever runs.
            let socket = match socket(&cli) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("confgate: {e:#}");
                    return Ok(monitor::cli::run::EXIT_CONFGATE);
                }
            };
            // `Some(None)`: no reason given; `None`: one that is not UTF-8.
            let reason = match reason {
                None => Some(None),
                Some(r) => r.to_str().map(Some),
            };
            let (Some(agent), Some(reason)) = (agent.to_str(), reason) else {
                eprintln!(
                    "confgate: --agent and --reason must be UTF-8 (agent names are 1-64 printable ASCII characters); the command was not run"
                );
                return Ok(monitor::cli::run::EXIT_CONFGATE);
            };
            let confine = if *no_confine {
                monitor::cli::run::Confine::No
            } else {
                match load_config(&cli) {
                    Ok(cfg) => monitor::cli::run::Confine::Helper {
                        supervise_socket: cfg.daemon.supervise_socket,
                    },
                    Err(e) => {
                        eprintln!("confgate: {e:#}; the command was not run");
                        return Ok(monitor::cli::run::EXIT_CONFGATE);
                    }
                }
            };
            // On success the command replaces this process; only failures return.
            match monitor::cli::run::run(&socket, agent, reason, command, &confine) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("confgate: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::Shim {
            command: ShimCommand::Install { agents, dir },
        } => {
            let mut global_args: Vec<OsString> = Vec::new();
            if let Some(c) = &cli.config {
                global_args.push("--config".into());
                global_args.push(std::path::absolute(c)?.into());
            }
            if let Some(s) = &cli.socket {
                global_args.push("--socket".into());
                global_args.push(std::path::absolute(s)?.into());
            }
            let opts = monitor::cli::shim::Install {
                dir: dir.clone(),
                names: agents.clone(),
                path_var: std::env::var_os("PATH").unwrap_or_default(),
                confgate: std::env::current_exe().context("locating the confgate binary")?,
                global_args,
            };
            monitor::cli::shim::install(&opts, &mut std::io::stdout().lock())
        }
        Command::Shim {
            command: ShimCommand::Remove { dir },
        } => monitor::cli::shim::remove(dir, &mut std::io::stdout().lock()),
        Command::Sessions { json, all } => {
            monitor::cli::sessions::sessions(&socket(&cli)?, *json, *all)
        }
        Command::Stats { json } => monitor::cli::stats::stats(&socket(&cli)?, *json),
        Command::Events { filters, output } => {
            monitor::cli::events::events(&socket(&cli)?, filters, *output)
        }
        Command::Approvals { conn, command } => {
            let cfg = load_config(&cli)?;
            let socket = cli
                .socket
                .clone()
                .unwrap_or_else(|| cfg.daemon.socket.clone());
            monitor::cli::approvals::run(command, conn, &cfg, &socket)
        }
        Command::Grants { conn, command } => {
            monitor::cli::grants::run(command, conn, &load_config(&cli)?)
        }
        Command::Drift { paths, json } => {
            monitor::cli::baseline::drift(&socket(&cli)?, paths, *json)
        }
        Command::Revert { paths, json, .. } => {
            monitor::cli::baseline::revert(&socket(&cli)?, paths, *json)
        }
        Command::Baseline {
            command: BaselineCommand::Accept { paths, note, json },
        } => monitor::cli::baseline::accept(&socket(&cli)?, paths, note, *json),
        Command::Audit { command } => {
            Ok(monitor::cli::audit::run(command, || default_ledger(&cli)))
        }
        Command::Store {
            command: StoreCommand::Check { files },
        } => {
            let files = if files.is_empty() {
                monitor::cli::store_check::default_files(&load_config(&cli)?.daemon.state_dir)
            } else {
                files.clone()
            };
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            Ok(monitor::cli::store_check::check(&files, &mut out, &mut err))
        }
        // For `approver serve`, --config names the service's approver.toml.
        Command::Approver {
            command: ApproverCommand::Serve,
        } => monitor::cli::approver::serve(cli.config.as_deref()),
        Command::Approver {
            command:
                ApproverCommand::InitCa {
                    dir,
                    hosts,
                    approvers,
                    server_names,
                    force,
                },
        } => monitor::cli::approver::ca(&monitor::approver::ca::CaRequest {
            dir: dir.clone(),
            hosts: hosts.clone(),
            approvers: approvers.clone(),
            server_names: server_names.clone(),
            force: *force,
        }),
        Command::CheckConfig { path, approver } => {
            let path = path.clone().or_else(|| cli.config.clone());
            monitor::cli::check_config::run(path.as_deref(), *approver)
        }
    })();
    match result {
        Ok(c) => code(c),
        // The reader of stdout went away (`confgate stats | head`): nothing to report.
        Err(e) if monitor::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
