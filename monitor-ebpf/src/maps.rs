//! The maps shared by the programs, and the small accessors every program uses (counters,
//! the daemon's settings, session lookups).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    COUNTER_SLOTS, Counter, ExecArgsEvent, ExecEvent, FdKey, FdState, KernelConfig, PREFIX_KEY_LEN,
    Pending, PrefixValue, SyscallEvent,
};

const BPF_F_NO_PREALLOC: u32 = 1;

/// All records. The daemon may resize it at load time (`kernel.ringbuf_bytes`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// tgid -> agent session id. Written by the daemon (session roots) and by the fork hook.
#[map]
pub(crate) static SESSIONS: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// Watched path prefixes, matched on the first `PREFIX_KEY_LEN` bytes of a path.
#[map]
pub(crate) static PREFIXES: LpmTrie<[u8; PREFIX_KEY_LEN], PrefixValue> =
    LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// tid -> reported syscall enter still waiting for its exit.
#[map]
pub(crate) static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// (tgid, fd) of files opened for writing by reported opens: their first write is reported.
#[map]
pub(crate) static TRACKED_FDS: LruHashMap<FdKey, FdState> = LruHashMap::with_max_entries(65536, 0);

/// tid -> tracked descriptor being duplicated by `dup`/`fcntl(F_DUPFD*)` (new fd known at exit).
#[map]
pub(crate) static DUP_PENDING: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub(crate) static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Per-CPU staging areas: records are too large for the 512-byte BPF stack.
#[map]
pub(crate) static SYSCALL_SCRATCH: PerCpuArray<SyscallEvent> = PerCpuArray::with_max_entries(1, 0);
/// Where a two-path record is packed for output (see `SyscallEvent`).
#[map]
pub(crate) static SYSCALL_PACKED: PerCpuArray<SyscallEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static ARGS_SCRATCH: PerCpuArray<ExecArgsEvent> = PerCpuArray::with_max_entries(1, 0);

// Each map is named after its static; the daemon opens it by its `MapId` name.
map_listed!(EVENTS, Events);
map_listed!(SESSIONS, Sessions);
map_listed!(PREFIXES, Prefixes);
map_listed!(PENDING, Pending);
map_listed!(TRACKED_FDS, TrackedFds);
map_listed!(DUP_PENDING, DupPending);
map_listed!(COUNTERS, Counters);
map_listed!(CONFIG, Config);
map_listed!(SYSCALL_SCRATCH, SyscallScratch);
map_listed!(SYSCALL_PACKED, SyscallPacked);
map_listed!(EXEC_SCRATCH, ExecScratch);
map_listed!(ARGS_SCRATCH, ArgsScratch);

#[inline(always)]
pub(crate) fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: `get_ptr_mut` returned a non-null pointer to this CPU's `u64` slot of a
        // per-CPU array; programs do not migrate or nest on a CPU while they run, so no other
        // writer can race with this increment.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn config() -> KernelConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => KernelConfig::default(),
    }
}
#[inline(always)]
pub(crate) fn session_of(tgid: u32) -> u64 {
    // SAFETY: the value is copied out at once. SESSIONS is preallocated, so a concurrent
    // remove can only make us read another entry's (still valid) `u64`, never freed memory.
    match unsafe { SESSIONS.get(&tgid) } {
        Some(s) => *s,
        None => 0,
    }
}
