use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::*;
use crate::event::excerpt::Masker;

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn limits() -> Limits {
    Limits {
        max_file_bytes: 64,
        max_total_bytes: 1 << 20,
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, Baseline) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("etc");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.conf"), "a=1\nb=2\n").unwrap();
    std::fs::write(root.join("sub/same1"), "same\n").unwrap();
    std::fs::write(root.join("sub/same2"), "same\n").unwrap();
    std::fs::write(root.join("big"), vec![b'x'; 100]).unwrap();
    std::os::unix::fs::symlink("a.conf", root.join("link")).unwrap();
    let b = Baseline::open(&d.path().join("state"), vec![root.clone()], limits()).unwrap();
    (d, root, b)
}

fn masker() -> Masker {
    Masker::new(&[], &[]).unwrap()
}

#[test]
fn the_initial_baseline_keeps_every_file_deduplicated_and_large_ones_by_hash() {
    let (d, root, b) = setup();
    let t = b.take_initial().unwrap().expect("taken");
    assert_eq!(t.files, 5);
    assert_eq!(t.skipped_too_large, 1);
    // a.conf and one copy of "same\n".
    assert_eq!(t.bytes_stored, 8 + 5);
    assert!(b.take_initial().unwrap().is_none(), "taken once");
    let e = b.get(&bytes(&root.join("a.conf"))).unwrap().unwrap();
    assert_eq!(
        b.content(&bytes(&root.join("a.conf")), &e)
            .unwrap()
            .unwrap(),
        b"a=1\nb=2\n"
    );
    let link = b.get(&bytes(&root.join("link"))).unwrap().unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.target.as_deref(), Some(&b"a.conf"[..]));
    let big = b.get(&bytes(&root.join("big"))).unwrap().unwrap();
    assert!(!big.stored);
    assert!(matches!(
        b.content(&bytes(&root.join("big")), &big),
        Err(BaselineError::NoContent(_))
    ));
    // Reopened, it is still there.
    drop(b);
    let b = Baseline::open(&d.path().join("state"), vec![root.clone()], limits()).unwrap();
    assert!(b.taken_ms().unwrap().is_some());
    assert_eq!(b.entries_under(&bytes(&root)).unwrap().len(), 5);
    assert!(compare(&b, &root).is_empty());
}

fn compare(b: &Baseline, _root: &Path) -> Vec<drift::Item> {
    drift::compare(b, &[], &masker(), 1 << 20).unwrap()
}

#[test]
fn drift_sees_content_mode_created_deleted_and_renamed_and_restore_undoes_them() {
    let (_d, root, b) = setup();
    b.take_initial().unwrap();
    let a = root.join("a.conf");
    let ino = std::fs::metadata(&a).unwrap().ino();
    std::fs::write(&a, "a=1\nb=3\n").unwrap();
    std::fs::set_permissions(
        root.join("sub/same1"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(root.join("new"), "new\n").unwrap();
    std::fs::rename(root.join("sub/same2"), root.join("moved")).unwrap();
    std::fs::remove_file(root.join("link")).unwrap();
    let items = compare(&b, &root);
    let by = |n: &str| {
        items
            .iter()
            .find(|i| i.raw == bytes(&root.join(n)))
            .unwrap_or_else(|| panic!("{n}: {items:#?}"))
    };
    assert_eq!(by("a.conf").what, vec!["content"]);
    assert!(
        by("a.conf")
            .diff
            .as_deref()
            .unwrap()
            .contains("-b=2\n+b=3\n")
    );
    assert_eq!(by("sub/same1").what, vec!["mode"]);
    assert_eq!(by("new").change, "created");
    assert_eq!(by("moved").change, "renamed");
    assert_eq!(
        by("moved").from.as_deref(),
        Some(root.join("sub/same2").to_str().unwrap())
    );
    assert_eq!(by("link").change, "deleted");
    assert_eq!(items.len(), 5, "{items:#?}");
    for n in ["a.conf", "sub/same1", "new", "moved", "sub/same2", "link"] {
        restore::restore(&b, &bytes(&root.join(n))).unwrap();
    }
    assert!(compare(&b, &root).is_empty());
    assert_eq!(std::fs::read(&a).unwrap(), b"a=1\nb=2\n");
    assert_eq!(std::fs::metadata(&a).unwrap().ino(), ino, "same inode");
    assert!(!root.join("new").exists());
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        Path::new("a.conf")
    );
    // Outside the roots: refused.
    assert!(matches!(
        restore::restore(&b, b"/nonexistent/x"),
        Err(BaselineError::NotInScope(_))
    ));
}

#[test]
fn a_restore_does_not_follow_a_directory_replaced_by_a_symlink() {
    // A user who owns a watched directory replaces it with a symlink to a directory of
    // root's: the restore (made as root) must not write the baseline's content there, nor
    // remove a file there.
    let (d, root, b) = setup();
    b.take_initial().unwrap().expect("taken");
    let victim = d.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("same1"), "root's\n").unwrap();
    std::fs::rename(root.join("sub"), d.path().join("sub.moved")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("sub")).unwrap();
    for n in ["sub/same1", "sub/same2"] {
        assert!(
            matches!(
                restore::restore(&b, &bytes(&root.join(n))),
                Err(BaselineError::Io { .. })
            ),
            "{n} restored through a symlink"
        );
    }
    assert_eq!(std::fs::read(victim.join("same1")).unwrap(), b"root's\n");
    assert!(!victim.join("same2").exists());
    // Put back, the directory is a directory again and the restore works.
    std::fs::remove_file(root.join("sub")).unwrap();
    restore::restore(&b, &bytes(&root.join("sub/same1"))).unwrap();
    assert_eq!(std::fs::read(root.join("sub/same1")).unwrap(), b"same\n");
}

#[test]
fn accept_moves_the_baseline_and_a_damaged_object_is_an_error() {
    let (_d, root, b) = setup();
    b.take_initial().unwrap();
    let a = root.join("a.conf");
    std::fs::write(&a, "a=9\n").unwrap();
    std::fs::remove_file(root.join("sub/same1")).unwrap();
    let moved = b.accept(&[bytes(&root)], "accept").unwrap();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(compare(&b, &root).is_empty());
    let e = b.get(&bytes(&a)).unwrap().unwrap();
    assert_eq!(e.source, "accept");
    std::fs::write(b.object_path(&e.sha256), b"garbage").unwrap();
    assert!(matches!(
        b.content(&bytes(&a), &e),
        Err(BaselineError::Object(_))
    ));
    assert!(matches!(
        b.accept(&[b"/elsewhere".to_vec()], "accept"),
        Err(BaselineError::NotInScope(_))
    ));
}
