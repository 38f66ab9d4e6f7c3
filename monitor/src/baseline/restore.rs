//! Putting a path back to its baseline: content, mode and owner restored in place (same
//! inode where a regular file is there: truncate and write, then fsync), a deleted file or
//! symlink recreated, a created one removed.
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nix::fcntl::OFlag;
use serde::Serialize;

use super::{Baseline, BaselineError, Entry, FileKind, io_err, read_live, same_state};
use crate::event::escape::encode;
use crate::os::beneath::Beneath;

/// What a restore did.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Restored {
    /// Content, mode and owner written back in place (same inode).
    Restored,
    /// Only mode and owner were put back (content matched).
    Metadata,
    /// The path was missing (or of another kind) and was made again.
    Recreated,
    /// The path is not in the baseline (created since): removed.
    Removed,
    /// Nothing to do.
    Unchanged,
}

/// Puts `path` back to its baseline. A path outside the baseline's roots is refused
/// ([`BaselineError::NotInScope`]); a file kept by hash only cannot be restored
/// ([`BaselineError::NoContent`]) unless only its mode or owner differ.
pub fn restore(b: &Baseline, path: &[u8]) -> Result<Restored, BaselineError> {
    if !b.in_scope(path) {
        return Err(BaselineError::NotInScope(encode(path)));
    }
    let want = b.get(path)?;
    restore_to(b, path, want)
}

/// Puts `path` in the state `want` (`None`: no file there), its content from the object
/// store, as [`restore`] does for the baseline's state.
pub fn restore_to(
    b: &Baseline,
    path: &[u8],
    want: Option<Entry>,
) -> Result<Restored, BaselineError> {
    let live = read_live(path, 0)?;
    let Some(want) = want else {
        // Created since the baseline: removed (never a directory).
        return match live {
            None => Ok(Restored::Unchanged),
            Some(_) => {
                beneath(b, path, false)?.unlink().map_err(io_err(path))?;
                Ok(Restored::Removed)
            }
        };
    };
    let live = live.map(|l| l.entry);
    if same_state(Some(&want), live.as_ref()) {
        return Ok(Restored::Unchanged);
    }
    match want.kind {
        FileKind::Symlink => {
            let target = want.target.clone().unwrap_or_default();
            let at = beneath(b, path, true)?;
            if live.is_some() {
                at.unlink().map_err(io_err(path))?;
            }
            at.symlink(OsStr::from_bytes(&target), want.uid, want.gid)
                .map_err(io_err(path))?;
            Ok(Restored::Recreated)
        }
        FileKind::File => restore_file(b, path, &want, live.as_ref()),
    }
}

/// The entry `path` reached from its baseline root without following a symlink on the
/// way (a directory replaced by a symlink must not redirect a restore made as root);
/// `create`: missing directories are made again.
fn beneath(b: &Baseline, path: &[u8], create: bool) -> Result<Beneath, BaselineError> {
    let p = Path::new(OsStr::from_bytes(path));
    let root = b
        .roots()
        .iter()
        .filter(|r| p.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())
        .ok_or_else(|| BaselineError::NotInScope(encode(path)))?;
    Beneath::new(root, p, create).map_err(io_err(path))
}

fn restore_file(
    b: &Baseline,
    path: &[u8],
    want: &Entry,
    live: Option<&Entry>,
) -> Result<Restored, BaselineError> {
    let in_place = live.is_some_and(|l| l.kind == FileKind::File);
    let content_ok = in_place && live.is_some_and(|l| l.sha256 == want.sha256);
    let content = if content_ok {
        None
    } else {
        b.content(path, want)?
    };
    let at = beneath(b, path, !in_place)?;
    if live.is_some() && !in_place {
        // A symlink where a file was: it goes (never followed), the file comes back.
        at.unlink().map_err(io_err(path))?;
    }
    // O_NOFOLLOW (always, in `Beneath::open`): a symlink planted at the path must not
    // redirect the restore.
    let flags = if in_place {
        OFlag::O_WRONLY
    } else {
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL
    };
    let mut f = at.open(flags, want.mode).map_err(io_err(path))?;
    if let Some(c) = content.as_deref() {
        f.set_len(0).map_err(io_err(path))?;
        f.write_all(c).map_err(io_err(path))?;
    }
    std::os::unix::fs::fchown(&f, Some(want.uid), Some(want.gid)).map_err(io_err(path))?;
    f.set_permissions(std::fs::Permissions::from_mode(want.mode))
        .map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(match (in_place, content.is_some()) {
        (false, _) => Restored::Recreated,
        (true, true) => Restored::Restored,
        (true, false) => Restored::Metadata,
    })
}

/// Puts the baseline of `path` back by *replacing* what is there (a file renamed over
/// it): the content is written to a new file beside it and renamed over the path, so the
/// path never has no file. What was there is kept in `quarantine` first (hard link, or a
/// copy across filesystems); its new name is returned.
pub fn restore_replacing(
    b: &Baseline,
    path: &[u8],
    quarantine: &Path,
) -> Result<std::path::PathBuf, BaselineError> {
    let Some(want) = b.get(path)? else {
        return Err(BaselineError::NotInScope(encode(path)));
    };
    if want.kind != FileKind::File {
        return Err(BaselineError::NoContent(encode(path)));
    }
    let Some(content) = b.content(path, &want)? else {
        return Err(BaselineError::NoContent(encode(path)));
    };
    beneath(b, path, true)?
        .replace_keeping(&content, (want.mode, want.uid, want.gid), quarantine, true)
        .map_err(io_err(path))
}
