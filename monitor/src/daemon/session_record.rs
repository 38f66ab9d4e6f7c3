//! A session's start and end records in the host ledger (`session_start`, `session_end`):
//! what it was, who ran it, what it was meant to touch and what credentials it was given
//! (the **names** of credential-like environment variables, never their values), for
//! post-incident reconstruction.
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::{Value, json};

use crate::sessions::{SessionInfo, escape_text};

/// Most of a process's environment read (bytes).
const MAX_ENVIRON: usize = 1 << 20;
/// Most credential names listed.
const MAX_NAMES: usize = 256;

/// `daemon.credential_env`, compiled (case-insensitive). Globs that do not compile (the
/// configuration check refuses them) are left out.
pub(super) fn credential_matcher(globs: &[String]) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        if let Ok(g) = GlobBuilder::new(g).case_insensitive(true).build() {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
}

/// The names, sorted and without duplicates, of the variables in `environ` (a
/// `/proc/<pid>/environ` block: `NAME=VALUE` entries separated by NUL) that `matcher`
/// matches. Values are never looked at beyond the `=`.
pub(super) fn credential_names(environ: &[u8], matcher: &GlobSet) -> Vec<String> {
    let mut out: Vec<String> = environ
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            let name = &entry[..eq];
            (!name.is_empty()).then_some(name)
        })
        .filter(|name| matcher.is_match(std::ffi::OsStr::from_bytes(name)))
        .map(|name| escape_text(&String::from_utf8_lossy(name)))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_NAMES);
    out
}

/// The real and effective gid of `pid` (`Gid:` of its status).
fn gids(pid: u32) -> (Option<u32>, Option<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("Gid:"));
    let mut it = line
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|x| x.parse::<u32>().ok());
    (it.next().flatten(), it.next().flatten())
}

/// The `session_start` record of `info`, whose root process is alive now.
pub(super) fn start(
    info: &SessionInfo,
    matcher: &GlobSet,
    gated: &[PathBuf],
    confined: bool,
) -> Value {
    let pid = info.root_pid;
    let environ = crate::os::procfs::read_at_most(pid, "environ", MAX_ENVIRON).unwrap_or_default();
    let cgroup = crate::os::procfs::read_at_most(pid, "cgroup", 4096)
        .map(|c| escape_text(String::from_utf8_lossy(c.trim_ascii_end()).as_ref()));
    let (gid, egid) = gids(pid);
    json!({
        "session": info.id,
        "agent": info.agent,
        "reason": info.reason,
        "source": info.source.to_string(),
        "user": info.user,
        "uid": info.uid,
        "gid": gid,
        "egid": egid,
        "groups": crate::os::procfs::groups_of(pid),
        "root_pid": pid,
        "cwd": info.cwd,
        "argv": info.command,
        "cgroup": cgroup,
        "confined": confined,
        "scope": info.scope,
        "gated": gated.iter().map(|p| crate::event::escape::encode(p.as_os_str().as_bytes())).collect::<Vec<_>>(),
        "credential_env": credential_names(&environ, matcher),
        "started": info.started,
    })
}

/// The `session_end` record of `info` (ended): how its root process ended (as its
/// launcher reported it, or why not reported) and its counts.
pub(super) fn end(
    info: &SessionInfo,
    exit: crate::sessions::exit::Known,
    counts: &crate::gate::engine::SessionCounts,
) -> Value {
    let mut c = serde_json::to_value(counts).unwrap_or(Value::Null);
    c["events"] = json!(info.events);
    json!({
        "session": info.id,
        "agent": info.agent,
        "started": info.started,
        "ended": info.ended,
        "exit": crate::sessions::exit::exit_json(exit),
        "events": info.events,
        "counts": c,
        "scope": info.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_never_values() {
        let m = credential_matcher(&crate::config::DaemonSection::default().credential_env);
        let env = b"PATH=/bin\0API_TOKEN=secret123\0aws_region=x\0MY_PASSWORD_FILE=/p\0\
                    KUBECONFIG=/k\0HOME=/root\0DB_KEY=k=v\0=nameless\0NOEQUALS\0API_TOKEN=again\0";
        let names = credential_names(env, &m);
        assert_eq!(
            names,
            [
                "API_TOKEN",
                "DB_KEY",
                "KUBECONFIG",
                "MY_PASSWORD_FILE",
                "aws_region"
            ]
        );
        let text = serde_json::to_string(&names).unwrap();
        assert!(!text.contains("secret123") && !text.contains("k=v"));
        // A name that is not UTF-8 or has control characters comes out escaped.
        let odd = credential_names(b"X\xff\n_TOKEN=v\0", &m);
        assert_eq!(odd.len(), 1);
        assert!(!odd[0].contains('\n'), "{odd:?}");
    }

    #[test]
    fn start_record_of_this_process() {
        let m = credential_matcher(&["HOME".to_owned()]);
        let info = SessionInfo {
            id: 4,
            agent: "a".into(),
            reason: None,
            root_pid: std::process::id(),
            uid: 0,
            user: "root".into(),
            started: "t".into(),
            source: crate::sessions::SessionSource::Wrapper,
            command: vec!["x".into()],
            cwd: "/".into(),
            events: 0,
            ended: None,
            scope: vec!["/srv/**".into()],
        };
        let r = start(&info, &m, &[PathBuf::from("/etc")], true);
        assert_eq!(r["scope"][0], "/srv/**");
        assert_eq!(r["gated"][0], "/etc");
        assert!(r["gid"].is_u64() && r["groups"].is_array(), "{r}");
        assert!(r["cgroup"].is_string(), "{r}");
        if std::env::var_os("HOME").is_some() {
            assert_eq!(r["credential_env"][0], "HOME");
        }
    }

    #[test]
    fn end_record_has_the_exit_status_and_counts() {
        use crate::sessions::exit::{ExitStatus, Known};
        let info = SessionInfo {
            id: 4,
            agent: "a".into(),
            reason: None,
            root_pid: 1,
            uid: 0,
            user: "root".into(),
            started: "t".into(),
            source: crate::sessions::SessionSource::Wrapper,
            command: vec![],
            cwd: "/".into(),
            events: 9,
            ended: Some("u".into()),
            scope: vec![],
        };
        let counts = crate::gate::engine::SessionCounts {
            denied: 2,
            complete: true,
            ..Default::default()
        };
        let r = end(&info, Known::Reported(ExitStatus::Code(3)), &counts);
        assert_eq!(r["exit"], serde_json::json!({"reported": true, "code": 3}));
        assert_eq!(r["counts"]["events"], 9);
        assert_eq!(r["counts"]["denied"], 2);
        assert_eq!(r["counts"]["complete"], true);
        let r = end(&info, Known::NoLauncher, &counts);
        assert_eq!(r["exit"]["reported"], false);
        assert!(r["exit"]["why"].is_string(), "{r}");
    }
}
