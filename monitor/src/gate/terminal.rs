//! The one-line notice on a session's controlling terminal: when an operation of the
//! session is held or denied-and-requested, the person at the agent's terminal learns that
//! a request exists, what waits, for how long, and how to decide it.
//!
//! The notice never goes into a pipe or file of the agent's (its stdout may be a pipe or a
//! file another program parses): only the session's controlling terminal gets it. For the
//! session's first process (else the writer), still in the session by the kernel's session
//! map, the terminal is `tty_nr` of `/proc/<pid>/stat` (a terminal major); it is opened
//! through the process's own standard descriptors `/proc/<pid>/fd/{0,1,2}`, the first that
//! is a character device with exactly that device number, `O_WRONLY | O_NOCTTY |
//! O_NONBLOCK`, and checked again through the open descriptor (`isatty`, same device
//! number) and the process's session once more. Never `/dev/pts/N` in the daemon's own
//! namespace: a container's private devpts has its own terminal with the same number, and
//! a pid may have been reused. A write that would block is dropped and
//! counted; notices of one session are rate-limited; what is echoed from the session (the
//! path) is stripped to printable text.
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::decider::GateMetrics;
use crate::os::procfs;

/// Shortest time between two notices to one session (a burst of requests shows one line;
/// `confgate approvals list` shows them all).
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Most characters of the path echoed in a notice.
const MAX_PATH_CHARS: usize = 200;
/// The web page of a request under `gate.approvals_url` (the approval service's
/// `/web/requests/{id}` route).
pub const WEB_REQUEST_PATH: &str = "/web/requests/";
/// Sessions remembered by the rate limiter before old entries are pruned.
const MAX_REMEMBERED: usize = 4096;

/// How the operation waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The operation is held for at most this long.
    Held(Duration),
    /// The operation was denied; the request stays open this long (a retry after approval
    /// passes).
    Denied(Duration),
}

/// What a notice says.
#[derive(Clone, Debug)]
pub struct Notice<'a> {
    pub request_id: u64,
    pub session: u64,
    /// Operations (`write`, `create`, ...).
    pub ops: &'a [String],
    /// The path, as the event contract encodes it.
    pub path: &'a str,
    pub waiting: Waiting,
}

/// The session of a process (0: none), from the kernel's session map.
#[derive(Clone)]
pub struct SessionLookup(pub Arc<dyn Fn(u32) -> u64 + Send + Sync>);

impl std::fmt::Debug for SessionLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionLookup")
    }
}

/// Writes terminal notices (see the module documentation).
#[derive(Debug)]
pub struct TerminalNotices {
    enabled: bool,
    /// `gate.approvals_url` without a trailing `/`.
    url: Option<String>,
    /// Which session a process is in; without it no notice is written (nothing can tell
    /// that a pid is still the session's).
    session_of: Option<SessionLookup>,
    last: Mutex<HashMap<u64, Instant>>,
}

impl TerminalNotices {
    pub fn new(enabled: bool, url: Option<String>, session_of: Option<SessionLookup>) -> Self {
        TerminalNotices {
            enabled,
            url: url.map(|u| u.trim_end_matches('/').to_owned()),
            session_of,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Tells the terminal of session `n.session` (first process `root_pid`, writer
    /// `writer_pid`) about request `n.request_id`. Blocking I/O on `/proc` and the device:
    /// call it on a blocking thread. Never fails: what could not be written is counted.
    pub fn notify(&self, n: &Notice<'_>, root_pid: u32, writer_pid: u32, m: &GateMetrics) {
        if !self.enabled || n.session == 0 {
            return;
        }
        if !self.admit(n.session, Instant::now()) {
            GateMetrics::inc(&m.terminal_rate_limited);
            return;
        }
        let in_session = |pid: u32| {
            self.session_of
                .as_ref()
                .is_some_and(|l| pid != 0 && (l.0)(pid) == n.session)
        };
        let Some(mut tty) = [root_pid, writer_pid]
            .into_iter()
            .find_map(|pid| open_terminal_of(pid, &in_session))
        else {
            GateMetrics::inc(&m.terminal_no_terminal);
            return;
        };
        let line = format!("\r\n{}\r\n", self.line(n));
        match tty.write(line.as_bytes()) {
            Ok(k) if k == line.len() => {
                GateMetrics::inc(&m.terminal_notices);
            }
            // Would block, or a full buffer took part of it: not waited for.
            _ => {
                GateMetrics::inc(&m.terminal_dropped);
            }
        }
    }

    /// Whether session `session` may get a notice at `now` (then it is recorded).
    fn admit(&self, session: u64, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = last.get(&session)
            && now.duration_since(*at) < MIN_INTERVAL
        {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < MIN_INTERVAL);
        }
        last.insert(session, now);
        true
    }

    /// The notice's text (one line, printable).
    pub fn line(&self, n: &Notice<'_>) -> String {
        let what = printable(&n.ops.join("+"), 32);
        let what = if what.is_empty() {
            "write".into()
        } else {
            what
        };
        let mut path = printable(n.path, MAX_PATH_CHARS);
        if let Some(what) = crate::approver::burst::describe(n.path) {
            path.push_str(&format!(
                " (temp name: {})",
                printable(&what, MAX_PATH_CHARS)
            ));
        }
        let id = n.request_id;
        let mut s = match n.waiting {
            Waiting::Held(t) => format!(
                "[confgate] request {id}: {what} of {path} is held for up to {} until an approver decides; approve: confgate approvals approve {id}",
                round(t)
            ),
            Waiting::Denied(t) => format!(
                "[confgate] request {id}: {what} of {path} was denied and waits {} for an approver; approve (then retry): confgate approvals approve {id}",
                round(t)
            ),
        };
        if let Some(url) = &self.url {
            s.push_str(&format!(" or {url}{WEB_REQUEST_PATH}{id}"));
        }
        s
    }
}

/// `t` to whole seconds, as humantime writes it (`30s`, `1h`).
fn round(t: Duration) -> String {
    humantime::format_duration(Duration::from_secs(t.as_secs().max(1))).to_string()
}

/// `text` with every control or formatting character (terminal escapes, bidirectional
/// overrides, zero-width marks) replaced by `?`, at most `max` characters (`...` when cut).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 4));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        let bad = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}');
        out.push(if bad { '?' } else { c });
    }
    out
}

/// The controlling terminal of `pid`, opened for a notice through the process's own
/// descriptors and verified, or `None`. `in_session` tells whether a pid is (still) the
/// session's.
fn open_terminal_of(pid: u32, in_session: &dyn Fn(u32) -> bool) -> Option<std::fs::File> {
    if !in_session(pid) {
        return None;
    }
    let stat = procfs::read(pid, "stat")?;
    let tty_nr = tty_nr_of(&stat)?;
    let (major, minor) = split_dev(tty_nr);
    if !is_terminal(major, minor) {
        return None;
    }
    let f = open_std_fd_device(pid, nix::sys::stat::makedev(major, minor))?;
    // The process did not end (and its pid go to another) while the device was opened.
    in_session(pid).then_some(f)
}

/// The first of `/proc/<pid>/fd/{0,1,2}` that is the character device `rdev`, opened for
/// writing (not as a controlling terminal, never blocking) and checked through the open
/// descriptor: still that device, and a terminal.
fn open_std_fd_device(pid: u32, rdev: u64) -> Option<std::fs::File> {
    (0..3).find_map(|fd| {
        let path = format!("/proc/{pid}/fd/{fd}");
        let m = std::fs::metadata(&path).ok()?;
        if !m.file_type().is_char_device() || m.rdev() != rdev {
            return None;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .ok()?;
        let opened = f.metadata().ok()?;
        (opened.file_type().is_char_device()
            && opened.rdev() == rdev
            && nix::unistd::isatty(&f).unwrap_or(false))
        .then_some(f)
    })
}

/// Field 7 (`tty_nr`) of `/proc/<pid>/stat`; `None` when 0 (no controlling terminal).
fn tty_nr_of(stat: &[u8]) -> Option<u64> {
    // The command name (field 2) may hold anything, parentheses included: fields are
    // counted after its last `)`.
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(end + 1..)?).ok()?;
    // state ppid pgrp session tty_nr
    let tty: i64 = rest.split_ascii_whitespace().nth(4)?.parse().ok()?;
    u64::try_from(tty).ok().filter(|&t| t != 0)
}

/// Major and minor of a `tty_nr` (the kernel's `new_encode_dev`).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

/// Whether a device number is a terminal a notice goes to: Unix98 pseudo-terminals
/// (majors 136-143) and virtual consoles (major 4, minors 1-63).
fn is_terminal(major: u64, minor: u64) -> bool {
    match major {
        136..=143 => true,
        4 => (1..64).contains(&minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice<'a>(ops: &'a [String], path: &'a str, waiting: Waiting) -> Notice<'a> {
        Notice {
            request_id: 42,
            session: 7,
            ops,
            path,
            waiting,
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = b"123 (a) b) (c) S 1 123 123 34817 123 4194560 0";
        assert_eq!(tty_nr_of(stat), Some(34817));
        assert_eq!(tty_nr_of(b"1 (init) S 0 1 1 0 -1 4194560"), None);
        assert_eq!(split_dev(34817), (136, 1));
        assert!(is_terminal(136, 1) && is_terminal(143, 3) && is_terminal(4, 2));
        assert!(!is_terminal(4, 64) && !is_terminal(4, 0) && !is_terminal(1, 3));
        // A large minor (pts number above 255 in one major's range).
        assert_eq!(split_dev((136 << 8) | 0x5 | (0x3 << 20)), (136, 0x305));
    }

    #[test]
    fn the_line_is_printable_and_says_how_to_decide() {
        let n = TerminalNotices::new(true, Some("https://approve.example:8443/".into()), None);
        let ops = vec!["write".to_owned()];
        let hostile = "/etc/x\u{1b}]0;pwned\u{7}\n\u{202e}txt";
        let line = n.line(&notice(
            &ops,
            hostile,
            Waiting::Held(Duration::from_secs(30)),
        ));
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(!line.contains('\u{202e}'));
        assert!(line.contains("request 42"));
        assert!(line.contains("for up to 30s"));
        assert!(line.contains("confgate approvals approve 42"));
        assert!(line.ends_with(" or https://approve.example:8443/web/requests/42"));
        let none = TerminalNotices::new(true, None, None);
        let line = none.line(&notice(
            &ops,
            "/etc/demo.env",
            Waiting::Denied(Duration::from_secs(3600)),
        ));
        assert!(line.contains("was denied and waits 1h"), "{line}");
        assert!(!line.contains("http"));
        let line = none.line(&notice(
            &ops,
            "/etc/nginx/nginx.conf.dpkg-new",
            Waiting::Held(Duration::from_secs(30)),
        ));
        assert!(
            line.contains("(temp name: /etc/nginx/nginx.conf (new version unpacked by dpkg"),
            "{line}"
        );
        let long = "x".repeat(1000);
        assert!(printable(&long, 10).ends_with("..."));
        assert_eq!(printable(&long, 10).chars().count(), 13);
    }

    #[test]
    fn notices_of_one_session_are_rate_limited() {
        let n = TerminalNotices::new(true, None, None);
        let t0 = Instant::now();
        assert!(n.admit(1, t0));
        assert!(!n.admit(1, t0 + Duration::from_millis(500)));
        assert!(n.admit(2, t0 + Duration::from_millis(500)));
        assert!(n.admit(1, t0 + MIN_INTERVAL));
    }

    /// A pseudo-terminal: (master, slave) opened by this process.
    fn pty() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd as _;
        // SAFETY: posix_openpt returns a new descriptor (or -1), owned by the File below.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(m >= 0);
        // SAFETY: `m` is a valid descriptor this function owns.
        let master = unsafe { std::fs::File::from_raw_fd(m) };
        // SAFETY: plain calls on the master descriptor; ptsname's static buffer is copied
        // at once, in this single test thread's use.
        let name = unsafe {
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            std::ffi::CStr::from_ptr(libc::ptsname(m))
                .to_string_lossy()
                .into_owned()
        };
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(name)
            .unwrap();
        (master, slave)
    }

    #[test]
    fn the_terminal_is_opened_through_the_processs_own_descriptors() {
        use std::io::Read as _;
        use std::process::{Command, Stdio};
        let (mut master, slave) = pty();
        let rdev = slave.metadata().unwrap().rdev();
        // A process whose stdin is a pipe, stdout a file, stderr the terminal.
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
            .stderr(slave.try_clone().unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut f = open_std_fd_device(pid, rdev).expect("the terminal on fd 2");
        f.write_all(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let k = master.read(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"hello");
        // Another device number (another devpts's terminal 136:N, say): nothing opened;
        // the pipe and the file are never candidates.
        assert!(open_std_fd_device(pid, rdev + 1).is_none());
        // A pid that is not (or no longer) the session's: nothing, before any /proc read.
        assert!(open_terminal_of(pid, &|_| false).is_none());
        let _ = child.kill();
        let _ = child.wait();
        assert!(open_std_fd_device(pid, rdev).is_none(), "gone");
    }

    #[test]
    fn without_a_session_lookup_or_outside_the_session_no_notice_is_written() {
        let ops = vec!["write".to_owned()];
        let me = std::process::id();
        for lookup in [None, Some(SessionLookup(Arc::new(|_| 99)))] {
            let m = GateMetrics::default();
            let n = TerminalNotices::new(true, None, lookup);
            n.notify(
                &notice(&ops, "/etc/x", Waiting::Held(Duration::ZERO)),
                me,
                me,
                &m,
            );
            assert_eq!(
                m.terminal_notices
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
            assert_eq!(
                m.terminal_no_terminal
                    .load(std::sync::atomic::Ordering::Relaxed),
                1
            );
        }
    }

    #[test]
    fn off_or_outside_sessions_writes_nothing() {
        let ops = vec!["write".to_owned()];
        let m = GateMetrics::default();
        let off = TerminalNotices::new(false, None, None);
        off.notify(
            &notice(&ops, "/etc/x", Waiting::Held(Duration::ZERO)),
            1,
            1,
            &m,
        );
        let mut n = notice(&ops, "/etc/x", Waiting::Held(Duration::ZERO));
        n.session = 0;
        let on = TerminalNotices::new(true, None, None);
        on.notify(&n, 1, 1, &m);
        assert!(
            m.snapshot()
                .iter()
                .filter(|(k, _)| k.starts_with("gate_terminal"))
                .all(|(_, v)| *v == 0)
        );
    }
}
