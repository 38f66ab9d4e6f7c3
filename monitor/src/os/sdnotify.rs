//! systemd's side channels: the notification socket (`sd_notify(3)`: `READY=1`,
//! `WATCHDOG=1`, `FDSTORE=1` with descriptors attached as `SCM_RIGHTS`) and the
//! descriptors it passes back to a restarted service (`sd_listen_fds(3)`: `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on).
//!
//! Without `NOTIFY_SOCKET` in the environment there is no [`Notifier`] and nothing is
//! sent. Each message goes out on a fresh datagram socket (as libsystemd does), so a
//! service manager that re-executes itself never leaves us with a stale connection.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::cvt_size;

/// Descriptors accepted by [`recv_with_fds`] in one message (systemd's own limit per
/// message is the kernel's `SCM_MAX_FD`, 253; we send one at a time).
const RECV_MAX_FDS: usize = 16;

/// Where notifications go: the address in `NOTIFY_SOCKET` (a path, or `@name` for an
/// abstract socket).
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`; `Ok(None)` when it is unset or empty, an error when
    /// it names an address this process cannot use (e.g. `vsock:`).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Notifier::for_address(v.as_bytes()).map(Some),
        }
    }

    /// The notifier of a `NOTIFY_SOCKET` value.
    pub fn for_address(value: &[u8]) -> io::Result<Notifier> {
        let addr = match value {
            [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value))?,
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "NOTIFY_SOCKET is neither an absolute path nor an abstract socket",
                ));
            }
        };
        Ok(Notifier { addr })
    }

    /// Sends `msg` (newline-separated `KEY=VALUE` lines) with `fds` attached.
    pub fn send(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(&self.addr)?;
        send_with_fds(&sock, msg.as_bytes(), fds)
    }
}

/// The process's notifier (read from the environment once); `None` without
/// `NOTIFY_SOCKET`, or when it names an address we cannot use (then `error` says why, once).
pub fn notifier() -> Option<&'static Notifier> {
    NOTIFIER
        .get_or_init(Notifier::from_env)
        .as_ref()
        .ok()?
        .as_ref()
}

/// Why `NOTIFY_SOCKET` could not be used, if it could not.
pub fn notifier_error() -> Option<String> {
    NOTIFIER
        .get_or_init(Notifier::from_env)
        .as_ref()
        .err()
        .map(ToString::to_string)
}

static NOTIFIER: OnceLock<io::Result<Option<Notifier>>> = OnceLock::new();

/// The watchdog period systemd expects pings within (`WATCHDOG_USEC`, for this process
/// when `WATCHDOG_PID` is set), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// One datagram on `sock` (connected) carrying `msg`, with `fds` as `SCM_RIGHTS`.
pub fn send_with_fds(sock: &UnixDatagram, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.is_empty() {
        let n = sock.send(msg)?;
        return complete(n, msg.len());
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    let payload_u32 =
        u32::try_from(payload).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload_u32) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr().cast_mut().cast(),
        iov_len: msg.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovec, no control yet).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: `hdr` describes `control`, which has room for one header and `payload` bytes
    // (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and CMSG_DATA points at `payload` writable
    // bytes inside `control`; `raw` holds exactly `payload` bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        if c.is_null() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload_u32) as _;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
    }
    // SAFETY: `hdr` points at `iov` (over `msg`) and `control`, both alive for the call;
    // the descriptors in it are borrowed from `fds`, open for the call.
    let n = cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) })?;
    complete(n, msg.len())
}

fn complete(sent: usize, len: usize) -> io::Result<()> {
    if sent == len {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ))
    }
}

/// Receives one datagram from `sock` and the descriptors attached to it (made
/// close-on-exec). What a service manager does with our notifications; used by tests.
pub fn recv_with_fds(sock: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload = (RECV_MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: `hdr` points at `iov` (over `buf`) and `control`, both alive for the call.
    let n = cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to `hdr.msg_controllen`; the CMSG_* macros walk
    // it within those bounds; each SCM_RIGHTS payload is an array of descriptors the kernel
    // just installed in this process, owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors truncated (MSG_CTRUNC)"));
    }
    Ok((n, fds))
}

/// The descriptors the service manager passed to this process (`LISTEN_PID` is ours), each
/// with its name from `LISTEN_FDNAMES` (`"unknown"` without names), made close-on-exec.
/// Only the first call takes them; later calls return nothing, so no descriptor is ever
/// owned twice.
pub fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let fds = sd_notify::listen_fds_with_names()?;
    Ok(fds
        .map(|(fd, name)| {
            // SAFETY: LISTEN_PID names this process, so descriptors 3..3+LISTEN_FDS were
            // passed to it at exec (sd_listen_fds(3)); nothing in the process opened or
            // owns them, and TAKEN makes this the only place that takes ownership.
            (name, unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsFd as _;

    #[test]
    fn a_descriptor_crosses_the_socket() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let (rd, wr) = std::io::pipe().unwrap();
        send_with_fds(&a, b"FDSTORE=1\nFDNAME=session-7\n", &[rd.as_fd()]).unwrap();
        drop(rd);
        let mut buf = [0u8; 256];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=session-7\n");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the pipe's read end: what is written arrives there.
        let mut w = wr;
        w.write_all(b"x").unwrap();
        let mut r = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut got = [0u8; 1];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn a_message_without_descriptors() {
        let (a, b) = UnixDatagram::pair().unwrap();
        send_with_fds(&a, b"READY=1\n", &[]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(fds.is_empty());
    }

    #[test]
    fn notifier_addresses() {
        assert!(Notifier::for_address(b"/run/systemd/notify").is_ok());
        assert!(Notifier::for_address(b"@sd-notify-test").is_ok());
        assert!(Notifier::for_address(b"vsock:2:1234").is_err());
        assert!(Notifier::for_address(b"relative").is_err());
    }

    #[test]
    fn notifier_sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_address(path.as_os_str().as_bytes()).unwrap();
        n.send("STATUS=hello\n", &[]).unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = recv_with_fds(&server, &mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=hello\n");
    }
}
