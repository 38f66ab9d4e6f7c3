//! The `[gate]` section of the daemon configuration and its rules (`[[gate.rule]]`).
//!
//! This module holds the serde types (what the TOML says), their validation (errors name
//! the field, e.g. `gate.rule[2].paths[0]`), and the compilation of each rule into the
//! matcher that [`super::Policy`] evaluates.
use std::collections::HashSet;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::PolicyError;
use super::ops::OpSet;

/// Shortest hold timeout a rule may have.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest hold timeout: a held open keeps a process (and often an agent's tool call)
/// blocked in the kernel for that long.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds of `gate.request_ttl`.
pub const MIN_REQUEST_TTL: Duration = Duration::from_secs(1);
pub const MAX_REQUEST_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `gate.max_preimage_bytes` (1 GiB): pre-images are kept in the daemon's store.
pub const MAX_PREIMAGE_BYTES: u64 = 1 << 30;
/// Longest rule name, in bytes.
pub const MAX_RULE_NAME: usize = 128;
/// Prefix reserved for built-in rule names.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// `[gate]`: the permission gate (fanotify `FAN_OPEN_PERM` hold) and its policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Whether the daemon runs the gate at all. Default true. When false, writes are only
    /// observed (events), never held, and the built-in self-protection is off too.
    pub enabled: bool,
    /// Hold time of rules that do not set `timeout`. Default `30s`: well inside the 60-120 s
    /// after which agent tool calls give up, so the agent sees the verdict.
    pub default_timeout: HumanDuration,
    /// How long a request filed by a `deny-and-request` rule waits for an approver before
    /// it is resolved with the rule's `fail` verdict. Default `1h`.
    pub request_ttl: HumanDuration,
    /// Largest file content kept as a pre-image before a gated write (bytes). Larger files
    /// keep mode, owner and hash only, and cannot have their content reverted. Default
    /// 16 MiB.
    pub max_preimage_bytes: u64,
    /// When the host-wide `FAN_OPEN_PERM` marks are placed. Default `detected`.
    pub fanotify: FanotifyMode,
    /// How long the permission thread may leave a read event unanswered before its
    /// watchdog answers it with its failure verdict. Default `2s`.
    pub watchdog: HumanDuration,
    /// Extra directories to mark (recursively), besides those derived from rule paths.
    pub trees: Vec<PathBuf>,
    /// Extra single files to mark (inode marks: a hardlink elsewhere is gated too).
    pub files: Vec<PathBuf>,
    /// Write a one-line notice to the session's controlling terminal when one of its
    /// operations is held or denied-and-requested (the request id, what waits, how to
    /// decide). Default true.
    pub terminal_notice: bool,
    /// Address of the approval service's web page (`https://host:port`); when set, the
    /// terminal notice ends with `<approvals_url>/web/requests/ID`. Default: in local mode
    /// the in-process service's `[http] public_url` (or `listen`), else none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_url: Option<String>,
    /// Key names (case-insensitive globs) whose values are masked in what approvers and
    /// the ledger see of a file (`KEY=value`, `key: value`, `"key": value` lines). Default
    /// `["*KEY*", "*SECRET*", "*TOKEN*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*"]`.
    /// Pre-images and the baseline keep the real bytes.
    pub mask: Vec<String>,
    /// Paths (globs) whose content is never shown to approvers or in the ledger's diffs,
    /// only its hash. Default: shadow files, SSH host keys, `*.key`, `*.pem`, `*.p12`,
    /// private SSH keys.
    pub no_excerpt: Vec<String>,
    /// The rules, in order: the first that matches an open decides.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            enabled: true,
            default_timeout: HumanDuration(Duration::from_secs(30)),
            request_ttl: HumanDuration(Duration::from_secs(3600)),
            max_preimage_bytes: 16 << 20,
            fanotify: FanotifyMode::Detected,
            watchdog: HumanDuration(DEFAULT_WATCHDOG),
            trees: Vec::new(),
            files: Vec::new(),
            terminal_notice: true,
            approvals_url: None,
            mask: crate::event::excerpt::default_masks(),
            no_excerpt: crate::event::excerpt::default_no_excerpt(),
            rules: default_gate_rules(),
        }
    }
}

/// `gate.fanotify`: when the host-wide fanotify permission marks are placed. Every
/// process on the host that opens a marked file waits for the daemon's answer, reads
/// included, so they cost the whole host; sessions confined by `confgate run` do not need
/// them.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FanotifyMode {
    /// No permission group at all: unconfined sessions are observed (flag/revert), never
    /// held.
    Off,
    /// Marks only while an unconfined session (detected agent, `confgate run
    /// --no-confine`) is live, or always when policy gates processes outside sessions.
    #[default]
    Detected,
    /// Marks from start-up to shutdown.
    Always,
}

impl fmt::Display for FanotifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FanotifyMode::Off => "off",
            FanotifyMode::Detected => "detected",
            FanotifyMode::Always => "always",
        })
    }
}

/// Default `gate.watchdog`.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(2);
/// Bounds of `gate.watchdog`.
pub const MIN_WATCHDOG: Duration = Duration::from_millis(100);
pub const MAX_WATCHDOG: Duration = Duration::from_secs(60);

/// `[[gate.rule]]`: one policy rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name, shown to approvers and recorded with requests and grants.
    pub name: String,
    /// Globs on absolute paths. `*` stays within one path component, `**` crosses them.
    /// Paths may name files and directories that do not exist yet.
    pub paths: Vec<String>,
    /// Globs on the session's agent name; empty: every session.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Operations the rule applies to (`write`, `create`, `truncate`, `rename`); empty:
    /// all. The rule matches an open that performs any one of them.
    #[serde(default)]
    pub ops: Vec<String>,
    /// What happens to a matching open.
    pub verdict: Verdict,
    /// Verdict applied when no answer arrives in time (`ask` only). Default `deny`.
    #[serde(default)]
    pub fail: FailVerdict,
    /// How an `ask` waits. Default `hold`.
    #[serde(default)]
    pub mode: Mode,
    /// Hold time (`hold` mode), or how long a `review` waits for its decision before the
    /// path is restored; default `gate.default_timeout` (`review`: `gate.request_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// What happens to a change once no live approval covers it. Default `flag`.
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// The rule also applies to processes outside any agent session. Default false.
    /// Such a rule may not restrict `agents`.
    #[serde(default)]
    pub outside_sessions: bool,
    /// Distinct approvers that must approve a request of this rule (`ask` only; 1..=16).
    /// Default 1. Any deny ends the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Who may decide its requests: approver names (`alice`, `token:ci-bot`) and
    /// `group:<name>`. Default: every approver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The session's user and the person who logged in to start it may not approve.
    /// Default false (on a developer's own workstation that person is the usual approver).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub four_eyes: bool,
    /// Where the approval service sends notifications of its requests (`slack:#ops`,
    /// `webhook:siem`); carried with each request. Default: the service's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// `true`: the rule applies only to writes inside the session's declared scope
    /// (`confgate run --scope`); `false`: only outside it. Either way only to sessions
    /// that declared a scope. Default: regardless of scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_scope: Option<bool>,
}

/// The shipped rules. Reasoning:
///
/// - `/etc/**` is where a host's behaviour is configured (users, sudoers, sshd, PAM, cron,
///   systemd drop-ins, resolvers, package sources). An agent session writing there is
///   exactly the drift this product exists for, so a person is asked (`ask`).
/// - The crontab spools (`/var/spool/cron/**`: `crontabs/` on Debian, the files
///   themselves on RHEL) give persistence outside `/etc`; same treatment.
/// - Unit directories outside `/etc` (`/run/systemd/system`, `/usr/lib/systemd/system`)
///   start services at boot or at once; same treatment.
/// - `hold` keeps the agent's tool call waiting for the answer rather than failing it, and
///   the default 30 s timeout stays inside the agent's own tool-call timeout.
/// - `fail = "deny"`: a write nobody approved in time does not happen (fail closed); an
///   agent can retry once someone is watching.
/// - `on_expiry = "flag"`: when a grant ends, changes made under it are flagged, not
///   undone; reverting a live system's config automatically can break it, so that is
///   opt-in per rule.
/// - Processes outside sessions (people, package managers run by people, the OS itself)
///   are never held by default.
pub fn default_gate_rules() -> Vec<RuleConfig> {
    let ask = |name: &str, paths: &[&str]| RuleConfig {
        name: name.to_owned(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        agents: Vec::new(),
        ops: Vec::new(),
        verdict: Verdict::Ask,
        fail: FailVerdict::Deny,
        mode: Mode::Hold,
        timeout: None,
        on_expiry: OnExpiry::Flag,
        outside_sessions: false,
        approvals: None,
        approvers: Vec::new(),
        four_eyes: false,
        notify: Vec::new(),
        within_scope: None,
    };
    vec![
        ask("system-config", &["/etc/**"]),
        ask("crontab-spool", &["/var/spool/cron/**"]),
        ask(
            "systemd-units",
            &["/run/systemd/system/**", "/usr/lib/systemd/system/**"],
        ),
    ]
}

/// Checks a rule's quorum keys; the compiled quorum, `None` for the default (one
/// approval by anyone, no routing).
fn check_quorum(p: &mut Problems, prefix: &str, r: &RuleConfig) -> Option<Quorum> {
    let approvals = r.approvals.unwrap_or(1);
    if !(1..=MAX_APPROVALS).contains(&approvals) {
        p.fail(
            format!("{prefix}.approvals"),
            format!("{approvals} is not between 1 and {MAX_APPROVALS}"),
        );
    }
    for (key, list) in [("approvers", &r.approvers), ("notify", &r.notify)] {
        if list.len() > MAX_QUORUM_ENTRIES {
            p.fail(
                format!("{prefix}.{key}"),
                format!("more than {MAX_QUORUM_ENTRIES} entries"),
            );
        }
        for (j, v) in list.iter().enumerate() {
            if v.is_empty()
                || v.len() > 256
                || v.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                p.fail(
                    format!("{prefix}.{key}[{j}]"),
                    "empty, longer than 256 bytes, or contains spaces or control characters",
                );
            } else if key == "approvers" && v.strip_prefix("group:").is_some_and(str::is_empty) {
                p.fail(
                    format!("{prefix}.{key}[{j}]"),
                    "`group:` needs a group name",
                );
            }
        }
    }
    let asks = r.verdict == Verdict::Ask;
    if !asks && (r.approvals.is_some() || !r.approvers.is_empty() || r.four_eyes) {
        p.fail(
            format!("{prefix}.verdict"),
            "`approvals`, `approvers` and `four_eyes` apply to `ask` rules only",
        );
    }
    let q = Quorum {
        approvals: approvals.clamp(1, MAX_APPROVALS),
        approvers: r.approvers.clone(),
        four_eyes: r.four_eyes,
        notify: r.notify.clone(),
    };
    let default = Quorum {
        approvals: 1,
        approvers: Vec::new(),
        four_eyes: false,
        notify: Vec::new(),
    };
    (q != default).then_some(q)
}

/// Whether `url` may end the terminal notice: `http(s)://` and printable ASCII only (it is
/// written to a person's terminal), no query or fragment (`/requests/ID` is appended).
fn valid_approvals_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.len() <= 512
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'?' | b'#' | b'<' | b'>'))
}

/// A duration written as a humantime string (`"30s"`, `"1h 30m"`, `"500ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"30s\", \"5m\", \"1h\")"
                ))
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// Defines a unit enum written as lowercase strings, whose unknown-value error names what
/// it is (`unknown verdict "maybe": expected "allow", "deny" or "ask"`).
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, $expected:literal,
     { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The configuration spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}: expected ", $expected),
                        other.chars().take(64).collect::<String>()
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum!(
    /// What a rule does with a matching open.
    Verdict, "verdict", "\"allow\", \"deny\" or \"ask\"",
    {
        /// Let it through at once.
        Allow = "allow",
        /// Refuse it at once (`EPERM`).
        Deny = "deny",
        /// Ask an approver (see [`Mode`]); a live grant answers without asking.
        Ask = "ask",
    }
);

named_enum!(
    /// Verdict applied when an `ask` gets no answer in time (hold timeout, request TTL,
    /// approval service unreachable, daemon queue full).
    #[derive(Default)]
    FailVerdict, "fail verdict", "\"deny\" or \"allow\"",
    {
        #[default]
        Deny = "deny",
        Allow = "allow",
    }
);

named_enum!(
    /// How an `ask` waits for its answer.
    #[derive(Default)]
    Mode, "mode", "\"hold\", \"deny-and-request\" or \"review\"",
    {
        /// The open blocks until an answer or the rule's timeout.
        #[default]
        Hold = "hold",
        /// The open fails with `EPERM` at once and a request is filed; once approved, a
        /// retry of the same operation passes under the grant.
        DenyAndRequest = "deny-and-request",
        /// The operation proceeds at once; when it completes (the writer closes the file,
        /// or a rename, unlink, chmod, chown or truncate was performed) its diff against
        /// the approved baseline is sent for approval. Approved: the baseline moves (or,
        /// under `on_expiry = "revert"`, holds for the grant's lifetime); denied or not
        /// answered before the rule's timeout: the path is restored to the baseline.
        Review = "review",
    }
);

named_enum!(
    /// What happens to a change once no live approval covers it any more (grant expiry
    /// or revocation, or an unapproved rename into the path).
    #[derive(Default)]
    OnExpiry, "on_expiry", "\"flag\" or \"revert\"",
    {
        /// Record it (ledger, event, report to the approval service); leave the file.
        #[default]
        Flag = "flag",
        /// Restore the pre-image (content, mode, owner); remove a file the grant created;
        /// quarantine an unapproved rename.
        Revert = "revert",
    }
);

/// A compiled rule: what an evaluation hands back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub verdict: Verdict,
    pub fail: FailVerdict,
    pub mode: Mode,
    /// Hold time (the rule's `timeout` or `gate.default_timeout`).
    pub timeout: Duration,
    pub on_expiry: OnExpiry,
    /// Operations the rule applies to; [`OpSet::ALL`] when the configuration lists none.
    pub ops: OpSet,
    pub outside_sessions: bool,
    /// What approving its requests takes (`None`: one approval by any approver).
    pub quorum: Option<Quorum>,
}

/// A rule's `approvals`, `approvers`, `four_eyes` and `notify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorum {
    pub approvals: u32,
    pub approvers: Vec<String>,
    pub four_eyes: bool,
    pub notify: Vec<String>,
}

/// Largest `approvals` of a rule.
pub const MAX_APPROVALS: u32 = 16;
/// Most entries of a rule's `approvers` or `notify`.
pub const MAX_QUORUM_ENTRIES: usize = 64;

/// A rule with its matchers.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) rule: Arc<Rule>,
    pub(crate) paths: GlobSet,
    /// `None`: every session.
    pub(crate) agents: Option<GlobSet>,
    /// `None`: every operation.
    pub(crate) ops: Option<OpSet>,
    /// `Some(w)`: only queries whose `within_scope` is `Some(w)`.
    pub(crate) within_scope: Option<bool>,
    /// The literal directory prefixes of its path globs (the trees it gates).
    pub(crate) roots: Vec<PathBuf>,
}

/// What compiling the configured rules yields.
#[derive(Debug)]
pub(crate) struct CompiledRules {
    pub(crate) rules: Vec<CompiledRule>,
    /// Every rule's paths in one set, to reject non-matching paths in one pass.
    pub(crate) any_path: GlobSet,
    /// Directories derived from rule globs plus `trees` (not yet deduplicated).
    pub(crate) trees: Vec<PathBuf>,
    pub(crate) files: Vec<PathBuf>,
}

/// Collects field-named problems.
#[derive(Default)]
struct Problems(Vec<PolicyError>);

impl Problems {
    fn fail(&mut self, field: String, message: impl Into<String>) {
        self.0.push(PolicyError::Invalid {
            field,
            message: message.into(),
        });
    }
}

impl GateConfig {
    /// Every validation problem of the section, each naming its field (`gate.rule[1].paths[0]`).
    pub fn problems(&self) -> Vec<PolicyError> {
        match compile_rules(self) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }
}

/// Validates and compiles the `[gate]` section; on failure returns every problem.
pub(crate) fn compile_rules(g: &GateConfig) -> Result<CompiledRules, Vec<PolicyError>> {
    let mut p = Problems::default();
    check_duration(
        &mut p,
        "gate.default_timeout",
        g.default_timeout.0,
        MIN_TIMEOUT,
        MAX_TIMEOUT,
    );
    check_duration(
        &mut p,
        "gate.request_ttl",
        g.request_ttl.0,
        MIN_REQUEST_TTL,
        MAX_REQUEST_TTL,
    );
    check_duration(
        &mut p,
        "gate.watchdog",
        g.watchdog.0,
        MIN_WATCHDOG,
        MAX_WATCHDOG,
    );
    if !(1..=MAX_PREIMAGE_BYTES).contains(&g.max_preimage_bytes) {
        p.fail(
            "gate.max_preimage_bytes".into(),
            format!(
                "{} is not between 1 and {MAX_PREIMAGE_BYTES} (1 GiB)",
                g.max_preimage_bytes
            ),
        );
    }
    if let Some(url) = &g.approvals_url
        && !valid_approvals_url(url)
    {
        p.fail(
            "gate.approvals_url".into(),
            "expected an absolute http:// or https:// address of printable characters without spaces, quotes or a query",
        );
    }
    if let Err(e) = crate::event::excerpt::Masker::new(&g.mask, &g.no_excerpt) {
        p.fail(
            e.field.into(),
            format!("{:?} is not a valid glob: {}", e.pattern, e.reason),
        );
    }
    let mut trees = Vec::new();
    for (i, t) in g.trees.iter().enumerate() {
        if check_mark_path(&mut p, format!("gate.trees[{i}]"), t) {
            trees.push(t.clone());
        }
    }
    let mut files = Vec::new();
    for (i, f) in g.files.iter().enumerate() {
        if check_mark_path(&mut p, format!("gate.files[{i}]"), f) {
            files.push(f.clone());
        }
    }

    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(g.rules.len());
    let mut any_path = GlobSetBuilder::new();
    for (i, r) in g.rules.iter().enumerate() {
        let prefix = format!("gate.rule[{i}]");
        check_name(&mut p, &prefix, &r.name, &mut names);

        if r.paths.is_empty() {
            p.fail(
                format!("{prefix}.paths"),
                "a rule needs at least one path glob",
            );
        }
        let mut paths = GlobSetBuilder::new();
        let mut roots = Vec::new();
        for (j, pattern) in r.paths.iter().enumerate() {
            let field = format!("{prefix}.paths[{j}]");
            if let Some(glob) = check_path_glob(&mut p, &field, pattern) {
                match literal_root(pattern) {
                    Some(root) => {
                        let root = PathBuf::from(root);
                        roots.push(root.clone());
                        if !trees.contains(&root) {
                            trees.push(root);
                        }
                    }
                    None => p.fail(
                        field,
                        format!(
                            "{pattern:?} starts with a glob at `/`: a rule cannot gate the whole filesystem; name a directory first"
                        ),
                    ),
                }
                paths.add(glob.clone());
                any_path.add(glob);
            }
        }

        let mut agents = GlobSetBuilder::new();
        for (j, pattern) in r.agents.iter().enumerate() {
            let field = format!("{prefix}.agents[{j}]");
            if pattern.is_empty() {
                p.fail(field, "empty agent glob");
                continue;
            }
            match GlobBuilder::new(pattern).build() {
                Ok(glob) => {
                    agents.add(glob);
                }
                Err(e) => p.fail(field, format!("invalid glob {pattern:?}: {}", e.kind())),
            }
        }

        let mut ops = OpSet::EMPTY;
        for (j, op) in r.ops.iter().enumerate() {
            match OpSet::parse_one(op) {
                Ok(o) => ops |= o,
                Err(e) => p.fail(format!("{prefix}.ops[{j}]"), e.to_string()),
            }
        }

        // A review holds nobody: it may wait as long as a request may.
        let max_timeout = if r.mode == Mode::Review {
            MAX_REQUEST_TTL
        } else {
            MAX_TIMEOUT
        };
        if let Some(t) = r.timeout {
            check_duration(
                &mut p,
                &format!("{prefix}.timeout"),
                t.0,
                MIN_TIMEOUT,
                max_timeout,
            );
        }
        if r.mode == Mode::Review && r.fail == FailVerdict::Allow {
            p.fail(
                format!("{prefix}.fail"),
                "a `review` rule restores the baseline when no answer comes in time; `fail = \"allow\"` has no meaning there (leave it out)",
            );
        }
        if r.outside_sessions && r.within_scope.is_some() {
            p.fail(
                format!("{prefix}.within_scope"),
                "a rule that applies outside sessions cannot test a session's scope",
            );
        }
        if r.outside_sessions && !r.agents.is_empty() {
            p.fail(
                format!("{prefix}.outside_sessions"),
                "a rule that applies outside sessions cannot restrict `agents` (such processes have no agent)",
            );
        }

        let quorum = check_quorum(&mut p, &prefix, r);
        let (Ok(paths), Ok(agents)) = (paths.build(), agents.build()) else {
            p.fail(prefix, "cannot build the rule's glob sets");
            continue;
        };
        rules.push(CompiledRule {
            rule: Arc::new(Rule {
                name: r.name.clone(),
                verdict: r.verdict,
                fail: r.fail,
                mode: r.mode,
                timeout: match (r.timeout, r.mode) {
                    (Some(t), _) => t.0,
                    // Nothing waits on a review: it gets a request's lifetime.
                    (None, Mode::Review) => g.request_ttl.0,
                    (None, _) => g.default_timeout.0,
                },
                on_expiry: r.on_expiry,
                ops: if ops.is_empty() { OpSet::ALL } else { ops },
                outside_sessions: r.outside_sessions,
                quorum,
            }),
            paths,
            agents: (!r.agents.is_empty()).then_some(agents),
            ops: (!ops.is_empty()).then_some(ops),
            within_scope: r.within_scope,
            roots,
        });
    }
    if !p.0.is_empty() {
        return Err(p.0);
    }
    let any_path = any_path.build().map_err(|e| {
        vec![PolicyError::Invalid {
            field: "gate.rule".into(),
            message: format!("cannot build the glob set of all rules: {e}"),
        }]
    })?;
    Ok(CompiledRules {
        rules,
        any_path,
        trees,
        files,
    })
}

fn check_duration(p: &mut Problems, field: &str, d: Duration, min: Duration, max: Duration) {
    if d < min || d > max {
        p.fail(
            field.to_owned(),
            format!(
                "{} is not between {} and {}",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
    }
}

fn check_name(p: &mut Problems, prefix: &str, name: &str, seen: &mut HashSet<String>) {
    let field = format!("{prefix}.name");
    if name.trim().is_empty() {
        p.fail(field, "every rule needs a name");
    } else if name.len() > MAX_RULE_NAME || name.chars().any(char::is_control) {
        p.fail(
            field,
            format!("a rule name is at most {MAX_RULE_NAME} bytes without control characters"),
        );
    } else if name.starts_with(BUILTIN_PREFIX) {
        p.fail(
            field,
            format!("{name:?}: names starting with {BUILTIN_PREFIX:?} are reserved"),
        );
    } else if !seen.insert(name.to_owned()) {
        p.fail(field, format!("{name:?} is used by an earlier rule"));
    }
}

/// Checks an absolute, normalised path glob and builds it (`*` does not cross `/`).
fn check_path_glob(p: &mut Problems, field: &str, pattern: &str) -> Option<globset::Glob> {
    if !pattern.starts_with('/') {
        p.fail(
            field.to_owned(),
            format!("{pattern:?} is not an absolute path glob (start it with `/`)"),
        );
        return None;
    }
    if pattern.contains('\0') {
        p.fail(field.to_owned(), format!("{pattern:?} contains a NUL byte"));
        return None;
    }
    if pattern.split('/').any(|c| c == "." || c == "..") {
        p.fail(
            field.to_owned(),
            format!("{pattern:?} has a `.` or `..` component; write it normalised"),
        );
        return None;
    }
    match path_glob(pattern) {
        Ok(g) => Some(g),
        Err(e) => {
            p.fail(field.to_owned(), format!("invalid glob {pattern:?}: {e}"));
            None
        }
    }
}

/// The glob semantics used for every path glob of the gate: `*` and `?` stay within one
/// path component, `**` crosses them.
pub(crate) fn path_glob(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// Checks a `trees`/`files` entry; returns whether it is acceptable.
fn check_mark_path(p: &mut Problems, field: String, path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    let problem = if !bytes.starts_with(b"/") {
        Some(format!("{} is not an absolute path", path.display()))
    } else if bytes.contains(&0) {
        Some(format!("{} contains a NUL byte", path.display()))
    } else if bytes.split(|b| *b == b'/').any(|c| c == b"." || c == b"..") {
        Some(format!(
            "{} has a `.` or `..` component; write it normalised",
            path.display()
        ))
    } else if bytes.iter().all(|b| *b == b'/') {
        Some("`/` would gate the whole filesystem".to_owned())
    } else {
        None
    };
    match problem {
        Some(message) => {
            p.fail(field, message);
            false
        }
        None => true,
    }
}

/// Characters that make a glob component non-literal.
const GLOB_META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// The directory to mark for a path glob: the literal directory prefix before the first
/// glob character (`/etc/**` -> `/etc`, `/etc/cron.d/*.conf` -> `/etc/cron.d`,
/// `/etc/cron*` -> `/etc`), or the whole path when it has no glob character (a file or a
/// directory, which need not exist yet). `None` when that prefix is `/`.
pub fn literal_root(pattern: &str) -> Option<&str> {
    let root = match pattern.find(GLOB_META) {
        None => pattern.trim_end_matches('/'),
        Some(i) => {
            let literal = &pattern[..i];
            let cut = literal.rfind('/').unwrap_or(0);
            &literal[..cut]
        }
    };
    (!root.is_empty()).then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(g: &GateConfig) -> Vec<String> {
        g.problems()
            .into_iter()
            .map(|e| match e {
                PolicyError::Invalid { field, .. } => field,
            })
            .collect()
    }

    fn rule(name: &str, paths: &[&str]) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            agents: vec![],
            ops: vec![],
            verdict: Verdict::Ask,
            fail: FailVerdict::Deny,
            mode: Mode::Hold,
            timeout: None,
            on_expiry: OnExpiry::Flag,
            outside_sessions: false,
            approvals: None,
            approvers: vec![],
            four_eyes: false,
            notify: vec![],
            within_scope: None,
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(GateConfig::default().problems().is_empty());
    }

    #[test]
    fn literal_roots() {
        assert_eq!(literal_root("/etc/**"), Some("/etc"));
        assert_eq!(literal_root("/etc/cron.d/*.conf"), Some("/etc/cron.d"));
        assert_eq!(literal_root("/etc/cron*"), Some("/etc"));
        assert_eq!(literal_root("/etc/sudoers"), Some("/etc/sudoers"));
        assert_eq!(literal_root("/srv/app/"), Some("/srv/app"));
        assert_eq!(literal_root("/home/*/.ssh/**"), Some("/home"));
        assert_eq!(literal_root("/etc/{a,b}/x"), Some("/etc"));
        assert_eq!(literal_root("/**"), None);
        assert_eq!(literal_root("/*.conf"), None);
        assert_eq!(literal_root("/"), None);
    }

    #[test]
    fn problems_name_fields() {
        let mut g = GateConfig {
            rules: vec![rule("a", &["/etc/[ab"])],
            ..GateConfig::default()
        };
        assert_eq!(fields(&g), ["gate.rule[0].paths[0]"]);

        g.rules = vec![rule("a", &["/etc/x"]), rule("b", &["etc/**"])];
        assert_eq!(fields(&g), ["gate.rule[1].paths[0]"]);

        g.rules = vec![rule("a", &["/etc/../x", "/**"])];
        assert_eq!(
            fields(&g),
            ["gate.rule[0].paths[0]", "gate.rule[0].paths[1]"]
        );

        g.rules = vec![rule("a", &[])];
        assert_eq!(fields(&g), ["gate.rule[0].paths"]);

        g.rules = vec![
            rule("a", &["/etc"]),
            rule("a", &["/srv"]),
            rule(" ", &["/x"]),
        ];
        assert_eq!(fields(&g), ["gate.rule[1].name", "gate.rule[2].name"]);

        g.rules = vec![rule("builtin:mine", &["/etc"])];
        assert_eq!(fields(&g), ["gate.rule[0].name"]);

        let mut r = rule("a", &["/etc"]);
        r.agents = vec!["".into(), "{x".into()];
        r.ops = vec!["write".into(), "chmode".into()];
        r.timeout = Some(HumanDuration(Duration::from_millis(10)));
        g.rules = vec![r];
        assert_eq!(
            fields(&g),
            [
                "gate.rule[0].agents[0]",
                "gate.rule[0].agents[1]",
                "gate.rule[0].ops[1]",
                "gate.rule[0].timeout"
            ]
        );

        let mut r = rule("a", &["/etc"]);
        r.agents = vec!["codex".into()];
        r.outside_sessions = true;
        g.rules = vec![r];
        assert_eq!(fields(&g), ["gate.rule[0].outside_sessions"]);
    }

    #[test]
    fn approvals_url_is_checked() {
        let mut g = GateConfig::default();
        for ok in [
            "https://approve.example:8443",
            "http://127.0.0.1:8080/base/",
        ] {
            g.approvals_url = Some(ok.into());
            assert!(fields(&g).is_empty(), "{ok}");
        }
        for bad in [
            "approve.example",
            "https://",
            "https:///x",
            "https://a b",
            "https://a/?q=1",
            "https://a/\u{1b}[0m",
            "javascript:alert(1)",
        ] {
            g.approvals_url = Some(bad.into());
            assert_eq!(fields(&g), ["gate.approvals_url"], "{bad}");
        }
    }

    #[test]
    fn section_level_problems() {
        let g = GateConfig {
            default_timeout: HumanDuration(Duration::from_secs(7200)),
            request_ttl: HumanDuration(Duration::ZERO),
            max_preimage_bytes: 0,
            trees: vec![PathBuf::from("/"), PathBuf::from("/srv")],
            files: vec![PathBuf::from("x"), PathBuf::from("/a/./b")],
            ..GateConfig::default()
        };
        assert_eq!(
            fields(&g),
            [
                "gate.default_timeout",
                "gate.request_ttl",
                "gate.max_preimage_bytes",
                "gate.trees[0]",
                "gate.files[0]",
                "gate.files[1]"
            ]
        );
    }

    #[test]
    fn enums_parse_and_name_themselves() {
        assert_eq!("deny-and-request".parse::<Mode>(), Ok(Mode::DenyAndRequest));
        assert_eq!(Mode::DenyAndRequest.to_string(), "deny-and-request");
        let e = "maybe".parse::<Verdict>().unwrap_err();
        assert_eq!(
            e,
            "unknown verdict \"maybe\": expected \"allow\", \"deny\" or \"ask\""
        );
        assert!(
            "Revert"
                .parse::<OnExpiry>()
                .unwrap_err()
                .contains("on_expiry")
        );
        assert!(
            "".parse::<FailVerdict>()
                .unwrap_err()
                .contains("fail verdict")
        );
    }

    #[test]
    fn durations_are_humantime() {
        let d: HumanDuration = serde_json::from_str("\"1h 30m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h 30m\"");
        let e = serde_json::from_str::<HumanDuration>("\"30\"").unwrap_err();
        assert!(e.to_string().contains("invalid duration \"30\""), "{e}");
    }
}
