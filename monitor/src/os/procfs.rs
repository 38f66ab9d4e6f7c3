//! Facts about processes and threads, mostly from procfs: the path behind a descriptor
//! (ours, with a fast path for hot loops, or another process's), files and links under
//! `/proc/<pid>`, start times, thread groups, supplementary groups, whether a thread id
//! is a leader, and reading a task's memory.
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::{cvt, cvt_size};

/// `/proc/<pid>/<name>` in full (`None`: the process is gone or the file unreadable).
pub fn read(pid: u32, name: &str) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/{name}")).ok()
}

/// At most `max` bytes of `/proc/<pid>/<name>` (procfs: no disk I/O).
pub fn read_at_most(pid: u32, name: &str, max: usize) -> Option<Vec<u8>> {
    let mut f = File::open(format!("/proc/{pid}/{name}")).ok()?;
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < max {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(n);
    Some(buf)
}

/// Where the link `/proc/<pid>/<name>` (`cwd`, `exe`, `fd/N`, ...) points, exact bytes,
/// while the process is alive.
pub fn link(pid: u32, name: &str) -> Option<Vec<u8>> {
    link_at(format!("/proc/{pid}/{name}"))
}

fn link_at(path: String) -> Option<Vec<u8>> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

/// The path of descriptor `fd` of process `pid`: `known`, what the caller learned when the
/// descriptor was opened, if it has it; else the live `/proc/<pid>/fd/<fd>` link (`None`:
/// the process or the descriptor is gone). `P` is the caller's form of a path (`Vec<u8>`,
/// `Arc<[u8]>`); only the fallback converts.
pub fn fd_path_or_live<P: From<Vec<u8>>>(known: Option<P>, pid: u32, fd: i32) -> Option<P> {
    known.or_else(|| link_at(format!("/proc/{pid}/fd/{fd}")).map(P::from))
}

/// Thread group id of `tid` from `/proc/<tid>/status` (`Tgid:` line).
pub fn tgid_of(tid: u32) -> Option<u32> {
    let text = read_at_most(tid, "status", 1024)?;
    let at = text.windows(6).position(|w| w == b"\nTgid:")? + 6;
    let rest = &text[at..];
    let digits: Vec<u8> = rest
        .iter()
        .copied()
        .skip_while(|b| *b == b'\t' || *b == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`, field 22).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Supplementary groups of `pid` (from `/proc`), empty if it cannot be read.
pub fn groups_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Whether `tid` is one of this process's threads (`/proc/self/task/<tid>` exists).
pub(crate) fn is_own_thread(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// What `pidfd_open(tid, 0)` says about a thread id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leader {
    /// The id is a thread group leader (its process id).
    Yes,
    /// The id is a thread that is not the leader of its group.
    No,
    /// No such task (it exited).
    Gone,
    /// The kernel cannot tell (no `pidfd_open`, or another error).
    Unknown,
}

/// Whether `tid` is a thread group leader: `pidfd_open` without `PIDFD_THREAD` refuses an
/// id that is not one (`EINVAL` on older kernels, `ENOENT` on 6.18; `ESRCH`: no such id).
/// Two syscalls, no procfs text to format and parse.
pub(crate) fn is_leader(tid: u32) -> Leader {
    let Ok(pid) = libc::pid_t::try_from(tid) else {
        return Leader::Unknown;
    };
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this new descriptor; we own it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        return Leader::Yes;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINVAL | libc::ENOENT) => Leader::No,
        Some(libc::ESRCH) => Leader::Gone,
        _ => Leader::Unknown,
    }
}

/// Read `buf.len()` bytes at `addr` in the memory of task `tid` (`process_vm_readv`).
pub(crate) fn read_task_memory(tid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let pid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local points to buf (writable, buf.len() bytes); the remote address is only
    // interpreted by the kernel in the other process.
    let n = cvt_size(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) })?;
    if n != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// The path the kernel has for one of our open descriptors (`readlink
/// /proc/self/fd/N`).
pub(crate) fn own_fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// [`own_fd_path`] for a hot loop: `readlinkat` relative to a kept `/proc/self/fd`
/// directory (the kernel resolves one name instead of walking `/proc`, `self` and `fd`
/// per call) into a reused buffer, with the name formatted on the stack. Without the
/// directory (procfs not mounted at start-up) it falls back to [`own_fd_path`].
pub(crate) struct FdPaths {
    dir: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl FdPaths {
    pub(crate) fn new() -> Self {
        let c = c"/proc/self/fd";
        // SAFETY: NUL-terminated path; the returned fd is owned below.
        let dir = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        // SAFETY: fresh descriptor.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .ok();
        // The kernel's answer is at most PATH_MAX bytes (longer paths fail with
        // ENAMETOOLONG); one byte more tells a full buffer from a truncated answer.
        FdPaths {
            dir,
            buf: vec![0; libc::PATH_MAX as usize + 1],
        }
    }

    /// The path of `fd`, exact bytes.
    pub(crate) fn path_of(&mut self, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        let Some(dir) = &self.dir else {
            return own_fd_path(fd).map(|p| p.into_os_string().into_vec());
        };
        let mut name = [0u8; 12];
        decimal(fd.as_raw_fd(), &mut name);
        // SAFETY: `name` holds ASCII digits followed by NUL; `buf` is a valid
        // writable region of buf.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr().cast(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n >= self.buf.len() {
            // Cannot happen with procfs; never return a truncated path.
            return own_fd_path(fd).map(|p| p.into_os_string().into_vec());
        }
        Ok(self.buf[..n].to_vec())
    }
}

/// Writes the decimal digits of `n` (a descriptor: not negative) followed by NUL into
/// `out`; returns the number of digits.
fn decimal(n: RawFd, out: &mut [u8; 12]) -> usize {
    let mut v = n.unsigned_abs();
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    out[len] = 0;
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Arc;

    #[test]
    fn decimal_names() {
        for n in [0, 7, 10, 123_456, RawFd::MAX] {
            let mut out = [0xffu8; 12];
            let len = decimal(n, &mut out);
            assert_eq!(&out[..len], n.to_string().as_bytes());
            assert_eq!(out[len], 0);
        }
    }

    #[test]
    fn fd_paths_match_readlink_for_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let names: [&[u8]; 3] = [b"plain", b"new\nline", b"bad-\xff-utf8"];
        let mut paths = FdPaths::new();
        assert!(paths.dir.is_some(), "procfs is mounted here");
        for name in names {
            let p = dir.path().join(OsStr::from_bytes(name));
            let f = std::fs::File::create(&p).unwrap();
            let got = paths.path_of(f.as_fd()).unwrap();
            assert_eq!(got, p.as_os_str().as_bytes());
            assert_eq!(got, own_fd_path(f.as_fd()).unwrap().as_os_str().as_bytes());
        }
    }

    #[test]
    fn fd_paths_of_a_closed_descriptor_is_an_error() {
        let mut paths = FdPaths::new();
        let f = std::fs::File::open("/").unwrap();
        let raw = f.as_raw_fd();
        drop(f);
        // SAFETY: the number is only used as a name to look up; it is not used as an fd.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        assert!(paths.path_of(borrowed).is_err());
    }

    #[test]
    fn a_known_path_wins_and_the_live_link_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(OsStr::from_bytes(b"odd\nname"));
        let f = std::fs::File::create(&p).unwrap();
        let me = std::process::id();
        let fd = f.as_raw_fd();
        let known: Option<Vec<u8>> = Some(b"/known".to_vec());
        assert_eq!(fd_path_or_live(known, me, fd), Some(b"/known".to_vec()));
        let live: Option<Vec<u8>> = fd_path_or_live(None, me, fd);
        assert_eq!(live.as_deref(), Some(p.as_os_str().as_bytes()));
        let shared: Option<Arc<[u8]>> = fd_path_or_live(None, me, fd);
        assert_eq!(shared.as_deref(), Some(p.as_os_str().as_bytes()));
        assert_eq!(fd_path_or_live::<Vec<u8>>(None, me, -1), None);
        assert_eq!(
            link(me, "cwd"),
            Some(std::env::current_dir().unwrap().into_os_string().into_vec())
        );
    }

    #[test]
    fn own_threads_and_start_times() {
        let me = std::process::id();
        assert!(is_own_thread(me));
        assert!(!is_own_thread(u32::MAX));
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(u32::MAX), None);
    }
}
