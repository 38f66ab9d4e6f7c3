//! What an empty configuration file means: every section's defaults, the default watch
//! set and the built-in agent detection rules (`deploy/config.toml` spells them all out).
use std::path::PathBuf;

use super::client;
use super::schema::{
    ApprovalMode, ApprovalSection, BaselineSection, Config, CorrelationSection, DaemonSection,
    DetectRule, DriftSection, KernelSection, OutputFormat, OutputSection, StdoutMode, WatchSection,
};
use crate::policy::GateConfig;

/// `daemon.credential_env`: names of environment variables that commonly hold
/// credentials (globs, case-insensitive).
pub const DEFAULT_CREDENTIAL_ENV: &[&str] = &[
    "*_KEY",
    "*_TOKEN",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "AWS_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_*",
    "KUBECONFIG",
    "SSH_AUTH_SOCK",
    "VAULT_*",
    "NPM_TOKEN",
    "DOCKER_AUTH_CONFIG",
];

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket: PathBuf::from("/run/confgate/confgate.sock"),
            socket_mode: 0o666,
            admin_group: None,
            state_dir: PathBuf::from("/var/lib/confgate"),
            supervise_socket: PathBuf::from("/run/confgate/supervise.sock"),
            credential_env: DEFAULT_CREDENTIAL_ENV
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            events_file: PathBuf::from("/var/log/confgate/events.ndjson"),
            stdout: StdoutMode::Auto,
            stats_interval_secs: 60,
            format: OutputFormat::Confgate,
            nats: crate::nats::NatsConfig::default(),
        }
    }
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            ringbuf_bytes: 8 << 20,
            path_filter: true,
            skip_programs: Vec::new(),
        }
    }
}

impl Default for WatchSection {
    fn default() -> Self {
        let paths = [
            "/etc",
            "/etc/crontab",
            "/etc/cron.d",
            "/etc/cron.hourly",
            "/etc/cron.daily",
            "/etc/cron.weekly",
            "/etc/cron.monthly",
            "/etc/systemd",
            "/var/spool/cron",
            "/run/systemd/system",
            "/usr/lib/systemd/system",
        ];
        WatchSection {
            paths: paths.iter().map(PathBuf::from).collect(),
            exclude: Vec::new(),
            project_roots: strings(&["/srv", "/opt", "/root", "/home/*"]),
            project_globs: strings(
                &[
                    &[
                        ".env", ".env.*", "*.conf", "*.toml", "*.yaml", "*.yml", "*.ini", "*.json",
                    ][..],
                    super::iac::IAC_GLOBS,
                ]
                .concat(),
            ),
            rename_sources: false,
        }
    }
}

impl Default for BaselineSection {
    fn default() -> Self {
        BaselineSection {
            max_file_bytes: 1 << 20,
            max_total_bytes: 256 << 20,
        }
    }
}

impl Default for DriftSection {
    fn default() -> Self {
        DriftSection {
            interval: crate::policy::HumanDuration(std::time::Duration::from_secs(300)),
        }
    }
}

impl Default for CorrelationSection {
    fn default() -> Self {
        CorrelationSection { window_ms: 250 }
    }
}

impl Default for ApprovalSection {
    fn default() -> Self {
        ApprovalSection {
            mode: ApprovalMode::Local,
            local_socket: PathBuf::from("/run/confgate/approver.sock"),
            local_config: None,
            protected_credentials: Vec::new(),
            client: client::ClientConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            daemon: DaemonSection::default(),
            output: OutputSection::default(),
            kernel: KernelSection::default(),
            watch: WatchSection::default(),
            correlation: CorrelationSection::default(),
            detect: default_detect_rules(),
            gate: GateConfig::default(),
            approval: ApprovalSection::default(),
            baseline: BaselineSection::default(),
            drift: DriftSection::default(),
            metrics: crate::prom::MetricsSection::default(),
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn rule(agent: &str, exe: &[&str], comm: &[&str], argv: &[&str], env: &[&str]) -> DetectRule {
    DetectRule {
        agent: agent.to_owned(),
        exe: strings(exe),
        comm: strings(comm),
        argv: strings(argv),
        env: strings(env),
        cgroup: Vec::new(),
        scope: Vec::new(),
    }
}

/// The built-in agent rules. Notes on how each agent shows up on Linux:
///
/// - `comm` is the base name of the path given to `execve`, so a script or symlink named
///   `claude` gives `comm = "claude"` for that exec even when it then runs `node`; the
///   session sticks to the process across its later execs.
/// - `exe` is the resolved binary: `node`/`python3` for script installs, the real file
///   for native ones (`~/.local/share/claude/versions/<version>`).
/// - `env` markers are what the agents export to the commands they run; they catch the
///   children even if the agent itself started before the daemon.
/// - Broad argv globs (`*/bin/claude`) also match e.g. `cat /usr/local/bin/claude`; they
///   are kept because npm installs run `node <bin path>`.
pub fn default_detect_rules() -> Vec<DetectRule> {
    vec![
        // Claude Code: `claude` (native installer or npm `@anthropic-ai/claude-code`);
        // exports CLAUDECODE=1 to the commands it runs.
        rule(
            "claude-code",
            &["*/claude", "*/claude/versions/*"],
            &["claude"],
            &["*/bin/claude", "*claude-code*"],
            &["CLAUDECODE=1"],
        ),
        // OpenAI Codex CLI: `codex` (npm `@openai/codex` runs the native binary
        // `vendor/<triple>/codex/codex`; release tarballs ship `codex-<triple>`, whose
        // comm is cut to 15 bytes). CODEX_SANDBOX_NETWORK_DISABLED=1 is set for commands
        // run without network access; CODEX_THREAD_ID only by recent versions
        // (unverified across versions).
        rule(
            "codex",
            &["*/codex", "*/codex-*-linux-*"],
            &["codex", "codex-x86_64-un", "codex-aarch64-u"],
            &["*/bin/codex", "*/@openai/codex/*"],
            &["CODEX_SANDBOX_NETWORK_DISABLED=1", "CODEX_THREAD_ID"],
        ),
        // Aider: a Python entry-point script `aider` (pip/pipx/uv); exports no marker.
        rule("aider", &[], &["aider"], &["*/bin/aider"], &[]),
        // Gemini CLI: `gemini` (npm `@google/gemini-cli`); exports GEMINI_CLI=1.
        rule(
            "gemini-cli",
            &[],
            &["gemini"],
            &["*/bin/gemini", "*/@google/gemini-cli/*"],
            &["GEMINI_CLI=1"],
        ),
        // Cursor CLI: `cursor-agent`, a script under
        // ~/.local/share/cursor-agent/versions/<v>/ running a bundled node; exports
        // CURSOR_AGENT=1. Newer releases also install it as `agent`, too generic a comm
        // to match on (uncertain).
        rule(
            "cursor-agent",
            &["*/cursor-agent", "*/cursor-agent/versions/*"],
            &["cursor-agent"],
            &["*/cursor-agent"],
            &["CURSOR_AGENT=1"],
        ),
        // Goose (Block): native `goose`; the desktop app runs the `goosed` server. Its
        // shell tool exports GOOSE_TERMINAL=1.
        rule(
            "goose",
            &["*/goose", "*/goosed"],
            &["goose", "goosed"],
            &[],
            &["GOOSE_TERMINAL=1"],
        ),
        // OpenCode (sst): native `opencode` (npm `opencode-ai` wraps it); exports
        // OPENCODE=1.
        rule(
            "opencode",
            &["*/opencode"],
            &["opencode"],
            &["*/opencode-ai/*"],
            &["OPENCODE=1"],
        ),
        // Anything launched with CONFGATE_AGENT=<name> in its environment; the daemon
        // takes the agent name from the value.
        rule("env:CONFGATE_AGENT", &[], &[], &[], &["CONFGATE_AGENT"]),
    ]
}
