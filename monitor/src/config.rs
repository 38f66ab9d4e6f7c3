//! The daemon's TOML configuration (`/etc/confgate/config.toml`).
//!
//! Every field has a default, so an empty file (or none at all, at the default path) is a
//! working configuration; `deploy/config.toml` spells every default out. Unknown keys are
//! rejected (`deny_unknown_fields`) so that a typo is an error rather than a silently
//! ignored setting. Parsing and checking are separate: [`Config::parse`] turns TOML into a
//! [`Config`] and then runs [`Config::validate`], whose errors name the offending field
//! (`watch.paths[2]`) and, when the value comes from a file, its line and column.
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{GateConfig, PolicyError};

pub mod addr;
pub mod client;
pub mod toml_check;
pub mod watch;

pub(crate) use toml_check::{Checker, parse_checked, read_text};
pub use toml_check::{ConfigError, line_column};

/// Where the daemon and `confgate check-config` look when no path is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/confgate/config.toml";

/// Longest watched prefix the kernel trie takes, in bytes (trailing `/` included).
///
/// The trie key holds `monitor_common::PREFIX_KEY_LEN` (256) bytes; one is kept spare so
/// that a directory prefix is always strictly shorter than the key the kernel compares.
pub const MAX_KERNEL_PREFIX: usize = 255;

/// Longest `comm` (task name) the kernel keeps, without its NUL.
pub const MAX_COMM: usize = 15;

/// Longest Unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonSection,
    pub output: OutputSection,
    pub kernel: KernelSection,
    pub watch: WatchSection,
    pub correlation: CorrelationSection,
    /// Rules that mark a process (and so its descendants) as an agent session.
    pub detect: Vec<DetectRule>,
    /// The permission gate and its policy (see [`crate::policy`]).
    pub gate: GateConfig,
    /// Where approval requests go (the approval service).
    pub approval: ApprovalSection,
}

/// `[daemon]`: the control socket and where state lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSection {
    /// gRPC control socket. Default `/run/confgate/confgate.sock`.
    pub socket: PathBuf,
    /// Permission bits of the socket. Default `0o666`: any local user may register a
    /// session for *itself*; privileged calls are checked against the peer's uid.
    pub socket_mode: u32,
    /// Group whose members (besides root) may list sessions and subscribe to events.
    /// Default none.
    pub admin_group: Option<String>,
    /// Directory of the embedded store. Default `/var/lib/confgate`.
    pub state_dir: PathBuf,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket: PathBuf::from("/run/confgate/confgate.sock"),
            socket_mode: 0o666,
            admin_group: None,
            state_dir: PathBuf::from("/var/lib/confgate"),
        }
    }
}

/// `[output]`: where events go.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    /// NDJSON event log. Default `/var/log/confgate/events.ndjson`.
    pub events_file: PathBuf,
    /// What the daemon prints on stdout. Default `auto`.
    pub stdout: StdoutMode,
    /// Seconds between counter lines in the log; 0 turns them off. Default 60.
    pub stats_interval_secs: u64,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            events_file: PathBuf::from("/var/log/confgate/events.ndjson"),
            stdout: StdoutMode::Auto,
            stats_interval_secs: 60,
        }
    }
}

/// Format of the daemon's stdout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StdoutMode {
    /// Human-readable lines when stdout is a terminal, NDJSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
    Off,
}

/// `[kernel]`: the eBPF side.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KernelSection {
    /// Ring buffer size in bytes; a power of two, at least 4096. Default 8 MiB: the
    /// smallest that took scenario 3 of BENCHMARKS.md (a session flooding ~300k
    /// records/s) without drops; the daemon maps it twice, so it counts double in RSS.
    pub ringbuf_bytes: u32,
    /// When true (default) the kernel also reports path operations of processes outside
    /// any session whose absolute path argument starts with a watched prefix; when false
    /// those are left to fanotify.
    pub path_filter: bool,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            ringbuf_bytes: 8 << 20,
            path_filter: true,
        }
    }
}

/// `[watch]`: which paths are configuration. See [`crate::config::watch::WatchSet`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSection {
    /// Directories (watched recursively) and single files. Nested entries are fine.
    pub paths: Vec<PathBuf>,
    /// Globs on absolute paths that are never reported. `*` stays within one path
    /// component, `**` crosses them; a pattern that matches a directory excludes
    /// everything below it. Default none.
    pub exclude: Vec<String>,
    /// Absolute directories holding projects; the last component may be a glob
    /// (`/home/*`). Files below them at any depth whose name matches `project_globs`
    /// are watched.
    pub project_roots: Vec<String>,
    /// File-name globs of project configuration files (`.env`, `*.toml`, ...).
    pub project_globs: Vec<String>,
    /// Report the old path of a rename into a watched tree from outside it even when the
    /// kernel filter did not see the rename (relative path, process outside a session).
    /// Places one filesystem-wide fanotify rename mark per filesystem holding a watched
    /// tree, so every rename on it wakes the daemon (see BENCHMARKS.md). Default false:
    /// such a rename is still reported, with `details.unresolved` and no old path.
    pub rename_sources: bool,
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
            project_globs: strings(&[
                ".env", ".env.*", "*.conf", "*.toml", "*.yaml", "*.yml", "*.ini", "*.json",
            ]),
            rename_sources: false,
        }
    }
}

/// `[correlation]`: merging the eBPF and fanotify views of one write.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationSection {
    /// How long an eBPF record waits for its fanotify twin (and vice versa), in
    /// milliseconds. Default 250.
    pub window_ms: u64,
}

impl Default for CorrelationSection {
    fn default() -> Self {
        CorrelationSection { window_ms: 250 }
    }
}

/// `[approval]`: the approval service the gate asks.
///
/// In `local` mode (default) the daemon runs the service itself, in-process, on
/// `local_socket`, with the settings of `local_config` (an `approver.toml`; defaults when
/// unset), and talks to it over that socket. In `remote` mode it connects to the service
/// described by `[approval.client]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalSection {
    /// `local` or `remote`. Default `local`.
    pub mode: ApprovalMode,
    /// Socket of the in-process service (local mode). Default `/run/confgate/approver.sock`.
    pub local_socket: PathBuf,
    /// Settings file of the in-process service (local mode); `None`: its defaults.
    pub local_config: Option<PathBuf>,
    /// Approver credentials kept on this host (certificate and key files, token files, or
    /// directories of them) that agent sessions may never open: added to the built-in
    /// self-protection rule. Default none.
    pub protected_credentials: Vec<PathBuf>,
    /// How to reach a remote service (remote mode): `[approval.client]`.
    pub client: client::ClientConfig,
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

impl ApprovalSection {
    /// The client settings that reach the service of this mode: the local socket in local
    /// mode (peer credentials identify the caller), `[approval.client]` in remote mode.
    pub fn client_config(&self) -> client::ClientConfig {
        match self.mode {
            ApprovalMode::Local => client::ClientConfig {
                endpoint: format!("unix:{}", self.local_socket.display()),
                ..client::ClientConfig::default()
            },
            ApprovalMode::Remote => self.client.clone(),
        }
    }
}

/// Where the approval service runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    /// In the daemon, on `approval.local_socket`.
    #[default]
    Local,
    /// Elsewhere, reached through `[approval.client]`.
    Remote,
}

/// `[[detect]]`: one way to recognise an agent process. A process matching any one
/// criterion of a rule is that rule's agent. A rule needs at least one criterion.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectRule {
    /// Agent name recorded in sessions and events.
    pub agent: String,
    /// Globs on the executable path (`/proc/<pid>/exe`).
    pub exe: Vec<String>,
    /// Exact task names (`comm`, at most 15 bytes).
    pub comm: Vec<String>,
    /// Globs matched against each of the first 4 argv entries.
    pub argv: Vec<String>,
    /// `NAME` (the variable is present) or `NAME=VALUE` (it has exactly that value).
    pub env: Vec<String>,
    /// Globs on the cgroup v2 path, e.g. `/system.slice/agent-*.service`.
    pub cgroup: Vec<String>,
}

impl DetectRule {
    /// Whether the rule has at least one criterion.
    pub fn has_criteria(&self) -> bool {
        !(self.exe.is_empty()
            && self.comm.is_empty()
            && self.argv.is_empty()
            && self.env.is_empty()
            && self.cgroup.is_empty())
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

impl Config {
    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        Config::parse(&text, path)
    }

    /// Like [`Config::load`], but reports every validation problem (see
    /// [`Config::parse_all`]).
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = read_text(path).map_err(|e| vec![e])?;
        Config::parse_all(&text, path)
    }

    /// Like [`Config::load`], but a missing file is fine when the path was not given
    /// explicitly (the default path): the defaults are used and that is logged.
    pub fn load_or_default(path: &Path, is_explicit: bool) -> Result<Config, ConfigError> {
        match Config::load(path) {
            Err(ConfigError::Io { cause: source, .. })
                if !is_explicit && source.kind() == io::ErrorKind::NotFound =>
            {
                tracing::info!(path = %path.display(), "no configuration file, using the defaults");
                Ok(Config::default())
            }
            other => other,
        }
    }

    /// Parse and validate `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::parse_all(text, origin).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Config::parse`], but reports every validation problem, not just the first
    /// (a parse error stops at the first, as TOML parsing does). Never returns an empty
    /// error list.
    pub fn parse_all(text: &str, origin: &Path) -> Result<Config, Vec<ConfigError>> {
        parse_checked(text, origin, Config::problems)
    }

    /// Check everything that parsing cannot: absolute paths, sizes, globs, rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every validation problem, section by section.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut c = Checker::default();
        self.check_daemon(&mut c);
        self.check_output(&mut c);
        self.check_kernel(&mut c);
        check_watch(&self.watch, &mut c);
        if !(1..=60_000).contains(&self.correlation.window_ms) {
            c.fail(
                "correlation.window_ms",
                "must be between 1 and 60000 (milliseconds)",
            );
        }
        for (i, r) in self.detect.iter().enumerate() {
            check_rule(&format!("detect[{i}]"), r, &mut c);
        }
        for PolicyError::Invalid { field, message } in self.gate.problems() {
            c.fail(&field, message);
        }
        self.check_approval(&mut c);
        c.problems
    }

    fn check_daemon(&self, c: &mut Checker) {
        let d = &self.daemon;
        c.abs_path("daemon.socket", &d.socket);
        if d.socket.as_os_str().len() > MAX_SOCKET_PATH {
            c.fail(
                "daemon.socket",
                format!("longer than {MAX_SOCKET_PATH} bytes (sun_path)"),
            );
        }
        if d.socket_mode & !0o777 != 0 {
            c.fail(
                "daemon.socket_mode",
                format!(
                    "{:#o} has bits outside 0o777 (write it as 0o660, ...)",
                    d.socket_mode
                ),
            );
        }
        if let Some(group) = &d.admin_group
            && (group.is_empty()
                || group.contains([':', '\0'])
                || group.contains(char::is_whitespace))
        {
            c.fail(
                "daemon.admin_group",
                format!("{group:?} is not a group name"),
            );
        }
        c.abs_path("daemon.state_dir", &d.state_dir);
    }

    fn check_approval(&self, c: &mut Checker) {
        let a = &self.approval;
        if c.abs_path("approval.local_socket", &a.local_socket)
            && a.local_socket.as_os_str().len() > MAX_SOCKET_PATH
        {
            c.fail(
                "approval.local_socket",
                format!("longer than {MAX_SOCKET_PATH} bytes (sun_path)"),
            );
        }
        if let Some(p) = &a.local_config {
            c.abs_path("approval.local_config", p);
        }
        for (i, p) in a.protected_credentials.iter().enumerate() {
            c.abs_path(&format!("approval.protected_credentials[{i}]"), p);
        }
        if a.mode == ApprovalMode::Remote && a.client == client::ClientConfig::default() {
            c.fail(
                "approval.mode",
                "\"remote\" needs an [approval.client] section naming the service \
                 (endpoint, and ca/cert/key or token)",
            );
        }
        for (field, message) in a.client.problems() {
            c.fail(&format!("approval.client.{field}"), message);
        }
    }

    fn check_output(&self, c: &mut Checker) {
        c.abs_path("output.events_file", &self.output.events_file);
    }

    fn check_kernel(&self, c: &mut Checker) {
        let bytes = self.kernel.ringbuf_bytes;
        if !bytes.is_power_of_two() || bytes < 4096 {
            c.fail(
                "kernel.ringbuf_bytes",
                format!("{bytes} is not a power of two of at least 4096 (e.g. 8388608)"),
            );
        }
    }
}

/// Validation of the `[watch]` section, shared with [`crate::config::watch::WatchSet::new`].
pub(crate) fn check_watch(w: &WatchSection, c: &mut Checker) {
    for (i, p) in w.paths.iter().enumerate() {
        let field = format!("watch.paths[{i}]");
        if p.as_os_str().as_bytes().iter().all(|&b| b == b'/') && !p.as_os_str().is_empty() {
            c.fail(
                &field,
                "/ would watch every write on the host (and mark every directory); name the \
                 trees to watch instead",
            );
            continue;
        }
        if c.abs_path(&field, p) {
            // A directory becomes "<path>/" in the kernel trie.
            c.prefix_len(&field, p.as_os_str().as_bytes().len() + 1);
        }
    }
    for (i, g) in w.exclude.iter().enumerate() {
        let field = format!("watch.exclude[{i}]");
        if !(g.starts_with('/') || g.starts_with("**")) {
            c.fail(
                &field,
                format!(
                    "{g:?} must match absolute paths: start with `/` or `**/` (`*` does not cross `/`)"
                ),
            );
        } else {
            c.glob(&field, g, true);
        }
    }
    for (i, r) in w.project_roots.iter().enumerate() {
        let field = format!("watch.project_roots[{i}]");
        match split_project_root(r) {
            Ok((fixed, last_glob)) => {
                c.prefix_len(&field, fixed.len() + if fixed == "/" { 0 } else { 1 });
                if let Some(g) = last_glob {
                    c.glob(&field, g, true);
                }
            }
            Err(message) => c.fail(&field, message),
        }
    }
    for (i, g) in w.project_globs.iter().enumerate() {
        let field = format!("watch.project_globs[{i}]");
        if g.is_empty() || g.contains('/') {
            c.fail(
                &field,
                format!("{g:?} must be a file-name glob, without `/`"),
            );
        } else {
            c.glob(&field, g, true);
        }
    }
}

/// Split a project root into its fixed leading directory and the glob of its last
/// component, if that component is a glob. Only the last component may be one.
pub(crate) fn split_project_root(root: &str) -> Result<(&str, Option<&str>), String> {
    if !root.starts_with('/') {
        return Err(format!("{root:?} is not an absolute path"));
    }
    if root.contains('\0') {
        return Err(format!("{root:?} contains a NUL byte"));
    }
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("`/` as a project root would watch the whole filesystem".to_owned());
    }
    let components: Vec<&str> = trimmed.split('/').skip(1).collect();
    if let Some(bad) = components.iter().find(|c| **c == "." || **c == "..") {
        return Err(format!(
            "{root:?} has a `{bad}` component; write the path normalised"
        ));
    }
    let (last, leading) = match components.split_last() {
        Some(split) => split,
        None => return Err(format!("{root:?} is not a directory path")),
    };
    if let Some(bad) = leading.iter().find(|c| is_glob(c)) {
        return Err(format!(
            "{root:?}: only the last component may be a glob, not {bad:?}"
        ));
    }
    if !is_glob(last) {
        return Ok((trimmed, None));
    }
    let fixed_len = trimmed.len() - last.len() - 1;
    let fixed = if fixed_len == 0 {
        "/"
    } else {
        &trimmed[..fixed_len]
    };
    Ok((fixed, Some(last)))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Build a glob with the semantics used for path globs here: `*` stays within one path
/// component when `literal_separator` is set.
pub(crate) fn build_glob(pattern: &str, literal_separator: bool) -> Result<globset::Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(literal_separator)
        .build()
        .map_err(|e| e.kind().to_string())
}

fn check_rule(prefix: &str, r: &DetectRule, c: &mut Checker) {
    if r.agent.trim().is_empty() || r.agent.chars().any(char::is_control) {
        c.fail(&format!("{prefix}.agent"), "every rule needs an agent name");
    }
    if !r.has_criteria() {
        c.fail(
            prefix,
            "the rule has no criterion (exe, comm, argv, env or cgroup)",
        );
    }
    for (i, g) in r.exe.iter().enumerate() {
        c.nonempty_glob(&format!("{prefix}.exe[{i}]"), g);
    }
    for (i, comm) in r.comm.iter().enumerate() {
        let field = format!("{prefix}.comm[{i}]");
        if comm.is_empty() {
            c.fail(&field, "empty comm");
        } else if comm.len() > MAX_COMM {
            c.fail(
                &field,
                format!(
                    "{comm:?} is {} bytes; the kernel keeps at most {MAX_COMM} (use {:?})",
                    comm.len(),
                    truncate_utf8(comm, MAX_COMM)
                ),
            );
        }
    }
    for (i, g) in r.argv.iter().enumerate() {
        c.nonempty_glob(&format!("{prefix}.argv[{i}]"), g);
    }
    for (i, e) in r.env.iter().enumerate() {
        let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
        if !is_env_name(name) {
            c.fail(
                &format!("{prefix}.env[{i}]"),
                format!("{e:?} is not NAME or NAME=VALUE (NAME: letters, digits, `_`)"),
            );
        }
    }
    for (i, g) in r.cgroup.iter().enumerate() {
        let field = format!("{prefix}.cgroup[{i}]");
        if !(g.starts_with('/') || g.starts_with('*')) {
            c.fail(
                &field,
                format!("{g:?} must match cgroup v2 paths, which start with `/`"),
            );
        } else {
            c.glob(&field, g, false);
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Checker {
    fn prefix_len(&mut self, field: &str, len: usize) {
        if len > MAX_KERNEL_PREFIX {
            self.fail(
                field,
                format!("the kernel prefix would be {len} bytes; at most {MAX_KERNEL_PREFIX}"),
            );
        }
    }

    fn glob(&mut self, field: &str, pattern: &str, literal_separator: bool) {
        if let Err(e) = build_glob(pattern, literal_separator) {
            self.fail(field, format!("invalid glob {pattern:?}: {e}"));
        }
    }

    fn nonempty_glob(&mut self, field: &str, pattern: &str) {
        if pattern.is_empty() {
            self.fail(field, "empty glob");
        } else {
            self.glob(field, pattern, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("/etc/confgate/config.toml")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, origin())
    }

    fn invalid_field(text: &str) -> (String, Option<(usize, usize)>) {
        match parse(text) {
            Err(ConfigError::Invalid {
                field, location, ..
            }) => (field, location),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().detect, default_detect_rules());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn deploy_file_is_exactly_the_defaults() {
        let text = include_str!("../../deploy/config.toml");
        assert_eq!(
            Config::parse(text, Path::new("deploy/config.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn serialized_defaults_parse_back() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("[daemon]\nsocket_mode = 0o660\nadmin_group = \"confgate\"\n").unwrap();
        assert_eq!(c.daemon.socket_mode, 0o660);
        assert_eq!(c.daemon.admin_group.as_deref(), Some("confgate"));
        assert_eq!(c.daemon.socket, DaemonSection::default().socket);
        assert_eq!(c.watch, WatchSection::default());
        assert_eq!(c.detect, default_detect_rules());
    }

    #[test]
    fn detect_in_file_replaces_the_defaults() {
        let c = parse("[[detect]]\nagent = \"mine\"\ncomm = [\"mine\"]\n").unwrap();
        assert_eq!(c.detect.len(), 1);
        assert_eq!(c.detect[0].agent, "mine");
        assert!(c.detect[0].exe.is_empty());
    }

    #[test]
    fn stdout_modes() {
        for (text, mode) in [
            ("auto", StdoutMode::Auto),
            ("human", StdoutMode::Human),
            ("json", StdoutMode::Json),
            ("off", StdoutMode::Off),
        ] {
            let c = parse(&format!("[output]\nstdout = \"{text}\"\n")).unwrap();
            assert_eq!(c.output.stdout, mode);
        }
    }

    #[test]
    fn type_error_has_line_and_column() {
        let text = "[kernel]\n\npath_filter = \"yes\"\n";
        match parse(text) {
            Err(
                e @ ConfigError::Parse {
                    line: 3,
                    column: 15,
                    ..
                },
            ) => {
                let shown = e.to_string();
                assert!(
                    shown.starts_with("/etc/confgate/config.toml:3:15: invalid type"),
                    "{shown}"
                );
                assert!(!shown.contains('\n'), "{shown}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        match parse("[watch]\npaths = []\nexclude_paths = []\n") {
            Err(ConfigError::Parse {
                line: 3,
                column: 1,
                message,
                ..
            }) => {
                assert!(
                    message.contains("unknown field `exclude_paths`"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("[nope]\n"),
            Err(ConfigError::Parse { line: 1, .. })
        ));
        assert!(matches!(
            parse("[[detect]]\nagent = \"a\"\ncommm = [\"a\"]\n"),
            Err(ConfigError::Parse { line: 3, .. })
        ));
    }

    #[test]
    fn syntax_error_has_position() {
        match parse("[daemon]\nsocket = \"/run/x.sock\n") {
            Err(e @ ConfigError::Parse { line: 2, .. }) => {
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_stdout_mode() {
        match parse("[output]\nstdout = \"color\"\n") {
            Err(ConfigError::Parse {
                line: 2,
                column: 10,
                message,
                ..
            }) => {
                assert!(message.contains("unknown variant `color`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_watch_path_is_located() {
        let text = "[watch]\npaths = [\n  \"/etc\",\n  \"/var/spool/cron\",\n  \"etc/foo\",\n]\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/confgate/config.toml:5:3: watch.paths[2]: etc/foo is not an absolute path"
        );
    }

    #[test]
    fn dotdot_and_long_paths_are_rejected() {
        let (field, _) = invalid_field("[watch]\npaths = [\"/etc/../root\"]\n");
        assert_eq!(field, "watch.paths[0]");
        let long = format!("/{}", "a".repeat(254));
        let (field, _) = invalid_field(&format!("[watch]\npaths = [\"{long}\"]\n"));
        assert_eq!(field, "watch.paths[0]");
        let ok = format!("/{}", "a".repeat(253));
        parse(&format!("[watch]\npaths = [\"{ok}\"]\n")).unwrap();
    }

    #[test]
    fn watching_the_root_is_an_error() {
        for root in ["/", "//"] {
            let (field, loc) = invalid_field(&format!("[watch]\npaths = [\"/etc\", \"{root}\"]\n"));
            assert_eq!((field.as_str(), loc), ("watch.paths[1]", Some((2, 18))));
        }
    }

    #[test]
    fn remote_mode_needs_a_client_section() {
        let (field, loc) = invalid_field("[approval]\nmode = \"remote\"\n");
        assert_eq!((field.as_str(), loc), ("approval.mode", Some((2, 8))));
    }

    #[test]
    fn an_empty_rule_list_means_no_rules() {
        let c = parse("[gate]\nrule = []\n").unwrap();
        assert!(c.gate.rules.is_empty());
        let p =
            crate::policy::Policy::compile(&c.gate, &crate::policy::ProtectedPaths::new()).unwrap();
        assert_eq!(p.rules().count(), 0);
        assert_eq!(
            parse("").unwrap().gate.rules,
            crate::policy::default_gate_rules()
        );
    }

    #[test]
    fn ringbuf_must_be_a_power_of_two() {
        for bad in ["12345", "2048", "0"] {
            let (field, loc) = invalid_field(&format!("[kernel]\nringbuf_bytes = {bad}\n"));
            assert_eq!(field, "kernel.ringbuf_bytes");
            assert_eq!(loc, Some((2, 17)));
        }
        parse("[kernel]\nringbuf_bytes = 4096\n").unwrap();
        parse("[kernel]\nringbuf_bytes = 0x1000000\n").unwrap();
        assert!(matches!(
            parse("[kernel]\nringbuf_bytes = -1\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn daemon_checks() {
        assert_eq!(
            invalid_field("[daemon]\nsocket_mode = 0o4777\n").0,
            "daemon.socket_mode"
        );
        assert_eq!(
            invalid_field("[daemon]\nsocket = \"run/x\"\n").0,
            "daemon.socket"
        );
        let long = format!("/{}", "s".repeat(120));
        assert_eq!(
            invalid_field(&format!("[daemon]\nsocket = \"{long}\"\n")).0,
            "daemon.socket"
        );
        assert_eq!(
            invalid_field("[daemon]\nadmin_group = \"\"\n").0,
            "daemon.admin_group"
        );
        assert_eq!(
            invalid_field("[daemon]\nstate_dir = \"var\"\n").0,
            "daemon.state_dir"
        );
        assert_eq!(
            invalid_field("[output]\nevents_file = \"x.ndjson\"\n").0,
            "output.events_file"
        );
        assert_eq!(
            invalid_field("[correlation]\nwindow_ms = 0\n").0,
            "correlation.window_ms"
        );
    }

    #[test]
    fn approval_section() {
        let c = parse("").unwrap();
        assert_eq!(c.approval.mode, ApprovalMode::Local);
        assert_eq!(
            c.approval.client_config().endpoint,
            "unix:/run/confgate/approver.sock"
        );
        let c = parse(
            "[approval]\nmode = \"remote\"\n[approval.client]\nendpoint = \"https://appr.example:7443\"\n\
             ca = \"/etc/confgate/ca.pem\"\ncert = \"/etc/confgate/host.pem\"\nkey = \"/etc/confgate/host.key\"\n",
        )
        .unwrap();
        assert_eq!(c.approval.mode, ApprovalMode::Remote);
        assert_eq!(c.approval.client_config(), c.approval.client);
        assert_eq!(c.approval.client.endpoint, "https://appr.example:7443");

        let (field, loc) = invalid_field(
            "[approval]\nmode = \"remote\"\n[approval.client]\nendpoint = \"http://10.0.0.5:80\"\nallow_plaintext = true\n",
        );
        assert_eq!(
            (field.as_str(), loc),
            ("approval.client.endpoint", Some((4, 12)))
        );
        assert_eq!(
            invalid_field("[approval.client]\nendpoint = \"http://127.0.0.1:80\"\n").0,
            "approval.client.endpoint"
        );
        parse("[approval.client]\nendpoint = \"http://127.0.0.1:80\"\nallow_plaintext = true\n")
            .unwrap();
        assert_eq!(
            invalid_field("[approval.client]\nendpoint = \"https://a:1\"\n").0,
            "approval.client.ca"
        );
        assert_eq!(
            invalid_field("[approval]\nlocal_socket = \"approver.sock\"\n").0,
            "approval.local_socket"
        );
        assert_eq!(
            invalid_field("[approval]\nlocal_config = \"approver.toml\"\n").0,
            "approval.local_config"
        );
        assert!(matches!(
            parse("[approval]\nmode = \"cloud\"\n"),
            Err(ConfigError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            parse("[approval.client]\nendpoint = \"unix:/a\"\nca_file = \"/x\"\n"),
            Err(ConfigError::Parse { line: 3, .. })
        ));
    }

    #[test]
    fn watch_glob_checks() {
        let (field, loc) = invalid_field("[watch]\nexclude = [\"/etc/[ab\"]\n");
        assert_eq!((field.as_str(), loc), ("watch.exclude[0]", Some((2, 12))));
        assert_eq!(
            invalid_field("[watch]\nexclude = [\"*.swp\"]\n").0,
            "watch.exclude[0]"
        );
        parse("[watch]\nexclude = [\"**/*.swp\", \"/etc/ssl/private\"]\n").unwrap();
        assert_eq!(
            invalid_field("[watch]\nproject_globs = [\"a/*.toml\"]\n").0,
            "watch.project_globs[0]"
        );
        assert_eq!(
            invalid_field("[watch]\nproject_globs = [\"{a\"]\n").0,
            "watch.project_globs[0]"
        );
        assert_eq!(
            invalid_field("[watch]\nproject_roots = [\"/home/*/src\"]\n").0,
            "watch.project_roots[0]"
        );
        assert_eq!(
            invalid_field("[watch]\nproject_roots = [\"home\"]\n").0,
            "watch.project_roots[0]"
        );
        assert_eq!(
            invalid_field("[watch]\nproject_roots = [\"/\"]\n").0,
            "watch.project_roots[0]"
        );
        parse("[watch]\nproject_roots = [\"/home/*\", \"/srv/proj-?\", \"/data/\"]\n").unwrap();
    }

    #[test]
    fn split_project_roots() {
        assert_eq!(split_project_root("/home/*"), Ok(("/home", Some("*"))));
        assert_eq!(split_project_root("/srv"), Ok(("/srv", None)));
        assert_eq!(split_project_root("/srv/"), Ok(("/srv", None)));
        assert_eq!(split_project_root("/*"), Ok(("/", Some("*"))));
        assert!(split_project_root("/a/*/b").is_err());
        assert!(split_project_root("/a/../b").is_err());
    }

    #[test]
    fn rule_checks() {
        let (field, loc) = invalid_field(
            "[[detect]]\nagent = \"a\"\ncomm = [\"a\"]\n\n[[detect]]\nagent = \"b\"\n",
        );
        assert_eq!(field, "detect[1]");
        assert_eq!(loc.map(|l| l.0), Some(5));
        assert_eq!(
            invalid_field("[[detect]]\ncomm = [\"a\"]\n").0,
            "detect[0].agent"
        );
        let (field, loc) =
            invalid_field("[[detect]]\nagent = \"a\"\ncomm = [\"ok\", \"a-very-long-name\"]\n");
        assert_eq!((field.as_str(), loc), ("detect[0].comm[1]", Some((3, 15))));
        assert_eq!(
            invalid_field("[[detect]]\nagent = \"a\"\nenv = [\"A B=1\"]\n").0,
            "detect[0].env[0]"
        );
        assert_eq!(
            invalid_field("[[detect]]\nagent = \"a\"\nenv = [\"=1\"]\n").0,
            "detect[0].env[0]"
        );
        assert_eq!(
            invalid_field("[[detect]]\nagent = \"a\"\nexe = [\"[\"]\n").0,
            "detect[0].exe[0]"
        );
        assert_eq!(
            invalid_field("[[detect]]\nagent = \"a\"\ncgroup = [\"system.slice\"]\n").0,
            "detect[0].cgroup[0]"
        );
        parse("[[detect]]\nagent = \"a\"\nenv = [\"X_1=a=b\"]\ncgroup = [\"/system.slice/agent-*.service\"]\n")
            .unwrap();
    }

    #[test]
    fn parse_all_reports_every_problem() {
        let text = "[kernel]\nringbuf_bytes = 3\n[watch]\npaths = [\"a\", \"/b\", \"c\"]\n";
        let errors = Config::parse_all(text, origin()).unwrap_err();
        let fields: Vec<_> = errors
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { field, .. } => field.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(
            fields,
            ["kernel.ringbuf_bytes", "watch.paths[0]", "watch.paths[2]"]
        );
    }

    #[test]
    fn validate_without_a_file() {
        let mut c = Config::default();
        c.watch.paths.push(PathBuf::from("relative"));
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "watch.paths[11]: relative is not an absolute path"
        );
    }

    #[test]
    fn load_and_load_or_default() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        assert_eq!(
            Config::load_or_default(&missing, false).unwrap(),
            Config::default()
        );
        assert!(matches!(
            Config::load_or_default(&missing, true),
            Err(ConfigError::Io { cause: source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));

        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[correlation]\nwindow_ms = 500\n").unwrap();
        assert_eq!(Config::load(&file).unwrap().correlation.window_ms, 500);
        assert_eq!(
            Config::load_or_default(&file, false)
                .unwrap()
                .correlation
                .window_ms,
            500
        );

        std::fs::write(&file, b"# ok\n[daemon]\nsocket = \"/run/\xff\"\n").unwrap();
        match Config::load(&file) {
            Err(ConfigError::Parse {
                line: 3,
                column: 16,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A directory is an I/O error even at the default path.
        assert!(matches!(
            Config::load_or_default(dir.path(), false),
            Err(ConfigError::Io { .. })
        ));
    }
}
