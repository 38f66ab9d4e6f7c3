//! The seccomp side of scenario 10 (`xtask worker --latency --seccomp HOW`): a filter on
//! the calling thread only (no TSYNC) that notifies write-intent `openat`, and a
//! supervisor thread, created before the filter and so not filtered, that answers with
//! the project's own listener code (`monitor::os::seccomp::notify`: wait, recv, then
//! CONTINUE or ADDFD), as the session supervisor does.
use std::{
    ffi::CString,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    sync::mpsc,
    thread::JoinHandle,
};

use anyhow::{Context as _, bail, ensure};
use monitor::os::seccomp::notify::{self, Ready};

/// `AUDIT_ARCH_*` of this build (the filter refuses other ABIs, as the product's does).
#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7;

const WRITE_INTENT: u32 = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs the filter on this thread; returns the listener.
fn install() -> anyhow::Result<OwnedFd> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_USER_NOTIF,
    };
    // seccomp_data: nr at 0, arch at 4, args at 16 (8 bytes each; low half first on
    // little-endian).
    let prog = [
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_openat as u32, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, 16 + 2 * 8),
        jump(BPF_JMP | BPF_JSET | BPF_K, WRITE_INTENT, 0, 1),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a valid filter program that outlives the call; the flags ask for a listener
    // descriptor as the result. Root (CAP_SYS_ADMIN): no no_new_privs needed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    ensure!(fd >= 0, "seccomp: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

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
    let listener = install()?;
    tx.send(listener).context("handing the listener over")?;
    Ok(Supervisor { _thread: thread })
}
