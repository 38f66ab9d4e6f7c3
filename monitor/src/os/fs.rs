//! File-system calls on descriptors: directories opened without following symlinks,
//! `stat`, `statfs`, file handles, directory listings, `pread`, and what a filesystem's
//! magic says about it.
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{cvt, cvt_size, path_cstring};

/// `MAX_HANDLE_SZ` from include/linux/exportfs.h: the kernel never encodes a longer handle.
pub(crate) const MAX_HANDLE_SZ: usize = 128;

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Errors that mean "the entry went away or changed kind under us" (or is not a plain
/// directory), not a failure.
pub(crate) fn is_vanished(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ESTALE)
    )
}

/// Whether `st` describes a directory.
pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `st` describes a regular file.
pub(crate) fn is_reg(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

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

/// `fstatfs(2)`.
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

/// Superblock magics of pseudo filesystems a tree walk never enters (and that cannot be
/// roots): they have no stable file handles or would trigger side effects (autofs).
const PSEUDO_FS: &[(u32, &str)] = &[
    (0x0000_9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x0000_1cd1, "devpts"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x0000_0187, "autofs"),
    (0x6e73_6673, "nsfs"),
    (0xde5e_81e4, "efivarfs"),
];

/// Name of the pseudo filesystem with superblock magic `magic`, if it is one.
pub(crate) fn pseudo_fs_name(magic: u32) -> Option<&'static str> {
    PSEUDO_FS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
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

/// `pread(2)`.
pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: buf is a valid writable region of buf.len() bytes.
    cvt_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}
