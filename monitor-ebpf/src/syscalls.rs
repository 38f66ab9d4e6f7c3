//! The path and metadata syscalls: one enter and one exit program per syscall, generated
//! from a table ([`Spec`]: where each syscall keeps its arguments). The enter stages the
//! record, applies the session / watched-prefix filter and emits it (or defers it to the
//! exit when a path is not resident yet); the exit reports the return value and starts
//! tracking the descriptor a reported open returned.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user_str,
    },
    macros::tracepoint,
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use aya_log_ebpf::{debug, trace};
use monitor_common::{
    AT_FDCWD, Counter, FdKey, FdState, NO_FD, PATH_MAX, PENDING_DEFERRED, PENDING_EMITTED,
    PENDING_HAS_PATH2, PENDING_MATCH1, PREFIX_DIR, PREFIX_EXACT, PREFIX_KEY_LEN, Pending, SysOp,
    SyscallEvent, SyscallExitBody,
};

use crate::{
    emit::{emit, emit_syscall},
    maps::{PENDING, PREFIXES, SYSCALL_SCRATCH, TRACKED_FDS, config, count, session_of},
};

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const WRITE_INTENT: u32 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC;

#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // Syscall tracepoints: 8 bytes of common fields + __syscall_nr (padded), then args.
    // SAFETY: `read_at` copies with `bpf_probe_read_kernel`, which faults safely (an `Err`)
    // on a bad address, and any 8 bytes are a valid `u64`.
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}
/// Copy a user string into `dst`, returning its length without the NUL (0 for a null
/// pointer). `Err` when the read faulted: typically the page is not resident yet, which a
/// tracepoint program cannot fix but the syscall itself will (see `Pending`).
#[inline(always)]
pub(crate) fn read_user_path(src: u64, dst: &mut [u8; PATH_MAX]) -> Result<u32, ()> {
    if src == 0 {
        return Ok(0);
    }
    // SAFETY: `dst` is a writable buffer of exactly PATH_MAX bytes, the size passed to the
    // helper; `src` is an untrusted user address, which the helper reads fault-safely.
    let n = unsafe {
        bpf_probe_read_user_str(dst.as_mut_ptr().cast(), PATH_MAX as u32, src as *const _)
    };
    if n <= 0 {
        return Err(());
    }
    Ok(((n - 1) as u32) & (PATH_MAX as u32 - 1))
}
/// The filter for path operations of processes outside sessions.
#[inline(always)]
fn paths_watched(ev: &mut SyscallEvent, match1: bool, has_path2: bool) -> bool {
    (match1 && watched(&mut ev.body.path1_len)) || (has_path2 && watched(&mut ev.body.path2_len))
}

/// Whether the path stored right after `len_field` starts with a watched prefix.
/// `len_field` is temporarily turned into the LPM key's bit length, so the path buffer
/// itself is the key and nothing is copied.
#[inline(always)]
fn watched(len_field: &mut u32) -> bool {
    let len = *len_field;
    if len == 0 {
        return false;
    }
    let data = (len_field as *mut u32).wrapping_add(1) as *const u8;
    // SAFETY: callers pass `path1_len` or `path2_len` of a `SyscallEvent`, each directly
    // followed by its PATH_MAX-byte path buffer in the same per-CPU map value (layout
    // guards in monitor-common), so `data` is its first byte.
    if unsafe { *data } != b'/' {
        return false;
    }
    let key_bytes = if (len as usize) < PREFIX_KEY_LEN {
        len
    } else {
        PREFIX_KEY_LEN as u32
    };
    *len_field = key_bytes * 8;
    // SAFETY: `Key<[u8; 256]>` is repr(C, packed) (alignment 1): a `u32` bit length then
    // 256 data bytes, exactly the length field followed by the first 256 bytes of its
    // path buffer (see above; len < 4096 so the buffer is that long). The reference ends
    // before `len_field` is written again.
    let key = unsafe { &*(len_field as *const u32 as *const Key<[u8; PREFIX_KEY_LEN]>) };
    let hit = match PREFIXES.get(key) {
        Some(v) => v.class == PREFIX_DIR || (v.class == PREFIX_EXACT && v.len == len),
        None => false,
    };
    *len_field = len;
    hit
}

/// Where a syscall keeps its arguments (argument indices; -1 = not present).
#[derive(Clone, Copy)]
struct Spec {
    op: SysOp,
    dfd1: i8,
    path1: i8,
    dfd2: i8,
    path2: i8,
    fd: i8,
    flags: i8,
    mode: i8,
    uid: i8,
    gid: i8,
    length: i8,
    /// Match `path1` against the prefixes (false for a symlink's target string).
    match1: bool,
    is_open: bool,
}

const fn spec(op: SysOp) -> Spec {
    Spec {
        op,
        dfd1: -1,
        path1: -1,
        dfd2: -1,
        path2: -1,
        fd: -1,
        flags: -1,
        mode: -1,
        uid: -1,
        gid: -1,
        length: -1,
        match1: true,
        is_open: false,
    }
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, s: Spec) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let cfg = config();
    if tgid == cfg.self_tgid {
        return Ok(());
    }

    let mut flags: u32 = if s.flags >= 0 {
        arg(ctx, s.flags as usize) as u32
    } else {
        0
    };
    match s.op {
        SysOp::Openat2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how = arg(ctx, 2) as *const u64;
            // SAFETY: `how` is an untrusted user address, read fault-safely by the helper
            // (`Err` on a bad address); any 8 bytes are a valid `u64`.
            flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0) as u32;
        }
        SysOp::Creat => flags = O_CREAT | O_WRONLY | O_TRUNC,
        _ => {}
    }
    if s.is_open && flags & WRITE_INTENT == 0 {
        return Ok(());
    }

    let session_id = session_of(tgid);
    let fd: i32 = if s.fd >= 0 {
        arg(ctx, s.fd as usize) as i32
    } else {
        NO_FD
    };
    if session_id == 0 {
        if s.op == SysOp::Chdir || s.op == SysOp::Fchdir {
            // The working directory only matters for resolving session paths.
            return Ok(());
        }
        if s.fd >= 0 {
            // fd-based op outside a session: only on descriptors we already track.
            let key = FdKey {
                tgid,
                fd: fd as u32,
            };
            // SAFETY: only presence is checked, the value is not read.
            if unsafe { TRACKED_FDS.get(&key) }.is_none() {
                return Ok(());
            }
        } else if cfg.path_filter == 0 {
            return Ok(());
        }
    }

    let ptr1 = if s.path1 >= 0 {
        arg(ctx, s.path1 as usize)
    } else {
        0
    };
    let ptr2 = if s.path2 >= 0 {
        arg(ctx, s.path2 as usize)
    } else {
        0
    };
    let mut pending = Pending {
        op: s.op as u32,
        track_fd: s.is_open as u32,
        state: if s.path2 >= 0 { PENDING_HAS_PATH2 } else { 0 }
            | if s.match1 { PENDING_MATCH1 } else { 0 },
        flags,
        dfd1: if s.dfd1 >= 0 {
            arg(ctx, s.dfd1 as usize) as i32
        } else if s.path1 >= 0 {
            AT_FDCWD
        } else {
            NO_FD
        },
        dfd2: if s.dfd2 >= 0 {
            arg(ctx, s.dfd2 as usize) as i32
        } else if s.path2 >= 0 {
            AT_FDCWD
        } else {
            NO_FD
        },
        fd,
        mode: if s.mode >= 0 {
            arg(ctx, s.mode as usize) as u32
        } else {
            0
        },
        arg_uid: if s.uid >= 0 {
            arg(ctx, s.uid as usize) as u32
        } else {
            u32::MAX
        },
        arg_gid: if s.gid >= 0 {
            arg(ctx, s.gid as usize) as u32
        } else {
            u32::MAX
        },
        length: if s.length >= 0 {
            arg(ctx, s.length as usize)
        } else {
            0
        },
        ptr1,
        ptr2,
        tgid,
        _pad: 0,
        session: session_id,
        // SAFETY: the helper takes no arguments and only reads the monotonic clock.
        enter_ns: unsafe { bpf_ktime_get_ns() },
    };
    // SAFETY: a non-null pointer to this CPU's staging value, valid for the program's run;
    // no other program uses it on this CPU meanwhile (tracepoint programs do not nest), so
    // the `&mut` is unique.
    let ev = unsafe { &mut *SYSCALL_SCRATCH.get_ptr_mut(0).ok_or(())? };
    stage(ev, &pending);
    let read1 = read_user_path(ptr1, &mut ev.body.path1);
    let read2 = read_user_path(ptr2, &mut ev.body.path2);
    match (read1, read2) {
        (Ok(l1), Ok(l2)) => {
            ev.body.path1_len = l1;
            ev.body.path2_len = l2;
            if session_id == 0 && s.fd < 0 && !paths_watched(ev, s.match1, s.path2 >= 0) {
                return Ok(());
            }
            if !emit_syscall(ev, pid_tgid, session_id, s.path2 >= 0) {
                return Ok(());
            }
            pending.state |= PENDING_EMITTED;
        }
        // Decide at the exit, when the kernel has faulted the strings in.
        _ => {
            trace!(
                &(),
                target: crate::LOG_TARGET,
                "path of op {} by tid {} not resident at enter: read at exit",
                s.op as u32,
                tid
            );
            pending.state |= PENDING_DEFERRED;
        }
    }
    if PENDING.insert(&tid, &pending, 0).is_err() {
        count(Counter::PendingMapFull);
    }
    Ok(())
}

/// Copy the scalar arguments of a pending syscall into the staging record.
#[inline(always)]
fn stage(ev: &mut SyscallEvent, p: &Pending) {
    let b = &mut ev.body;
    b.op = p.op;
    b.flags = p.flags;
    b.dfd1 = p.dfd1;
    b.dfd2 = p.dfd2;
    b.fd = p.fd;
    b.mode = p.mode;
    b.arg_uid = p.arg_uid;
    b.arg_gid = p.arg_gid;
    b.length = p.length;
    b.path1_len = 0;
    b.path2_len = 0;
}

/// Emit a deferred enter record at the exit. False when nothing is to be reported.
#[inline(always)]
fn emit_deferred(p: &Pending, pid_tgid: u64, tgid: u32) -> bool {
    let Some(ev) = SYSCALL_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a non-null pointer to this CPU's staging value, valid for the program's run;
    // no other program uses it on this CPU meanwhile (tracepoint programs do not nest), so
    // the `&mut` is unique.
    let ev = unsafe { &mut *ev };
    stage(ev, p);
    let has_path2 = p.state & PENDING_HAS_PATH2 != 0;
    let (Ok(l1), Ok(l2)) = (
        read_user_path(p.ptr1, &mut ev.body.path1),
        read_user_path(p.ptr2, &mut ev.body.path2),
    ) else {
        // Still unreadable: the record is lost for filtering; counted.
        count(Counter::PathReadErrors);
        debug!(
            &(),
            target: crate::LOG_TARGET,
            "path of op {} by tid {} unreadable at exit: record lost",
            p.op,
            pid_tgid as u32
        );
        return false;
    };
    ev.body.path1_len = l1;
    ev.body.path2_len = l2;
    let session_id = session_of(tgid);
    if session_id == 0 && p.fd < 0 && !paths_watched(ev, p.state & PENDING_MATCH1 != 0, has_path2) {
        return false;
    }
    count(Counter::DeferredReads);
    emit_syscall(ev, pid_tgid, session_id, has_path2)
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, op: SysOp, is_open: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: `ret` of a sys_exit tracepoint sits at offset 16; the read is a fault-safe
    // `bpf_probe_read_kernel` and any 8 bytes are a valid `i64`.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    // SAFETY: the entry is copied out at once; it is keyed by our own tid, which only this
    // thread's enter/exit hooks write, and PENDING is preallocated (no freed memory).
    let pending = match unsafe { PENDING.get(&tid) } {
        Some(p) => *p,
        None => {
            if is_open && ret >= 0 {
                // An unreported open reused this fd number: it is no longer the tracked file.
                let _ = TRACKED_FDS.remove(&FdKey {
                    tgid,
                    fd: ret as u32,
                });
            }
            return;
        }
    };
    let _ = PENDING.remove(&tid);
    if pending.op != op as u32 {
        // Stale entry from an enter whose exit never ran; drop it.
        return;
    }
    if pending.state & PENDING_DEFERRED != 0 && !emit_deferred(&pending, pid_tgid, tgid) {
        return;
    }
    if pending.track_fd != 0 && ret >= 0 {
        let key = FdKey {
            tgid,
            fd: ret as u32,
        };
        if TRACKED_FDS
            .insert(
                &key,
                &FdState {
                    written: 0,
                    _pad: 0,
                },
                0,
            )
            .is_err()
        {
            count(Counter::FdMapFull);
        }
    }
    let body = SyscallExitBody {
        op: op as u32,
        _pad: 0,
        ret,
    };
    emit(pid_tgid, session_of(tgid), 0, body);
}

macro_rules! enter {
    ($name:ident, $spec:expr) => {
        listed!(Syscalls, $name);
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            const S: Spec = $spec;
            let _ = on_enter(&ctx, S);
            0
        }
    };
}

macro_rules! exit {
    ($name:ident, $op:expr, $is_open:expr) => {
        listed!(Syscalls, $name);
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $op, $is_open);
            0
        }
    };
}

// ---- opens -------------------------------------------------------------------------
enter!(
    sys_enter_open,
    Spec {
        path1: 0,
        flags: 1,
        mode: 2,
        is_open: true,
        ..spec(SysOp::Open)
    }
);
enter!(
    sys_enter_openat,
    Spec {
        dfd1: 0,
        path1: 1,
        flags: 2,
        mode: 3,
        is_open: true,
        ..spec(SysOp::Openat)
    }
);
enter!(
    sys_enter_openat2,
    Spec {
        dfd1: 0,
        path1: 1,
        is_open: true,
        ..spec(SysOp::Openat2)
    }
);
enter!(
    sys_enter_creat,
    Spec {
        path1: 0,
        mode: 1,
        is_open: true,
        ..spec(SysOp::Creat)
    }
);
exit!(sys_exit_open, SysOp::Open, true);
exit!(sys_exit_openat, SysOp::Openat, true);
exit!(sys_exit_openat2, SysOp::Openat2, true);
exit!(sys_exit_creat, SysOp::Creat, true);

// ---- namespace changes --------------------------------------------------------------
enter!(
    sys_enter_rename,
    Spec {
        path1: 0,
        path2: 1,
        ..spec(SysOp::Rename)
    }
);
enter!(
    sys_enter_renameat,
    Spec {
        dfd1: 0,
        path1: 1,
        dfd2: 2,
        path2: 3,
        ..spec(SysOp::Renameat)
    }
);
enter!(
    sys_enter_renameat2,
    Spec {
        dfd1: 0,
        path1: 1,
        dfd2: 2,
        path2: 3,
        flags: 4,
        ..spec(SysOp::Renameat2)
    }
);
enter!(
    sys_enter_unlink,
    Spec {
        path1: 0,
        ..spec(SysOp::Unlink)
    }
);
enter!(
    sys_enter_unlinkat,
    Spec {
        dfd1: 0,
        path1: 1,
        flags: 2,
        ..spec(SysOp::Unlinkat)
    }
);
enter!(
    sys_enter_rmdir,
    Spec {
        path1: 0,
        ..spec(SysOp::Rmdir)
    }
);
enter!(
    sys_enter_link,
    Spec {
        path1: 0,
        path2: 1,
        ..spec(SysOp::Link)
    }
);
enter!(
    sys_enter_linkat,
    Spec {
        dfd1: 0,
        path1: 1,
        dfd2: 2,
        path2: 3,
        flags: 4,
        ..spec(SysOp::Linkat)
    }
);
enter!(
    sys_enter_symlink,
    Spec {
        path1: 0,
        path2: 1,
        match1: false,
        ..spec(SysOp::Symlink)
    }
);
enter!(
    sys_enter_symlinkat,
    Spec {
        path1: 0,
        dfd2: 1,
        path2: 2,
        match1: false,
        ..spec(SysOp::Symlinkat)
    }
);
enter!(
    sys_enter_mkdir,
    Spec {
        path1: 0,
        mode: 1,
        ..spec(SysOp::Mkdir)
    }
);
enter!(
    sys_enter_mkdirat,
    Spec {
        dfd1: 0,
        path1: 1,
        mode: 2,
        ..spec(SysOp::Mkdirat)
    }
);
exit!(sys_exit_rename, SysOp::Rename, false);
exit!(sys_exit_renameat, SysOp::Renameat, false);
exit!(sys_exit_renameat2, SysOp::Renameat2, false);
exit!(sys_exit_unlink, SysOp::Unlink, false);
exit!(sys_exit_unlinkat, SysOp::Unlinkat, false);
exit!(sys_exit_rmdir, SysOp::Rmdir, false);
exit!(sys_exit_link, SysOp::Link, false);
exit!(sys_exit_linkat, SysOp::Linkat, false);
exit!(sys_exit_symlink, SysOp::Symlink, false);
exit!(sys_exit_symlinkat, SysOp::Symlinkat, false);
exit!(sys_exit_mkdir, SysOp::Mkdir, false);
exit!(sys_exit_mkdirat, SysOp::Mkdirat, false);

// ---- content and metadata -----------------------------------------------------------
enter!(
    sys_enter_truncate,
    Spec {
        path1: 0,
        length: 1,
        ..spec(SysOp::Truncate)
    }
);
enter!(
    sys_enter_ftruncate,
    Spec {
        fd: 0,
        length: 1,
        ..spec(SysOp::Ftruncate)
    }
);
enter!(
    sys_enter_chmod,
    Spec {
        path1: 0,
        mode: 1,
        ..spec(SysOp::Chmod)
    }
);
enter!(
    sys_enter_fchmod,
    Spec {
        fd: 0,
        mode: 1,
        ..spec(SysOp::Fchmod)
    }
);
enter!(
    sys_enter_fchmodat,
    Spec {
        dfd1: 0,
        path1: 1,
        mode: 2,
        ..spec(SysOp::Fchmodat)
    }
);
enter!(
    sys_enter_fchmodat2,
    Spec {
        dfd1: 0,
        path1: 1,
        mode: 2,
        flags: 3,
        ..spec(SysOp::Fchmodat2)
    }
);
enter!(
    sys_enter_chown,
    Spec {
        path1: 0,
        uid: 1,
        gid: 2,
        ..spec(SysOp::Chown)
    }
);
enter!(
    sys_enter_lchown,
    Spec {
        path1: 0,
        uid: 1,
        gid: 2,
        ..spec(SysOp::Lchown)
    }
);
enter!(
    sys_enter_fchown,
    Spec {
        fd: 0,
        uid: 1,
        gid: 2,
        ..spec(SysOp::Fchown)
    }
);
enter!(
    sys_enter_fchownat,
    Spec {
        dfd1: 0,
        path1: 1,
        uid: 2,
        gid: 3,
        flags: 4,
        ..spec(SysOp::Fchownat)
    }
);
exit!(sys_exit_truncate, SysOp::Truncate, false);
exit!(sys_exit_ftruncate, SysOp::Ftruncate, false);
exit!(sys_exit_chmod, SysOp::Chmod, false);
exit!(sys_exit_fchmod, SysOp::Fchmod, false);
exit!(sys_exit_fchmodat, SysOp::Fchmodat, false);
exit!(sys_exit_fchmodat2, SysOp::Fchmodat2, false);
exit!(sys_exit_chown, SysOp::Chown, false);
exit!(sys_exit_lchown, SysOp::Lchown, false);
exit!(sys_exit_fchown, SysOp::Fchown, false);
exit!(sys_exit_fchownat, SysOp::Fchownat, false);

// ---- working directory of session processes ------------------------------------------
enter!(
    sys_enter_chdir,
    Spec {
        path1: 0,
        ..spec(SysOp::Chdir)
    }
);
enter!(
    sys_enter_fchdir,
    Spec {
        fd: 0,
        ..spec(SysOp::Fchdir)
    }
);
exit!(sys_exit_chdir, SysOp::Chdir, false);
exit!(sys_exit_fchdir, SysOp::Fchdir, false);
