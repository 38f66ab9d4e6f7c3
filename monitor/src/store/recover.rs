//! Opening a store file whatever its bytes are, and telling damage from other failures.
//!
//! redb can panic on some damaged files (a truncated file trips an assertion), so every
//! call that reads an untrusted file runs under `catch_unwind` and a panic becomes
//! [`StoreError::Damaged`]. After the open, redb's full integrity check (checksums of every
//! page) runs once, so that a bit flip is found at start-up and not by a panic later.
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::Database;

use super::StoreError;
use crate::state;

/// Runs `f`, turning a panic into [`StoreError::Damaged`].
pub(super) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(StoreError::Damaged(format!("{what} panicked: {msg}")))
        }
    }
}

/// Opens the redb file at `path` (created 0600 if missing) and checks its integrity.
pub(super) fn open_db(path: &Path) -> Result<Database, StoreError> {
    if let Some(problem) = state::not_a_regular_file(path) {
        return Err(StoreError::Damaged(problem));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(state::OPEN_FLAGS)
        .open(path)
        .map_err(|source| StoreError::OpenFile {
            path: path.to_owned(),
            source,
        })?;
    // Swapped in since the check above: refuse it as well.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(StoreError::Damaged(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut db = guarded("opening the store", || {
        match Database::builder().create_file(file) {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Locked {
                path: path.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    })?;
    let clean = guarded("checking the store's integrity", || {
        db.check_integrity().map_err(StoreError::from)
    })?;
    if !clean {
        state::inc(&state::counters().store_integrity_repairs);
        tracing::warn!(
            path = %path.display(),
            "the store failed redb's integrity check and was repaired in place"
        );
    }
    Ok(db)
}

/// Whether `e`, from opening a store, means the file's content is damaged (move it aside
/// and start a new one) rather than a problem of the system (permissions, a full disk,
/// another daemon, a newer confgate), which must not cost the data.
pub(super) fn is_damage(e: &StoreError) -> bool {
    match e {
        StoreError::Damaged(_) | StoreError::Codec { .. } => true,
        StoreError::Db(e) => match &**e {
            // An error from the operating system is not the file's fault.
            redb::Error::Io(io) => io.raw_os_error().is_none(),
            redb::Error::DatabaseAlreadyOpen
            | redb::Error::PreviousIo
            | redb::Error::LockPoisoned(_) => false,
            _ => true,
        },
        _ => false,
    }
}

/// Whether `e` is an I/O error after which redb refuses all further work until the
/// database is reopened.
pub(super) fn poisons(e: &StoreError) -> bool {
    match e {
        StoreError::Db(e) => matches!(&**e, redb::Error::Io(_) | redb::Error::PreviousIo),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RecordTable, SESSIONS_TABLE, Store};
    use crate::state;
    use std::sync::atomic::Ordering;

    /// The sessions table, read as raw JSON values (the store does not know its type).
    const SESSIONS: RecordTable<serde_json::Value> = RecordTable::new(SESSIONS_TABLE);

    const T: RecordTable<String> = RecordTable::new("recover_test");

    /// A store with some records and a pre-image sized blob, closed.
    fn populated(path: &std::path::Path) {
        let s = Store::open(path).unwrap();
        s.write(|tx| {
            for i in 0..50u64 {
                tx.put(T, i, &format!("record {i} {}", "x".repeat(200)))?;
            }
            Ok(())
        })
        .unwrap();
        const B: super::super::BlobTable = super::super::BlobTable::new("recover_blobs");
        let blob = vec![7u8; 40_000];
        s.write(|tx| tx.put_blob(B, 1, &blob)).unwrap();
    }

    /// The bytes of a populated store, made once.
    fn template() -> &'static [u8] {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BYTES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.redb");
            populated(&path);
            std::fs::read(&path).unwrap()
        })
    }

    fn damaged_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".damaged-")
            })
            .count()
    }

    /// Every damage of the file opens: the data is kept when it is intact, otherwise the
    /// file is moved aside and a working, empty store takes its place.
    fn opens_after(damage: impl Fn(&mut Vec<u8>)) {
        // Memory-backed when possible: dozens of stores, each with a few fsyncs.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let path = dir.path().join("s.redb");
        let mut bytes = template().to_vec();
        damage(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let s = Store::open(&path).expect("a damaged store still opens");
        // Usable: reads do not fail or panic, writes work.
        let _ = s.scan(T).unwrap();
        s.put(T, 1000, &"after".to_owned()).unwrap();
        assert_eq!(s.get(T, 1000).unwrap().as_deref(), Some("after"));
        assert!(s.scan(SESSIONS).is_ok());
    }

    #[test]
    fn truncated_store_is_moved_aside_and_replaced() {
        let before = state::counters().damaged_files.load(Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        populated(&path);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let s = Store::open(&path).expect("opens");
        assert!(s.scan(T).unwrap().is_empty(), "a new store");
        // Ids start far above anything the lost store handed out.
        let id = s.write(|tx| tx.next_id("any")).unwrap();
        assert!(id > 1_000_000_000_000_000, "{id}");
        assert_eq!(s.write(|tx| tx.next_id("any")).unwrap(), id + 1);
        assert_eq!(damaged_files(dir.path()), 1);
        assert!(state::counters().damaged_files.load(Ordering::Relaxed) > before);
        let notes = state::take_notes(dir.path());
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].file, path);
        assert!(notes[0].moved_to.exists());
    }

    #[test]
    fn a_table_of_another_type_is_damage_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(&path).unwrap();
        s.write(|tx| {
            tx.raw()
                .open_table(redb::TableDefinition::<&str, u64>::new("recover_typed"))?
                .insert("k", 1)?;
            Ok(())
        })
        .unwrap();
        drop(s);
        let s = Store::open_with(&path, |tx| tx.ensure_table("recover_typed")).unwrap();
        assert_eq!(damaged_files(dir.path()), 1);
        s.write(|tx| tx.ensure_table("recover_typed")).unwrap();
        assert_eq!(state::take_notes(dir.path()).len(), 1);
    }

    #[test]
    fn a_symlink_in_the_stores_place_is_moved_aside_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let s = Store::open(&path).unwrap();
        s.put(T, 1, &"x".to_owned()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(damaged_files(dir.path()), 1);
        assert_eq!(state::take_notes(dir.path()).len(), 1);
    }

    #[test]
    fn store_opens_whatever_its_bytes() {
        // Truncations at many lengths.
        for cut in [
            0usize, 1, 7, 100, 511, 512, 4095, 4096, 4097, 20_000, 65_536,
        ] {
            opens_after(|b| b.truncate(cut.min(b.len())));
        }
        // Random bytes, and random bytes after a valid header.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..4 {
            let n = (rnd() % 100_000) as usize;
            let noise: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            opens_after(|b| *b = noise.clone());
            let keep = (rnd() % 8192) as usize;
            opens_after(|b| {
                b.truncate(keep.min(b.len()));
                b.extend_from_slice(&noise);
            });
        }
        // Bit flips anywhere, one or many.
        for _ in 0..24 {
            let flips: Vec<(u64, u8)> = (0..1 + rnd() % 16)
                .map(|_| (rnd(), 1u8 << (rnd() % 8)))
                .collect();
            opens_after(|b| {
                for (at, bit) in &flips {
                    let i = (*at % b.len() as u64) as usize;
                    b[i] ^= bit;
                }
            });
        }
    }
}
