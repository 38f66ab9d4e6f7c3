//! The eBPF programs and maps by name: one table that both sides use. The eBPF crate
//! checks at compile time that each program it defines (named after its function by
//! `#[tracepoint]`) and each map (named after its static by `#[map]`) is listed here under
//! the right tracefs category; the daemon attaches the programs and opens the maps from
//! this table, and a unit test of the daemon checks that the built object holds exactly
//! these programs and maps.

/// The tracefs directory a tracepoint lives in (`/sys/kernel/tracing/events/<category>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// `sched`: process fork, exec and exit.
    Sched,
    /// `syscalls`: `sys_enter_*` and `sys_exit_*`.
    Syscalls,
}

impl Category {
    pub const fn name(self) -> &'static str {
        match self {
            Category::Sched => "sched",
            Category::Syscalls => "syscalls",
        }
    }
}

/// One tracepoint program of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's name in the object, which is also the tracepoint's name: each eBPF
    /// function is named after the tracepoint it attaches to.
    pub name: &'static str,
    pub category: Category,
    /// Session tracking or the basic write events are not sound without it: the daemon
    /// refuses to start when it cannot be attached. Any other program missing on a kernel
    /// is reported and skipped.
    pub essential: bool,
}

impl Program {
    /// The tracepoint to attach to: `(category, name)`.
    pub const fn tracepoint(&self) -> (&'static str, &'static str) {
        (self.category.name(), self.name)
    }
}

const fn sys(name: &'static str) -> Program {
    Program {
        name,
        category: Category::Syscalls,
        essential: false,
    }
}

const fn essential(p: Program) -> Program {
    Program {
        essential: true,
        ..p
    }
}

const fn sched(name: &'static str) -> Program {
    Program {
        name,
        category: Category::Sched,
        essential: true,
    }
}

/// Every program of the eBPF object.
pub const PROGRAMS: &[Program] = &[
    // process lifecycle (monitor-ebpf `process`)
    sched("sched_process_fork"),
    sched("sched_process_exec"),
    sched("sched_process_exit"),
    sys("sys_enter_execve"),
    sys("sys_enter_execveat"),
    // opens (`syscalls`)
    sys("sys_enter_open"),
    essential(sys("sys_enter_openat")),
    sys("sys_enter_openat2"),
    sys("sys_enter_creat"),
    sys("sys_exit_open"),
    essential(sys("sys_exit_openat")),
    sys("sys_exit_openat2"),
    sys("sys_exit_creat"),
    // namespace changes (`syscalls`)
    sys("sys_enter_rename"),
    sys("sys_enter_renameat"),
    essential(sys("sys_enter_renameat2")),
    sys("sys_enter_unlink"),
    essential(sys("sys_enter_unlinkat")),
    sys("sys_enter_rmdir"),
    sys("sys_enter_link"),
    sys("sys_enter_linkat"),
    sys("sys_enter_symlink"),
    sys("sys_enter_symlinkat"),
    sys("sys_enter_mkdir"),
    sys("sys_enter_mkdirat"),
    sys("sys_exit_rename"),
    sys("sys_exit_renameat"),
    sys("sys_exit_renameat2"),
    sys("sys_exit_unlink"),
    sys("sys_exit_unlinkat"),
    sys("sys_exit_rmdir"),
    sys("sys_exit_link"),
    sys("sys_exit_linkat"),
    sys("sys_exit_symlink"),
    sys("sys_exit_symlinkat"),
    sys("sys_exit_mkdir"),
    sys("sys_exit_mkdirat"),
    // content and metadata (`syscalls`)
    sys("sys_enter_truncate"),
    sys("sys_enter_ftruncate"),
    sys("sys_enter_chmod"),
    sys("sys_enter_fchmod"),
    sys("sys_enter_fchmodat"),
    sys("sys_enter_fchmodat2"),
    sys("sys_enter_chown"),
    sys("sys_enter_lchown"),
    sys("sys_enter_fchown"),
    sys("sys_enter_fchownat"),
    sys("sys_exit_truncate"),
    sys("sys_exit_ftruncate"),
    sys("sys_exit_chmod"),
    sys("sys_exit_fchmod"),
    sys("sys_exit_fchmodat"),
    sys("sys_exit_fchmodat2"),
    sys("sys_exit_chown"),
    sys("sys_exit_lchown"),
    sys("sys_exit_fchown"),
    sys("sys_exit_fchownat"),
    // working directory (`syscalls`)
    sys("sys_enter_chdir"),
    sys("sys_enter_fchdir"),
    sys("sys_exit_chdir"),
    sys("sys_exit_fchdir"),
    // tracked descriptors (`fds`)
    essential(sys("sys_enter_write")),
    sys("sys_enter_pwrite64"),
    sys("sys_enter_writev"),
    sys("sys_enter_pwritev"),
    sys("sys_enter_pwritev2"),
    sys("sys_enter_close"),
    sys("sys_enter_dup"),
    sys("sys_exit_dup"),
    sys("sys_enter_dup2"),
    sys("sys_enter_dup3"),
    sys("sys_enter_fcntl"),
    sys("sys_exit_fcntl"),
];

/// The program called `name`, if the table lists it.
pub const fn program(name: &str) -> Option<&'static Program> {
    let mut i = 0;
    while i < PROGRAMS.len() {
        if str_eq(PROGRAMS[i].name, name) {
            return Some(&PROGRAMS[i]);
        }
        i += 1;
    }
    None
}

/// Whether the table lists a program `name` under `category` (for the eBPF crate's
/// compile-time checks).
pub const fn listed(name: &str, category: Category) -> bool {
    match program(name) {
        Some(p) => p.category as u32 == category as u32,
        None => false,
    }
}

/// The maps of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapId {
    /// The ring buffer of records.
    Events,
    /// tgid -> agent session id.
    Sessions,
    /// Watched path prefixes (LPM trie).
    Prefixes,
    /// tid -> syscall enter awaiting its exit.
    Pending,
    /// (tgid, fd) of tracked descriptors.
    TrackedFds,
    /// tid -> descriptor being duplicated.
    DupPending,
    /// Per-CPU counters ([`crate::Counter`]).
    Counters,
    /// [`crate::KernelConfig`] at index 0.
    Config,
    /// Per-CPU staging areas of the eBPF side (records too large for its stack).
    SyscallScratch,
    SyscallPacked,
    ExecScratch,
    ArgsScratch,
    /// aya-log's ring buffer of the programs' diagnostics (defined and named by
    /// `aya-log-ebpf`, opened by `aya-log`).
    Logs,
}

impl MapId {
    pub const ALL: [MapId; 13] = [
        MapId::Events,
        MapId::Sessions,
        MapId::Prefixes,
        MapId::Pending,
        MapId::TrackedFds,
        MapId::DupPending,
        MapId::Counters,
        MapId::Config,
        MapId::SyscallScratch,
        MapId::SyscallPacked,
        MapId::ExecScratch,
        MapId::ArgsScratch,
        MapId::Logs,
    ];

    /// The map's name in the object (the name of its `static` on the eBPF side).
    pub const fn name(self) -> &'static str {
        match self {
            MapId::Events => "EVENTS",
            MapId::Sessions => "SESSIONS",
            MapId::Prefixes => "PREFIXES",
            MapId::Pending => "PENDING",
            MapId::TrackedFds => "TRACKED_FDS",
            MapId::DupPending => "DUP_PENDING",
            MapId::Counters => "COUNTERS",
            MapId::Config => "CONFIG",
            MapId::SyscallScratch => "SYSCALL_SCRATCH",
            MapId::SyscallPacked => "SYSCALL_PACKED",
            MapId::ExecScratch => "EXEC_SCRATCH",
            MapId::ArgsScratch => "ARGS_SCRATCH",
            MapId::Logs => "AYA_LOGS",
        }
    }
}

/// Byte-wise string equality usable in `const` context.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn starts_with(s: &str, prefix: &str) -> bool {
    let (s, p) = (s.as_bytes(), prefix.as_bytes());
    if s.len() < p.len() {
        return false;
    }
    let mut i = 0;
    while i < p.len() {
        if s[i] != p[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The table itself: names unique, and each name's prefix matches its category.
const _: () = {
    let mut i = 0;
    while i < PROGRAMS.len() {
        let p = &PROGRAMS[i];
        let mut j = i + 1;
        while j < PROGRAMS.len() {
            assert!(!str_eq(p.name, PROGRAMS[j].name), "program listed twice");
            j += 1;
        }
        match p.category {
            Category::Sched => assert!(starts_with(p.name, "sched_")),
            Category::Syscalls => {
                assert!(starts_with(p.name, "sys_enter_") || starts_with(p.name, "sys_exit_"))
            }
        }
        i += 1;
    }
    let mut k = 0;
    while k < MapId::ALL.len() {
        assert!(MapId::ALL[k] as usize == k, "MapId::ALL out of order");
        k += 1;
    }
};
