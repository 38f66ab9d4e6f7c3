//! Tracked descriptors: the first write through a descriptor a reported open returned,
//! `close`, and duplication (`dup`, `dup2`, `dup3`, `fcntl(F_DUPFD*)`), which makes the new
//! descriptor tracked too (shell redirections move the fd onto 1 or 2).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use monitor_common::{Counter, DupBody, FdKey, SysOp, WriteBody};

use crate::{
    emit::emit,
    maps::{DUP_PENDING, TRACKED_FDS, count, session_of},
    syscalls::arg,
};

#[inline(always)]
fn on_write(ctx: &TracePointContext, op: SysOp) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = arg(ctx, 0) as u32;
    let key = FdKey { tgid, fd };
    let Some(state) = TRACKED_FDS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: `get_ptr_mut` returned a non-null pointer to the map value. A concurrent
    // LRU eviction can at worst make us see another entry's `FdState` (plain integers, any
    // value valid), which would only change whether this write is coalesced.
    unsafe {
        if (*state).written != 0 {
            count(Counter::WritesCoalesced);
            return;
        }
        (*state).written = 1;
    }
    let body = WriteBody {
        op: op as u32,
        fd: fd as i32,
        // write/pwrite64: count is arg 2; writev family: iovec count (vlen).
        count: arg(ctx, 2),
    };
    emit(pid_tgid, session_of(tgid), 0, body);
}

macro_rules! write_hook {
    ($name:ident, $op:expr) => {
        listed!(Syscalls, $name);
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_write(&ctx, $op);
            0
        }
    };
}

// ---- writes through tracked descriptors ---------------------------------------------
write_hook!(sys_enter_write, SysOp::Write);
write_hook!(sys_enter_pwrite64, SysOp::Pwrite64);
write_hook!(sys_enter_writev, SysOp::Writev);
write_hook!(sys_enter_pwritev, SysOp::Pwritev);
write_hook!(sys_enter_pwritev2, SysOp::Pwritev2);

listed!(Syscalls, sys_enter_close);
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let fd = arg(&ctx, 0) as u32;
    let _ = TRACKED_FDS.remove(&FdKey { tgid, fd });
    0
}

// ---- descriptor duplication (shell redirections move the fd onto 1 or 2) ----------
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// `new_fd` now names the same open file as `old_fd`: track it like the original.
#[inline(always)]
fn dup_tracked(pid_tgid: u64, old_fd: u32, new_fd: u32) {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the `FdState` (plain integers) is copied out at once; TRACKED_FDS is
    // preallocated, so a concurrent eviction cannot leave us reading freed memory.
    let Some(state) = (unsafe { TRACKED_FDS.get(&FdKey { tgid, fd: old_fd }) }).copied() else {
        // dup2/dup3 onto a tracked fd closes it: it is no longer the tracked file.
        let _ = TRACKED_FDS.remove(&FdKey { tgid, fd: new_fd });
        return;
    };
    if TRACKED_FDS
        .insert(&FdKey { tgid, fd: new_fd }, &state, 0)
        .is_err()
    {
        count(Counter::FdMapFull);
    }
    let body = DupBody {
        old_fd: old_fd as i32,
        new_fd: new_fd as i32,
    };
    emit(pid_tgid, session_of(tgid), 0, body);
}

listed!(Syscalls, sys_enter_dup2);
#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    let (old, new) = (arg(&ctx, 0) as u32, arg(&ctx, 1) as u32);
    if old != new {
        dup_tracked(bpf_get_current_pid_tgid(), old, new);
    }
    0
}

listed!(Syscalls, sys_enter_dup3);
#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    dup_tracked(
        bpf_get_current_pid_tgid(),
        arg(&ctx, 0) as u32,
        arg(&ctx, 1) as u32,
    );
    0
}

#[inline(always)]
fn dup_enter(old_fd: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: only presence is checked, the value is not read.
    if unsafe { TRACKED_FDS.get(&FdKey { tgid, fd: old_fd }) }.is_some() {
        let _ = DUP_PENDING.insert(&(pid_tgid as u32), &old_fd, 0);
    }
}

#[inline(always)]
fn dup_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the `u32` is copied out at once; the entry is keyed by our own tid and
    // DUP_PENDING is preallocated (no freed memory).
    let Some(old) = (unsafe { DUP_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = DUP_PENDING.remove(&tid);
    // SAFETY: `ret` of a sys_exit tracepoint sits at offset 16; the read is a fault-safe
    // `bpf_probe_read_kernel` and any 8 bytes are a valid `i64`.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if ret >= 0 {
        dup_tracked(pid_tgid, old, ret as u32);
    }
}

listed!(Syscalls, sys_enter_dup);
#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    dup_enter(arg(&ctx, 0) as u32);
    0
}

listed!(Syscalls, sys_exit_dup);
#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    dup_exit(&ctx);
    0
}

listed!(Syscalls, sys_enter_fcntl);
#[tracepoint]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, 1);
    if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
        dup_enter(arg(&ctx, 0) as u32);
    }
    0
}

listed!(Syscalls, sys_exit_fcntl);
#[tracepoint]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    dup_exit(&ctx);
    0
}
