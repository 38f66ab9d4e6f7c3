//! The configuration file's shape: one serde type per section (their defaults are in
//! `defaults.rs`, their checks in `validate.rs`).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::client;
use crate::policy::GateConfig;

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
    /// The approved baseline of the watched and gated trees (see [`crate::baseline`]).
    pub baseline: BaselineSection,
    /// The periodic drift check against the baseline.
    pub drift: DriftSection,
    /// The Prometheus endpoint (`[metrics] listen`); off by default.
    pub metrics: crate::prom::MetricsSection,
}

/// `[baseline]`: size limits of the approved baseline.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineSection {
    /// Larger files are kept by hash, mode and owner only (cannot be reverted). Default
    /// 1 MiB.
    pub max_file_bytes: u64,
    /// Content kept in all (uncompressed bytes); past it files are kept by hash only.
    /// Default 256 MiB.
    pub max_total_bytes: u64,
}

/// `[drift]`: the periodic drift check.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DriftSection {
    /// Time between two checks (`"5m"`); `"0s"` turns it off. Default 5 minutes.
    pub interval: crate::policy::HumanDuration,
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
    /// Where `confgate-confine` hands a session's seccomp listener to the daemon
    /// (`SOCK_SEQPACKET`, mode 0600). Default `/run/confgate/supervise.sock`.
    pub supervise_socket: PathBuf,
    /// Globs (case-insensitive) on environment variable names: a session's start record
    /// lists the names (never the values) of those its root process was given.
    pub credential_env: Vec<String>,
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
    /// Format of the events file and of stdout's JSON lines. Default `confgate`.
    pub format: OutputFormat,
    /// `[output.nats]`: events also published to NATS JetStream (off while `servers` is
    /// empty).
    pub nats: crate::nats::NatsConfig,
}

/// Format of the events written to the events file and stdout (the gRPC stream
/// `confgate events` reads is always `confgate`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The event schema of the README ("Event schema").
    #[default]
    Confgate,
    /// OCSF 1.x: File System Activity (1001) for file operations, Base Event for ledger
    /// records (see `event::ocsf`).
    Ocsf,
}

/// Format of the daemon's stdout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StdoutMode {
    /// Human-readable lines when stdout is a terminal, nothing when it is systemd's
    /// journal stream (`JOURNAL_STREAM`), NDJSON otherwise.
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
    /// eBPF programs not to attach, by name (`sys_enter_close`, ...; `confgate
    /// check-config` lists them). Every attached syscall tracepoint is run on that syscall
    /// by every process on the host; a skipped one costs nothing and observes nothing (see
    /// README "Kernel hooks"). The process-lifecycle programs (`sched_*`) cannot be
    /// skipped. Default none.
    pub skip_programs: Vec<String>,
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

/// `[correlation]`: merging the eBPF and fanotify views of one write.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationSection {
    /// How long an eBPF record waits for its fanotify twin (and vice versa), in
    /// milliseconds. Default 250.
    pub window_ms: u64,
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
    /// The declared scope of the sessions the rule detects: absolute globs of the paths
    /// they may write (checked as `confgate run --scope`). Detected sessions are not
    /// confined: a gated path outside it is refused (`scope_denied`), any other write
    /// outside it is recorded (`out_of_scope`). Empty: none.
    pub scope: Vec<String>,
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
