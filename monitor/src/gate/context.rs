//! Who is asking: the context an approver sees with a gated open.
//!
//! Built off the permission thread (the engine's task) from `/proc` while the writer is
//! still blocked in its open, and from the session registry. Everything here comes from a
//! watched, possibly hostile process: it is bounded and escaped, never trusted. Byte
//! strings keep the event contract's encoding and every field fits the limits of the
//! request contract (`approver::wire`), so that the service accepts what is built here.
use confgate_proto::v1 as pb;

use crate::approver::wire;
use crate::event::escape::{encode, encode_bounded};
use crate::observe::procs::proctable::{Proc, proc_from_procfs};
use crate::os::procfs;
use crate::sessions::SessionInfo;

/// Ancestors reported with a request (writer first).
pub const MAX_ANCESTRY: usize = 16;
/// Longest reason taken from `CONFGATE_REASON`, in bytes.
pub const MAX_ENV_REASON_BYTES: usize = 4096;
/// Environment variable a writing process may set to say why it writes.
pub const REASON_ENV: &[u8] = b"CONFGATE_REASON";
/// Most bytes (encoded) of the writer's command line sent with a request.
pub const MAX_COMMAND_BYTES: usize = 32 * 1024;
/// Most bytes (encoded) of each ancestor's command line.
pub const MAX_ANCESTOR_COMMAND_BYTES: usize = 4 * 1024;
/// Most argv entries kept of one command line (a last entry says what was cut).
pub const MAX_ARGV_ENTRIES: usize = 64;

/// `argv` encoded within `budget` bytes, each entry within the contract's limit. When
/// anything is cut, a last entry `[confgate: command cut, N more bytes not shown]` says so.
pub fn bounded_argv(argv: &[Vec<u8>], budget: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len().min(MAX_ARGV_ENTRIES + 1));
    let mut left = budget;
    for (i, arg) in argv.iter().enumerate() {
        let (text, cut) = if out.len() + 1 < MAX_ARGV_ENTRIES {
            encode_bounded(arg, left.min(wire::MAX_TEXT))
        } else {
            (String::new(), true)
        };
        left -= text.len();
        if cut {
            let shown = crate::event::escape::decode(&text).map_or(0, |raw| raw.len());
            if !text.is_empty() {
                out.push(text);
            }
            let hidden: usize =
                arg.len().saturating_sub(shown) + argv[i + 1..].iter().map(Vec::len).sum::<usize>();
            out.push(format!(
                "[confgate: command cut, {hidden} more bytes not shown]"
            ));
            break;
        }
        out.push(text);
    }
    out
}

/// The writer as `/proc` describes it (best effort: it may exit at any time).
#[derive(Clone, Debug, Default)]
pub struct Writer {
    pub pid: u32,
    pub uid: u32,
    pub command: Vec<String>,
    pub cwd: String,
    pub ancestry: Vec<pb::ProcessInfo>,
    /// `CONFGATE_REASON` from the writer's environment, if set.
    pub env_reason: Option<String>,
}

fn info(p: &Proc) -> pb::ProcessInfo {
    pb::ProcessInfo {
        pid: p.pid,
        comm: encode_bounded(&p.comm, wire::MAX_NAME).0,
        argv: bounded_argv(&p.argv, MAX_ANCESTOR_COMMAND_BYTES),
    }
}

/// `CONFGATE_REASON` of `pid`, escaped (invalid UTF-8 replaced) and bounded; `None` when unset or unreadable.
pub fn env_reason(pid: u32) -> Option<String> {
    let env = procfs::read(pid, "environ")?;
    env.split(|&b| b == 0).find_map(|kv| {
        let value = kv.strip_prefix(REASON_ENV)?.strip_prefix(b"=")?;
        if value.is_empty() {
            return None;
        }
        let value = &value[..value.len().min(MAX_ENV_REASON_BYTES)];
        // Shown to approvers on terminals: control and invisible characters escaped, then
        // cut (at a character) to the contract's limit.
        let mut text = crate::sessions::escape_text(&String::from_utf8_lossy(value));
        if text.len() > wire::MAX_TEXT {
            let mut end = wire::MAX_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Some(text)
    })
}

/// Describe the writer `pid` and its ancestry up to (and including) `stop_at` (the session
/// root), at most [`MAX_ANCESTRY`] processes.
pub fn writer(pid: u32, stop_at: u32) -> Writer {
    let Some(me) = proc_from_procfs(pid) else {
        return Writer {
            pid,
            uid: u32::MAX,
            ..Writer::default()
        };
    };
    let mut ancestry = vec![info(&me)];
    let mut next = me.ppid;
    while ancestry.len() < MAX_ANCESTRY
        && next > 1
        && ancestry.last().map(|a| a.pid) != Some(stop_at)
    {
        let Some(p) = proc_from_procfs(next) else {
            break;
        };
        next = p.ppid;
        ancestry.push(info(&p));
    }
    Writer {
        pid,
        uid: me.uid,
        command: bounded_argv(&me.argv, MAX_COMMAND_BYTES),
        cwd: me.cwd.as_deref().map(encode).unwrap_or_default(),
        ancestry,
        env_reason: env_reason(pid),
    }
}

/// The request context sent to the approval service.
pub struct ContextInput<'a> {
    pub host: &'a str,
    pub session: Option<&'a SessionInfo>,
    pub writer: &'a Writer,
    pub path: &'a [u8],
    pub operations: Vec<String>,
    pub content_sha256: String,
    /// What the approver sees of the content (`gate.mask` applied), if anything.
    pub excerpt: Option<(crate::event::excerpt::Excerpt, &'static str)>,
    pub rule: &'a str,
    pub mode: &'a str,
    pub fail_verdict: &'a str,
    /// The rule's quorum (`None`: the default, one approval by anyone).
    pub quorum: Option<pb::Quorum>,
    /// `gate.mask`: applied to command lines and the stated reason as to the excerpt.
    pub masker: &'a crate::event::excerpt::Masker,
}

/// The stated reason: the writer's `CONFGATE_REASON` when set, else the session's
/// `confgate run --reason`.
pub fn reason(writer: &Writer, session: Option<&SessionInfo>) -> String {
    writer
        .env_reason
        .clone()
        .or_else(|| session.and_then(|s| s.reason.clone()))
        .unwrap_or_default()
}

pub fn request_context(i: ContextInput<'_>) -> pb::RequestContext {
    let s = i.session;
    pb::RequestContext {
        host: i.host.to_string(),
        session_id: s.map_or(0, |s| s.id),
        agent: s.map(|s| s.agent.clone()).unwrap_or_default(),
        uid: i.writer.uid,
        user: crate::sessions::user_name(i.writer.uid),
        pid: i.writer.pid,
        command: i.masker.mask_argv(&i.writer.command),
        ancestry: i
            .writer
            .ancestry
            .iter()
            .map(|a| pb::ProcessInfo {
                argv: i.masker.mask_argv(&a.argv),
                ..a.clone()
            })
            .collect(),
        path: encode(i.path),
        operations: i.operations,
        reason: i.masker.mask_words(&reason(i.writer, s)).into_owned(),
        content_sha256: i.content_sha256,
        rule: i.rule.to_string(),
        mode: i.mode.to_string(),
        fail_verdict: i.fail_verdict.to_string(),
        cwd: i.writer.cwd.clone(),
        quorum: i.quorum,
        login_user: s.and_then(|s| login_user(s.root_pid)).unwrap_or_default(),
        // The service names it (from the path).
        likely_final: String::new(),
        excerpt_kind: i
            .excerpt
            .as_ref()
            .map(|e| e.1.to_string())
            .unwrap_or_default(),
        excerpt: i.excerpt.map(|e| e.0.text).unwrap_or_default(),
    }
}

/// The login user (`/proc/<pid>/loginuid`) of `pid`, when one is set: who logged in,
/// whatever `sudo` or `su` made the session's uid.
pub fn login_user(pid: u32) -> Option<String> {
    let raw = procfs::read_at_most(pid, "loginuid", 32)?;
    let uid: u32 = std::str::from_utf8(&raw).ok()?.trim().parse().ok()?;
    (uid != u32::MAX).then(|| crate::sessions::user_name(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_process_and_its_parents() {
        let me = std::process::id();
        let w = writer(me, 1);
        assert_eq!(w.pid, me);
        assert!(!w.command.is_empty());
        assert_eq!(w.ancestry[0].pid, me);
        assert!(
            w.ancestry.len() >= 2,
            "parent of the test process is listed"
        );
    }

    #[test]
    fn a_gone_process_gives_an_empty_description() {
        let w = writer(u32::MAX - 7, 1);
        assert!(w.ancestry.is_empty());
        assert!(w.command.is_empty());
    }

    #[test]
    fn env_reason_is_read_from_the_child_and_escaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("CONFGATE_REASON", "fix\nthe pool")
            .spawn()
            .unwrap();
        // /proc shows the new environment once the exec has replaced the image, which
        // may lag `spawn` returning on a loaded machine: poll briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let r = loop {
            let r = env_reason(child.id());
            if r.is_some() || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        child.kill().unwrap();
        let _ = child.wait();
        assert_eq!(r.as_deref(), Some("fix\\u{a}the pool"));
    }

    #[test]
    fn long_command_lines_are_cut_within_the_contract_and_say_so() {
        // One huge `sh -c` script with control characters and invalid UTF-8.
        let script = [&b"true\n\x1b[2J"[..], &[0xff; 9000], b"\necho evil"].concat();
        let argv = vec![b"sh".to_vec(), b"-c".to_vec(), script.clone()];
        let out = bounded_argv(&argv, MAX_COMMAND_BYTES);
        assert_eq!(out[..2], ["sh", "-c"]);
        assert!(
            out[2].starts_with("true\n\x1b[2J\\xff"),
            "{:?}",
            &out[2][..20]
        );
        assert!(out[2].len() <= wire::MAX_TEXT);
        let shown = crate::event::escape::decode(&out[2]).unwrap().len();
        assert_eq!(
            out[3],
            format!(
                "[confgate: command cut, {} more bytes not shown]",
                script.len() - shown
            )
        );
        assert_eq!(out.len(), 4);
        // Many arguments: at most MAX_ARGV_ENTRIES, the last one the marker.
        let many = vec![b"x".to_vec(); 500];
        let out = bounded_argv(&many, MAX_COMMAND_BYTES);
        assert_eq!(out.len(), MAX_ARGV_ENTRIES);
        assert!(out.last().unwrap().starts_with("[confgate: command cut, "));
        // A short one is kept whole, and whatever is cut still passes the service's checks.
        let short = vec![b"a\nb".to_vec(), b"\\\xfe".to_vec()];
        assert_eq!(bounded_argv(&short, 100), ["a\nb", "\\\\\\xfe"]);
        for budget in [0, 1, 5, 4096, 40_000] {
            let ctx = pb::RequestContext {
                path: "/etc/x".into(),
                operations: vec!["write".into()],
                fail_verdict: "deny".into(),
                command: bounded_argv(&argv, budget),
                ..Default::default()
            };
            wire::check_context(&ctx).unwrap();
        }
    }

    #[test]
    fn env_reason_wins_over_the_session_reason() {
        let w = Writer {
            env_reason: Some("env".into()),
            ..Writer::default()
        };
        assert_eq!(reason(&w, None), "env");
        assert_eq!(reason(&Writer::default(), None), "");
    }
}
