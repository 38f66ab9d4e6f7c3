//! The helper side of confinement: `confgate-confine --socket PATH --session ID -- COMMAND...`,
//! installed setuid root and exec'd by `confgate run` in place of the command (same pid,
//! terminal, process group; its exit status is the command's).
//!
//! Single-threaded, no runtime, no logging: asks the daemon for the session's spec over the
//! supervise socket, hides confgate's files in a mount namespace of its own, installs
//! Landlock and the seccomp filter (without `no_new_privs`: it holds `CAP_SYS_ADMIN`, so
//! `sudo` keeps working below), hands the listener to the daemon, drops every privilege
//! back to the caller's and execs the command. Any failure before the exec ends the process
//! with 125 and the command is not run.
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket};
use nix::unistd::{Gid, Uid, getresgid, getresuid, setresgid, setresuid};

use super::ConfineSpec;
use super::wire::{self, Hello, Listener, Reply};

/// Exit codes, as `confgate run`'s (env(1)'s): confgate failed, the command was not run.
pub const EXIT_CONFGATE: i32 = 125;
/// The command was found but could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// The helper's file name.
pub const HELPER_NAME: &str = "confgate-confine";
/// Where packages install the helper (setuid root).
pub const INSTALLED_HELPER: &str = "/usr/libexec/confgate/confgate-confine";

/// Where `confgate run` looks for the helper, in order: beside the running `confgate`
/// binary (a build tree), then [`INSTALLED_HELPER`].
pub fn helper_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        v.push(dir.join(HELPER_NAME));
    }
    v.push(PathBuf::from(INSTALLED_HELPER));
    v
}

/// The helper's arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// The daemon's supervise socket.
    pub socket: PathBuf,
    /// The session this process was registered as.
    pub session: u64,
    /// The command to exec (searched in `PATH`).
    pub command: Vec<OsString>,
    /// `--die-with-parent`: the command gets SIGKILL when the process that started the
    /// helper (`confgate run`'s launcher) dies, as it would if it were that process.
    pub die_with_parent: bool,
}

/// A failure, and the exit code it ends the helper with.
#[derive(Debug)]
pub struct Failure {
    /// 125, 126 or 127.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_CONFGATE,
        message: message.into(),
    }
}

/// Parses `--socket PATH --session ID -- COMMAND...` (the program name already removed).
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, Failure> {
    let mut it = args.into_iter();
    let mut socket = None;
    let mut session = None;
    let mut die_with_parent = false;
    while let Some(a) = it.next() {
        match a.as_bytes() {
            b"--die-with-parent" => die_with_parent = true,
            b"--socket" => socket = it.next().map(PathBuf::from),
            b"--session" => {
                session = it
                    .next()
                    .and_then(|s| s.to_str().and_then(|s| s.parse::<u64>().ok()))
            }
            b"--" => break,
            _ => return Err(fail(format!("unexpected argument {}", a.to_string_lossy()))),
        }
    }
    let command: Vec<OsString> = it.collect();
    match (socket, session) {
        (Some(socket), Some(session)) if !command.is_empty() => Ok(Args {
            socket,
            session,
            command,
            die_with_parent,
        }),
        _ => Err(fail(
            "usage: confgate-confine --socket PATH --session ID [--die-with-parent] -- COMMAND... (run by `confgate run`)",
        )),
    }
}

/// Confines this process and execs the command; returns only on failure.
pub fn confine_and_exec(args: &Args) -> Failure {
    let argv = match args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(_) => return fail("a command argument contains a NUL byte"),
    };
    let parent = nix::unistd::getppid();
    let (ruid, rgid) = match (getresuid(), getresgid()) {
        (Ok(u), Ok(g)) => (u.real, g.real),
        _ => return fail("cannot read this process's credentials"),
    };
    if !Uid::effective().is_root() {
        return fail(
            "confgate-confine is not running as root: it must be installed setuid root \
             (chown root, chmod 4755); or run the session with --no-confine",
        );
    }
    if let Err(e) = confine(args) {
        return e;
    }
    if let Err(e) = drop_privileges(ruid, rgid) {
        return e;
    }
    // Set after the last change of credentials (which clears it).
    if args.die_with_parent
        && let Err(e) = die_with(parent)
    {
        return e;
    }
    let Err(errno) = nix::unistd::execvp(&argv[0], &argv);
    Failure {
        code: if errno == Errno::ENOENT {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_EXECUTE
        },
        message: format!(
            "cannot execute {}: {} (agent session {} was registered and confined for this process and ends with it)",
            Path::new(&args.command[0]).display(),
            errno.desc(),
            args.session
        ),
    }
}

/// Steps 1-6: spec from the daemon, hidden mounts, Landlock, seccomp, listener handed over.
fn confine(args: &Args) -> Result<(), Failure> {
    let sock = connect_daemon(&args.socket)?;
    wire::send(
        sock.as_fd(),
        &Hello {
            v: wire::VERSION,
            session: args.session,
        },
        None,
    )
    .map_err(|e| fail(format!("supervise socket: {e}")))?;
    let spec = match wire::recv::<Reply>(sock.as_fd()) {
        Ok((
            Reply {
                ok: true,
                spec: Some(spec),
                ..
            },
            _,
        )) => spec,
        Ok((r, _)) => {
            return Err(fail(format!(
                "the daemon refused to confine session {}: {}",
                args.session,
                r.error.unwrap_or_else(|| "no reason given".into())
            )));
        }
        Err(e) => return Err(fail(format!("supervise socket: {e}"))),
    };
    hide(&spec).map_err(|e| fail(format!("hiding confgate's files: {e}")))?;
    crate::os::landlock::restrict_self(&spec.write_allowed).map_err(|e| fail(e.to_string()))?;
    // From here on, this process's own path syscalls are notified: nothing but socket
    // calls, credentials and the exec until the daemon supervises the listener.
    let listener: OwnedFd = crate::os::seccomp::install()
        .map_err(|e| fail(format!("installing the seccomp filter: {e}")))?;
    wire::send(
        sock.as_fd(),
        &Listener { listener: true },
        Some(listener.as_fd()),
    )
    .map_err(|e| fail(format!("handing the listener over: {e}")))?;
    drop(listener);
    match wire::recv::<Reply>(sock.as_fd()) {
        Ok((Reply { ok: true, .. }, _)) => Ok(()),
        Ok((r, _)) => Err(fail(format!(
            "the daemon cannot supervise session {}: {}",
            args.session,
            r.error.unwrap_or_else(|| "no reason given".into())
        ))),
        Err(e) => Err(fail(format!("supervise socket: {e}"))),
    }
}

/// Connects to the supervise socket and checks the server runs as root (a fake supervisor
/// could otherwise answer the session's syscalls, including sudo's).
fn connect_daemon(path: &Path) -> Result<OwnedFd, Failure> {
    let what = |e: Errno| {
        fail(format!(
            "cannot reach the daemon's supervise socket {}: {} (is `confgate daemon` running?); the command was not run",
            path.display(),
            e.desc()
        ))
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(what)?;
    let addr = UnixAddr::new(path).map_err(what)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr).map_err(what)?;
    let cred = getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials).map_err(what)?;
    if cred.uid() != 0 {
        return Err(fail(format!(
            "the supervise socket {} is served by uid {}, not root: refused",
            path.display(),
            cred.uid()
        )));
    }
    Ok(sock)
}

/// A mount namespace of our own (host mounts still propagate in), with an empty read-only
/// tmpfs over each hidden directory and `/dev/null` over each hidden file.
fn hide(spec: &ConfineSpec) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for p in &spec.hidden {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        };
        let r = if meta.is_dir() {
            mount(
                Some("confgate-hidden"),
                p,
                Some("tmpfs"),
                ro,
                Some("mode=0555,size=4k"),
            )
        } else {
            mount(
                Some("/dev/null"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .and_then(|()| {
                mount(
                    None::<&str>,
                    p,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
                    None::<&str>,
                )
            })
        };
        r.map_err(|e| io::Error::other(format!("{}: {}", p.display(), e.desc())))?;
    }
    Ok(())
}

/// SIGKILL when `parent` dies; fails if it has died already.
fn die_with(parent: nix::unistd::Pid) -> Result<(), Failure> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| fail(format!("PR_SET_PDEATHSIG: {}", e.desc())))?;
    if nix::unistd::getppid() != parent {
        return Err(fail(
            "confgate run exited before the command started; the command was not run",
        ));
    }
    Ok(())
}

/// Back to the caller's real uid and gid (saved ids too; supplementary groups were never
/// changed by the setuid exec). Checks that root cannot be regained.
fn drop_privileges(ruid: Uid, rgid: Gid) -> Result<(), Failure> {
    setresgid(rgid, rgid, rgid).map_err(|e| fail(format!("setresgid: {}", e.desc())))?;
    setresuid(ruid, ruid, ruid).map_err(|e| fail(format!("setresuid: {}", e.desc())))?;
    if !ruid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(fail(
            "privileges could not be dropped (setuid(0) still works)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let a = parse_args(os(&[
            "--socket",
            "/run/s",
            "--session",
            "12",
            "--die-with-parent",
            "--",
            "sh",
            "-c",
            "x",
        ]))
        .unwrap();
        assert_eq!(a.socket, PathBuf::from("/run/s"));
        assert_eq!(a.session, 12);
        assert_eq!(a.command, os(&["sh", "-c", "x"]));
        assert!(a.die_with_parent);
        for bad in [
            &["--socket", "/s", "--session", "x", "--", "sh"][..],
            &["--socket", "/s", "--session", "1", "--"],
            &["--session", "1", "--", "sh"],
            &["--bogus"],
        ] {
            let e = parse_args(os(bad)).unwrap_err();
            assert_eq!(e.code, EXIT_CONFGATE, "{bad:?}");
        }
    }
}
