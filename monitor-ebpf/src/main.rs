//! confgate's kernel side: syscall and scheduler tracepoints that report write-like
//! operations to the daemon through one ring buffer.
//!
//! Filtering happens here so that unwatched work costs as little as possible:
//! - a process in an agent session (`SESSIONS`, keyed by tgid) is always reported;
//! - any other process is reported only when an absolute path argument starts with a
//!   watched prefix (`PREFIXES`, an LPM trie filled by the daemon), and only if the
//!   daemon enabled that (`KernelConfig::path_filter`); otherwise the daemon's fanotify
//!   group covers those processes;
//! - opens without write intent are never reported.
//! Session membership is inherited in `sched_process_fork`, so no user-space action
//! (double fork, setsid, nohup, reparenting) can shed it. Every lost record is counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TracePointContext,
};
use monitor_common::{
    ARG_LEN, ARGV_SLOTS, AT_FDCWD, COUNTER_SLOTS, Counter, DupEvent, EXEC_FILENAME_OFFSET,
    EXIT_FLAG_GROUP_DEAD, EventHeader, EventKind, ExecArgsEvent, ExecEvent, ExitEvent, FdKey,
    FdState, ForkEvent, KernelConfig, NO_FD, PATH_MAX, PENDING_DEFERRED, PENDING_EMITTED,
    PENDING_HAS_PATH2, PENDING_MATCH1, PREFIX_DIR, PREFIX_EXACT, PREFIX_KEY_LEN, Pending,
    PrefixValue, SYSCALL_FLAG_PATH2, SYSCALL_PATH1_OFFSET, SYSCALL_PATH2_OFFSET, SysOp,
    SyscallEvent, SyscallExitEvent, WriteEvent,
};

const BPF_F_NO_PREALLOC: u32 = 1;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const WRITE_INTENT: u32 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC;

/// All records. The daemon may resize it at load time (`kernel.ringbuf_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// tgid -> agent session id. Written by the daemon (session roots) and by the fork hook.
#[map]
static SESSIONS: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// Watched path prefixes, matched on the first `PREFIX_KEY_LEN` bytes of a path.
#[map]
static PREFIXES: LpmTrie<[u8; PREFIX_KEY_LEN], PrefixValue> =
    LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// tid -> reported syscall enter still waiting for its exit.
#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// (tgid, fd) of files opened for writing by reported opens: their first write is reported.
#[map]
static TRACKED_FDS: LruHashMap<FdKey, FdState> = LruHashMap::with_max_entries(65536, 0);

/// tid -> tracked descriptor being duplicated by `dup`/`fcntl(F_DUPFD*)` (new fd known at exit).
#[map]
static DUP_PENDING: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Per-CPU staging areas: records are too large for the 512-byte BPF stack.
#[map]
static SYSCALL_SCRATCH: PerCpuArray<SyscallEvent> = PerCpuArray::with_max_entries(1, 0);
/// Where a two-path record is packed for output (see `SyscallEvent`).
#[map]
static SYSCALL_PACKED: PerCpuArray<SyscallEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ARGS_SCRATCH: PerCpuArray<ExecArgsEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: `get_ptr_mut` returned a non-null pointer to this CPU's `u64` slot of a
        // per-CPU array; programs do not migrate or nest on a CPU while they run, so no other
        // writer can race with this increment.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config() -> KernelConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => KernelConfig::default(),
    }
}

#[inline(always)]
fn fill_header(h: &mut EventHeader, kind: EventKind, pid_tgid: u64, session_id: u64) {
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind as u32;
    h.flags = 0;
    // SAFETY: the helper takes no arguments and only reads the monotonic clock.
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.session_id = session_id;
    // SAFETY: the helper takes no arguments and only reads the current task's cgroup id.
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Reserve a fixed-size record of type `T` (whose first field is its `EventHeader`),
/// fill the header and then the rest with `fill`, and submit it. A full ring buffer is
/// counted as a drop.
#[inline(always)]
fn emit<T: 'static>(kind: EventKind, pid_tgid: u64, session_id: u64, fill: impl FnOnce(&mut T)) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to a reservation of `size_of::<T>()` bytes that is exclusively
            // ours until submit; every record type is repr(C) with its `EventHeader` as the
            // first field, so the cast to the header is in bounds and aligned, and both
            // references end before `submit` is called.
            unsafe {
                fill_header(&mut *ev.cast::<EventHeader>(), kind, pid_tgid, session_id);
                fill(&mut *ev);
            }
            entry.submit(0);
            count(Counter::EventsEmitted);
        }
        None => count(Counter::RingbufDrops),
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // Syscall tracepoints: 8 bytes of common fields + __syscall_nr (padded), then args.
    // SAFETY: `read_at` copies with `bpf_probe_read_kernel`, which faults safely (an `Err`)
    // on a bad address, and any 8 bytes are a valid `u64`.
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[inline(always)]
fn session_of(tgid: u32) -> u64 {
    // SAFETY: the value is copied out at once. SESSIONS is preallocated, so a concurrent
    // remove can only make us read another entry's (still valid) `u64`, never freed memory.
    match unsafe { SESSIONS.get(&tgid) } {
        Some(s) => *s,
        None => 0,
    }
}

/// Copy a user string into `dst`, returning its length without the NUL (0 for a null
/// pointer). `Err` when the read faulted: typically the page is not resident yet, which a
/// tracepoint program cannot fix but the syscall itself will (see `Pending`).
#[inline(always)]
fn read_user_path(src: u64, dst: &mut [u8; PATH_MAX]) -> Result<u32, ()> {
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

/// Emit the staged syscall record; false when the ring buffer is full (counted). A
/// two-path record is packed first: `path2_len` and `path2` right after `path1`.
#[inline(always)]
fn emit_syscall(ev: &mut SyscallEvent, pid_tgid: u64, session_id: u64, has_path2: bool) -> bool {
    fill_header(&mut ev.header, EventKind::Syscall, pid_tgid, session_id);
    let l1 = ev.path1_len as usize & (PATH_MAX - 1);
    let sent = if has_path2 {
        ev.header.flags = SYSCALL_FLAG_PATH2;
        let Some(out) = SYSCALL_PACKED.get_ptr_mut(0) else {
            count(Counter::RingbufDrops);
            return false;
        };
        let out = out.cast::<u8>();
        let l2 = ev.path2_len as usize & (PATH_MAX - 1);
        let src = (ev as *const SyscallEvent).cast::<u8>();
        let head = SYSCALL_PATH1_OFFSET + l1;
        let tail = 4 + l2;
        // SAFETY: both areas are per-CPU map values of `size_of::<SyscallEvent>()` bytes;
        // head <= PATH1_OFFSET + 4095 and head + tail <= PATH1_OFFSET + 4095 + 4 + 4095,
        // which is less than that size. Kernel-to-kernel copies of bytes we own; the slice
        // then covers exactly the `head + tail` bytes those copies initialised.
        unsafe {
            if bpf_probe_read_kernel(out.cast(), head as u32, src.cast()) != 0
                || bpf_probe_read_kernel(
                    out.add(head).cast(),
                    tail as u32,
                    src.add(SYSCALL_PATH2_OFFSET - 4).cast(),
                ) != 0
            {
                // Cannot fail in practice (our own map memory); counted as a lost record.
                count(Counter::RingbufDrops);
                return false;
            }
            let bytes = core::slice::from_raw_parts(out.cast_const(), head + tail);
            EVENTS.output::<[u8]>(bytes, 0).is_ok()
        }
    } else {
        // SAFETY: `ev` is a live `SyscallEvent` (a per-CPU map value) and
        // `SYSCALL_PATH1_OFFSET + l1 <= SYSCALL_PATH1_OFFSET + 4095 < size_of::<SyscallEvent>()`;
        // all of its bytes are initialised (repr(C), no implicit padding).
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (ev as *const SyscallEvent).cast::<u8>(),
                SYSCALL_PATH1_OFFSET + l1,
            )
        };
        EVENTS.output::<[u8]>(bytes, 0).is_ok()
    };
    if !sent {
        count(Counter::RingbufDrops);
        return false;
    }
    count(Counter::EventsEmitted);
    true
}

/// The filter for path operations of processes outside sessions.
#[inline(always)]
fn paths_watched(ev: &mut SyscallEvent, match1: bool, has_path2: bool) -> bool {
    (match1 && watched(&mut ev.path1_len)) || (has_path2 && watched(&mut ev.path2_len))
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
    let read1 = read_user_path(ptr1, &mut ev.path1);
    let read2 = read_user_path(ptr2, &mut ev.path2);
    match (read1, read2) {
        (Ok(l1), Ok(l2)) => {
            ev.path1_len = l1;
            ev.path2_len = l2;
            if session_id == 0 && s.fd < 0 && !paths_watched(ev, s.match1, s.path2 >= 0) {
                return Ok(());
            }
            if !emit_syscall(ev, pid_tgid, session_id, s.path2 >= 0) {
                return Ok(());
            }
            pending.state |= PENDING_EMITTED;
        }
        // Decide at the exit, when the kernel has faulted the strings in.
        _ => pending.state |= PENDING_DEFERRED,
    }
    if PENDING.insert(&tid, &pending, 0).is_err() {
        count(Counter::PendingMapFull);
    }
    Ok(())
}

/// Copy the scalar arguments of a pending syscall into the staging record.
#[inline(always)]
fn stage(ev: &mut SyscallEvent, p: &Pending) {
    ev.op = p.op;
    ev.flags = p.flags;
    ev.dfd1 = p.dfd1;
    ev.dfd2 = p.dfd2;
    ev.fd = p.fd;
    ev.mode = p.mode;
    ev.arg_uid = p.arg_uid;
    ev.arg_gid = p.arg_gid;
    ev.length = p.length;
    ev.path1_len = 0;
    ev.path2_len = 0;
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
        read_user_path(p.ptr1, &mut ev.path1),
        read_user_path(p.ptr2, &mut ev.path2),
    ) else {
        // Still unreadable: the record is lost for filtering; counted.
        count(Counter::PathReadErrors);
        return false;
    };
    ev.path1_len = l1;
    ev.path2_len = l2;
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
    emit::<SyscallExitEvent>(EventKind::SyscallExit, pid_tgid, session_of(tgid), |ev| {
        ev.op = op as u32;
        ev._pad = 0;
        ev.ret = ret;
    });
}

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
    emit::<WriteEvent>(EventKind::Write, pid_tgid, session_of(tgid), |ev| {
        ev.op = op as u32;
        ev.fd = fd as i32;
        // write/pwrite64: count is arg 2; writev family: iovec count (vlen).
        ev.count = arg(ctx, 2);
    });
}

macro_rules! enter {
    ($name:ident, $spec:expr) => {
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
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $op, $is_open);
            0
        }
    };
}

macro_rules! write_hook {
    ($name:ident, $op:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_write(&ctx, $op);
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

// ---- writes through tracked descriptors ---------------------------------------------
write_hook!(sys_enter_write, SysOp::Write);
write_hook!(sys_enter_pwrite64, SysOp::Pwrite64);
write_hook!(sys_enter_writev, SysOp::Writev);
write_hook!(sys_enter_pwritev, SysOp::Pwritev);
write_hook!(sys_enter_pwritev2, SysOp::Pwritev2);

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
    emit::<DupEvent>(EventKind::Dup, pid_tgid, session_of(tgid), |ev| {
        ev.old_fd = old_fd as i32;
        ev.new_fd = new_fd as i32;
    });
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    let (old, new) = (arg(&ctx, 0) as u32, arg(&ctx, 1) as u32);
    if old != new {
        dup_tracked(bpf_get_current_pid_tgid(), old, new);
    }
    0
}

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

#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    dup_enter(arg(&ctx, 0) as u32);
    0
}

#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    dup_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, 1);
    if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
        dup_enter(arg(&ctx, 0) as u32);
    }
    0
}

#[tracepoint]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    dup_exit(&ctx);
    0
}

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

// ---- process lifecycle --------------------------------------------------------------
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
    emit::<ForkEvent>(EventKind::Fork, pid_tgid, session_id, |ev| {
        ev.child_pid = child;
        ev._pad = 0;
    });
    0
}

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
    fill_header(&mut ev.header, EventKind::Exec, pid_tgid, session_of(tgid));
    // SAFETY: a fault-safe `bpf_probe_read_kernel` of the tracepoint record (old_pid at
    // offset 16); any 4 bytes are a valid `i32`.
    ev.old_tid = unsafe { ctx.read_at::<i32>(16) }.unwrap_or(0) as u32;
    // __data_loc char[] filename at offset 8: low 16 bits offset, high 16 bits length.
    // SAFETY: as above; any 4 bytes are a valid `u32`.
    let loc = unsafe { ctx.read_at::<u32>(8) }.map_err(|_| ())?;
    let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const _;
    // SAFETY: `ev.filename` is a writable buffer of exactly PATH_MAX bytes, the size passed
    // to the helper; `src` points into the tracepoint record and is read fault-safely.
    let n =
        unsafe { bpf_probe_read_kernel_str(ev.filename.as_mut_ptr().cast(), PATH_MAX as u32, src) };
    ev.filename_len = if n > 0 {
        ((n - 1) as u32) & (PATH_MAX as u32 - 1)
    } else {
        0
    };
    let size = EXEC_FILENAME_OFFSET + (ev.filename_len as usize & (PATH_MAX - 1));
    // SAFETY: `ev` is a live `ExecEvent` (a per-CPU map value) and
    // `size <= EXEC_FILENAME_OFFSET + 4095 < size_of::<ExecEvent>()`; all of its bytes are
    // initialised (repr(C), no implicit padding).
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const ExecEvent).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count(Counter::RingbufDrops);
    } else {
        count(Counter::EventsEmitted);
    }
    Ok(())
}

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    let _ = exec_args(&ctx, arg(&ctx, 1));
    0
}

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
    fill_header(
        &mut ev.header,
        EventKind::ExecArgs,
        pid_tgid,
        session_of(tgid),
    );
    ev.argc = 0;
    ev.truncated = 0;
    let argv = argv as *const u64;
    for i in 0..ARGV_SLOTS {
        ev.arg_len[i] = 0;
        // SAFETY: `argv` is an untrusted user address (only offset with `wrapping_add`),
        // read fault-safely by the helper; any 8 bytes are a valid `u64`.
        let ptr = unsafe { bpf_probe_read_user(argv.wrapping_add(i)) }.unwrap_or(0);
        if ptr == 0 {
            break;
        }
        // SAFETY: `ev.args[i]` is a writable buffer of exactly ARG_LEN bytes, the size passed
        // to the helper; `ptr` is an untrusted user address, read fault-safely.
        let n = unsafe {
            bpf_probe_read_user_str(
                ev.args[i].as_mut_ptr().cast(),
                ARG_LEN as u32,
                ptr as *const _,
            )
        };
        ev.arg_len[i] = if n > 0 {
            ((n - 1) as u32) & (ARG_LEN as u32 - 1)
        } else {
            0
        };
        ev.argc = i as u32 + 1;
    }
    if ev.argc as usize == ARGV_SLOTS {
        // SAFETY: as in the loop: a fault-safe read of an untrusted user address.
        let more = unsafe { bpf_probe_read_user(argv.wrapping_add(ARGV_SLOTS)) }.unwrap_or(0);
        ev.truncated = (more != 0) as u32;
    }
    if EVENTS.output::<ExecArgsEvent>(&*ev, 0).is_err() {
        count(Counter::RingbufDrops);
    } else {
        count(Counter::EventsEmitted);
    }
    Ok(())
}

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
    emit::<ExitEvent>(EventKind::Exit, pid_tgid, session_id, |ev| {
        ev.header.flags = if group_dead { EXIT_FLAG_GROUP_DEAD } else { 0 };
        ev._reserved = 0;
    });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
