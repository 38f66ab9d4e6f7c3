//! Decoding a notified syscall into the operation it asks for: its kind, the paths it
//! names (as the caller's pointers, read later) and its flags. Every value comes from the
//! watched process; nothing here trusts it beyond its type.
use std::io;

use crate::os::seccomp::notify;
use crate::policy::OpSet;

/// `setxattrat(2)` and `removexattrat(2)` (Linux 6.13; the same number on every
/// architecture).
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;

/// A path argument: a pointer in the caller's memory, relative to `dirfd`
/// (`AT_FDCWD`: the caller's working directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawPath {
    pub dirfd: i32,
    pub addr: u64,
}

/// What a notified syscall does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// `open`, `openat`, `creat`, `openat2` (its `open_how` read from `how`, `how_size`).
    Open {
        flags: i32,
        mode: u32,
        /// `openat2`'s `open_how` pointer and size (0: not openat2).
        how: u64,
        how_size: u64,
    },
    /// `rename*`: paths `[from, to]`.
    Rename {
        flags: u32,
    },
    /// `link*`: paths `[existing, new]`.
    Link {
        flags: i32,
    },
    /// `symlink*`: the link's content at `target`; paths `[new]`.
    Symlink {
        target: u64,
    },
    /// `unlink*`, `rmdir`.
    Unlink {
        dir: bool,
    },
    Mkdir {
        mode: u32,
    },
    Mknod {
        mode: u32,
        dev: u64,
    },
    Truncate {
        len: i64,
    },
    Chmod {
        mode: u32,
        nofollow: bool,
    },
    Chown {
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    /// `fchmod`, `fchown`, `fsetxattr`, `fremovexattr`: on the caller's descriptor.
    FdChmod {
        fd: i32,
        mode: u32,
    },
    FdChown {
        fd: i32,
        uid: u32,
        gid: u32,
    },
    /// `*setxattr*` / `*removexattr*` (`set`: a value is written).
    Xattr {
        nofollow: bool,
        set: bool,
    },
    FdXattr {
        fd: i32,
        set: bool,
    },
}

/// A decoded notification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Op {
    pub kind: Kind,
    /// The path arguments, in the order [`Kind`] names them.
    pub paths: Vec<RawPath>,
    /// The raw arguments (the xattr name and value are read from them when performed).
    pub args: [u64; 6],
}

const CWD: i32 = libc::AT_FDCWD;

fn fd(a: u64) -> i32 {
    // Descriptors are C ints in the low 32 bits; AT_FDCWD (-100) arrives sign-extended or not.
    a as u32 as i32
}

fn p(dirfd: i32, addr: u64) -> RawPath {
    RawPath { dirfd, addr }
}

/// Decodes syscall `nr` with `args` (`None`: not one the filter notifies).
pub fn decode(nr: i64, args: [u64; 6]) -> Option<Op> {
    let a = args;
    let (kind, paths) = match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => (open(a[1] as i32, a[2] as u32), vec![p(CWD, a[0])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => (
            open(libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, a[1] as u32),
            vec![p(CWD, a[0])],
        ),
        libc::SYS_openat => (open(a[2] as i32, a[3] as u32), vec![p(fd(a[0]), a[1])]),
        libc::SYS_openat2 => (
            Kind::Open {
                flags: 0,
                mode: 0,
                how: a[2],
                how_size: a[3],
            },
            vec![p(fd(a[0]), a[1])],
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_rename => (Kind::Rename { flags: 0 }, vec![p(CWD, a[0]), p(CWD, a[1])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_renameat => (
            Kind::Rename { flags: 0 },
            vec![p(fd(a[0]), a[1]), p(fd(a[2]), a[3])],
        ),
        libc::SYS_renameat2 => (
            Kind::Rename { flags: a[4] as u32 },
            vec![p(fd(a[0]), a[1]), p(fd(a[2]), a[3])],
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_link => (Kind::Link { flags: 0 }, vec![p(CWD, a[0]), p(CWD, a[1])]),
        libc::SYS_linkat => (
            Kind::Link { flags: a[4] as i32 },
            vec![p(fd(a[0]), a[1]), p(fd(a[2]), a[3])],
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_symlink => (Kind::Symlink { target: a[0] }, vec![p(CWD, a[1])]),
        libc::SYS_symlinkat => (Kind::Symlink { target: a[0] }, vec![p(fd(a[1]), a[2])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_unlink => (Kind::Unlink { dir: false }, vec![p(CWD, a[0])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_rmdir => (Kind::Unlink { dir: true }, vec![p(CWD, a[0])]),
        libc::SYS_unlinkat => (
            Kind::Unlink {
                dir: a[2] as i32 & libc::AT_REMOVEDIR != 0,
            },
            vec![p(fd(a[0]), a[1])],
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_mkdir => (Kind::Mkdir { mode: a[1] as u32 }, vec![p(CWD, a[0])]),
        libc::SYS_mkdirat => (Kind::Mkdir { mode: a[2] as u32 }, vec![p(fd(a[0]), a[1])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_mknod => (
            Kind::Mknod {
                mode: a[1] as u32,
                dev: a[2],
            },
            vec![p(CWD, a[0])],
        ),
        libc::SYS_mknodat => (
            Kind::Mknod {
                mode: a[2] as u32,
                dev: a[3],
            },
            vec![p(fd(a[0]), a[1])],
        ),
        libc::SYS_truncate => (Kind::Truncate { len: a[1] as i64 }, vec![p(CWD, a[0])]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_chmod => (
            Kind::Chmod {
                mode: a[1] as u32,
                nofollow: false,
            },
            vec![p(CWD, a[0])],
        ),
        libc::SYS_fchmodat => (
            Kind::Chmod {
                mode: a[2] as u32,
                nofollow: false,
            },
            vec![p(fd(a[0]), a[1])],
        ),
        libc::SYS_fchmodat2 => (
            Kind::Chmod {
                mode: a[2] as u32,
                nofollow: a[3] as i32 & libc::AT_SYMLINK_NOFOLLOW != 0,
            },
            vec![p(fd(a[0]), a[1])],
        ),
        libc::SYS_fchmod => (
            Kind::FdChmod {
                fd: fd(a[0]),
                mode: a[1] as u32,
            },
            vec![],
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_chown | libc::SYS_lchown => (
            Kind::Chown {
                uid: a[1] as u32,
                gid: a[2] as u32,
                nofollow: nr == libc::SYS_lchown,
            },
            vec![p(CWD, a[0])],
        ),
        libc::SYS_fchownat => (
            Kind::Chown {
                uid: a[2] as u32,
                gid: a[3] as u32,
                nofollow: a[4] as i32 & libc::AT_SYMLINK_NOFOLLOW != 0,
            },
            vec![p(fd(a[0]), a[1])],
        ),
        libc::SYS_fchown => (
            Kind::FdChown {
                fd: fd(a[0]),
                uid: a[1] as u32,
                gid: a[2] as u32,
            },
            vec![],
        ),
        libc::SYS_setxattr | libc::SYS_lsetxattr => (
            Kind::Xattr {
                nofollow: nr == libc::SYS_lsetxattr,
                set: true,
            },
            vec![p(CWD, a[0])],
        ),
        libc::SYS_removexattr | libc::SYS_lremovexattr => (
            Kind::Xattr {
                nofollow: nr == libc::SYS_lremovexattr,
                set: false,
            },
            vec![p(CWD, a[0])],
        ),
        libc::SYS_fsetxattr | libc::SYS_fremovexattr => (
            Kind::FdXattr {
                fd: fd(a[0]),
                set: nr == libc::SYS_fsetxattr,
            },
            vec![],
        ),
        SYS_SETXATTRAT | SYS_REMOVEXATTRAT => (
            // Not performed on the caller's behalf (their argument structs are new and
            // rarely used): refused when the target is gated, see `supervisor`.
            Kind::Xattr {
                nofollow: a[2] as i32 & libc::AT_SYMLINK_NOFOLLOW != 0,
                set: nr == SYS_SETXATTRAT,
            },
            vec![p(fd(a[0]), a[1])],
        ),
        _ => return None,
    };
    Some(Op { kind, paths, args })
}

fn open(flags: i32, mode: u32) -> Kind {
    Kind::Open {
        flags,
        mode,
        how: 0,
        how_size: 0,
    }
}

/// Whether an open with `flags` writes (what the filter notifies on).
pub fn open_writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0
}

impl Op {
    /// The operations on the path at `index`, for policy; `exists`: whether it exists now.
    pub fn ops_on(&self, index: usize, exists: bool) -> OpSet {
        match &self.kind {
            Kind::Open { flags, .. } => {
                OpSet::from_open_flags(*flags as u32, !exists && flags & libc::O_CREAT != 0)
            }
            Kind::Rename { .. } if index == 0 => OpSet::REMOVE,
            Kind::Rename { .. } => OpSet::RENAME,
            Kind::Link { .. } if index == 0 => OpSet::LINK,
            Kind::Link { .. } | Kind::Symlink { .. } | Kind::Mkdir { .. } | Kind::Mknod { .. } => {
                OpSet::CREATE
            }
            Kind::Unlink { .. } => OpSet::REMOVE,
            Kind::Truncate { .. } => OpSet::TRUNCATE,
            Kind::Chmod { .. } | Kind::FdChmod { .. } => OpSet::CHMOD,
            Kind::Chown { .. } | Kind::FdChown { .. } => OpSet::CHOWN,
            Kind::Xattr { .. } | Kind::FdXattr { .. } => OpSet::XATTR,
        }
    }

    /// Whether the final component of path `index` is followed when it is a symlink.
    pub fn follows(&self, index: usize) -> bool {
        match &self.kind {
            Kind::Open { flags, .. } => {
                flags & libc::O_NOFOLLOW == 0
                    && flags & (libc::O_CREAT | libc::O_EXCL) != (libc::O_CREAT | libc::O_EXCL)
            }
            Kind::Link { flags } if index == 0 => flags & libc::AT_SYMLINK_FOLLOW != 0,
            Kind::Truncate { .. } => true,
            Kind::Chmod { nofollow, .. }
            | Kind::Chown { nofollow, .. }
            | Kind::Xattr { nofollow, .. } => !nofollow,
            _ => false,
        }
    }

    /// A short name for logs and the ledger.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            Kind::Open { .. } => "open",
            Kind::Rename { .. } => "rename",
            Kind::Link { .. } => "link",
            Kind::Symlink { .. } => "symlink",
            Kind::Unlink { dir: false } => "unlink",
            Kind::Unlink { dir: true } => "rmdir",
            Kind::Mkdir { .. } => "mkdir",
            Kind::Mknod { .. } => "mknod",
            Kind::Truncate { .. } => "truncate",
            Kind::Chmod { .. } | Kind::FdChmod { .. } => "chmod",
            Kind::Chown { .. } | Kind::FdChown { .. } => "chown",
            Kind::Xattr { .. } | Kind::FdXattr { .. } => "xattr",
        }
    }
}

/// The errno the kernel would fail `op` with, from what is at its resolved `targets`
/// (`exists[i]`: something is at path `i`), for the cases that need no permission check: a name that must not
/// exist and does, or one that must exist and does not.
pub fn bound_to_fail(op: &Op, exists: &[bool]) -> Option<i32> {
    let exists = |i: usize| exists.get(i).copied().unwrap_or(false);
    let must_exist = |i: usize| (!exists(i)).then_some(libc::ENOENT);
    let must_not_exist = |i: usize| exists(i).then_some(libc::EEXIST);
    match op.kind {
        Kind::Open { flags, how: 0, .. } => {
            let excl = flags & (libc::O_CREAT | libc::O_EXCL) == (libc::O_CREAT | libc::O_EXCL);
            if excl {
                must_not_exist(0)
            } else if flags & libc::O_CREAT == 0 {
                must_exist(0)
            } else {
                None
            }
        }
        Kind::Rename { flags } => must_exist(0).or_else(|| {
            if flags & libc::RENAME_NOREPLACE != 0 {
                must_not_exist(1)
            } else {
                None
            }
        }),
        Kind::Link { .. } => must_exist(0).or_else(|| must_not_exist(1)),
        Kind::Symlink { .. } | Kind::Mkdir { .. } | Kind::Mknod { .. } => must_not_exist(0),
        Kind::Unlink { .. } | Kind::Truncate { .. } | Kind::Chmod { .. } | Kind::Chown { .. } => {
            must_exist(0)
        }
        _ => None,
    }
}

/// Reads `openat2`'s `open_how` (flags, mode) from the caller.
pub fn read_open_how(tid: u32, how: u64, size: u64) -> io::Result<(i32, u32)> {
    const VER0: u64 = 24;
    if size < VER0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let b = notify::read_bytes(tid, how, VER0 as usize)?;
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(a)
    };
    let (flags, mode) = (word(0), word(1));
    let flags = i32::try_from(flags).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mode = u32::try_from(mode).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((flags, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_openat_and_renameat2() {
        let o = decode(
            libc::SYS_openat,
            [(-100i64) as u64, 0x1000, libc::O_WRONLY as u64, 0o644, 0, 0],
        )
        .unwrap();
        assert_eq!(o.paths, vec![p(CWD, 0x1000)]);
        assert!(matches!(o.kind, Kind::Open { flags, mode: 0o644, .. } if flags == libc::O_WRONLY));
        // AT_FDCWD passed as a 32-bit value.
        let o = decode(libc::SYS_openat, [0xffff_ff9c, 0x1000, 1, 0, 0, 0]).unwrap();
        assert_eq!(o.paths[0].dirfd, CWD);
        let r = decode(libc::SYS_renameat2, [3, 0x10, 4, 0x20, 1, 0]).unwrap();
        assert_eq!(r.paths, vec![p(3, 0x10), p(4, 0x20)]);
        assert_eq!(r.kind, Kind::Rename { flags: 1 });
        assert_eq!(r.ops_on(0, true), OpSet::REMOVE);
        assert_eq!(r.ops_on(1, true), OpSet::RENAME);
        assert!(decode(libc::SYS_read, [0; 6]).is_none());
    }

    #[test]
    fn open_ops_and_following() {
        let o = decode(
            libc::SYS_openat,
            [
                (-100i64) as u64,
                1,
                (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64,
                0,
                0,
                0,
            ],
        )
        .unwrap();
        assert_eq!(
            o.ops_on(0, false),
            OpSet::WRITE | OpSet::CREATE | OpSet::TRUNCATE
        );
        assert_eq!(o.ops_on(0, true), OpSet::WRITE | OpSet::TRUNCATE);
        assert!(o.follows(0));
        let x = decode(
            libc::SYS_openat,
            [
                (-100i64) as u64,
                1,
                (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u64,
                0,
                0,
                0,
            ],
        )
        .unwrap();
        assert!(!x.follows(0));
        assert!(open_writes(libc::O_RDONLY | libc::O_TRUNC));
        assert!(!open_writes(libc::O_RDONLY | libc::O_CLOEXEC));
    }

    #[test]
    fn operations_the_kernel_would_refuse_anyway() {
        let noreplace = decode(libc::SYS_renameat2, [3, 1, 3, 2, 1, 0]).unwrap();
        assert_eq!(bound_to_fail(&noreplace, &[true, true]), Some(libc::EEXIST));
        assert_eq!(bound_to_fail(&noreplace, &[true, false]), None);
        assert_eq!(
            bound_to_fail(&noreplace, &[false, false]),
            Some(libc::ENOENT)
        );
        let plain = decode(libc::SYS_renameat2, [3, 1, 3, 2, 0, 0]).unwrap();
        assert_eq!(bound_to_fail(&plain, &[true, true]), None);
        let excl = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u64;
        let open_excl = decode(libc::SYS_openat, [3, 1, excl, 0o644, 0, 0]).unwrap();
        assert_eq!(bound_to_fail(&open_excl, &[true]), Some(libc::EEXIST));
        assert_eq!(bound_to_fail(&open_excl, &[false]), None);
        let open_w = decode(libc::SYS_openat, [3, 1, libc::O_WRONLY as u64, 0, 0, 0]).unwrap();
        assert_eq!(bound_to_fail(&open_w, &[false]), Some(libc::ENOENT));
        let unlink = decode(libc::SYS_unlinkat, [3, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(bound_to_fail(&unlink, &[false]), Some(libc::ENOENT));
        let mkdir = decode(libc::SYS_mkdirat, [3, 1, 0o755, 0, 0, 0]).unwrap();
        assert_eq!(bound_to_fail(&mkdir, &[true]), Some(libc::EEXIST));
    }
}
