//! Everything parsing cannot check: absolute and bounded paths, sizes, globs, detection
//! rules, the gate's policy and the approval section. Each problem names its field.
use std::os::unix::ffi::OsStrExt;

use monitor_common::programs::{Category, program};

use super::schema::{ApprovalMode, Config, DetectRule, WatchSection};
use super::toml_check::{Checker, ConfigError};
use super::{MAX_COMM, MAX_KERNEL_PREFIX, client};
use crate::policy::PolicyError;

/// Longest Unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Config {
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
        for (field, message) in self.metrics.problems() {
            c.fail(&format!("metrics.{field}"), message);
        }
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
        if c.abs_path("daemon.supervise_socket", &d.supervise_socket)
            && d.supervise_socket.as_os_str().len() > MAX_SOCKET_PATH
        {
            c.fail(
                "daemon.supervise_socket",
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
        for (i, g) in d.credential_env.iter().enumerate() {
            if let Err(e) = globset::Glob::new(g) {
                c.fail(&format!("daemon.credential_env[{i}]"), e.to_string());
            }
        }
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
        for (field, message) in self.output.nats.problems("output.nats") {
            c.fail(&field, message);
        }
    }

    fn check_kernel(&self, c: &mut Checker) {
        let bytes = self.kernel.ringbuf_bytes;
        if !bytes.is_power_of_two() || bytes < 4096 {
            c.fail(
                "kernel.ringbuf_bytes",
                format!("{bytes} is not a power of two of at least 4096 (e.g. 8388608)"),
            );
        }
        for (i, name) in self.kernel.skip_programs.iter().enumerate() {
            let field = format!("kernel.skip_programs[{i}]");
            match program(name) {
                None => c.fail(
                    &field,
                    format!("{name:?} is not a program of confgate's eBPF object"),
                ),
                Some(p) if p.category == Category::Sched => c.fail(
                    &field,
                    format!("{name} tracks processes into sessions: it cannot be skipped"),
                ),
                Some(_) => {}
            }
        }
    }
}

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
    if let Err(e) = crate::sessions::scope::validate(&r.scope) {
        c.fail(&format!("{prefix}.scope"), e);
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
