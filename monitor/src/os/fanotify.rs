//! Thin, safe wrappers over the libc calls the fanotify module needs. Each returns
//! `io::Result` with the errno of the failed call; no policy lives here.
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `MAX_HANDLE_SZ` from include/linux/exportfs.h: the kernel never encodes a longer handle.
pub(crate) const MAX_HANDLE_SZ: usize = 128;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// `fanotify_init(2)`.
pub(crate) fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = cvt(unsafe { libc::fanotify_init(flags, event_f_flags) })?;
    // SAFETY: the kernel just returned this new descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(2)` on the object `fd` refers to (pathname NULL).
pub(crate) fn fanotify_mark_fd(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    // SAFETY: both descriptors are valid for the call; a NULL pathname means "dirfd itself".
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            fd.as_raw_fd(),
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `fanotify_mark(2)` on the entry `name` of the directory `dir`.
pub(crate) fn fanotify_mark_at(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid descriptors and a NUL-terminated name that outlives the call.
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            dir.as_raw_fd(),
            name.as_ptr(),
        )
    })
    .map(drop)
}

/// `read(2)`.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable region of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Open a directory for reading, refusing a symlink as the last component.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = path_cstring(path)?;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the directory entry `name` of `parent`, refusing symlinks.
pub(crate) fn openat_dir(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dirfd and NUL-terminated name.
    let fd = cvt(unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), DIR_FLAGS) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mount id of `fd` (`statx` `STATX_MNT_ID`), if the kernel reports it.
fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid fd, empty NUL-terminated path with AT_EMPTY_PATH, valid out pointer.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: zero-initialised and filled by the successful call.
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// The root directory of the mount `dir` is on, opened O_RDONLY: walks up ".." while
/// the mount (mount id, or st_dev if statx has none) stays the same. Mount points cannot
/// be removed while mounted, so unlike a watched directory this one is not deleted under
/// us, and holding it open does not delay anyone's FAN_DELETE_SELF.
pub(crate) fn mount_root(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut cur = dir.try_clone_to_owned()?;
    for _ in 0..4096 {
        let st = fstat(cur.as_fd())?;
        let parent = match openat_dir(cur.as_fd(), c"..") {
            Ok(p) => p,
            // An unlinked directory has no "..": keep what we have.
            Err(_) => return Ok(cur),
        };
        let pst = fstat(parent.as_fd())?;
        let same_mount = match (mount_id(cur.as_fd()), mount_id(parent.as_fd())) {
            (Some(a), Some(b)) => a == b,
            _ => st.st_dev == pst.st_dev,
        };
        if !same_mount || (pst.st_dev == st.st_dev && pst.st_ino == st.st_ino) {
            return Ok(cur);
        }
        cur = parent;
    }
    Ok(cur)
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is a valid out pointer; on success the kernel filled it.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(2)` without following a final symlink and without triggering automounts.
pub(crate) fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dirfd, NUL-terminated name, valid out pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
        )
    })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// What `fstatfs(2)` tells us about a filesystem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FsInfo {
    /// `f_fsid` as raw bytes: exactly what fanotify puts in its fid records.
    pub fsid: [u8; 8],
    /// `f_type` (superblock magic), truncated to 32 bits (all magics fit).
    pub magic: u32,
}

pub(crate) fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<FsInfo> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call.
    let st = unsafe { st.assume_init() };
    // libc keeps fsid_t's fields private; it is two c_ints (8 bytes), the same layout as
    // __kernel_fsid_t in the event records.
    // SAFETY: fsid_t is a plain 8-byte POD struct; any bit pattern is a valid [u8; 8].
    let fsid: [u8; 8] = unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) };
    Ok(FsInfo {
        fsid,
        magic: st.f_type as u32,
    })
}

/// `struct file_handle` with room for the largest handle the kernel encodes.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(2)` for `fd` itself (`AT_EMPTY_PATH`). Returns (type, bytes).
/// For filesystems that support decoding, this is the encoding fanotify reports.
pub(crate) fn handle_of_fd(fd: BorrowedFd<'_>) -> io::Result<(i32, Vec<u8>)> {
    name_to_handle(fd, c"", libc::AT_EMPTY_PATH)
}

/// `name_to_handle_at(2)` for the entry `name` of `dir`, not following a final symlink.
pub(crate) fn handle_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(i32, Vec<u8>)> {
    name_to_handle(dir, name, 0)
}

fn name_to_handle(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
) -> io::Result<(i32, Vec<u8>)> {
    let mut h = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: h is a file_handle header followed by MAX_HANDLE_SZ bytes, as announced in
    // handle_bytes; name is NUL-terminated; mount_id is a valid out pointer.
    cvt(unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            (&raw mut h).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    })?;
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.handle_type, h.f_handle[..n].to_vec()))
}

/// `open_by_handle_at(2)` with `O_PATH`. `mount_fd` must be a (non-`O_PATH`) descriptor of
/// any object on the same filesystem. Needs CAP_DAC_READ_SEARCH.
pub(crate) fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<OwnedFd> {
    if handle.is_empty() || handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = FileHandleBuf {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    h.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: h is a valid file_handle whose handle_bytes do not exceed its buffer.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&raw mut h).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path the kernel has for an open descriptor (`readlink /proc/self/fd/N`), as bytes.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// [`fd_path`] for a hot loop: `readlinkat` relative to a kept `/proc/self/fd` directory
/// (the kernel resolves one name instead of walking `/proc`, `self` and `fd` per call)
/// into a reused buffer, with the name formatted on the stack. Without the directory
/// (procfs not mounted at start-up) it falls back to [`fd_path`].
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
            return fd_path(fd).map(|p| p.into_os_string().into_vec());
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
            return fd_path(fd).map(|p| p.into_os_string().into_vec());
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

/// One directory entry as listed by `getdents`.
pub(crate) struct DirEntry {
    pub name: CString,
    /// `d_type`; `None` when the filesystem reports DT_UNKNOWN.
    pub file_type: Option<nix::dir::Type>,
}

/// List a directory (without "." and ".."). The listing uses a duplicate of `fd`, so
/// `fd` stays usable (e.g. as the parent for `openat`).
pub(crate) fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    let dup = fd.try_clone_to_owned()?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name();
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        out.push(DirEntry {
            name: name.to_owned(),
            file_type: entry.file_type(),
        });
    }
    Ok(out)
}

/// Join a raw entry name to a directory path.
pub(crate) fn join(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(got, fd_path(f.as_fd()).unwrap().as_os_str().as_bytes());
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
}
