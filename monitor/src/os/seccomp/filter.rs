//! The session's seccomp filter, built by hand in classic BPF:
//!
//! 1. a syscall of another architecture (ia32 through `int 0x80`) kills the process; an x32
//!    syscall (x86_64 only) fails with `ENOSYS`;
//! 2. `bpf`, `open_by_handle_at`, module loading and kexec fail with `EPERM` (a session could
//!    otherwise edit the kernel's session map, or open a gated file by handle);
//! 3. the path syscalls (`open`/`openat` with write intent, `creat`, `openat2`, renames,
//!    links, unlinks, mkdir, mknod, truncate, chmod, chown, xattrs) are notified to the
//!    listener: the daemon's supervisor answers them;
//! 4. everything else is allowed.
//!
//! Installed without `no_new_privs` (the helper holds `CAP_SYS_ADMIN`) with
//! `SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `offsetof(struct seccomp_data, nr)`.
const OFF_NR: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`.
const OFF_ARCH: u32 = 4;
/// `offsetof(struct seccomp_data, args[i])`, the low 32 bits (little-endian).
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// `__X32_SYSCALL_BIT`.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The open flags that make an open a write: `O_WRONLY | O_RDWR | O_CREAT | O_TRUNC`.
pub const WRITE_INTENT: u32 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;

// Syscalls numbered after the common table was unified (424+), the same on every arch;
// named here because the libc crate lacks some of them.
const SYS_OPENAT2: i64 = 437;
const SYS_FCHMODAT2: i64 = 452;
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;

/// Refused with `EPERM`.
pub fn refused() -> Vec<i64> {
    vec![
        libc::SYS_bpf,
        libc::SYS_open_by_handle_at,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
    ]
}

/// Always notified to the supervisor (`open`/`openat` are notified by their flags).
/// `io_uring_setup` is among them: io_uring submits opens, renames and unlinks that no
/// notification shows, so the supervisor refuses it (`EPERM`) and records the attempt.
pub fn notified() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_io_uring_setup,
        SYS_OPENAT2,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_unlinkat,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_truncate,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        SYS_FCHMODAT2,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
        SYS_SETXATTRAT,
        SYS_REMOVEXATTRAT,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_creat,
        libc::SYS_rename,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_unlink,
        libc::SYS_rmdir,
        libc::SYS_mkdir,
        libc::SYS_mknod,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
    ]);
    v
}

/// The open syscalls notified when their flags (argument index) carry [`WRITE_INTENT`].
fn flag_tested() -> Vec<(i64, u32)> {
    let mut v = vec![(libc::SYS_openat, 2)];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_open, 1));
    v
}

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

const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// Appends "if nr is one of `nrs`, return `action`" (A holds the syscall number).
fn return_if_any(prog: &mut Vec<libc::sock_filter>, nrs: &[i64], action: u32) {
    // jeq nr[i] -> the ret after the list (jt counts the instructions skipped); the last
    // miss falls through to a `ja` over the ret.
    let n = nrs.len();
    for (i, nr) in nrs.iter().enumerate() {
        let jt = u8::try_from(n - i).unwrap_or(u8::MAX);
        prog.push(jump(JEQ, *nr as u32, jt, 0));
    }
    prog.push(stmt(libc::BPF_JMP | libc::BPF_JA, 1));
    prog.push(stmt(RET, action));
}

/// The filter program (see the module docs).
pub fn program() -> Vec<libc::sock_filter> {
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let mut p = vec![
        stmt(LD_ABS, OFF_ARCH),
        jump(JEQ, AUDIT_ARCH_NATIVE, 1, 0),
        stmt(RET, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ));
        p.push(stmt(RET, errno(libc::ENOSYS)));
    }
    return_if_any(&mut p, &refused(), errno(libc::EPERM));
    return_if_any(&mut p, &notified(), libc::SECCOMP_RET_USER_NOTIF);
    for (nr, arg) in flag_tested() {
        // Not this syscall: skip its 4-instruction test. Otherwise the test decides (A no
        // longer holds the number after the load, so both outcomes return).
        p.push(jump(JEQ, nr as u32, 0, 4));
        p.push(stmt(LD_ABS, off_arg(arg)));
        p.push(jump(JSET, WRITE_INTENT, 0, 1));
        p.push(stmt(RET, libc::SECCOMP_RET_USER_NOTIF));
        p.push(stmt(RET, libc::SECCOMP_RET_ALLOW));
    }
    p.push(stmt(RET, libc::SECCOMP_RET_ALLOW));
    p
}

/// Installs [`program`] on the calling thread (inherited by what it forks and execs) and
/// returns the user-notification listener. Needs `CAP_SYS_ADMIN` or `no_new_privs`. Uses
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux 5.19+) and installs without it where the
/// kernel refuses the flag (`EINVAL`).
pub fn install() -> io::Result<OwnedFd> {
    let prog = program();
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    let with =
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    match seccomp_filter(with, &fprog) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            seccomp_filter(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)
        }
        r => r,
    }
}

fn seccomp_filter(flags: libc::c_ulong, fprog: &libc::sock_fprog) -> io::Result<OwnedFd> {
    // SAFETY: `fprog` points at a live program of `len` instructions for the whole call; the
    // kernel copies it. With NEW_LISTENER the return value is a new descriptor we own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            fprog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
