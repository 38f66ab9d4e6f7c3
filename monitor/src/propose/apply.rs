//! Reading a proposed file as it is now and writing an approved proposal, on descriptors:
//! every directory of the path is opened without following symlinks (a symlinked
//! directory or file is refused, never followed), the new content is written to a
//! temporary file beside the target (created new, the target's mode and owner, synced)
//! and swapped in with one `renameat2`: `RENAME_EXCHANGE` over an existing file, whose
//! replaced content is hashed once more after the swap (a write that slipped in between
//! the check and the swap is detected and swapped back), `RENAME_NOREPLACE` for a new
//! file. The path never has a moment with nothing there.
use std::ffi::{CStr, CString};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;

use sha2::{Digest as _, Sha256};

use crate::gate::preimage::hex;
use crate::os::beneath::Beneath;
use crate::os::fs::{fstat, fstatat_nofollow, is_reg};

/// Most bytes of the current file read into memory for the approver's diff (a larger
/// file is hashed only).
pub const MAX_DIFF_SOURCE: u64 = 4 * 1024 * 1024;

/// Mode and owner of a file the proposal creates.
pub const NEW_FILE_MODE: u32 = 0o644;

/// Why a proposal cannot be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The path is not one a proposal can name (relative, `.`/`..`, empty components).
    #[error("{0}")]
    BadPath(String),
    /// Something on the path is a symlink, not a directory, or missing.
    #[error("{0}")]
    Refused(String),
    /// The file is not what the proposal was made against.
    #[error("{0}")]
    Conflict(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ApplyError {
    move |source| ApplyError::Io { what, source }
}

/// The file at a proposal's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Current {
    Absent,
    File {
        sha256: String,
        /// The content, when at most [`MAX_DIFF_SOURCE`] bytes.
        content: Option<Vec<u8>>,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
    },
}

impl Current {
    /// The hash a proposal is made against (`None`: no file).
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Current::Absent => None,
            Current::File { sha256, .. } => Some(sha256),
        }
    }
}

/// The directory holding `path` (opened component by component without following
/// symlinks, [`Beneath`]) and the last component.
fn parent_of(path: &[u8]) -> Result<Beneath, ApplyError> {
    let bad =
        |why: &str| ApplyError::BadPath(format!("{why}: {}", crate::event::escape::encode(path)));
    if path.first() != Some(&b'/') {
        return Err(bad("not an absolute path"));
    }
    if path.contains(&0) {
        return Err(bad("the path holds a NUL byte"));
    }
    let parts: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(bad(
            "the path must be normalized (no empty, `.` or `..` components, no trailing `/`)",
        ));
    }
    let os_path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    Beneath::new(std::path::Path::new("/"), os_path, false).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => ApplyError::Refused(format!(
            "{}: a directory on the path is a symbolic link or not a directory (proposals never follow links)",
            crate::event::escape::encode(path)
        )),
        Some(libc::ENOENT) => ApplyError::Refused(format!(
            "{}: its directory does not exist (a proposal writes one file, it makes no directories)",
            crate::event::escape::encode(path)
        )),
        _ => ApplyError::Io {
            what: "opening a directory of the path",
            source: e,
        },
    })
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid dirfd and NUL-terminated name; the rest are integers.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn renameat2(dir: BorrowedFd<'_>, from: &CStr, to: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated names; the rest are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the entry `name` of `dir`: absent, or a regular file (anything else refused).
fn read_at(dir: BorrowedFd<'_>, name: &CStr, shown: &[u8]) -> Result<Current, ApplyError> {
    match fstatat_nofollow(dir, name) {
        Ok(st) if is_reg(&st) => {}
        Ok(_) => {
            return Err(ApplyError::Refused(format!(
                "{}: not a regular file (a symbolic link, directory or device is never replaced by a proposal)",
                crate::event::escape::encode(shown)
            )));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Current::Absent),
        Err(e) => return Err(io_err("inspecting the file")(e)),
    }
    let fd = openat(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(io_err("opening the file"))?;
    let st = fstat(fd.as_fd()).map_err(io_err("inspecting the file"))?;
    if !is_reg(&st) {
        return Err(ApplyError::Refused(format!(
            "{}: not a regular file",
            crate::event::escape::encode(shown)
        )));
    }
    let mut f = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut keep = true;
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading the file"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if keep {
            if size > MAX_DIFF_SOURCE {
                keep = false;
                kept = Vec::new();
            } else {
                kept.extend_from_slice(&buf[..n]);
            }
        }
    }
    Ok(Current::File {
        sha256: hex(&hasher.finalize().into()),
        content: keep.then_some(kept),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
    })
}

/// The file at `path` now (its directories walked without following links).
pub fn current(path: &[u8]) -> Result<Current, ApplyError> {
    let at = parent_of(path)?;
    read_at(at.dir(), at.name(), path)
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Whether the file was created.
    pub created: bool,
    /// The file already held the proposed content (applied before a restart): nothing
    /// written.
    pub already: bool,
}

fn mismatch(path: &[u8], base: Option<&str>, now: &Current) -> String {
    let p = crate::event::escape::encode(path);
    match (base, now.sha256()) {
        (None, Some(h)) => format!("{p} was created since the proposal (sha256 {h})"),
        (Some(b), None) => format!("{p} was removed since the proposal (it was sha256 {b})"),
        (Some(b), Some(h)) => {
            format!("{p} changed since the proposal: sha256 {h}, the proposal was made against {b}")
        }
        (None, None) => format!("{p}: no change"),
    }
}

/// Writes `content` at `path` if the file is still what the proposal was made against
/// (`base`: its sha256, `None`: no file), keeping its mode and owner (a new file:
/// [`NEW_FILE_MODE`], root). `tag` names the temporary file.
pub fn apply(
    path: &[u8],
    content: &[u8],
    base: Option<&str>,
    tag: u64,
) -> Result<Applied, ApplyError> {
    let at = parent_of(path)?;
    let (dir, name) = (at.dir(), at.name());
    let now = read_at(dir, name, path)?;
    let proposed = hex(&Sha256::digest(content).into());
    if now.sha256() == Some(proposed.as_str()) && base != Some(proposed.as_str()) {
        let Current::File { mode, uid, gid, .. } = now else {
            return Err(ApplyError::Conflict(mismatch(path, base, &now)));
        };
        return Ok(Applied {
            mode,
            uid,
            gid,
            created: false,
            already: true,
        });
    }
    if now.sha256() != base {
        return Err(ApplyError::Conflict(mismatch(path, base, &now)));
    }
    let (mode, uid, gid) = match &now {
        Current::File { mode, uid, gid, .. } => (*mode, *uid, *gid),
        Current::Absent => (NEW_FILE_MODE, 0, 0),
    };
    let mut tmp_bytes = b".".to_vec();
    tmp_bytes.extend_from_slice(name.to_bytes());
    tmp_bytes.extend_from_slice(format!(".confgate-proposal-{tag}").as_bytes());
    // A name too long for the directory gets a short one.
    if tmp_bytes.len() > 255 {
        tmp_bytes = format!(".confgate-proposal-{tag}").into_bytes();
    }
    let tmp = CString::new(tmp_bytes).map_err(|_| ApplyError::BadPath("temporary name".into()))?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let fd = match openat(dir, &tmp, flags, 0o600) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Left by a crash while this very proposal was applied.
            unlinkat(dir, &tmp).map_err(io_err("removing a stale temporary file"))?;
            openat(dir, &tmp, flags, 0o600)
        }
        r => r,
    }
    .map_err(io_err("creating the temporary file"))?;
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::File::from(fd);
        f.write_all(content)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        // SAFETY: valid descriptor; mode is an integer.
        if unsafe { libc::fchmod(f.as_raw_fd(), mode) } < 0 {
            return Err(io::Error::last_os_error());
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = unlinkat(dir, &tmp);
        return Err(io_err("writing the temporary file")(e));
    }
    let swapped = match &now {
        Current::Absent => renameat2(dir, &tmp, name, libc::RENAME_NOREPLACE).map_err(|e| {
            let _ = unlinkat(dir, &tmp);
            if e.raw_os_error() == Some(libc::EEXIST) {
                ApplyError::Conflict(format!(
                    "{} was created while the proposal was applied",
                    crate::event::escape::encode(path)
                ))
            } else {
                io_err("renaming the new file into place")(e)
            }
        }),
        Current::File { .. } => swap_checked(dir, &tmp, name, path, base),
    };
    swapped?;
    // The rename itself on disk.
    // SAFETY: valid descriptor.
    if unsafe { libc::fsync(dir.as_raw_fd()) } < 0 {
        tracing::warn!(path = %crate::event::escape::encode(path), error = %io::Error::last_os_error(), "cannot sync the directory after applying a proposal");
    }
    Ok(Applied {
        mode,
        uid,
        gid,
        created: matches!(now, Current::Absent),
        already: false,
    })
}

/// Exchanges `tmp` (the new content) with `name`, then checks that what was swapped out
/// is still `base`; if a write slipped in meanwhile, swaps back (conflict). The old file
/// is removed.
fn swap_checked(
    dir: BorrowedFd<'_>,
    tmp: &CStr,
    name: &CStr,
    path: &[u8],
    base: Option<&str>,
) -> Result<(), ApplyError> {
    if let Err(e) = renameat2(dir, tmp, name, libc::RENAME_EXCHANGE) {
        if e.raw_os_error() != Some(libc::EINVAL) {
            let _ = unlinkat(dir, tmp);
            return Err(io_err("exchanging the new file into place")(e));
        }
        // A filesystem without RENAME_EXCHANGE: check once more, then rename over.
        let again = read_at(dir, name, path)?;
        if again.sha256() != base {
            let _ = unlinkat(dir, tmp);
            return Err(ApplyError::Conflict(mismatch(path, base, &again)));
        }
        return renameat2(dir, tmp, name, 0).map_err(|e| {
            let _ = unlinkat(dir, tmp);
            io_err("renaming the new file into place")(e)
        });
    }
    let old = read_at(dir, tmp, path);
    match old {
        Ok(old) if old.sha256() == base => {
            if let Err(e) = unlinkat(dir, tmp) {
                tracing::warn!(error = %e, "cannot remove the file a proposal replaced");
            }
            Ok(())
        }
        other => {
            // Put the file back as it was (with the late write) and drop the new one.
            let why = match &other {
                Ok(o) => mismatch(path, base, o),
                Err(e) => e.to_string(),
            };
            renameat2(dir, tmp, name, libc::RENAME_EXCHANGE)
                .map_err(io_err("swapping back a file changed while it was replaced"))?;
            let _ = unlinkat(dir, tmp);
            Err(ApplyError::Conflict(format!(
                "{why} (changed while the proposal was applied; left as it was)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn b(p: &std::path::Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    #[test]
    fn applies_over_an_existing_file_keeping_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&f, Some(1), Some(2)).ok();
        let before = std::fs::metadata(&f).unwrap();
        let cur = current(&b(&f)).unwrap();
        let base = cur.sha256().unwrap().to_owned();
        let a = apply(&b(&f), b"a=2\n", Some(&base), 7).unwrap();
        assert!(!a.created && !a.already);
        assert_eq!(std::fs::read(&f).unwrap(), b"a=2\n");
        let after = std::fs::metadata(&f).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_ne!(after.ino(), before.ino(), "a new file renamed over it");
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Applied again (a decision delivered twice): nothing to do.
        let again = apply(&b(&f), b"a=2\n", Some(&base), 7).unwrap();
        assert!(again.already);
    }

    #[test]
    fn a_changed_file_is_a_conflict_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        let base = current(&b(&f)).unwrap().sha256().unwrap().to_owned();
        std::fs::write(&f, "a=3\n").unwrap();
        let e = apply(&b(&f), b"a=2\n", Some(&base), 1).unwrap_err();
        assert!(matches!(e, ApplyError::Conflict(_)), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"a=3\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Proposed against "no file", but one was created.
        let e = apply(&b(&f), b"x\n", None, 2).unwrap_err();
        assert!(e.to_string().contains("created since"), "{e}");
        // Proposed against a file that was removed since.
        std::fs::remove_file(&f).unwrap();
        let e = apply(&b(&f), b"x\n", Some(&base), 3).unwrap_err();
        assert!(e.to_string().contains("removed since"), "{e}");
        assert!(!f.exists());
    }

    #[test]
    fn creates_a_new_file_0644() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("new.conf");
        assert_eq!(current(&b(&f)).unwrap(), Current::Absent);
        let a = apply(&b(&f), b"n=1\n", None, 4).unwrap();
        assert!(a.created);
        assert_eq!(std::fs::read(&f).unwrap(), b"n=1\n");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn links_and_odd_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("x"), "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = current(&b(&link.join("x"))).unwrap_err();
        assert!(matches!(e, ApplyError::Refused(_)), "{e}");
        let flink = dir.path().join("flink");
        std::os::unix::fs::symlink(real.join("x"), &flink).unwrap();
        let e = apply(&b(&flink), b"y", None, 1).unwrap_err();
        assert!(matches!(e, ApplyError::Refused(_)), "{e}");
        assert_eq!(std::fs::read(real.join("x")).unwrap(), b"x");
        for p in ["relative", "/a/../b", "/a//b", "/a/./b", "/a/"] {
            assert!(
                matches!(current(p.as_bytes()), Err(ApplyError::BadPath(_))),
                "{p}"
            );
        }
        let e = current(&b(&dir.path().join("missing/x"))).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = current(&b(&real)).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
