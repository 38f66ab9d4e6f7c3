//! The write intent and session of the thread held in a fanotify permission wait.
//!
//! The event descriptor is opened read-only by the kernel, so the event does not say
//! whether the open was for writing. The thread is blocked inside its
//! `open`/`openat`/`openat2`/`creat` call, so exactly one open of that thread is in
//! progress, and two sources can tell its flags:
//! - the eBPF `PENDING` map (tid -> [`monitor_common::Pending`]), filled at `sys_enter`:
//!   session members always get an entry for write-intent opens (unless the ring buffer
//!   was full, see below), read-only opens never get one, and processes outside sessions
//!   get one only when the path matched a watched prefix (`kernel.path_filter`);
//! - `/proc/<tid>/syscall`: the syscall number and registers of the blocked thread
//!   (`openat2`'s flags are read from the caller's memory with `process_vm_readv`). Used
//!   when the map has no entry and the answer matters, and without eBPF maps at all.
//!
//! Known limits: the eBPF side inserts a `PENDING` entry only after the enter record was
//! written to the ring buffer, so a full ring buffer leaves a session's write open without
//! an entry (the listener then reads `/proc` for session members); `openat2`'s flags live
//! in user memory, which another thread of the opener can change between the kernel's copy
//! and either reader (a race a hostile multi-threaded program can try to win); 32-bit
//! (ia32) syscall numbers are not decoded (such opens have an unknown intent); opens that
//! do not come from these syscalls (`io_uring` `IORING_OP_OPENAT`, exec, kernel-internal
//! opens) have no intent.

use aya::maps::MapError;
use monitor_common::SysOp;

use crate::kernel::{GateMaps, Kernel, KernelError};
use crate::os::procfs::{self, Leader, is_leader, read_task_memory, tgid_of};

const O_WRONLY: u32 = libc::O_WRONLY as u32;
const O_RDWR: u32 = libc::O_RDWR as u32;
const O_CREAT: u32 = libc::O_CREAT as u32;
const O_TRUNC: u32 = libc::O_TRUNC as u32;
/// Open flags that mean "this open may change the file" (same set as the eBPF side).
pub const WRITE_INTENT: u32 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC;

/// Whether open `flags` carry a write intent.
pub fn is_write(flags: u32) -> bool {
    flags & WRITE_INTENT != 0
}

/// Where an [`Intent`] was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntentOrigin {
    /// The eBPF `PENDING` entry of the thread (`enter_ns` is known).
    Ebpf,
    /// `/proc/<tid>/syscall` (`enter_ns` is 0: unknown).
    Proc,
}

/// The open a held thread is performing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Open flags (`O_*`) as passed (for `creat`: `O_CREAT | O_WRONLY | O_TRUNC`).
    pub flags: u32,
    /// The flags carry a write intent ([`WRITE_INTENT`]).
    pub write: bool,
    /// Agent session of the opener (0 = none).
    pub session: u64,
    /// Thread group (process) of the opener; 0 when unknown.
    pub tgid: u32,
    /// `CLOCK_MONOTONIC` time of the syscall's enter in ns; 0 when unknown.
    pub enter_ns: u64,
    /// Where this was learned.
    pub origin: IntentOrigin,
}

/// Process and session of a thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opener {
    /// Thread group id (`None`: the thread is gone or procfs could not tell).
    pub tgid: Option<u32>,
    /// Agent session (0 = none, or no eBPF maps).
    pub session: u64,
}

/// Looks up intents and sessions of held threads. Lock-free: every lookup is a syscall on
/// map descriptors this value owns, or a procfs read; no disk I/O.
pub struct IntentSource {
    maps: Option<GateMaps>,
}

impl std::fmt::Debug for IntentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntentSource")
            .field("maps", &self.maps.is_some())
            .finish()
    }
}

impl IntentSource {
    /// Use the eBPF maps (see [`Kernel::gate_maps`]).
    pub fn new(maps: GateMaps) -> Self {
        Self { maps: Some(maps) }
    }

    /// Use the maps of a loaded `Kernel`, on duplicated descriptors.
    pub fn from_kernel(kernel: &Kernel) -> Result<Self, KernelError> {
        Ok(Self::new(kernel.gate_maps()?))
    }

    /// No eBPF maps: no sessions are known, intents come from `/proc` only.
    pub fn proc_only() -> Self {
        Self { maps: None }
    }

    /// Whether eBPF maps are used.
    pub fn has_maps(&self) -> bool {
        self.maps.is_some()
    }

    /// The intent recorded by the eBPF programs for the open `tid` is in (`None`: no entry,
    /// no maps, or the entry is not an open).
    pub fn intent(&self, tid: u32) -> Option<Intent> {
        let maps = self.maps.as_ref()?;
        let p = maps.pending.get(&tid, 0).ok()?;
        match SysOp::from_u32(p.op)? {
            SysOp::Open | SysOp::Openat | SysOp::Openat2 | SysOp::Creat => {}
            _ => return None,
        }
        Some(Intent {
            flags: p.flags,
            write: is_write(p.flags),
            session: p.session,
            tgid: p.tgid,
            enter_ns: p.enter_ns,
            origin: IntentOrigin::Ebpf,
        })
    }

    /// Session of the process thread `tid` belongs to: `SESSIONS[tid]`, else, when `tid`
    /// is not a thread group leader, `SESSIONS[tgid]` with the tgid from
    /// `/proc/<tid>/status`. 0 when none (or without maps).
    pub fn session_of_tid(&self, tid: u32) -> u64 {
        self.opener(tid).session
    }

    /// Process and session of thread `tid`, as cheaply as possible: a `SESSIONS` hit on
    /// `tid` means a leader in a session; otherwise `pidfd_open` tells whether `tid` is a
    /// leader (then it is its own tgid, outside any session); only for other threads is
    /// `/proc/<tid>/status` read.
    pub fn opener(&self, tid: u32) -> Opener {
        if let Some(session) = self.session_lookup(tid) {
            return Opener {
                tgid: Some(tid),
                session,
            };
        }
        match is_leader(tid) {
            Leader::Yes => Opener {
                tgid: Some(tid),
                session: 0,
            },
            Leader::Gone => Opener::default(),
            Leader::No | Leader::Unknown => {
                let tgid = tgid_of(tid);
                let session = match tgid {
                    Some(t) if t != tid => self.session_lookup(t).unwrap_or(0),
                    _ => 0,
                };
                Opener { tgid, session }
            }
        }
    }

    /// The intent of the open `tid` is blocked in, read from `/proc/<tid>/syscall`
    /// (`None`: not in an open-family syscall, or procfs could not tell).
    pub fn proc_intent(&self, tid: u32) -> Option<Intent> {
        let opener = self.opener(tid);
        proc_intent_for(tid, &opener)
    }

    fn session_lookup(&self, tgid: u32) -> Option<u64> {
        let maps = self.maps.as_ref()?;
        match maps.sessions.get(&tgid, 0) {
            Ok(s) if s != 0 => Some(s),
            Ok(_) | Err(MapError::KeyNotFound) => None,
            Err(e) => {
                tracing::debug!(tgid, error = %e, "gate: SESSIONS lookup failed");
                None
            }
        }
    }
}

/// [`IntentSource::proc_intent`] for an opener already looked up.
pub(crate) fn proc_intent_for(tid: u32, opener: &Opener) -> Option<Intent> {
    let text = procfs::read_at_most(tid, "syscall", 256)?;
    let call = parse_syscall(&text)?;
    let flags = match decode_open(call.nr, &call.args)? {
        OpenArgs::Flags(f) => f,
        OpenArgs::HowAt(addr) => {
            // struct open_how { __u64 flags; __u64 mode; __u64 resolve; }: flags first.
            let mut b = [0u8; 8];
            read_task_memory(tid, addr, &mut b).ok()?;
            u64::from_ne_bytes(b) as u32
        }
    };
    Some(Intent {
        flags,
        write: is_write(flags),
        session: opener.session,
        tgid: opener.tgid.unwrap_or(0),
        enter_ns: 0,
        origin: IntentOrigin::Proc,
    })
}

/// A parsed `/proc/<tid>/syscall` line.
#[derive(Debug, PartialEq, Eq)]
struct SyscallLine {
    nr: i64,
    args: [u64; 6],
}

/// `"nr 0xa0 0xa1 0xa2 0xa3 0xa4 0xa5 0xsp 0xpc"`; `None` for `"running"` or `"-1 sp pc"`
/// (not in a syscall) or anything unexpected.
fn parse_syscall(text: &[u8]) -> Option<SyscallLine> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split_ascii_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let tok = it.next()?;
        *a = u64::from_str_radix(tok.strip_prefix("0x")?, 16).ok()?;
    }
    Some(SyscallLine { nr, args })
}

enum OpenArgs {
    Flags(u32),
    /// `openat2`: address of the caller's `struct open_how`.
    HowAt(u64),
}

/// The flags of an open-family syscall of this architecture's native ABI.
fn decode_open(nr: i64, args: &[u64; 6]) -> Option<OpenArgs> {
    #[cfg(target_arch = "x86_64")]
    {
        match nr {
            libc::SYS_open => return Some(OpenArgs::Flags(args[1] as u32)),
            libc::SYS_creat => return Some(OpenArgs::Flags(O_CREAT | O_WRONLY | O_TRUNC)),
            _ => {}
        }
    }
    match nr {
        libc::SYS_openat => Some(OpenArgs::Flags(args[2] as u32)),
        libc::SYS_openat2 => Some(OpenArgs::HowAt(args[2])),
        // open_by_handle_at(mount_fd, handle, flags): not traced by the eBPF side.
        libc::SYS_open_by_handle_at => Some(OpenArgs::Flags(args[2] as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_syscall_lines() {
        let l =
            parse_syscall(b"257 0xffffff9c 0x7ffd1 0x241 0x1b6 0x0 0x0 0x7ffd0 0x7f00\n").unwrap();
        assert_eq!(l.nr, 257);
        assert_eq!(l.args, [0xffffff9c, 0x7ffd1, 0x241, 0x1b6, 0, 0]);
        assert_eq!(parse_syscall(b"running\n"), None);
        assert_eq!(parse_syscall(b"-1 0x7ffd0 0x7f00\n"), None);
        assert_eq!(parse_syscall(b"257 0xzz"), None);
        assert_eq!(parse_syscall(b"257 0x1 0x2"), None);
        assert_eq!(parse_syscall(&[0xff, 0xfe]), None);
    }

    #[test]
    fn write_intent_flags() {
        assert!(!is_write(libc::O_RDONLY as u32));
        assert!(!is_write(
            (libc::O_RDONLY | libc::O_APPEND | libc::O_CLOEXEC) as u32
        ));
        assert!(is_write(libc::O_WRONLY as u32));
        assert!(is_write(libc::O_RDWR as u32));
        assert!(is_write((libc::O_RDONLY | libc::O_CREAT) as u32));
        assert!(is_write((libc::O_RDONLY | libc::O_TRUNC) as u32));
    }

    #[test]
    fn tgid_of_own_threads() {
        let me = std::process::id();
        assert_eq!(tgid_of(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            tx.send((tid, tgid_of(tid), is_leader(tid))).unwrap();
        })
        .join()
        .unwrap();
        let (tid, tgid, leader) = rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(tgid, Some(me));
        assert_eq!(leader, Leader::No);
        assert_eq!(is_leader(me), Leader::Yes);
        let src = IntentSource::proc_only();
        assert_eq!(
            src.opener(me),
            Opener {
                tgid: Some(me),
                session: 0
            }
        );
    }
}
