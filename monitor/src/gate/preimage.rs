//! The pre-image of a held file: its content and metadata before the held open proceeds.
//!
//! Read from the event descriptor with `pread` (never by opening the path: that would be a
//! new gated open). The permission event comes after `O_CREAT` created the file and before
//! `O_TRUNC` truncates it (verified on this kernel by the tests), so what is read is the
//! content the open is about to change. Reading blocks on disk I/O: call [`capture`] from a
//! blocking context (`spawn_blocking`), never from the listener thread.
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::intent::Intent;
use crate::os::clock::{clock_res, from_timespec, monotonic_to_realtime};
use crate::os::fs::{fstat, pread};

/// Bytes read per `pread`.
const CHUNK: usize = 64 * 1024;

/// A held file's content and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreImage {
    /// The content, `None` when it is larger than the `max_bytes` given to [`capture`].
    pub content: Option<Vec<u8>>,
    /// Bytes read (the size at the time of reading; the file is read to its end).
    pub size: u64,
    /// SHA-256 of the whole content read, also when `content` is `None`.
    pub sha256: [u8; 32],
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Hard links.
    pub nlink: u64,
    /// Last status change.
    pub ctime: SystemTime,
}

impl PreImage {
    /// The pre-image of a path that does not exist yet: empty, regular-file mode 0644,
    /// owned by root. A change kept with it records "did not exist" (its revert removes
    /// the path).
    pub fn absent() -> PreImage {
        PreImage {
            content: Some(Vec::new()),
            size: 0,
            sha256: Sha256::digest(b"").into(),
            mode: libc::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            nlink: 0,
            ctime: SystemTime::UNIX_EPOCH,
        }
    }
}

/// Errors of [`capture`].
#[derive(Debug, thiserror::Error)]
pub enum PreImageError {
    /// `fstat` of the event descriptor failed.
    #[error("fstat of the held file: {0}")]
    Stat(#[source] std::io::Error),
    /// Reading the content failed.
    #[error("reading the held file at offset {offset}: {source}")]
    Read {
        /// Where the read failed.
        offset: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (device, FIFO, socket): its content is not captured.
    #[error("the held file is not a regular file (mode {mode:#o})")]
    NotRegular {
        /// `st_mode`.
        mode: u32,
    },
}

/// Capture the pre-image of the file open as `fd` (the held event's descriptor): content
/// up to `max_bytes` (the whole file is hashed regardless), mode, owner, identity, ctime.
pub fn capture(fd: impl AsFd, max_bytes: u64) -> Result<PreImage, PreImageError> {
    let fd = fd.as_fd();
    let st = fstat(fd).map_err(PreImageError::Stat)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(PreImageError::NotRegular { mode: st.st_mode });
    }
    let mut hasher = Sha256::new();
    let keep_hint = (st.st_size.max(0) as u64).min(max_bytes);
    let mut content: Option<Vec<u8>> = Some(Vec::with_capacity(keep_hint as usize));
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = match pread(fd, &mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(source) => return Err(PreImageError::Read { offset, source }),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        offset += n as u64;
        if offset > max_bytes {
            content = None;
        } else if let Some(c) = content.as_mut() {
            c.extend_from_slice(chunk);
        }
    }
    Ok(PreImage {
        content,
        size: offset,
        sha256: hasher.finalize().into(),
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
        ctime: from_timespec(st.st_ctime, st.st_ctime_nsec),
    })
}

/// Whether the held open created the file (so a denied open must remove it: the kernel
/// creates the file before the permission event, and a denied open leaves it behind):
/// - `O_CREAT | O_EXCL`: an existing file would have failed the open before the event;
/// - `O_CREAT`, the file is empty, and its ctime is not before the open's syscall enter
///   (the eBPF `enter_ns`, converted from `CLOCK_MONOTONIC` to wall-clock time), allowing
///   for the coarse clock that filesystems stamp ctime with: it lags the precise clock by
///   up to a tick and a little more (4.13 ms seen here with 4 ms ticks), so two ticks plus
///   2 ms are allowed.
///
/// Without an enter time (`enter_ns == 0`, intent read from `/proc`) only `O_EXCL` counts:
/// an empty file is never taken for a new one on a guess. The slack means an
/// empty file that someone else created or changed (chmod) within a few milliseconds
/// before the open is taken for new. (Recording `bpf_ktime_get_coarse_ns` at the enter
/// would make the comparison exact: both sides would then read the same coarse clock.)
pub fn created_by_open(pre: &PreImage, intent: &Intent) -> bool {
    let flags = intent.flags;
    if flags & libc::O_CREAT as u32 == 0 {
        return false;
    }
    if flags & libc::O_EXCL as u32 != 0 {
        return true;
    }
    if pre.size != 0 || intent.enter_ns == 0 {
        return false;
    }
    let Some(enter) = monotonic_to_realtime(intent.enter_ns) else {
        return false;
    };
    let tick = clock_res(libc::CLOCK_REALTIME_COARSE)
        .unwrap_or(Duration::from_millis(10))
        .max(Duration::from_millis(1));
    let slack = tick * 2 + Duration::from_millis(2);
    pre.ctime + slack >= enter
}

/// Lowercase hex of a digest (for logs and the ledger).
pub fn hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
