use super::*;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

#[test]
fn jump_offsets_fit() {
    assert!(refused().len() < 255 && notified().len() < 255);
    let p = program();
    assert!(p.len() < 4096);
    // Every notified syscall is distinct from every refused one.
    for nr in refused() {
        assert!(!notified().contains(&nr), "{nr}");
    }
}

fn send_fd(sock: RawFd, fd: RawFd) -> nix::Result<usize> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &[IoSlice::new(b"L")], &cmsg, MsgFlags::empty(), None)
}

fn recv_fd(sock: RawFd) -> OwnedFd {
    let mut buf = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed this descriptor for us.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no descriptor received");
}

fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
}

/// The child's part: install, hand the listener over, then exercise the filter.
/// Exit codes name the failed check.
fn child(sock: RawFd, file: &std::ffi::CStr) -> i32 {
    let listener = match install() {
        Ok(l) => l,
        Err(_) => return 10,
    };
    if send_fd(sock, listener.as_raw_fd()).is_err() {
        return 11;
    }
    drop(listener);
    // SAFETY: bpf(BPF_MAP_CREATE, NULL, 0) would fail with EFAULT/EINVAL if it reached the
    // kernel; the filter refuses it first.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) };
    if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return 12;
    }
    // SAFETY: plain open/close of a NUL-terminated path.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, file.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return 13;
    }
    // SAFETY: closes the descriptor just opened.
    unsafe { libc::close(fd) };
    // Tell the parent the read-only open is done (it checks nothing was notified).
    // SAFETY: writes one byte from a live buffer.
    if unsafe { libc::write(sock, b"R".as_ptr().cast(), 1) } != 1 {
        return 14;
    }
    // Wait for the parent's go (it checks the listener is quiet first).
    let mut go = [0u8; 1];
    // SAFETY: reads one byte into a live buffer.
    if unsafe { libc::read(sock, go.as_mut_ptr().cast(), 1) } != 1 {
        return 16;
    }
    // SAFETY: as above; this open is notified and held until the parent answers EXDEV.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, file.as_ptr(), libc::O_WRONLY) };
    if fd >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EXDEV) {
        return 15;
    }
    0
}

#[test]
fn filter_refuses_bpf_and_holds_write_opens_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let cfile = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    // SAFETY: the child runs only raw syscalls and the small helpers above, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(ours);
        let code = child(theirs.as_raw_fd(), &cfile);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    let listener = recv_fd(ours.as_raw_fd());
    assert!(crate::os::seccomp::notify::is_listener(&listener));
    assert!(
        crate::os::seccomp::notify::set_sync_wake_up(&listener),
        "the kernel (6.6+) takes SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP"
    );
    assert!(
        readable(ours.as_raw_fd(), 10_000),
        "child did not finish the read open"
    );
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a live buffer.
    let n = unsafe { libc::read(ours.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 1);
    assert!(
        !readable(listener.as_raw_fd(), 0),
        "a read-only open was notified"
    );
    // SAFETY: writes one byte from a live buffer.
    let n = unsafe { libc::write(ours.as_raw_fd(), b"G".as_ptr().cast(), 1) };
    assert_eq!(n, 1);

    // The write open is held: a notification arrives and the child waits for the answer.
    if !readable(listener.as_raw_fd(), 10_000) {
        let mut status = 0;
        // SAFETY: polls our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        panic!(
            "write open not notified (child: waitpid {r}, exit {})",
            libc::WEXITSTATUS(status)
        );
    }
    // SAFETY: zeroed plain C struct.
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV fills `req`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut req,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(req.data.nr as i64, libc::SYS_openat);
    assert_eq!(req.pid as i32, pid);
    assert_eq!(req.data.args[2] as i32 & libc::O_ACCMODE, libc::O_WRONLY);
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: polls our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(r, 0, "child ended while held");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: -libc::EXDEV,
        flags: 0,
    };
    // SAFETY: SEND reads `resp`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}
