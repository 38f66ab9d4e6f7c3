//! `confgate run --agent NAME [--reason TEXT] -- COMMAND...`: run a command as an agent session.
//!
//! Registers this process with the running daemon (which tags it by the pid the kernel reports
//! for the connection), then `exec`s the command in place: the tagged pid *is* the command,
//! signals reach it directly, and its exit status is the wrapper's. The command never runs
//! unmonitored: if the daemon cannot be reached or refuses, nothing is executed.
//!
//! Confinement (the default): the command is not exec'd directly but through the setuid-root
//! helper `confgate-confine` (same pid), which installs Landlock and the seccomp filter the
//! daemon supervises, drops back to the caller's credentials and execs the command. The
//! helper is looked for beside this binary, then in `/usr/libexec/confgate/`; without a
//! usable one (setuid root, or the caller is root) nothing is run. `--no-confine` execs the
//! command directly (observation and the fanotify gate only).
//!
//! Exit codes on failure follow env(1): 125 confgate itself failed (daemon unreachable, session
//! refused, bad arguments), 126 the command was found but could not be executed, 127 it was
//! not found.
use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use nix::errno::Errno;

use crate::api::{client, pb};
use crate::gate::session::confine::{HELPER_NAME, helper_candidates};
use crate::sessions::{MAX_COMMAND_BYTES, SessionInfo, validate_agent, validate_reason};

/// confgate failed; the command was not run.
pub const EXIT_CONFGATE: i32 = 125;
/// The command was found but could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Environment variable set for the command: the session id (informational; the daemon
/// never trusts it).
pub const SESSION_ENV: &str = "CONFGATE_SESSION";

/// How long to wait for the daemon to register the session.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `run` returned: the message, and the exit code the process should end with.
pub struct RunError {
    code: i32,
    error: anyhow::Error,
}

impl RunError {
    fn confgate(error: anyhow::Error) -> Self {
        RunError {
            code: EXIT_CONFGATE,
            error,
        }
    }

    /// 125, 126 or 127 (see the module docs).
    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl fmt::Debug for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RunError {{ code: {}, error: {:#} }}",
            self.code, self.error
        )
    }
}

impl std::error::Error for RunError {}

/// How the command is started.
#[derive(Clone, Debug)]
pub enum Confine {
    /// Through `confgate-confine`, which hands the listener over at this supervise socket.
    Helper {
        /// `daemon.supervise_socket`.
        supervise_socket: std::path::PathBuf,
        /// The declared scope (`--scope`, `--scope-file`); empty: none.
        scope: Vec<String>,
    },
    /// Exec'd directly (`--no-confine`).
    No,
}

/// Registers an agent session for this process with the daemon at `socket` and execs
/// `command` (searched in `PATH`) with `CONFGATE_SESSION=<id>` added to its environment,
/// through the confinement helper unless `confine` is [`Confine::No`].
///
/// Returns only on failure; the caller prints the error and exits with
/// [`RunError::exit_code`]. Call it before starting other threads that matter: `exec`
/// replaces the whole process.
pub fn run(
    socket: &Path,
    agent: &str,
    reason: Option<&str>,
    command: &[OsString],
    confine: &Confine,
) -> Result<Infallible, RunError> {
    run_reporting(socket, agent, reason, command, confine, None)
}

/// This process was forked by `confgate run`'s launcher ([`super::launch`]).
pub struct Launched {
    /// The launcher's pid: the command is killed (SIGKILL) when it dies.
    pub launcher: nix::unistd::Pid,
    /// The key the launcher reports the command's exit status with (empty, or 16-64
    /// bytes; empty: it will not report).
    pub exit_report_key: Vec<u8>,
}

/// [`run`] in a process the launcher forked (`launched`), or as [`run`] (`None`).
pub fn run_reporting(
    socket: &Path,
    agent: &str,
    reason: Option<&str>,
    command: &[OsString],
    confine: &Confine,
    launched: Option<Launched>,
) -> Result<Infallible, RunError> {
    // Everything that can be checked locally is checked before the daemon hears of us.
    let Some(program) = command.first() else {
        return Err(RunError::confgate(anyhow!("no command given")));
    };
    let argv = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| RunError::confgate(anyhow!("a command argument contains a NUL byte")))?;
    validate_agent(agent).map_err(|e| RunError::confgate(anyhow!("--agent: {e}")))?;
    let reason = reason.filter(|r| !r.is_empty());
    if let Some(r) = reason {
        validate_reason(r).map_err(|e| RunError::confgate(anyhow!("--reason: {e}")))?;
    }
    let helper = match confine {
        Confine::Helper {
            supervise_socket, ..
        } => Some((find_helper().map_err(RunError::confgate)?, supervise_socket)),
        Confine::No => None,
    };
    let request = pb::RegisterSessionRequest {
        agent: agent.to_owned(),
        reason: reason.unwrap_or_default().to_owned(),
        command: command_for_request(command),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        confine: matches!(confine, Confine::Helper { .. }),
        scope: match confine {
            Confine::Helper { scope, .. } => scope.clone(),
            Confine::No => Vec::new(),
        },
        exit_report_key: launched
            .as_ref()
            .map(|l| l.exit_report_key.clone())
            .unwrap_or_default(),
    };
    if let Some(l) = &launched {
        // As if the command were the launcher: killing `confgate run` kills it. (The
        // confinement helper sets it again after its credential changes, which clear it.)
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| RunError::confgate(anyhow!("PR_SET_PDEATHSIG: {e}")))?;
        if nix::unistd::getppid() != l.launcher {
            return Err(RunError::confgate(anyhow!(
                "confgate run exited before the command started; the command was not run"
            )));
        }
    }

    let session = register(socket, request).map_err(RunError::confgate)?;
    let env = environment_with_session(session.id);
    tracing::debug!(session = session.id, agent, program = ?program, "session registered; exec");

    if let Some((helper, supervise_socket)) = helper {
        return Err(exec_helper(
            &helper,
            supervise_socket,
            session.id,
            command,
            &env,
            launched.is_some(),
        ));
    }
    let Err(errno) = nix::unistd::execvpe(&argv[0], &argv, &env);
    let code = if errno == Errno::ENOENT {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXECUTE
    };
    Err(RunError {
        code,
        error: anyhow!(
            "cannot execute {}: {} (agent session {} was registered for this process and ends with it)",
            Path::new(program).display(),
            errno.desc(),
            session.id
        ),
    })
}

/// The scope a session declares: `--scope` globs, then those of `--scope-file` (one per
/// line; blank lines and lines starting with `#` skipped), checked as the daemon checks
/// them ([`crate::gate::session::scope::validate`]).
pub fn declared_scope(globs: &[String], file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut all = globs.to_vec();
    if let Some(f) = file {
        let text = std::fs::read(f).with_context(|| format!("--scope-file {}", f.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| anyhow!("--scope-file {}: not UTF-8", f.display()))?;
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    crate::gate::session::scope::validate(&all).map_err(|e| anyhow!("--scope: {e}"))?;
    Ok(all)
}

/// The first usable helper of [`helper_candidates`]: setuid root, or any executable one
/// when the caller is root. The error lists what was found and why it cannot be used.
fn find_helper() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = nix::unistd::Uid::effective().is_root();
    let mut found = Vec::new();
    for c in helper_candidates() {
        let Ok(m) = std::fs::metadata(&c) else {
            continue;
        };
        let mode = m.permissions().mode();
        let setuid_root = m.uid() == 0 && mode & 0o4000 != 0 && mode & 0o001 != 0;
        if m.is_file() && (setuid_root || (root && mode & 0o111 != 0)) {
            return Ok(c);
        }
        found.push(format!(
            "{} (owner uid {}, mode {:04o})",
            c.display(),
            m.uid(),
            mode & 0o7777
        ));
    }
    let seen = if found.is_empty() {
        format!(
            "no {HELPER_NAME} found ({})",
            helper_candidates()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("not setuid root: {}", found.join(", "))
    };
    Err(anyhow!(
        "cannot confine the session: {seen}; install the helper setuid root (chown root, chmod 4755) or run with --no-confine (observation only); the command was not run"
    ))
}

/// Execs the helper in place of the command; returns why it could not.
fn exec_helper(
    helper: &Path,
    supervise_socket: &Path,
    session: u64,
    command: &[OsString],
    env: &[CString],
    die_with_parent: bool,
) -> RunError {
    let mut args: Vec<OsString> = vec![
        helper.as_os_str().to_owned(),
        "--socket".into(),
        supervise_socket.as_os_str().to_owned(),
        "--session".into(),
        session.to_string().into(),
    ];
    if die_with_parent {
        args.push("--die-with-parent".into());
    }
    args.push("--".into());
    args.extend(command.iter().cloned());
    let argv = match args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(_) => return RunError::confgate(anyhow!("a path contains a NUL byte")),
    };
    let Err(errno) = nix::unistd::execve(&argv[0], &argv, env);
    RunError::confgate(anyhow!(
        "cannot execute the confinement helper {}: {} (agent session {session} was registered and ends with this process); the command was not run",
        helper.display(),
        errno.desc()
    ))
}

/// Registers the session on a short-lived runtime; dropping it closes the connection before
/// the exec.
fn register(socket: &Path, request: pb::RegisterSessionRequest) -> anyhow::Result<SessionInfo> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let reply = rt.block_on(async {
        tokio::time::timeout(REGISTER_TIMEOUT, async {
            let mut c = client::connect(socket).await?;
            c.register_session(request)
                .await
                .map_err(|s| anyhow!(client::explain(&s)))
        })
        .await
        .map_err(|_| {
            anyhow!(
                "the daemon at {} did not answer within {}s",
                socket.display(),
                REGISTER_TIMEOUT.as_secs()
            )
        })?
    });
    drop(rt);
    let info = reply
        .context("cannot start the agent session (the command was not run)")?
        .into_inner();
    SessionInfo::try_from(info).context("cannot start the agent session (the command was not run)")
}

/// The command line as sent to the daemon: lossy UTF-8, cut after about twice the stored
/// budget so a huge argv cannot exceed the message size limit (the daemon truncates further).
fn command_for_request(command: &[OsString]) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for arg in command {
        let arg = arg.to_string_lossy();
        total = total.saturating_add(arg.len());
        if total > 2 * MAX_COMMAND_BYTES {
            out.push(arg.chars().take(MAX_COMMAND_BYTES).collect());
            break;
        }
        out.push(arg.into_owned());
    }
    out
}

/// Whether the variable `name` carries approver credentials or settings
/// (`CONFGATE_APPROVER_TOKEN`, `CONFGATE_APPROVER`, any `CONFGATE_APPROVER*`): never
/// handed to the agent.
fn is_approver_variable(name: &[u8]) -> bool {
    name.starts_with(b"CONFGATE_APPROVER")
}

/// This process's environment with `CONFGATE_SESSION` set to `id` (replacing any inherited
/// value) and without approver credentials ([`is_approver_variable`]). Built explicitly for
/// `execvpe`, so the process environment is never mutated.
fn environment_with_session(id: u64) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes() != SESSION_ENV.as_bytes())
        .filter(|(k, _)| !is_approver_variable(k.as_bytes()))
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    if let Ok(kv) = CString::new(format!("{SESSION_ENV}={id}")) {
        env.push(kv);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{FIRST_FAKE_ID, FakeDaemon, ThreadServer};
    use std::os::unix::fs::PermissionsExt;

    const CHILD_SOCKET_ENV: &str = "CONFGATE_TEST_RUN_SOCKET";

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Not a test on its own: the body of `exec_replaces_the_registered_process`, run in a
    /// child copy of the test binary (exec must not replace the test harness itself).
    #[test]
    fn exec_child() {
        let Some(socket) = std::env::var_os(CHILD_SOCKET_ENV) else {
            return;
        };
        let script = format!(
            "test \"${SESSION_ENV}\" = {FIRST_FAKE_ID} && test $$ = \"$0\" && exit 7; exit 99"
        );
        let pid = std::process::id().to_string();
        // `sh -c SCRIPT PID`: $0 = our pid, so the script checks exec kept the pid.
        let err = run(
            Path::new(&socket),
            "child-agent",
            Some("exec test"),
            &os(&["sh", "-c", &script, &pid]),
            &Confine::No,
        )
        .unwrap_err();
        eprintln!("confgate run failed: {err}");
        std::process::exit(err.exit_code());
    }

    #[test]
    fn exec_replaces_the_registered_process() {
        let fake = FakeDaemon::new(true);
        let server = ThreadServer::start(fake.clone());
        let exe = std::env::current_exe().unwrap();
        let child = std::process::Command::new(exe)
            .args([
                "--exact",
                "cli::run::tests::exec_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_SOCKET_ENV, &server.socket)
            .env(SESSION_ENV, "stale-value-from-parent")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let child_pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(7),
            "the command's exit code passes through; child stderr: {stderr}"
        );
        let reg = fake.registered();
        assert_eq!(reg.len(), 1);
        assert_eq!(
            reg[0].caller.pid, child_pid,
            "the daemon saw the wrapper's own pid"
        );
        assert_eq!(reg[0].agent, "child-agent");
        assert_eq!(reg[0].reason.as_deref(), Some("exec test"));
        assert_eq!(reg[0].command[..2], ["sh", "-c"]);
        assert_eq!(
            reg[0].cwd,
            std::env::current_dir().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn unreachable_daemon_is_125_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cmd = os(&["touch", marker.to_str().unwrap()]);
        let err = run(
            &dir.path().join("confgate.sock"),
            "agent",
            None,
            &cmd,
            &Confine::No,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_CONFGATE);
        let msg = err.to_string();
        assert!(msg.contains("is `confgate daemon` running?"), "{msg}");
        assert!(msg.contains("the command was not run"), "{msg}");
        assert!(!marker.exists());
    }

    #[test]
    fn local_validation_fails_before_contacting_the_daemon() {
        let fake = FakeDaemon::new(true);
        let server = ThreadServer::start(fake.clone());
        // Commands that cannot exist: if validation wrongly passed, exec must not replace the
        // test binary (the test then fails with 127 instead of 125).
        let cases: [(&str, Option<&str>, Vec<OsString>); 4] = [
            ("agent", None, vec![]),
            ("bad\nagent", None, os(&["/nonexistent/confgate-test"])),
            (
                "agent",
                Some("bad\u{1b}[0m reason"),
                os(&["/nonexistent/confgate-test"]),
            ),
            (
                "agent",
                None,
                vec![OsString::from_vec(b"/nonexistent/x\0y".to_vec())],
            ),
        ];
        for (agent, reason, cmd) in cases {
            let err = run(&server.socket, agent, reason, &cmd, &Confine::No).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_CONFGATE, "{err}");
        }
        assert!(fake.registered().is_empty());
    }

    #[test]
    fn exec_failures_are_126_and_127_and_refusal_is_125() {
        let fake = FakeDaemon::new(true);
        let server = ThreadServer::start(fake.clone());
        let dir = tempfile::tempdir().unwrap();

        let missing = dir.path().join("no-such-agent");
        let err = run(
            &server.socket,
            "agent",
            None,
            &os(&[missing.to_str().unwrap()]),
            &Confine::No,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_NOT_FOUND, "{err}");
        assert!(err.to_string().contains("cannot execute"), "{err}");

        // This test process is now "in a session" for the fake: registering again is refused,
        // and the refusal is 125 (the command is not run), not an exec error.
        let err = run(
            &server.socket,
            "other",
            None,
            &os(&[missing.to_str().unwrap()]),
            &Confine::No,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_CONFGATE, "{err}");
        assert!(
            err.to_string().contains("already in agent session"),
            "{err}"
        );
        assert_eq!(fake.registered().len(), 1);

        let not_exec = dir.path().join("script");
        std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fake = FakeDaemon::new(true);
        let server = ThreadServer::start(fake);
        let err = run(
            &server.socket,
            "agent",
            None,
            &os(&[not_exec.to_str().unwrap()]),
            &Confine::No,
        )
        .unwrap_err();
        // Root may ignore the missing x bit for reading but exec still needs one x bit.
        assert_eq!(err.exit_code(), EXIT_CANNOT_EXECUTE, "{err}");
    }

    #[test]
    fn environment_replaces_the_session_variable() {
        let env = environment_with_session(5);
        let ours: Vec<_> = env
            .iter()
            .filter(|kv| kv.as_bytes().starts_with(b"CONFGATE_SESSION="))
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].as_bytes(), b"CONFGATE_SESSION=5");
    }

    #[test]
    fn approver_credentials_are_not_passed_on() {
        for name in [
            "CONFGATE_APPROVER_TOKEN",
            "CONFGATE_APPROVER",
            "CONFGATE_APPROVER_KEY",
        ] {
            assert!(is_approver_variable(name.as_bytes()), "{name}");
        }
        for name in [
            "CONFGATE_REASON",
            "CONFGATE_SESSION",
            "PATH",
            "MY_CONFGATE_APPROVER",
        ] {
            assert!(!is_approver_variable(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn huge_command_lines_are_cut_for_the_request() {
        let big = "x".repeat(MAX_COMMAND_BYTES);
        let cmd: Vec<OsString> = (0..10).map(|_| OsString::from(&big)).collect();
        let sent = command_for_request(&cmd);
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().map(String::len).sum::<usize>() <= 3 * MAX_COMMAND_BYTES);
        assert_eq!(command_for_request(&os(&["a", "b"])), ["a", "b"]);
    }
}
