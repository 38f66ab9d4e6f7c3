//! `confgate run`'s launcher: forks the session's root process and reports how it ended.
//!
//! The child registers the session and execs the command ([`super::run::run_reporting`]:
//! it is the session's root process, confined, then the agent). The parent stays outside
//! the session: it forwards the signals other processes send it, waits for the child, tells
//! the daemon the child's exit status with the key it gave the child for registration
//! (`ReportSessionExit`; the key never reaches the agent: the child's memory is replaced
//! by the exec and the key is in no environment variable or file), and ends the same way
//! (the same exit code, or killed by the same signal).
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::run::{Confine, EXIT_CONFGATE, Launched, run_reporting};
use crate::api::{client, pb};
use crate::sessions::exit::ExitStatus;

/// How long the launcher tries to deliver the exit report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals the launcher passes on to the session's root process when another process
/// sends them (`kill`); signals the terminal sends reach the whole foreground process
/// group, the child included, and are not sent twice.
const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

/// The child's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { info.as_ref() }.map_or(0, |i| i.si_code);
    let child = CHILD.load(Ordering::Relaxed);
    // SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6), ...: sent by a process. Positive codes
    // (SI_KERNEL: the terminal) reached the child's process group already.
    if code <= 0 && child > 0 {
        // SAFETY: kill(2) is async-signal-safe; `child` is our own unreaped child.
        unsafe { libc::kill(child, sig) };
    }
}

/// 32 random bytes (empty when the system has none to give: then nothing is reported).
fn new_key() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k) {
        Ok(()) => k,
        Err(_) => {
            eprintln!(
                "confgate: no random bytes for the exit report key; the session's end record will say its exit status was not reported"
            );
            Vec::new()
        }
    }
}

/// Runs `command` as an agent session (see [`super::run::run`]) in a child process and
/// returns the exit code to end with; when the child was killed by a signal this process
/// kills itself with the same signal (core dumps off) and returns `128 + signal` only if
/// it survives that.
pub fn launch(
    socket: &Path,
    agent: &str,
    reason: Option<&str>,
    command: &[OsString],
    confine: &Confine,
) -> i32 {
    let key = new_key();
    let launcher = nix::unistd::getpid();
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    // Blocked across the fork: the parent installs its handlers first, the child
    // restores the mask before anything else.
    let mut old = SigSet::empty();
    if let Err(e) =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old))
    {
        eprintln!("confgate: cannot block signals: {e}; the command was not run");
        return EXIT_CONFGATE;
    }
    // SAFETY: `confgate run` is single-threaded here (no runtime has been started; the
    // child registers on a runtime of its own), so the child may run arbitrary code.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let launched = Launched {
                launcher,
                exit_report_key: key,
            };
            let Err(e) = run_reporting(socket, agent, reason, command, confine, Some(launched));
            eprintln!("confgate: {e}");
            std::process::exit(e.exit_code());
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("confgate: cannot fork: {e}; the command was not run");
            return EXIT_CONFGATE;
        }
    };
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::SigAction(forward),
        SaFlags::SA_RESTART | SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    for s in FORWARDED {
        // SAFETY: `forward` only reads its arguments and an atomic and calls kill(2).
        if let Err(e) = unsafe { sigaction(s, &action) } {
            eprintln!("confgate: cannot forward {s}: {e}");
        }
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    let status = wait_for(child);
    if !key.is_empty() {
        report(socket, key, status);
    }
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal { signal, .. } => die_by(signal),
    }
}

/// How `child` ended.
fn wait_for(child: Pid) -> ExitStatus {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return ExitStatus::Code(c),
            Ok(WaitStatus::Signaled(_, s, core_dumped)) => {
                return ExitStatus::Signal {
                    signal: s as i32,
                    core_dumped,
                };
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // ECHILD cannot happen for our own unreaped child; say so if it does.
                eprintln!("confgate: waiting for the command failed: {e}");
                return ExitStatus::Code(EXIT_CONFGATE);
            }
        }
    }
}

/// Tells the daemon how the session's root process ended. A failure is printed (the
/// session's end record then says the status was not reported), except when the child
/// itself failed in confgate (125: the daemon was unreachable or refused the session).
fn report(socket: &Path, key: Vec<u8>, status: ExitStatus) {
    let (exit_code, signal, core_dumped) = match status {
        ExitStatus::Code(c) => (Some(c), None, false),
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => (None, Some(signal), core_dumped),
    };
    use pb::report_session_exit_request::Status;
    let request = pb::ReportSessionExitRequest {
        exit_report_key: key,
        status: exit_code
            .map(Status::ExitCode)
            .or(signal.map(Status::Signal)),
        core_dumped,
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(REPORT_TIMEOUT, async {
                    let mut c = client::connect(socket).await.map_err(|e| e.to_string())?;
                    c.report_session_exit(request)
                        .await
                        .map_err(|s| client::explain(&s))
                })
                .await
                .map_err(|_| format!("no answer within {}s", REPORT_TIMEOUT.as_secs()))?
            })
        });
    if let Err(e) = outcome
        && status != ExitStatus::Code(EXIT_CONFGATE)
    {
        eprintln!(
            "confgate: could not report the command's exit status to the daemon ({e}); the session's end record says it was not reported"
        );
    }
}

/// Ends this process by `signal` (its default action, no core dump); returns `128 +
/// signal` if that does not end it.
fn die_by(signal: i32) -> i32 {
    let Ok(s) = Signal::try_from(signal) else {
        return 128 + signal;
    };
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    // SAFETY: restoring the default action of a signal is always sound.
    let _ = unsafe { nix::sys::signal::signal(s, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(s);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = nix::sys::signal::raise(s);
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{FakeDaemon, ThreadServer};

    const CHILD_SOCKET_ENV: &str = "CONFGATE_TEST_LAUNCH_SOCKET";

    /// Not a test on its own: the body of `the_launcher_reports_the_exit_status`, run in a
    /// child copy of the test binary (the launcher forks and exits).
    #[test]
    fn launch_child() {
        let Some(socket) = std::env::var_os(CHILD_SOCKET_ENV) else {
            return;
        };
        let cmd: Vec<OsString> = ["sh", "-c", "echo $$ >&2; exit 3"]
            .iter()
            .map(OsString::from)
            .collect();
        let code = launch(Path::new(&socket), "a", None, &cmd, &Confine::No);
        std::process::exit(code);
    }

    #[test]
    fn the_launcher_reports_the_exit_status() {
        let fake = FakeDaemon::new(true);
        let server = ThreadServer::start(fake.clone());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cli::launch::tests::launch_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_SOCKET_ENV, &server.socket)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        let reg = fake.registered();
        assert_eq!(reg.len(), 1, "{stderr}");
        // The session's root process is the command (the child), not the launcher.
        assert!(
            stderr.contains(&format!("{}\n", reg[0].caller.pid)),
            "{stderr}"
        );
        assert_eq!(reg[0].exit_report_key.len(), 32);
        assert_eq!(
            fake.exit_reports(),
            [(reg[0].exit_report_key.clone(), ExitStatus::Code(3))]
        );
    }
}
