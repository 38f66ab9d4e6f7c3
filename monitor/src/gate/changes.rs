//! Changes made through the gate: the pre-image kept before a gated write was allowed, the
//! diff recorded after it, and the revert to the pre-image when no approval covers the
//! change any more.
//!
//! Pre-images live in the daemon's store (they must survive a restart to be reverted at a
//! grant's expiry): the record in [`CHANGES`], the content in the blob table [`PREIMAGES`]
//! under the same id.
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

use crate::event::escape::encode;
use crate::event::excerpt::Masker;
use crate::gate::preimage::{PreImage, hex};
use crate::ledger::canonical::sha256_hex;
use crate::os::beneath::Beneath;
use crate::store::{BlobTable, RecordTable, Store, StoreError, WriteTx};

pub const CHANGES: RecordTable<Change> = RecordTable::new("gate_changes");
pub const PREIMAGES: BlobTable = BlobTable::new("gate_preimages");
/// What the file was after the last close-write attributed to the change's grant (its
/// "post-image"), by change id: the revert undoes only the edit from pre- to post-image.
pub const POSTIMAGES: BlobTable = BlobTable::new("gate_postimages");
const CHANGE_IDS: &str = "gate_change";
/// Longest diff kept in a ledger record, in bytes; longer diffs are cut and say so.
pub const MAX_DIFF_BYTES: usize = 64 * 1024;
/// Most lines of a diff kept in the ledger.
pub const MAX_DIFF_LINES: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: the pre-image content was not kept (the file was larger than gate.max_preimage_bytes)"
    )]
    NoContent { path: String },
    /// Later changes by others touch what this change wrote: reverting it would undo
    /// them too. Flagged instead.
    #[error("{path}: not reverted: {why}")]
    Conflict { path: String, why: String },
}

/// One gated file change: what the file was before the first write that the gate let
/// through under a grant (or by a failure verdict).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub id: u64,
    /// Grant that allowed it (0: allowed by a failure verdict, nobody approved it).
    pub grant_id: u64,
    /// Raw path bytes (paths need not be UTF-8).
    pub path: Vec<u8>,
    pub session_id: u64,
    /// False when the gated open created the file.
    pub existed: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Hex SHA-256 of the pre-image content.
    pub sha256: String,
    /// Whether the content is in [`PREIMAGES`] (false when larger than the limit).
    pub content_kept: bool,
    pub created_unix_ms: i64,
    /// Device and inode of the file the gated open wrote (0 in records kept before they
    /// were recorded): an approved temp file renamed onto its final name is recognised by
    /// them.
    #[serde(default)]
    pub dev: u64,
    #[serde(default)]
    pub ino: u64,
    /// Why this change cannot be reverted even with `on_expiry = "revert"` (it is flagged
    /// instead), e.g. an approved temp file renamed over a file whose content was not kept.
    #[serde(default)]
    pub unrevertable: Option<String>,
}

impl Change {
    pub fn path_text(&self) -> String {
        encode(&self.path)
    }
}

/// Keeps `pre` as the pre-image of `path` under `grant_id` (durably, before the write is
/// allowed).
pub fn record(
    store: &Store,
    pre: &PreImage,
    path: &[u8],
    grant_id: u64,
    session_id: u64,
    existed: bool,
) -> Result<Change, ChangeError> {
    let change = store.write(|tx| record_in(tx, pre, path, grant_id, session_id, existed))?;
    Ok(change)
}

/// [`record`] inside the caller's transaction (e.g. the one that stores the grant).
pub fn record_in(
    tx: &WriteTx<'_>,
    pre: &PreImage,
    path: &[u8],
    grant_id: u64,
    session_id: u64,
    existed: bool,
) -> Result<Change, StoreError> {
    let meta = Kept {
        mode: pre.mode,
        uid: pre.uid,
        gid: pre.gid,
        size: pre.size,
        sha256: hex(&pre.sha256),
        dev: pre.dev,
        ino: pre.ino,
    };
    record_kept_in(
        tx,
        &meta,
        pre.content.as_deref(),
        path,
        grant_id,
        session_id,
        existed,
    )
}

/// What is known of a file's earlier state besides its content.
#[derive(Clone, Debug)]
pub struct Kept {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub dev: u64,
    pub ino: u64,
}

/// Records a change from what was kept of a file elsewhere (e.g. with an undecided
/// request), with its content when it was kept.
pub fn record_kept_in(
    tx: &WriteTx<'_>,
    kept: &Kept,
    content: Option<&[u8]>,
    path: &[u8],
    grant_id: u64,
    session_id: u64,
    existed: bool,
) -> Result<Change, StoreError> {
    let id = tx.next_id(CHANGE_IDS)?;
    let change = Change {
        id,
        grant_id,
        path: path.to_vec(),
        session_id,
        existed,
        mode: kept.mode,
        uid: kept.uid,
        gid: kept.gid,
        size: kept.size,
        sha256: kept.sha256.clone(),
        content_kept: content.is_some(),
        created_unix_ms: crate::os::clock::now_ms(),
        dev: kept.dev,
        ino: kept.ino,
        unrevertable: None,
    };
    if let Some(content) = content {
        tx.put_blob(PREIMAGES, id, content)?;
    }
    tx.put(CHANGES, id, &change)?;
    Ok(change)
}

/// Forgets a change once it has been settled (flagged or reverted).
pub fn forget(store: &Store, id: u64) -> Result<(), ChangeError> {
    store.write(|tx| {
        tx.remove(CHANGES, id)?;
        tx.remove_blob(PREIMAGES, id)?;
        tx.remove_blob(POSTIMAGES, id)?;
        Ok(())
    })?;
    Ok(())
}

/// What the file looks like now compared with its pre-image.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Diff {
    pub path: String,
    pub before_sha256: String,
    /// Empty when the file is gone.
    pub after_sha256: String,
    pub exists: bool,
    /// Unified diff (text files), possibly cut at [`MAX_DIFF_BYTES`].
    pub diff: Option<String>,
    pub truncated: bool,
    /// Either side is not text (NUL bytes or invalid UTF-8): only hashes are compared.
    pub binary: bool,
    /// The path's content is never shown (`gate.no_excerpt`): only hashes are compared.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
}

/// Diff of the file now against the change's pre-image.
pub fn diff(store: &Store, change: &Change, masker: &Masker) -> Result<Diff, ChangeError> {
    let now = read_now(change)?;
    let after_sha256 = now.as_deref().map(sha256_hex).unwrap_or_default();
    diff_with(store, change, now, after_sha256, masker)
}

/// [`diff`], or `None` when the file's content hash is still `recorded` (the after-hash of
/// the last diff recorded for this change): a file closed again without a new change
/// (repeated open/close, a write of the same bytes) adds nothing to the ledger.
pub fn diff_if_changed(
    store: &Store,
    change: &Change,
    recorded: Option<&str>,
    masker: &Masker,
) -> Result<Option<Diff>, ChangeError> {
    let now = read_now(change)?;
    let after_sha256 = now.as_deref().map(sha256_hex).unwrap_or_default();
    if recorded == Some(after_sha256.as_str()) {
        return Ok(None);
    }
    diff_with(store, change, now, after_sha256, masker).map(Some)
}

/// The file's content now (`None`: it is gone).
fn read_now(change: &Change) -> Result<Option<Vec<u8>>, ChangeError> {
    let path = Path::new(std::ffi::OsStr::from_bytes(&change.path));
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ChangeError::Io {
            path: change.path_text(),
            source,
        }),
    }
}

fn diff_with(
    store: &Store,
    change: &Change,
    now: Option<Vec<u8>>,
    after_sha256: String,
    masker: &Masker,
) -> Result<Diff, ChangeError> {
    let before = if change.content_kept {
        store.get_blob(PREIMAGES, change.id)?
    } else if !change.existed {
        Some(Vec::new())
    } else {
        None
    };
    let mut out = Diff {
        path: change.path_text(),
        before_sha256: change.sha256.clone(),
        after_sha256,
        exists: now.is_some(),
        diff: None,
        truncated: false,
        binary: false,
        withheld: false,
    };
    if let (Some(before), Some(after)) = (before.as_deref(), now.as_deref()) {
        if masker.withholds(&change.path) {
            out.withheld = true;
        } else if let Some(d) =
            masker.diff_within(&change.path, before, after, MAX_DIFF_LINES, MAX_DIFF_BYTES)
        {
            // Equal contents: no hunk, only the two header lines.
            out.diff = Some(if before == after {
                String::new()
            } else {
                d.text
            });
            out.truncated = d.truncated;
        } else {
            out.binary = true;
        }
    }
    Ok(out)
}

/// What a revert did.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reverted {
    /// Content, mode and owner restored.
    Restored,
    /// The gated open had created the file: removed.
    Removed,
    /// Nothing to do: the file already matches (or is already gone).
    Unchanged,
    /// Only this change's edit was undone; later edits by others were kept.
    ReverseApplied,
}

/// [`diff_if_changed`] for the close-write of the change's own grant: also keeps the
/// file's content as the change's post-image (what the grant's writer left), up to
/// `max_bytes`.
pub fn diff_own_close(
    store: &Store,
    change: &Change,
    recorded: Option<&str>,
    max_bytes: u64,
    masker: &Masker,
) -> Result<Option<Diff>, ChangeError> {
    // Another file renamed over the path since (its diff and revert are the rename
    // handler's): not what this grant's writer left.
    if change.dev != 0 && replaced(change) {
        return Ok(None);
    }
    let now = read_now(change)?;
    let after_sha256 = now.as_deref().map(sha256_hex).unwrap_or_default();
    if recorded == Some(after_sha256.as_str()) {
        return Ok(None);
    }
    match now.as_deref() {
        Some(b) if b.len() as u64 <= max_bytes => {
            store.write_lazy(|tx| tx.put_blob(POSTIMAGES, change.id, b))?
        }
        _ => {
            store.write_lazy(|tx| tx.remove_blob(POSTIMAGES, change.id).map(|_| ()))?;
        }
    }
    diff_with(store, change, now, after_sha256, masker).map(Some)
}

/// Whether another file (device and inode) than the one the change was kept for is at the
/// change's path now (a missing file is not "another").
fn replaced(change: &Change) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let path = Path::new(std::ffi::OsStr::from_bytes(&change.path));
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) != (change.dev, change.ino))
}

/// Reverts only what `change`'s grant did: when the file is still as the grant's writer
/// left it (its post-image, or no post-image was kept), the pre-image is restored in place
/// ([`revert`]); when others changed it since, the grant's edit is reverse-applied to the
/// file as it is now (text files), keeping their edits; when that is impossible (they
/// touched the same lines, a binary file, a file this grant created that others wrote to
/// since) it is a [`ChangeError::Conflict`] and nothing is written.
pub fn revert_own(store: &Store, change: &Change) -> Result<Reverted, ChangeError> {
    let conflict = |why: &str| ChangeError::Conflict {
        path: change.path_text(),
        why: why.to_owned(),
    };
    let Some(post) = store.get_blob(POSTIMAGES, change.id)? else {
        return revert(store, change);
    };
    let now = read_now(change)?;
    let Some(now) = now else {
        return Err(conflict("the file was removed after this change"));
    };
    if now == post {
        return revert(store, change);
    }
    if !change.existed {
        return Err(conflict(
            "this grant created the file and it was changed again since",
        ));
    }
    let pre = match change.content_kept {
        true => store.get_blob(PREIMAGES, change.id)?,
        false => None,
    };
    let Some(pre) = pre else {
        return Err(ChangeError::NoContent {
            path: change.path_text(),
        });
    };
    let (Ok(pre), Ok(post), Ok(now)) = (
        std::str::from_utf8(&pre),
        std::str::from_utf8(&post),
        std::str::from_utf8(&now),
    ) else {
        return Err(conflict(
            "the file was changed again since and is not text: only a whole-file revert is possible",
        ));
    };
    let merged = super::reverse::reverse_apply(pre, post, now)
        .map_err(|c| conflict(&format!("changed again since: {}", c.0)))?;
    let io = |source| ChangeError::Io {
        path: change.path_text(),
        source,
    };
    let mut f = beneath(change, false)
        .and_then(|at| at.open(OFlag::O_WRONLY | OFlag::O_TRUNC, 0))
        .map_err(io)?;
    f.write_all(merged.as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)?;
    Ok(Reverted::ReverseApplied)
}

/// Restores the change's pre-image in place (same inode, so hardlinks and marks stay):
/// content, mode and owner; a file the gated open created is removed.
pub fn revert(store: &Store, change: &Change) -> Result<Reverted, ChangeError> {
    let io = |source| ChangeError::Io {
        path: change.path_text(),
        source,
    };
    let path = Path::new(std::ffi::OsStr::from_bytes(&change.path));
    if !change.existed {
        return match beneath(change, false).and_then(|at| at.unlink()) {
            Ok(()) => Ok(Reverted::Removed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Reverted::Unchanged),
            Err(e) => Err(io(e)),
        };
    }
    let content = if change.content_kept {
        store.get_blob(PREIMAGES, change.id)?
    } else {
        None
    };
    let Some(content) = content else {
        return Err(ChangeError::NoContent {
            path: change.path_text(),
        });
    };
    if let Ok(now) = std::fs::read(path)
        && sha256_hex(&now) == change.sha256
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o7777 == change.mode & 0o7777
    {
        return Ok(Reverted::Unchanged);
    }
    // O_NOFOLLOW (in `Beneath::open`): a symlink planted at the path must not redirect
    // the restore, nor one on its directories (`beneath`).
    let mut f = beneath(change, true)
        .and_then(|at| {
            at.open(
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
                change.mode & 0o7777,
            )
        })
        .map_err(io)?;
    f.write_all(&content).map_err(io)?;
    f.sync_data().map_err(io)?;
    std::os::unix::fs::fchown(&f, Some(change.uid), Some(change.gid)).map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(change.mode & 0o7777))
        .map_err(io)?;
    Ok(Reverted::Restored)
}

/// Puts back what `change`'s path held before a file was renamed over it: the change's
/// post-image (what its grant's writer left, the newest approved content) when one is
/// kept, else its pre-image. It *replaces* whatever file is there now (a file renamed in, a
/// link): the content is written to a new file beside it and renamed over the path, so the
/// path never has no file. The file that was there is kept in
/// `quarantine` (hard-linked, or copied across filesystems) first; its new name is returned.
pub fn restore_replacing(
    store: &Store,
    change: &Change,
    quarantine: &Path,
) -> Result<std::path::PathBuf, ChangeError> {
    let io = |source| ChangeError::Io {
        path: change.path_text(),
        source,
    };
    let content = match store.get_blob(POSTIMAGES, change.id)? {
        Some(post) => Some(post),
        None if change.content_kept => store.get_blob(PREIMAGES, change.id)?,
        None => None,
    };
    let Some(content) = content else {
        return Err(ChangeError::NoContent {
            path: change.path_text(),
        });
    };
    beneath(change, true)
        .and_then(|at| {
            at.replace_keeping(
                &content,
                (change.mode & 0o7777, change.uid, change.gid),
                quarantine,
                false,
            )
        })
        .map_err(io)
}

/// The change's path reached from `/` without following a symlink on the way: the gate's
/// paths are canonical (reported by the kernel or resolved by the supervisor), so a
/// symlink in their directories now was planted since and must not redirect a revert
/// made as root.
fn beneath(change: &Change, create: bool) -> std::io::Result<Beneath> {
    Beneath::new(
        Path::new("/"),
        Path::new(std::ffi::OsStr::from_bytes(&change.path)),
        create,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn pre(content: &[u8], mode: u32) -> PreImage {
        use sha2::Digest as _;
        PreImage {
            content: Some(content.to_vec()),
            size: content.len() as u64,
            sha256: sha2::Sha256::digest(content).into(),
            mode,
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
            ctime: std::time::UNIX_EPOCH,
        }
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        (dir, store)
    }

    /// Keeps `content` (mode 0o100644) as the pre-image of `f` under grant 1, session 1.
    fn keep(store: &Store, f: &Path, content: &[u8], existed: bool) -> Change {
        record(
            store,
            &pre(content, 0o100644),
            f.as_os_str().as_bytes(),
            1,
            1,
            existed,
        )
        .unwrap()
    }

    #[test]
    fn revert_own_undoes_only_this_grants_edit() {
        let (dir, store) = setup();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, b"base=0\n").unwrap();
        let a = keep(&store, &f, b"base=0\n", true);
        std::fs::write(&f, b"base=0\na=1\n").unwrap();
        diff_own_close(&store, &a, None, 1 << 20, &Masker::default())
            .unwrap()
            .unwrap();
        // Someone else's approved change after it.
        std::fs::write(&f, b"base=0\na=1\nb=1\n").unwrap();
        assert_eq!(revert_own(&store, &a).unwrap(), Reverted::ReverseApplied);
        assert_eq!(std::fs::read(&f).unwrap(), b"base=0\nb=1\n");
    }

    #[test]
    fn revert_own_flags_a_conflict_and_writes_nothing() {
        let (dir, store) = setup();
        let f = dir.path().join("app.conf");
        let a = keep(&store, &f, b"pool=10\n", true);
        std::fs::write(&f, b"pool=50\n").unwrap();
        diff_own_close(&store, &a, None, 1 << 20, &Masker::default())
            .unwrap()
            .unwrap();
        std::fs::write(&f, b"pool=80\n").unwrap();
        assert!(matches!(
            revert_own(&store, &a),
            Err(ChangeError::Conflict { .. })
        ));
        assert_eq!(std::fs::read(&f).unwrap(), b"pool=80\n");
        // Still as its writer left it: a whole revert.
        std::fs::write(&f, b"pool=50\n").unwrap();
        assert_eq!(revert_own(&store, &a).unwrap(), Reverted::Restored);
        assert_eq!(std::fs::read(&f).unwrap(), b"pool=10\n");
    }

    #[test]
    fn restore_replacing_keeps_the_renamed_in_file_and_never_leaves_the_path_empty() {
        let (dir, store) = setup();
        let f = dir.path().join("app.conf");
        let c = keep(&store, &f, b"pool=10\n", true);
        // A different file renamed over the path.
        std::fs::write(dir.path().join("new"), b"pool=999\n").unwrap();
        std::fs::rename(dir.path().join("new"), &f).unwrap();
        let q = dir.path().join("quarantine");
        let kept = restore_replacing(&store, &c, &q).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"pool=10\n");
        assert_eq!(std::fs::read(&kept).unwrap(), b"pool=999\n");
        assert!(kept.starts_with(&q));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("confgate-restore")),
            "{names:?}"
        );
    }

    #[test]
    fn restore_replacing_without_content_touches_nothing() {
        let (dir, store) = setup();
        let f = dir.path().join("big.conf");
        let mut p = pre(b"x", 0o100644);
        p.content = None;
        let c = record(&store, &p, f.as_os_str().as_bytes(), 1, 1, true).unwrap();
        std::fs::write(&f, b"renamed in").unwrap();
        let q = dir.path().join("quarantine");
        assert!(matches!(
            restore_replacing(&store, &c, &q),
            Err(ChangeError::NoContent { .. })
        ));
        assert_eq!(std::fs::read(&f).unwrap(), b"renamed in");
        assert!(!q.exists());
    }

    #[test]
    fn revert_restores_content_mode_and_keeps_the_inode() {
        let (dir, store) = setup();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, b"pool=10\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let ino = std::fs::metadata(&f).unwrap().ino();
        let c = record(
            &store,
            &pre(b"pool=10\n", 0o100640),
            f.as_os_str().as_bytes(),
            7,
            1,
            true,
        )
        .unwrap();
        std::fs::write(&f, b"pool=500\ndebug=true\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();

        let d = diff(&store, &c, &Masker::default()).unwrap();
        let text = d.diff.unwrap();
        assert!(
            text.contains("-pool=10") && text.contains("+debug=true"),
            "{text}"
        );
        assert_ne!(d.before_sha256, d.after_sha256);

        assert_eq!(revert(&store, &c).unwrap(), Reverted::Restored);
        assert_eq!(std::fs::read(&f).unwrap(), b"pool=10\n");
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.ino(), ino);
        assert_eq!(revert(&store, &c).unwrap(), Reverted::Unchanged);
    }

    #[test]
    fn revert_of_a_created_file_removes_it() {
        let (dir, store) = setup();
        let f = dir.path().join("new.conf");
        std::fs::write(&f, b"x").unwrap();
        let c = keep(&store, &f, b"", false);
        assert_eq!(revert(&store, &c).unwrap(), Reverted::Removed);
        assert!(!f.exists());
        assert_eq!(revert(&store, &c).unwrap(), Reverted::Unchanged);
    }

    #[test]
    fn oversized_preimage_cannot_be_reverted_and_says_why() {
        let (dir, store) = setup();
        let f = dir.path().join("big");
        std::fs::write(&f, b"y").unwrap();
        let mut p = pre(b"x", 0o100644);
        p.content = None;
        let c = record(&store, &p, f.as_os_str().as_bytes(), 1, 1, true).unwrap();
        assert!(matches!(
            revert(&store, &c),
            Err(ChangeError::NoContent { .. })
        ));
        assert!(diff(&store, &c, &Masker::default()).unwrap().diff.is_none());
    }

    #[test]
    fn a_close_without_a_new_change_records_no_second_diff() {
        let (dir, store) = setup();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, b"a=1\n").unwrap();
        let c = keep(&store, &f, b"a=1\n", true);
        std::fs::write(&f, b"a=2\n").unwrap();
        let first = diff_if_changed(&store, &c, None, &Masker::default())
            .unwrap()
            .unwrap();
        assert!(first.diff.as_deref().unwrap().contains("+a=2"));
        // Closed again with the same content: nothing new.
        let again =
            diff_if_changed(&store, &c, Some(&first.after_sha256), &Masker::default()).unwrap();
        assert!(again.is_none());
        // Changed again: a new diff, still against the pre-image.
        std::fs::write(&f, b"a=3\n").unwrap();
        let third = diff_if_changed(&store, &c, Some(&first.after_sha256), &Masker::default())
            .unwrap()
            .unwrap();
        assert!(third.diff.as_deref().unwrap().contains("-a=1"));
        assert_ne!(third.after_sha256, first.after_sha256);
        // Removed: recorded as gone.
        std::fs::remove_file(&f).unwrap();
        let gone = diff_if_changed(&store, &c, Some(&third.after_sha256), &Masker::default())
            .unwrap()
            .unwrap();
        assert!(!gone.exists);
    }

    #[test]
    fn binary_content_is_compared_by_hash_only() {
        let (dir, store) = setup();
        let f = dir.path().join("bin");
        std::fs::write(&f, b"\0\x01").unwrap();
        let c = keep(&store, &f, b"\0\x02", true);
        let d = diff(&store, &c, &Masker::default()).unwrap();
        assert!(d.binary && d.diff.is_none());
    }

    #[test]
    fn changes_survive_reopen_and_forget_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let f = dir.path().join("a");
        let id = {
            let store = Store::open(&path).unwrap();
            record(
                &store,
                &pre(b"a", 0o100644),
                f.as_os_str().as_bytes(),
                3,
                1,
                true,
            )
            .unwrap()
            .id
        };
        let store = Store::open(&path).unwrap();
        let all = store.scan(CHANGES).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.grant_id, 3);
        assert_eq!(
            store.get_blob(PREIMAGES, id).unwrap().as_deref(),
            Some(&b"a"[..])
        );
        forget(&store, id).unwrap();
        assert!(store.scan(CHANGES).unwrap().is_empty());
        assert_eq!(store.get_blob(PREIMAGES, id).unwrap(), None);
    }
}
