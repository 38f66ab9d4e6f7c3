//! Putting a path back to its baseline: content, mode and owner restored in place (same
//! inode where a regular file is there: truncate and write, then fsync), a deleted file or
//! symlink recreated, a created one removed.
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use serde::Serialize;

use super::{Baseline, BaselineError, Entry, FileKind, io_err, read_live, same_state};
use crate::event::escape::encode;

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
    let p = Path::new(OsStr::from_bytes(path));
    let Some(want) = want else {
        // Created since the baseline: removed (never a directory).
        return match live {
            None => Ok(Restored::Unchanged),
            Some(_) => {
                std::fs::remove_file(p).map_err(io_err(path))?;
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
            if live.is_some() {
                std::fs::remove_file(p).map_err(io_err(path))?;
            }
            make_parents(p, path)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), p).map_err(io_err(path))?;
            std::os::unix::fs::lchown(p, Some(want.uid), Some(want.gid)).map_err(io_err(path))?;
            Ok(Restored::Recreated)
        }
        FileKind::File => restore_file(b, path, &want, live.as_ref()),
    }
}

fn make_parents(p: &Path, path: &[u8]) -> Result<(), BaselineError> {
    if let Some(dir) = p.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err(path))?;
    }
    Ok(())
}

fn restore_file(
    b: &Baseline,
    path: &[u8],
    want: &Entry,
    live: Option<&Entry>,
) -> Result<Restored, BaselineError> {
    let p = Path::new(OsStr::from_bytes(path));
    let in_place = live.is_some_and(|l| l.kind == FileKind::File);
    let content_ok = in_place && live.is_some_and(|l| l.sha256 == want.sha256);
    let content = if content_ok {
        None
    } else {
        b.content(path, want)?
    };
    if live.is_some() && !in_place {
        // A symlink where a file was: it goes (never followed), the file comes back.
        std::fs::remove_file(p).map_err(io_err(path))?;
    }
    if !in_place {
        make_parents(p, path)?;
    }
    // O_NOFOLLOW: a symlink planted at the path must not redirect the restore.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(!in_place)
        .create_new(!in_place)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(want.mode)
        .open(p)
        .map_err(io_err(path))?;
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
    let p = Path::new(OsStr::from_bytes(path));
    crate::os::fs::replace_keeping(
        p,
        &content,
        (want.mode, want.uid, want.gid),
        quarantine,
        true,
    )
    .map_err(io_err(path))
}
