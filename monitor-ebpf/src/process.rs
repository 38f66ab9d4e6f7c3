//! The process lifecycle: `sched_process_fork` (where a child inherits its parent's
//! session, before it runs), `sched_process_exec` with the argv read at
//! `sys_enter_execve[at]`, and `sched_process_exit` (where session entries are removed).
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    ARG_LEN, ARGV_SLOTS, Counter, EXEC_FILENAME_OFFSET, EXIT_FLAG_GROUP_DEAD, ExecArgsEvent,
    ExitBody, ForkBody, PATH_MAX,
};

use crate::{
    emit::{emit, fill_header, output_prefix},
    maps::{ARGS_SCRATCH, EXEC_SCRATCH, SESSIONS, config, count, session_of},
    syscalls::arg,
};

listed!(Sched, sched_process_fork);
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = (pid_tgid >> 32) as u32;
    // child_pid at offset 20 (see /sys/kernel/tracing/events/sched/sched_process_fork/format).
    // SAFETY: a fault-safe `bpf_probe_read_kernel` of the tracepoint record; any 4 bytes
    // are a valid `i32`.
    let child = unsafe { ctx.read_at::<i32>(20) }.unwrap_or(0) as u32;
    let session_id = session_of(parent);
    if session_id != 0 {
        // Threads get an entry too (keyed by tid); it is removed at their exit.
        if SESSIONS.insert(&child, &session_id, 0).is_err() {
            count(Counter::SessionMapFull);
        }
    } else {
        // A pid reused from an exited session member must not inherit a stale entry.
        let _ = SESSIONS.remove(&child);
    }
    if parent == config().self_tgid {
        return 0;
    }
    let body = ForkBody {
        child_pid: child,
        _pad: 0,
    };
    emit(pid_tgid, session_id, 0, body);
    0
}

listed!(Sched, sched_process_exec);
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

#[inline(always)]
fn try_exec(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a non-null pointer to this CPU's staging value, valid for the program's run;
    // no other program uses it on this CPU meanwhile (tracepoint programs do not nest), so
    // the `&mut` is unique.
    let ev = unsafe { &mut *EXEC_SCRATCH.get_ptr_mut(0).ok_or(())? };
    fill_header(ev, pid_tgid, session_of(tgid));
    // SAFETY: a fault-safe `bpf_probe_read_kernel` of the tracepoint record (old_pid at
    // offset 16); any 4 bytes are a valid `i32`.
    ev.body.old_tid = unsafe { ctx.read_at::<i32>(16) }.unwrap_or(0) as u32;
    // __data_loc char[] filename at offset 8: low 16 bits offset, high 16 bits length.
    // SAFETY: as above; any 4 bytes are a valid `u32`.
    let loc = unsafe { ctx.read_at::<u32>(8) }.map_err(|_| ())?;
    let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const _;
    // SAFETY: `ev.body.filename` is a writable buffer of exactly PATH_MAX bytes, the size passed
    // to the helper; `src` points into the tracepoint record and is read fault-safely.
    let n = unsafe {
        bpf_probe_read_kernel_str(ev.body.filename.as_mut_ptr().cast(), PATH_MAX as u32, src)
    };
    ev.body.filename_len = if n > 0 {
        ((n - 1) as u32) & (PATH_MAX as u32 - 1)
    } else {
        0
    };
    let size = EXEC_FILENAME_OFFSET + (ev.body.filename_len as usize & (PATH_MAX - 1));
    output_prefix(ev, size);
    Ok(())
}

listed!(Syscalls, sys_enter_execve);
#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    let _ = exec_args(&ctx, arg(&ctx, 1));
    0
}

listed!(Syscalls, sys_enter_execveat);
#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    let _ = exec_args(&ctx, arg(&ctx, 2));
    0
}

#[inline(always)]
fn exec_args(_ctx: &TracePointContext, argv: u64) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config().self_tgid {
        return Ok(());
    }
    // SAFETY: a non-null pointer to this CPU's staging value, valid for the program's run;
    // no other program uses it on this CPU meanwhile (tracepoint programs do not nest), so
    // the `&mut` is unique.
    let ev = unsafe { &mut *ARGS_SCRATCH.get_ptr_mut(0).ok_or(())? };
    fill_header(ev, pid_tgid, session_of(tgid));
    let args = &mut ev.body;
    args.argc = 0;
    args.truncated = 0;
    let argv = argv as *const u64;
    for i in 0..ARGV_SLOTS {
        args.arg_len[i] = 0;
        // SAFETY: `argv` is an untrusted user address (only offset with `wrapping_add`),
        // read fault-safely by the helper; any 8 bytes are a valid `u64`.
        let ptr = unsafe { bpf_probe_read_user(argv.wrapping_add(i)) }.unwrap_or(0);
        if ptr == 0 {
            break;
        }
        // SAFETY: `args.args[i]` is a writable buffer of exactly ARG_LEN bytes, the size passed
        // to the helper; `ptr` is an untrusted user address, read fault-safely.
        let n = unsafe {
            bpf_probe_read_user_str(
                args.args[i].as_mut_ptr().cast(),
                ARG_LEN as u32,
                ptr as *const _,
            )
        };
        args.arg_len[i] = if n > 0 {
            ((n - 1) as u32) & (ARG_LEN as u32 - 1)
        } else {
            0
        };
        args.argc = i as u32 + 1;
    }
    if args.argc as usize == ARGV_SLOTS {
        // SAFETY: as in the loop: a fault-safe read of an untrusted user address.
        let more = unsafe { bpf_probe_read_user(argv.wrapping_add(ARGV_SLOTS)) }.unwrap_or(0);
        args.truncated = (more != 0) as u32;
    }
    output_prefix(ev, size_of::<ExecArgsEvent>());
    Ok(())
}

listed!(Sched, sched_process_exit);
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // group_dead (bool) at offset 32.
    // SAFETY: a fault-safe `bpf_probe_read_kernel` of the tracepoint record; any byte is a
    // valid `u8`.
    let group_dead = unsafe { ctx.read_at::<u8>(32) }.unwrap_or(0) != 0;
    let session_id = session_of(tgid);
    if tid != tgid {
        // A thread's own entry was added by the fork hook.
        let _ = SESSIONS.remove(&tid);
    }
    if group_dead {
        // Every record of this process already carries its session id.
        let _ = SESSIONS.remove(&tgid);
    }
    if tgid == config().self_tgid {
        return 0;
    }
    let flags = if group_dead { EXIT_FLAG_GROUP_DEAD } else { 0 };
    emit(pid_tgid, session_id, flags, ExitBody { _reserved: 0 });
    0
}
