//! Decoding of ring-buffer records into owned Rust values. Every length is checked
//! against the record size: a short or inconsistent record is an error, never a panic.
//! Offsets come from the shared `monitor_common::Record<B>` types (header first, then the
//! body of its kind), so the two sides cannot disagree on the layout.
use std::mem::offset_of;

use monitor_common::{
    ARG_LEN, ARGV_SLOTS, Body, COMM_LEN, DupBody, DupEvent, EXEC_FILENAME_OFFSET,
    EXIT_FLAG_GROUP_DEAD, EventHeader, EventKind, ExecArgsBody, ExecArgsEvent, ExecEvent, ForkBody,
    ForkEvent, PATH_MAX, SYSCALL_FLAG_PATH2, SYSCALL_PATH1_OFFSET, SysOp, SyscallEvent,
    SyscallExitBody, SyscallExitEvent, WriteBody, WriteEvent,
};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown syscall op {0}")]
    UnknownOp(u32),
    #[error("{kind:?} record of {len} bytes is truncated (needs {need})")]
    Truncated {
        kind: EventKind,
        len: usize,
        need: usize,
    },
}

/// A task's `comm` (up to the first NUL, at most 16 bytes), stored inline: decoding a
/// record allocates nothing for it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// The bytes of `b` up to the first NUL, at most [`COMM_LEN`].
    pub fn new(b: &[u8]) -> Comm {
        let b = &b[..b.len().min(COMM_LEN)];
        let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let mut bytes = [0u8; COMM_LEN];
        bytes[..len].copy_from_slice(&b[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }
}

impl std::ops::Deref for Comm {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub session_id: u64,
    pub cgroup_id: u64,
    pub comm: Comm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: Header,
    pub op: SysOp,
    pub flags: u32,
    pub dfd1: i32,
    pub dfd2: i32,
    pub fd: i32,
    pub mode: u32,
    pub arg_uid: u32,
    pub arg_gid: u32,
    pub length: u64,
    pub path1: Vec<u8>,
    pub path2: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Fork {
        header: Header,
        child_pid: u32,
    },
    Exec {
        header: Header,
        old_tid: u32,
        filename: Vec<u8>,
    },
    ExecArgs {
        header: Header,
        argv: Vec<Vec<u8>>,
        truncated: bool,
    },
    Exit {
        header: Header,
        group_dead: bool,
    },
    Syscall(SyscallRecord),
    SyscallExit {
        header: Header,
        op: SysOp,
        ret: i64,
    },
    Write {
        header: Header,
        op: SysOp,
        fd: i32,
        count: u64,
    },
    Dup {
        header: Header,
        old_fd: i32,
        new_fd: i32,
    },
}

impl Record {
    pub fn header(&self) -> &Header {
        match self {
            Record::Fork { header, .. }
            | Record::Exec { header, .. }
            | Record::ExecArgs { header, .. }
            | Record::Exit { header, .. }
            | Record::SyscallExit { header, .. }
            | Record::Write { header, .. }
            | Record::Dup { header, .. } => header,
            Record::Syscall(s) => &s.header,
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    u32_at(b, off) as i32
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn need(kind: EventKind, b: &[u8], n: usize) -> Result<(), DecodeError> {
    if b.len() < n {
        Err(DecodeError::Truncated {
            kind,
            len: b.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

/// `b` holds a whole fixed-size record of body `B` (a `monitor_common::Record<B>`).
fn whole<B: Body>(b: &[u8]) -> Result<(), DecodeError> {
    need(B::KIND, b, size_of::<monitor_common::Record<B>>())
}

/// A length-prefixed path at `len_off` (u32) followed by its bytes at `data_off`.
fn path_at(
    kind: EventKind,
    b: &[u8],
    len_off: usize,
    data_off: usize,
) -> Result<Vec<u8>, DecodeError> {
    need(kind, b, len_off + 4)?;
    let len = (u32_at(b, len_off) as usize).min(PATH_MAX - 1);
    need(kind, b, data_off + len)?;
    Ok(b[data_off..data_off + len].to_vec())
}

fn header(b: &[u8]) -> Header {
    Header {
        flags: u32_at(b, offset_of!(EventHeader, flags)),
        ktime_ns: u64_at(b, offset_of!(EventHeader, ktime_ns)),
        tgid: u32_at(b, offset_of!(EventHeader, tgid)),
        tid: u32_at(b, offset_of!(EventHeader, tid)),
        uid: u32_at(b, offset_of!(EventHeader, uid)),
        gid: u32_at(b, offset_of!(EventHeader, gid)),
        session_id: u64_at(b, offset_of!(EventHeader, session_id)),
        cgroup_id: u64_at(b, offset_of!(EventHeader, cgroup_id)),
        comm: Comm::new(
            &b[offset_of!(EventHeader, comm)..offset_of!(EventHeader, comm) + COMM_LEN],
        ),
    }
}

fn op(v: u32) -> Result<SysOp, DecodeError> {
    SysOp::from_u32(v).ok_or(DecodeError::UnknownOp(v))
}

/// Decode one ring-buffer record.
pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
    if b.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(b.len()));
    }
    let raw_kind = u32_at(b, 0);
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    let header = header(b);
    Ok(match kind {
        EventKind::Fork => {
            whole::<ForkBody>(b)?;
            Record::Fork {
                header,
                child_pid: u32_at(b, offset_of!(ForkEvent, body.child_pid)),
            }
        }
        EventKind::Exec => {
            let filename = path_at(
                kind,
                b,
                offset_of!(ExecEvent, body.filename_len),
                EXEC_FILENAME_OFFSET,
            )?;
            Record::Exec {
                header,
                old_tid: u32_at(b, offset_of!(ExecEvent, body.old_tid)),
                filename,
            }
        }
        EventKind::ExecArgs => {
            whole::<ExecArgsBody>(b)?;
            let argc = (u32_at(b, offset_of!(ExecArgsEvent, body.argc)) as usize).min(ARGV_SLOTS);
            let lens = offset_of!(ExecArgsEvent, body.arg_len);
            let args = offset_of!(ExecArgsEvent, body.args);
            let argv = (0..argc)
                .map(|i| {
                    let len = (u32_at(b, lens + 4 * i) as usize).min(ARG_LEN - 1);
                    let start = args + i * ARG_LEN;
                    b[start..start + len].to_vec()
                })
                .collect();
            let truncated = u32_at(b, offset_of!(ExecArgsEvent, body.truncated)) != 0;
            Record::ExecArgs {
                header,
                argv,
                truncated,
            }
        }
        EventKind::Exit => {
            let group_dead = header.flags & EXIT_FLAG_GROUP_DEAD != 0;
            Record::Exit { header, group_dead }
        }
        EventKind::Syscall => {
            need(kind, b, SYSCALL_PATH1_OFFSET)?;
            let path1 = path_at(
                kind,
                b,
                offset_of!(SyscallEvent, body.path1_len),
                SYSCALL_PATH1_OFFSET,
            )?;
            // A second path, when flagged, is packed right after the first.
            let path2 = if header.flags & SYSCALL_FLAG_PATH2 != 0 {
                let at = SYSCALL_PATH1_OFFSET + path1.len();
                path_at(kind, b, at, at + 4)?
            } else {
                Vec::new()
            };
            Record::Syscall(SyscallRecord {
                header,
                op: op(u32_at(b, offset_of!(SyscallEvent, body.op)))?,
                flags: u32_at(b, offset_of!(SyscallEvent, body.flags)),
                dfd1: i32_at(b, offset_of!(SyscallEvent, body.dfd1)),
                dfd2: i32_at(b, offset_of!(SyscallEvent, body.dfd2)),
                fd: i32_at(b, offset_of!(SyscallEvent, body.fd)),
                mode: u32_at(b, offset_of!(SyscallEvent, body.mode)),
                arg_uid: u32_at(b, offset_of!(SyscallEvent, body.arg_uid)),
                arg_gid: u32_at(b, offset_of!(SyscallEvent, body.arg_gid)),
                length: u64_at(b, offset_of!(SyscallEvent, body.length)),
                path1,
                path2,
            })
        }
        EventKind::SyscallExit => {
            whole::<SyscallExitBody>(b)?;
            Record::SyscallExit {
                header,
                op: op(u32_at(b, offset_of!(SyscallExitEvent, body.op)))?,
                ret: u64_at(b, offset_of!(SyscallExitEvent, body.ret)) as i64,
            }
        }
        EventKind::Dup => {
            whole::<DupBody>(b)?;
            Record::Dup {
                header,
                old_fd: i32_at(b, offset_of!(DupEvent, body.old_fd)),
                new_fd: i32_at(b, offset_of!(DupEvent, body.new_fd)),
            }
        }
        EventKind::Write => {
            whole::<WriteBody>(b)?;
            Record::Write {
                header,
                op: op(u32_at(b, offset_of!(WriteEvent, body.op)))?,
                fd: i32_at(b, offset_of!(WriteEvent, body.fd)),
                count: u64_at(b, offset_of!(WriteEvent, body.count)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::{AT_FDCWD, SYSCALL_PATH1_OFFSET};

    fn put_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn header_bytes(kind: EventKind, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        put_u32(&mut b, 0, kind as u32);
        put_u32(&mut b, offset_of!(EventHeader, tgid), 100);
        put_u32(&mut b, offset_of!(EventHeader, tid), 101);
        b[offset_of!(EventHeader, comm)..offset_of!(EventHeader, comm) + 3].copy_from_slice(b"sed");
        b
    }

    /// A record as the kernel side emits it (a second path packed after the first).
    fn syscall(op: SysOp, p1: &[u8], p2: Option<&[u8]>) -> Vec<u8> {
        let size = SYSCALL_PATH1_OFFSET + p1.len() + p2.map_or(0, |p| 4 + p.len());
        let mut b = header_bytes(EventKind::Syscall, size);
        put_u32(&mut b, offset_of!(SyscallEvent, body.op), op as u32);
        put_u32(&mut b, offset_of!(SyscallEvent, body.dfd1), AT_FDCWD as u32);
        put_u32(
            &mut b,
            offset_of!(SyscallEvent, body.path1_len),
            p1.len() as u32,
        );
        b[SYSCALL_PATH1_OFFSET..SYSCALL_PATH1_OFFSET + p1.len()].copy_from_slice(p1);
        if let Some(p2) = p2 {
            put_u32(&mut b, offset_of!(EventHeader, flags), SYSCALL_FLAG_PATH2);
            let at = SYSCALL_PATH1_OFFSET + p1.len();
            put_u32(&mut b, at, p2.len() as u32);
            b[at + 4..at + 4 + p2.len()].copy_from_slice(p2);
        }
        b
    }

    #[test]
    fn one_path_syscall() {
        let rec = decode(&syscall(SysOp::Openat, b"/etc/hosts", None)).expect("decodes");
        let Record::Syscall(s) = rec else {
            panic!("wrong kind {rec:?}")
        };
        assert_eq!(s.op, SysOp::Openat);
        assert_eq!(s.path1, b"/etc/hosts");
        assert!(s.path2.is_empty());
        assert_eq!(s.dfd1, AT_FDCWD);
        assert_eq!(&*s.header.comm, b"sed");
        assert_eq!((s.header.tgid, s.header.tid), (100, 101));
    }

    #[test]
    fn two_path_syscall_with_odd_bytes() {
        let rec = decode(&syscall(
            SysOp::Renameat2,
            b"/tmp/a\nb",
            Some(b"/etc/\xff.conf"),
        ))
        .expect("decodes");
        let Record::Syscall(s) = rec else {
            panic!("wrong kind")
        };
        assert_eq!(s.path1, b"/tmp/a\nb");
        assert_eq!(s.path2, b"/etc/\xff.conf");
    }

    #[test]
    fn lying_length_is_rejected_not_trusted() {
        let mut b = syscall(SysOp::Openat, b"/etc/x", None);
        put_u32(&mut b, offset_of!(SyscallEvent, body.path1_len), 4000);
        assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
        let mut b = syscall(SysOp::Renameat2, b"/a", Some(b"/etc/b"));
        put_u32(&mut b, SYSCALL_PATH1_OFFSET + 2, 100);
        assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
        // A second path flagged but not there at all.
        let mut b = syscall(SysOp::Renameat2, b"/a", None);
        put_u32(&mut b, offset_of!(EventHeader, flags), SYSCALL_FLAG_PATH2);
        assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn short_and_unknown_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let b = header_bytes(EventKind::Fork, 64);
        assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
        let mut b = header_bytes(EventKind::Fork, 72);
        put_u32(&mut b, 0, 99);
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
        let mut b = syscall(SysOp::Openat, b"/x", None);
        put_u32(&mut b, offset_of!(SyscallEvent, body.op), 999);
        assert_eq!(decode(&b), Err(DecodeError::UnknownOp(999)));
    }

    #[test]
    fn comm_stops_at_nul_and_at_sixteen_bytes() {
        assert_eq!(&*Comm::new(b"sed\0junk"), b"sed");
        assert_eq!(&*Comm::new(b"0123456789abcdefXYZ"), b"0123456789abcdef");
        assert!(Comm::new(b"").is_empty());
    }

    #[test]
    fn exec_args() {
        let mut b = header_bytes(EventKind::ExecArgs, size_of::<ExecArgsEvent>());
        put_u32(&mut b, offset_of!(ExecArgsEvent, body.argc), 2);
        let lens = offset_of!(ExecArgsEvent, body.arg_len);
        let args = offset_of!(ExecArgsEvent, body.args);
        put_u32(&mut b, lens, 3);
        put_u32(&mut b, lens + 4, 2);
        b[args..args + 3].copy_from_slice(b"sed");
        b[args + ARG_LEN..args + ARG_LEN + 2].copy_from_slice(b"-i");
        let rec = decode(&b).expect("decodes");
        assert_eq!(
            rec,
            Record::ExecArgs {
                header: header(&b),
                argv: vec![b"sed".to_vec(), b"-i".to_vec()],
                truncated: false
            }
        );
    }
}
