//! `confgate`: the daemon and the commands people type.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use monitor::cli::args::{
    ApproverCommand, BaselineCommand, Cli, Command, SessionsCommand, ShimCommand, StoreCommand,
};
use monitor::config::{Config, DEFAULT_CONFIG_PATH};

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

/// The daemon's socket for commands agents run (`propose`, `mcp`): `--socket`, else the
/// configuration's, else the default (a confined session cannot read the configuration).
fn agent_socket(cli: &Cli) -> PathBuf {
    socket(cli)
        .ok()
        .or_else(|| lenient_socket(cli))
        .unwrap_or_else(|| PathBuf::from(monitor::api::DEFAULT_SOCKET))
}

/// `daemon.socket` of a configuration file that is TOML but does not validate (the
/// default socket when it names none); `None` when it is not TOML at all.
fn lenient_socket(cli: &Cli) -> Option<PathBuf> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(PathBuf::from(
        v.get("daemon")
            .and_then(|d| d.get("socket"))
            .and_then(toml::Value::as_str)
            .unwrap_or(monitor::api::DEFAULT_SOCKET),
    ))
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
            scope,
            scope_file,
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
            let scope = match monitor::cli::run::declared_scope(scope, scope_file.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("confgate: {e:#}; the command was not run");
                    return Ok(monitor::cli::run::EXIT_CONFGATE);
                }
            };
            if *no_confine && !scope.is_empty() {
                eprintln!(
                    "confgate: --scope is enforced by the session's confinement and cannot be combined with --no-confine; the command was not run"
                );
                return Ok(monitor::cli::run::EXIT_CONFGATE);
            }
            let confine = if *no_confine {
                monitor::cli::run::Confine::No
            } else {
                match load_config(&cli) {
                    Ok(cfg) => monitor::cli::run::Confine::Helper {
                        supervise_socket: cfg.daemon.supervise_socket,
                        scope,
                    },
                    Err(e) => {
                        eprintln!("confgate: {e:#}; the command was not run");
                        return Ok(monitor::cli::run::EXIT_CONFGATE);
                    }
                }
            };
            // The command runs in a child (the session's root process); this process waits
            // for it, reports its exit status to the daemon and ends the same way.
            Ok(monitor::cli::launch::launch(
                &socket, agent, reason, command, &confine,
            ))
        }
        Command::Shim {
            command: ShimCommand::Install { agents, dir, scope },
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
                scope: monitor::cli::run::declared_scope(scope, None)?,
            };
            monitor::cli::shim::install(&opts, &mut std::io::stdout().lock())
        }
        Command::Shim {
            command: ShimCommand::Remove { dir },
        } => monitor::cli::shim::remove(dir, &mut std::io::stdout().lock()),
        Command::Sessions {
            command: Some(SessionsCommand::Show { id, json }),
            ..
        } => {
            let cfg = load_config(&cli)?;
            monitor::cli::session_report::show(
                &socket(&cli)?,
                &cfg.daemon.state_dir.join(monitor::ledger::FILE_NAME),
                &cfg.output.events_file,
                *id,
                *json,
            )
        }
        Command::Sessions {
            json,
            all,
            agent,
            since,
            command: None,
        } => {
            let since = since
                .as_deref()
                .map(monitor::cli::sessions::parse_since)
                .transpose()?;
            monitor::cli::sessions::sessions(&socket(&cli)?, *json, *all, agent.as_deref(), since)
        }
        Command::Stats { json } => monitor::cli::stats::stats(&socket(&cli)?, *json),
        Command::Events { filters, output } => {
            monitor::cli::events::events(&socket(&cli)?, filters, *output)
        }
        Command::Reload { json } => {
            // A file that does not validate still names the daemon's socket when it is
            // TOML: the daemon is asked, refuses it and ledgers the refusal.
            let socket = match socket(&cli) {
                Ok(s) => s,
                Err(e) => match lenient_socket(&cli) {
                    Some(s) => {
                        eprintln!("confgate: {e:#}");
                        s
                    }
                    None => {
                        eprintln!(
                            "confgate: {e:#}; the running daemon was not asked (its socket is \
                             unknown: pass --socket to have it refuse the file too)"
                        );
                        return Ok(monitor::cli::reload::EXIT_REFUSED);
                    }
                },
            };
            monitor::cli::reload::reload(&socket, *json)
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
        Command::Revert { paths, json, to } => {
            monitor::cli::baseline::revert(&socket(&cli)?, paths, *to, *json)
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
        } => {
            // It holds the signing keys, the OIDC client secret and every host's pending
            // requests: no core dumps, no ptrace by same-uid processes.
            make_undumpable();
            monitor::cli::approver::serve(cli.config.as_deref())
        }
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
        Command::Propose {
            path,
            from,
            reason,
            ttl,
            wait,
            json,
        } => {
            monitor::cli::propose::run(&agent_socket(&cli), path, from, reason, *ttl, *wait, *json)
        }
        Command::Proposals { id, wait, json } => {
            monitor::cli::propose::show(&agent_socket(&cli), *id, *wait, *json)
        }
        Command::Mcp => monitor::cli::mcp::serve(&agent_socket(&cli)),
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
