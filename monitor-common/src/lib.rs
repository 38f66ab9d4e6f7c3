//! Types shared by the eBPF programs (`monitor-ebpf`) and the daemon (`monitor`).
//!
//! Everything here is `#[repr(C)]` with explicit padding fields so that the layout is the
//! same on both sides and no byte of an event is uninitialised padding. Every ring-buffer
//! record is a [`Record`]: an [`EventHeader`] whose `kind` is an [`EventKind`], then the
//! [`Body`] of that kind. [`programs`] names the eBPF programs and maps for both sides.
//! The `user` feature adds the userspace-only impls (`aya::Pod` for map values and keys).
#![no_std]

pub mod programs;

/// Longest path the kernel side copies (PATH_MAX, including the terminating NUL).
pub const PATH_MAX: usize = 4096;
/// Bytes of a path used as the LPM-trie key for watched-prefix matching.
pub const PREFIX_KEY_LEN: usize = 256;
/// How many argv entries an exec event carries, and how many bytes of each.
pub const ARGV_SLOTS: usize = 16;
pub const ARG_LEN: usize = 256;
pub const COMM_LEN: usize = 16;

/// What an event record is. The discriminant is the first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sched_process_fork`: a new task; `header.tgid` is the parent process.
    Fork = 1,
    /// `sched_process_exec`: a successful exec.
    Exec = 2,
    /// `sys_enter_execve[at]`: the argv of an exec attempt (paired with `Exec` by tid).
    ExecArgs = 3,
    /// `sched_process_exit`.
    Exit = 4,
    /// Enter of a write-like syscall ([`SysOp`]) with its path arguments.
    Syscall = 5,
    /// Exit of a syscall whose enter was reported: carries the return value.
    SyscallExit = 6,
    /// First write through a tracked file descriptor.
    Write = 7,
    /// A tracked descriptor was duplicated (`dup`, `dup2`, `dup3`, `fcntl(F_DUPFD*)`).
    Dup = 8,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Fork,
            2 => Self::Exec,
            3 => Self::ExecArgs,
            4 => Self::Exit,
            5 => Self::Syscall,
            6 => Self::SyscallExit,
            7 => Self::Write,
            8 => Self::Dup,
            _ => return None,
        })
    }
}

/// The syscall behind a [`EventKind::Syscall`] or [`EventKind::Write`] record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysOp {
    Open = 1,
    Openat = 2,
    Openat2 = 3,
    Creat = 4,
    Write = 5,
    Pwrite64 = 6,
    Writev = 7,
    Pwritev = 8,
    Pwritev2 = 9,
    Rename = 10,
    Renameat = 11,
    Renameat2 = 12,
    Unlink = 13,
    Unlinkat = 14,
    Rmdir = 15,
    Truncate = 16,
    Ftruncate = 17,
    Chmod = 18,
    Fchmod = 19,
    Fchmodat = 20,
    Fchmodat2 = 21,
    Chown = 22,
    Lchown = 23,
    Fchown = 24,
    Fchownat = 25,
    Link = 26,
    Linkat = 27,
    Symlink = 28,
    Symlinkat = 29,
    Mkdir = 30,
    Mkdirat = 31,
    Chdir = 32,
    Fchdir = 33,
}

impl SysOp {
    pub const fn from_u32(v: u32) -> Option<Self> {
        use SysOp::*;
        const ALL: [SysOp; 33] = [
            Open, Openat, Openat2, Creat, Write, Pwrite64, Writev, Pwritev, Pwritev2, Rename,
            Renameat, Renameat2, Unlink, Unlinkat, Rmdir, Truncate, Ftruncate, Chmod, Fchmod,
            Fchmodat, Fchmodat2, Chown, Lchown, Fchown, Fchownat, Link, Linkat, Symlink, Symlinkat,
            Mkdir, Mkdirat, Chdir, Fchdir,
        ];
        if v >= 1 && v as usize <= ALL.len() {
            Some(ALL[v as usize - 1])
        } else {
            None
        }
    }
}

/// `dfd` value meaning "relative to the current working directory".
pub const AT_FDCWD: i32 = -100;
/// `dfd` value used when a syscall has no directory fd argument.
pub const NO_FD: i32 = -1;

/// Header of every record in the ring buffer (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] discriminant.
    pub kind: u32,
    /// Kind-specific flags (for `Exit`: 1 when the whole thread group died).
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Agent session of the process (0 = none) as the kernel map saw it.
    pub session_id: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A ring-buffer record: the common header first, then the body of its kind. `repr(C)`
/// keeps the header at offset 0 whatever the body, so the daemon reads `kind` before it
/// knows the type; every body is 8-byte aligned at most, so it starts right after the
/// 64-byte header (sizes checked below).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record<B> {
    pub header: EventHeader,
    pub body: B,
}

/// The body of a [`Record`], tied to the [`EventKind`] that announces it.
pub trait Body: Copy + 'static {
    const KIND: EventKind;
}

/// Body of a `Syscall` record, as the kernel side stages it. `path1_len` sits right before
/// `path1` on purpose: the kernel side reuses `(path1_len, path1[..256])` as an LPM-trie
/// key in place, without copying.
///
/// On the wire a record stops after its last path: `SYSCALL_PATH1_OFFSET + path1_len`
/// bytes; with [`SYSCALL_FLAG_PATH2`] in the header's flags, `path2_len` (a `u32`) and the
/// bytes of `path2` follow right there (packed, so that a rename does not cost 4 KiB of
/// ring buffer for the unused end of `path1`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallBody {
    /// A [`SysOp`] discriminant.
    pub op: u32,
    /// Open flags, `unlinkat`/`renameat2`/`linkat`/`fchownat` flags, ...
    pub flags: u32,
    /// Directory fd for `path1` ([`AT_FDCWD`], or [`NO_FD`]).
    pub dfd1: i32,
    /// Directory fd for `path2`.
    pub dfd2: i32,
    /// File descriptor argument of fd-based ops (`ftruncate`, `fchmod`, ...), else -1.
    pub fd: i32,
    pub mode: u32,
    pub arg_uid: u32,
    pub arg_gid: u32,
    /// `truncate`/`ftruncate` length.
    pub length: u64,
    /// Bytes in `path1`, without the NUL; 0 when absent.
    pub path1_len: u32,
    pub path1: [u8; PATH_MAX],
    pub path2_len: u32,
    pub path2: [u8; PATH_MAX],
}

pub type SyscallEvent = Record<SyscallBody>;

/// Offset of `path1` inside [`SyscallEvent`]: a record with one path is this many bytes
/// plus the path length.
pub const SYSCALL_PATH1_OFFSET: usize = core::mem::offset_of!(SyscallEvent, body.path1);
pub const SYSCALL_PATH2_OFFSET: usize = core::mem::offset_of!(SyscallEvent, body.path2);
/// Header flag of a `Syscall` record carrying a second path (see [`SyscallEvent`]).
pub const SYSCALL_FLAG_PATH2: u32 = 1;

/// Body of a `SyscallExit` record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallExitBody {
    pub op: u32,
    pub _pad: u32,
    pub ret: i64,
}

pub type SyscallExitEvent = Record<SyscallExitBody>;

/// Body of a `Write` record: the first write through a tracked descriptor since it was
/// opened.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WriteBody {
    pub op: u32,
    pub fd: i32,
    pub count: u64,
}

pub type WriteEvent = Record<WriteBody>;

/// Body of a `Dup` record: `new_fd` now refers to the same open file as the tracked
/// `old_fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DupBody {
    pub old_fd: i32,
    pub new_fd: i32,
}

pub type DupEvent = Record<DupBody>;

/// Body of a `Fork` record (the header describes the parent).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkBody {
    pub child_pid: u32,
    pub _pad: u32,
}

pub type ForkEvent = Record<ForkBody>;

/// Body of an `Exec` record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecBody {
    /// Thread id that called exec (differs from `tgid` when a non-leader thread execs).
    pub old_tid: u32,
    pub filename_len: u32,
    pub filename: [u8; PATH_MAX],
}

pub type ExecEvent = Record<ExecBody>;

pub const EXEC_FILENAME_OFFSET: usize = core::mem::offset_of!(ExecEvent, body.filename);

/// Body of an `ExecArgs` record: argv of an `execve`/`execveat` call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgsBody {
    /// Number of argv slots filled.
    pub argc: u32,
    /// 1 when argv had more than [`ARGV_SLOTS`] entries.
    pub truncated: u32,
    /// Length of each slot's string, without NUL (an entry longer than `ARG_LEN - 1` is cut).
    pub arg_len: [u32; ARGV_SLOTS],
    pub args: [[u8; ARG_LEN]; ARGV_SLOTS],
}

pub type ExecArgsEvent = Record<ExecArgsBody>;

/// Body of an `Exit` record (`header.flags` bit 0 = group dead).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitBody {
    pub _reserved: u64,
}

pub type ExitEvent = Record<ExitBody>;

impl Body for ForkBody {
    const KIND: EventKind = EventKind::Fork;
}
impl Body for ExecBody {
    const KIND: EventKind = EventKind::Exec;
}
impl Body for ExecArgsBody {
    const KIND: EventKind = EventKind::ExecArgs;
}
impl Body for ExitBody {
    const KIND: EventKind = EventKind::Exit;
}
impl Body for SyscallBody {
    const KIND: EventKind = EventKind::Syscall;
}
impl Body for SyscallExitBody {
    const KIND: EventKind = EventKind::SyscallExit;
}
impl Body for WriteBody {
    const KIND: EventKind = EventKind::Write;
}
impl Body for DupBody {
    const KIND: EventKind = EventKind::Dup;
}

pub const EXIT_FLAG_GROUP_DEAD: u32 = 1;

/// Key of the LPM trie of watched prefixes (same layout as `struct bpf_lpm_trie_key`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrefixKey {
    /// Prefix length in bits.
    pub prefix_len: u32,
    pub data: [u8; PREFIX_KEY_LEN],
}

/// Value of the watched-prefix trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixValue {
    /// A `PREFIX_*` class.
    pub class: u32,
    /// Length in bytes of the stored prefix.
    pub len: u32,
}

/// The prefix is a directory (stored with its trailing `/`): everything below matches.
pub const PREFIX_DIR: u32 = 1;
/// The prefix is one file: only the exact path matches.
pub const PREFIX_EXACT: u32 = 2;

/// Key of the tracked-descriptor map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the tracked-descriptor map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdState {
    /// 1 once the first write has been reported.
    pub written: u32,
    pub _pad: u32,
}

/// Value of the pending-syscall map (keyed by tid): an enter awaiting its exit.
///
/// When a path argument could not be read at the enter (its page was not resident: a
/// tracepoint program cannot fault it in), the record is *deferred*: the arguments and the
/// user pointers are kept here and the exit program, after the kernel has faulted the
/// string in, reads the paths, applies the filter and emits the record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub op: u32,
    /// 1 when the syscall is an open whose returned fd must be tracked.
    pub track_fd: u32,
    /// `PENDING_*` bits.
    pub state: u32,
    pub flags: u32,
    pub dfd1: i32,
    pub dfd2: i32,
    pub fd: i32,
    pub mode: u32,
    pub arg_uid: u32,
    pub arg_gid: u32,
    pub length: u64,
    pub ptr1: u64,
    pub ptr2: u64,
    /// Thread group of the caller (the map key is the thread id).
    pub tgid: u32,
    pub _pad: u32,
    /// Session of the caller at sys_enter (0 = none). The gate reads it, with `flags`, to
    /// learn the write intent and session of an open held in a fanotify permission wait.
    pub session: u64,
    /// `bpf_ktime_get_ns()` at sys_enter (CLOCK_MONOTONIC).
    pub enter_ns: u64,
}

/// The enter record was emitted; only the exit remains.
pub const PENDING_EMITTED: u32 = 1;
/// The enter record is deferred to the exit (see [`Pending`]).
pub const PENDING_DEFERRED: u32 = 2;
/// The syscall has a second path argument.
pub const PENDING_HAS_PATH2: u32 = 4;
/// The first path is matched against the watched prefixes (not for a symlink's target).
pub const PENDING_MATCH1: u32 = 8;

/// Settings the daemon writes into the `CONFIG` array map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelConfig {
    /// 1: report path ops of processes outside sessions when an absolute path argument
    /// starts with a watched prefix. 0: rely on fanotify for those processes.
    pub path_filter: u32,
    /// The daemon's own tgid: its syscalls are never reported.
    pub self_tgid: u32,
}

/// Indices of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be written to the ring buffer (full): the event is lost.
    RingbufDrops = 0,
    /// A path argument could not be read from user memory.
    PathReadErrors = 1,
    /// The pending-syscall map was full; the exit of that syscall is not reported.
    PendingMapFull = 2,
    /// The tracked-fd map was full; writes through that fd are not reported.
    FdMapFull = 3,
    /// The session map was full at fork: a child could not inherit its session.
    SessionMapFull = 4,
    /// Writes through an already-reported fd (folded into the first write's event).
    WritesCoalesced = 5,
    /// Records successfully written to the ring buffer.
    EventsEmitted = 6,
    /// Records whose path was re-read at the syscall exit (not resident at the enter).
    DeferredReads = 7,
}

pub const COUNTER_SLOTS: u32 = 8;

pub const fn counter_name(index: u32) -> &'static str {
    match index {
        0 => "ringbuf_drops",
        1 => "path_read_errors",
        2 => "pending_map_full",
        3 => "fd_map_full",
        4 => "session_map_full",
        5 => "writes_coalesced",
        6 => "events_emitted",
        7 => "deferred_path_reads",
        _ => "unused",
    }
}

// Layout guards: the two sides must agree byte for byte, and no implicit padding may exist.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<EventHeader>() == 64);
    assert!(SYSCALL_PATH1_OFFSET == core::mem::offset_of!(SyscallEvent, body.path1_len) + 4);
    assert!(SYSCALL_PATH2_OFFSET == core::mem::offset_of!(SyscallEvent, body.path2_len) + 4);
    // The header is first and the body follows it without a gap.
    assert!(core::mem::offset_of!(SyscallEvent, header) == 0);
    assert!(core::mem::offset_of!(SyscallEvent, body) == size_of::<EventHeader>());
    assert!(core::mem::offset_of!(ExecArgsEvent, body) == size_of::<EventHeader>());
    assert!(size_of::<SyscallEvent>() == 64 + 40 + 4 + PATH_MAX + 4 + PATH_MAX);
    assert!(size_of::<SyscallExitEvent>() == 64 + 16);
    assert!(size_of::<WriteEvent>() == 64 + 16);
    assert!(size_of::<ForkEvent>() == 64 + 8);
    assert!(size_of::<DupEvent>() == 64 + 8);
    assert!(size_of::<ExecEvent>() == 64 + 8 + PATH_MAX);
    assert!(size_of::<ExecArgsEvent>() == 64 + 8 + 4 * ARGV_SLOTS + ARG_LEN * ARGV_SLOTS);
    assert!(size_of::<PrefixKey>() == 4 + PREFIX_KEY_LEN);
    assert!(size_of::<ExitEvent>() == 72);
    assert!(size_of::<PrefixValue>() == 8);
    assert!(size_of::<FdKey>() == 8);
    assert!(size_of::<FdState>() == 8);
    assert!(size_of::<Pending>() == 88);
    assert!(size_of::<KernelConfig>() == 8);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // `Pod` lets aya copy a value to and from kernel map memory as raw bytes, so the type
    // must be `Copy`, inhabited by every bit pattern, and free of padding. Each type below is
    // `#[repr(C)]` + `Copy` and made only of integers (sizes asserted above).
    // SAFETY: a `u32` then a `[u8; 256]`: no padding, any bytes valid.
    unsafe impl aya::Pod for PrefixKey {}
    // SAFETY: two `u32`s: no padding, any bytes valid.
    unsafe impl aya::Pod for PrefixValue {}
    // SAFETY: two `u32`s: no padding, any bytes valid.
    unsafe impl aya::Pod for FdKey {}
    // SAFETY: two `u32`s (one an explicit `_pad`): no padding, any bytes valid.
    unsafe impl aya::Pod for FdState {}
    // SAFETY: 4- and 8-byte integers ordered so that every `u64` is 8-byte aligned (the
    // explicit `_pad` after `tgid`): no padding (88 bytes), any bytes valid.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: two `u32`s: no padding, any bytes valid.
    unsafe impl aya::Pod for KernelConfig {}
}
