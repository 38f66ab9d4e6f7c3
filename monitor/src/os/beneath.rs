//! Writing to a path as root without being redirected by a symlink in its directories.
//!
//! A revert or restore runs as root on a path that the watched processes can shape: a
//! directory on the way replaced by a symlink (`/srv/app/conf` → `/etc`) would make a
//! path-based write land elsewhere, with content chosen by whoever owned the original
//! file. Here the directory that holds the path is reached from a trusted starting
//! directory (a configured root, opened as configured) one component at a time, each with
//! `O_NOFOLLOW | O_DIRECTORY`, and every operation is then made relative to that
//! directory's descriptor, the last component never followed either. A symlink on the way
//! is an error (`ELOOP` or `ENOTDIR`), never followed.
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A directory entry reached without following symlinks: the directory's descriptor and
/// the entry's name in it.
#[derive(Debug)]
pub struct Beneath {
    dir: OwnedFd,
    name: CString,
}

impl Beneath {
    /// The entry `path` below `trusted` (`trusted` itself opened as it is configured,
    /// following symlinks: the administrator's root; `"/"` for kernel-reported paths,
    /// which are canonical). `path` must be absolute, start with `trusted` and contain no
    /// `.` or `..` below it. With `create`, missing directories on the way are made (mode
    /// 0755).
    pub fn new(trusted: &Path, path: &Path, create: bool) -> io::Result<Beneath> {
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {what}", path.display()),
            )
        };
        let rel = path
            .strip_prefix(trusted)
            .map_err(|_| invalid("not below its root"))?;
        let mut names: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                _ => return Err(invalid("`.`, `..` or a root in the path")),
            }
        }
        let Some(last) = names.pop() else {
            return Err(invalid("names its root, not an entry below it"));
        };
        let mut dir = nix::fcntl::open(
            trusted,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_err)?;
        for n in names {
            dir = match openat(&dir, n, DIR, Mode::empty()) {
                Ok(d) => d,
                Err(nix::Error::ENOENT) if create => {
                    match mkdirat(&dir, n, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(nix::Error::EEXIST) => {}
                        Err(e) => return Err(nix_err(e)),
                    }
                    openat(&dir, n, DIR, Mode::empty()).map_err(nix_err)?
                }
                Err(e) => return Err(nix_err(e)),
            };
        }
        let name = CString::new(last.as_bytes()).map_err(|_| invalid("a NUL byte"))?;
        Ok(Beneath { dir, name })
    }

    /// The directory holding the entry.
    pub fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.dir)
    }

    /// The entry's name in [`Beneath::dir`].
    pub fn name(&self) -> &std::ffi::CStr {
        &self.name
    }

    /// Opens the entry with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), `mode` if created.
    pub fn open(&self, flags: OFlag, mode: u32) -> io::Result<File> {
        let fd = openat(
            &self.dir,
            self.name.as_c_str(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(nix_err)?;
        Ok(File::from(fd))
    }

    /// Removes the entry (not a directory).
    pub fn unlink(&self) -> io::Result<()> {
        unlinkat(&self.dir, self.name.as_c_str(), UnlinkatFlags::NoRemoveDir).map_err(nix_err)
    }

    /// Makes the entry a symlink to `target`, owned by `uid`:`gid`.
    pub fn symlink(&self, target: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        symlinkat(target, &self.dir, self.name.as_c_str()).map_err(nix_err)?;
        fchownat(
            &self.dir,
            self.name.as_c_str(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_err)
    }

    /// Puts `content` (`mode`, owner `uid`:`gid`) at the entry without a moment with
    /// nothing there: written to a temporary file beside it (created new, synced), the
    /// file now there kept in `quarantine` (a hard link; across filesystems a regular
    /// file's copy, anything else by name only; with `missing_ok`, nothing there is fine),
    /// then renamed over it. Returns where the replaced file was kept. On an error the
    /// temporary file is removed and the entry is as it was.
    pub fn replace_keeping(
        &self,
        content: &[u8],
        (mode, uid, gid): (u32, u32, u32),
        quarantine: &Path,
        missing_ok: bool,
    ) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt as _;
        let stamp = super::clock::now_ms();
        let name = OsStr::from_bytes(self.name.as_bytes());
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".confgate-restore-{stamp}"));
        let tmp = tmp.as_os_str();
        let write_tmp = || -> io::Result<()> {
            let fd = openat(
                &self.dir,
                tmp,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            )
            .map_err(nix_err)?;
            let mut f = File::from(fd);
            f.write_all(content)?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        };
        let keep = || -> io::Result<PathBuf> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(quarantine)?;
            let qdir = nix::fcntl::open(quarantine, DIR, Mode::empty()).map_err(nix_err)?;
            let mut q = OsString::from(format!("{stamp}-"));
            q.push(name);
            let dst = quarantine.join(&q);
            match linkat(
                &self.dir,
                self.name.as_c_str(),
                &qdir,
                q.as_os_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => Ok(dst),
                Err(nix::Error::EXDEV) => {
                    if let Ok(mut from) = self.open(OFlag::O_RDONLY, 0)
                        && from.metadata()?.is_file()
                    {
                        let to = openat(
                            &qdir,
                            q.as_os_str(),
                            OFlag::O_WRONLY
                                | OFlag::O_CREAT
                                | OFlag::O_EXCL
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o600),
                        )
                        .map_err(nix_err)?;
                        io::copy(&mut from, &mut File::from(to))?;
                    }
                    Ok(dst)
                }
                Err(nix::Error::ENOENT) if missing_ok => Ok(dst),
                Err(e) => Err(nix_err(e)),
            }
        };
        let done = write_tmp().and_then(|()| keep()).and_then(|kept| {
            renameat(&self.dir, tmp, &self.dir, self.name.as_c_str())
                .map(|()| kept)
                .map_err(nix_err)
        });
        if done.is_err() {
            let _ = unlinkat(&self.dir, tmp, UnlinkatFlags::NoRemoveDir);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_directory_on_the_way_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("conf")).unwrap();
        let q = d.path().join("q");
        // Through the symlinked directory: refused, nothing written elsewhere.
        let e = Beneath::new(&root, &root.join("conf/x"), true).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A symlink as the last component is replaced, never followed.
        std::os::unix::fs::symlink(elsewhere.join("y"), root.join("real/y")).unwrap();
        let b = Beneath::new(&root, &root.join("real/y"), false).unwrap();
        assert!(b.open(OFlag::O_WRONLY, 0).is_err());
        let kept = b
            .replace_keeping(b"new\n", (0o640, 0, 0), &q, false)
            .unwrap();
        assert_eq!(std::fs::read(root.join("real/y")).unwrap(), b"new\n");
        assert!(std::fs::symlink_metadata(&kept).unwrap().is_symlink());
        assert!(!elsewhere.join("y").exists());
        // Missing directories are made with `create`, not without.
        assert!(Beneath::new(&root, &root.join("a/b/c"), false).is_err());
        let b = Beneath::new(&root, &root.join("a/b/c"), true).unwrap();
        b.open(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o600)
            .unwrap();
        assert!(root.join("a/b/c").is_file());
        // `..` and paths outside the root are refused.
        assert!(Beneath::new(&root, &root.join("real/../../elsewhere/z"), true).is_err());
        assert!(Beneath::new(&root, &elsewhere.join("z"), true).is_err());
        assert!(Beneath::new(&root, &root, true).is_err());
    }
}
