//! The seccomp side of scenario 10 (`xtask worker --latency --seccomp HOW`): the product's
//! filter (`monitor::os::seccomp::filter::install`, the one `confgate-confine` installs:
//! write-intent opens and the other path operations notified) on the calling thread only
//! (no TSYNC), and a supervisor thread, created before the filter and so not filtered,
//! that answers with the project's own listener code (`monitor::os::seccomp::notify`:
//! wait, recv, then CONTINUE or ADDFD), as the session supervisor does.
use std::{
    ffi::CString,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    sync::mpsc,
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};
use monitor::os::seccomp::{
    filter,
    notify::{self, Ready},
};

/// The supervisor thread; ends when the process exits.
pub struct Supervisor {
    _thread: JoinHandle<()>,
}

/// Starts a supervisor answering `how` (see the module), then installs the filter on the
/// calling thread. `path`: the file the timed opens open (for `addfd-sync`).
pub fn supervise(how: &str, path: &CString) -> anyhow::Result<Supervisor> {
    let (sync, addfd) = match how {
        "continue" => (false, false),
        "continue-sync" => (true, false),
        "addfd-sync" => (true, true),
        other => bail!("unknown --seccomp {other}"),
    };
    let (tx, rx) = mpsc::channel::<OwnedFd>();
    let path = path.clone();
    let thread = std::thread::spawn(move || {
        let Ok(listener) = rx.recv() else {
            return;
        };
        if sync && !notify::set_sync_wake_up(&listener) {
            eprintln!("SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP not supported here");
        }
        loop {
            match notify::wait(&listener, 1000) {
                Ok(Ready::Notification) => {}
                Ok(Ready::Timeout) => continue,
                Ok(Ready::Gone) | Err(_) => return,
            }
            let Ok(n) = notify::recv(&listener) else {
                continue;
            };
            let answered = if addfd {
                // SAFETY: a plain open of a NUL-terminated path.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_TRUNC) };
                if fd < 0 {
                    notify::respond_error(&listener, n.id, libc::EACCES)
                } else {
                    // SAFETY: the descriptor just opened, owned from here.
                    let f = unsafe { OwnedFd::from_raw_fd(fd) };
                    notify::addfd_send(&listener, n.id, f.as_fd(), true).map(|_| ())
                }
            } else {
                notify::respond_continue(&listener, n.id)
            };
            if answered.is_err() {
                eprintln!("answering a notification failed");
            }
        }
    });
    notify::check_sizes().context("seccomp notification sizes")?;
    let listener = filter::install().context("installing the seccomp filter")?;
    tx.send(listener).context("handing the listener over")?;
    Ok(Supervisor { _thread: thread })
}
