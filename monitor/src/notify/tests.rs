//! Real-kernel tests: a child process (`sh -c`) changes a watched tree and the events
//! must come back with exact paths, masks and writer pids. Skipped (with a printed reason)
//! where fanotify is not permitted.
//!
//! Events on the same path from the same thread may be merged by the kernel, so the
//! assertions compare, per (path, new_path, pid), the union of the mask bits: exact, and
//! independent of how the kernel happened to merge or split them.
use super::records::tests::{event, fid_record};
use super::records::{INFO_DFID_NAME, INFO_NEW_DFID_NAME, INFO_OLD_DFID_NAME};
use super::*;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Shell helpers: `ext NAME cmd...` runs an external command and logs "NAME PID" so the
/// test knows which pid to expect; `waitgo X` waits until the test created `$O/go.X`
/// (used where the test must have processed an event before the child goes on).
const PRELUDE: &str = r#"set -e
ext() { n=$1; shift; "$@" & p=$!; wait $p; echo "$n $p" >> "$LOG"; }
waitgo() { i=0; while [ ! -e "$O/go.$1" ]; do i=$((i+1)); [ $i -lt 400 ] || exit 3; sleep 0.01; done; }
"#;

/// Held while spawning and while this process writes into a watched tree. A descriptor
/// that is open while another test thread forks is inherited by the fork, and the last
/// close (at its exec, O_CLOEXEC) then produces the FAN_CLOSE_WRITE under the fork's pid:
/// real kernel behaviour, but it would make "our own events are dropped" flaky.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn watcher_or_skip() -> Option<NotifyWatcher> {
    match NotifyWatcher::new() {
        Ok(mut w) => {
            w.enable_rename_sources();
            Some(w)
        }
        Err(e) if e.is_permission_denied() => {
            eprintln!("SKIP: fanotify not permitted here ({e}); run the tests as root");
            None
        }
        Err(e) => panic!("NotifyWatcher::new: {e}"),
    }
}

/// A watched tree `t` and an unwatched directory `o` on the same filesystem.
struct Scene {
    _t: tempfile::TempDir,
    _o: tempfile::TempDir,
    t: PathBuf,
    o: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let t = tempfile::tempdir().expect("tempdir");
        let o = tempfile::tempdir().expect("tempdir");
        let tp = std::fs::canonicalize(t.path()).expect("canonicalize");
        let op = std::fs::canonicalize(o.path()).expect("canonicalize");
        Self {
            _t: t,
            _o: o,
            t: tp,
            o: op,
        }
    }

    fn t(&self, rel: &str) -> PathBuf {
        self.t.join(rel)
    }

    fn o(&self, rel: &str) -> PathBuf {
        self.o.join(rel)
    }

    fn go(&self, name: &str) {
        std::fs::write(self.o(&format!("go.{name}")), b"").expect("go file");
    }

    fn spawn(&self, script: &str, env: &[(&str, OsString)]) -> Child {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{PRELUDE}{script}"))
            .env("T", &self.t)
            .env("O", &self.o)
            .env("LOG", self.o("pids"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let _g = spawn_lock();
        cmd.spawn().expect("spawn sh")
    }

    /// Pids the script logged with `ext`.
    fn pids(&self) -> HashMap<String, u32> {
        let log = std::fs::read_to_string(self.o("pids")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let (n, p) = l.split_once(' ')?;
                Some((n.to_string(), p.parse().ok()?))
            })
            .collect()
    }
}

/// Read batches until `until` matches an event (which must be the script's last action),
/// then reap the child. Panics after 5 s.
async fn collect(
    w: &mut NotifyWatcher,
    mut child: Option<Child>,
    mut on_event: impl FnMut(&FanEvent),
    until: impl Fn(&FanEvent) -> bool,
) -> Vec<FanEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    'outer: loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = match tokio::time::timeout(left, w.next_batch()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("next_batch: {e}"),
            Err(_) => {
                if let Some(c) = child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!("timed out waiting for events; got so far: {all:#?}");
            }
        };
        assert!(!batch.is_empty(), "next_batch returned an empty batch");
        for ev in batch {
            assert_eq!(ev.is_dir, ev.mask & FAN_ONDIR != 0, "{ev:?}");
            on_event(&ev);
            let stop = until(&ev);
            all.push(ev);
            if stop {
                break 'outer;
            }
        }
    }
    if let Some(mut c) = child {
        let status = c.wait().expect("wait for child");
        assert!(status.success(), "child script failed: {status}");
    }
    all
}

/// [`collect`] until the script's `.done` marker, with nothing to do on the way.
async fn collect_until_done(w: &mut NotifyWatcher, child: Option<Child>) -> Vec<FanEvent> {
    collect(w, child, |_| {}, is_done).await
}

fn is_done(ev: &FanEvent) -> bool {
    ev.path.file_name().is_some_and(|n| n == ".done")
}

type Key = (PathBuf, Option<PathBuf>, u32);

/// Union of the mask bits per (path, new_path, pid), without the `.done` marker.
fn group(events: &[FanEvent]) -> BTreeMap<Key, u64> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter(|e| !is_done(e)) {
        *m.entry((e.path.clone(), e.new_path.clone(), e.pid))
            .or_insert(0) |= e.mask;
    }
    m
}

fn key(path: PathBuf, new_path: Option<PathBuf>, pid: u32) -> Key {
    (path, new_path, pid)
}

#[test]
fn watcher_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<NotifyWatcher>();
}

#[test]
fn constants_match_libc() {
    assert_eq!(FAN_MODIFY, libc::FAN_MODIFY);
    assert_eq!(FAN_ATTRIB, libc::FAN_ATTRIB);
    assert_eq!(FAN_CLOSE_WRITE, libc::FAN_CLOSE_WRITE);
    assert_eq!(FAN_MOVED_FROM, libc::FAN_MOVED_FROM);
    assert_eq!(FAN_MOVED_TO, libc::FAN_MOVED_TO);
    assert_eq!(FAN_CREATE, libc::FAN_CREATE);
    assert_eq!(FAN_DELETE, libc::FAN_DELETE);
    assert_eq!(FAN_DELETE_SELF, libc::FAN_DELETE_SELF);
    assert_eq!(FAN_Q_OVERFLOW, libc::FAN_Q_OVERFLOW);
    assert_eq!(FAN_EVENT_ON_CHILD, libc::FAN_EVENT_ON_CHILD);
    assert_eq!(FAN_RENAME, libc::FAN_RENAME);
    assert_eq!(FAN_ONDIR, libc::FAN_ONDIR);
    assert_eq!(records::METADATA_VERSION, libc::FANOTIFY_METADATA_VERSION);
    assert_eq!(
        records::METADATA_LEN,
        std::mem::size_of::<libc::fanotify_event_metadata>()
    );
}

#[tokio::test]
async fn basic_operations_have_exact_paths_masks_and_pids() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 1);
    // Our own writes (main test thread and another thread) must not be reported.
    // (The other thread stays alive until the events are read: a thread id is recognised
    // as ours only while the thread exists.)
    {
        let _g = spawn_lock();
        std::fs::write(s.t("own.txt"), b"own").expect("write");
    }
    let tp = s.t("own-thread.txt");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (wrote_tx, wrote_rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        {
            let _g = spawn_lock();
            std::fs::write(tp, b"own").expect("write");
        }
        let _ = wrote_tx.send(());
        let _ = done_rx.recv();
    });
    wrote_rx.recv().expect("thread wrote");

    let child = s.spawn(
        r#"
printf 'hello' > "$T/a.conf"
ext chmod chmod 600 "$T/a.conf"
ext mv_within mv "$T/a.conf" "$T/b.conf"
printf 'x' > "$O/out.conf"
ext mv_in mv "$O/out.conf" "$T/in.conf"
ext mkdir mkdir "$T/sub"
waitgo sub
printf 'y' > "$T/sub/inner.conf"
ext rm rm "$T/b.conf"
: > "$T/.done"
"#,
        &[],
    );
    let sh = child.id();
    let sub = s.t("sub");
    let events = collect(
        &mut w,
        Some(child),
        |e| {
            if e.path == sub && e.mask & FAN_CREATE != 0 {
                s.go("sub");
            }
        },
        is_done,
    )
    .await;
    let _ = done_tx.send(());
    other.join().expect("thread");
    let p = s.pids();
    let expected = BTreeMap::from([
        (
            key(s.t("a.conf"), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
        (key(s.t("a.conf"), None, p["chmod"]), FAN_ATTRIB),
        (
            key(s.t("a.conf"), Some(s.t("b.conf")), p["mv_within"]),
            FAN_RENAME,
        ),
        // Rename from an unwatched directory: old path outside the tree, one event.
        (
            key(s.o("out.conf"), Some(s.t("in.conf")), p["mv_in"]),
            FAN_RENAME,
        ),
        (key(s.t("sub"), None, p["mkdir"]), FAN_CREATE | FAN_ONDIR),
        // Written after the test saw the mkdir: the new directory was marked in time.
        (
            key(s.t("sub/inner.conf"), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
        (key(s.t("b.conf"), None, p["rm"]), FAN_DELETE),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 2);
    let st = w.stats();
    assert_eq!(
        (st.overflows, st.unresolved, st.mark_errors, st.malformed),
        (0, 0, 0, 0)
    );
    assert!(st.events >= events.len() as u64);
}

#[tokio::test]
async fn odd_names_are_kept_as_bytes() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let n1 = OsString::from("new\nline.conf");
    let n2 = OsString::from_vec(b"bad\xff\xfe.conf".to_vec());
    let child = s.spawn(
        r#"
printf 1 > "$T/$N1"
printf 2 > "$T/$N2"
ext mv mv "$T/$N2" "$T/$N1.moved"
ext mkdir mkdir "$T/$N2.d"
waitgo d
printf 3 > "$T/$N2.d/$N1"
: > "$T/.done"
"#,
        &[("N1", n1.clone()), ("N2", n2.clone())],
    );
    let sh = child.id();
    let join =
        |dir: &Path, parts: &[&[u8]]| -> PathBuf { dir.join(OsString::from_vec(parts.concat())) };
    let (b1, b2) = (b"new\nline.conf".as_slice(), b"bad\xff\xfe.conf".as_slice());
    let d = join(&s.t, &[b2, b".d"]);
    let dd = d.clone();
    let events = collect(
        &mut w,
        Some(child),
        |e| {
            if e.path == dd && e.is_dir {
                s.go("d")
            }
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let expected = BTreeMap::from([
        (
            key(join(&s.t, &[b1]), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
        (
            key(join(&s.t, &[b2]), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
        (
            key(
                join(&s.t, &[b2]),
                Some(join(&s.t, &[b1, b".moved"])),
                p["mv"],
            ),
            FAN_RENAME,
        ),
        (key(d.clone(), None, p["mkdir"]), FAN_CREATE | FAN_ONDIR),
        (
            key(d.join(&n1), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
}

/// The reader is not running while the child creates and fills a directory: the
/// directory's FAN_CREATE is processed after its contents exist, so the contents are only
/// known from the scan done when the directory gets marked (synthesized events).
#[tokio::test]
async fn entries_of_a_new_directory_written_before_the_mark_are_reported() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let mut child = s.spawn(
        r#"
ext mkdir mkdir -p "$T/x/y"
printf data > "$T/x/y/f.conf"
: > "$T/x/empty"
: > "$T/.done"
"#,
        &[],
    );
    // Let the child finish before reading anything.
    let status = child.wait().expect("wait");
    assert!(status.success());
    let events = collect_until_done(&mut w, None).await;
    let m = s.pids()["mkdir"];
    let expected = BTreeMap::from([
        (key(s.t("x"), None, m), FAN_CREATE | FAN_ONDIR),
        (key(s.t("x/y"), None, m), FAN_CREATE | FAN_ONDIR),
        (key(s.t("x/y/f.conf"), None, m), FAN_CREATE | FAN_MODIFY),
        (key(s.t("x/empty"), None, m), FAN_CREATE),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 3);
}

/// `mkdir -p` then an immediate write, racing the reader: whatever the interleaving, the
/// file's creation is reported and the deepest directory ends up marked.
#[tokio::test]
async fn racing_new_directories_end_up_marked() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let child = s.spawn(
        r#"
ext mkdir mkdir -p "$T/a/b/c"
printf z > "$T/a/b/c/f.conf"
waitgo c
ext append sh -c 'printf w >> "$1"' _ "$T/a/b/c/f.conf"
: > "$T/.done"
"#,
        &[],
    );
    let c = s.t("a/b/c");
    let events = collect(
        &mut w,
        Some(child),
        |e| {
            if e.path == c && e.is_dir {
                s.go("c")
            }
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let g = group(&events);
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(
            g.get(&key(s.t(d), None, p["mkdir"])),
            Some(&(FAN_CREATE | FAN_ONDIR)),
            "{d}"
        );
    }
    let created = events
        .iter()
        .any(|e| e.path == s.t("a/b/c/f.conf") && e.mask & FAN_CREATE != 0);
    assert!(created, "creation of f.conf not reported: {events:#?}");
    assert_eq!(
        g.get(&key(s.t("a/b/c/f.conf"), None, p["append"])),
        Some(&(FAN_MODIFY | FAN_CLOSE_WRITE)),
        "{events:#?}"
    );
    assert_eq!(w.marks(), 4);
}

#[tokio::test]
async fn directories_moved_in_are_marked_and_moved_out_are_unmarked() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let child = s.spawn(
        r#"
mkdir -p "$O/d/e"
printf q > "$O/d/e/g.conf"
ext mv_in mv "$O/d" "$T/d"
waitgo in
printf r >> "$T/d/e/g.conf"
waitgo written
ext mv_out mv "$T/d" "$O/d2"
waitgo out
ext late sh -c 'printf s >> "$1"' _ "$O/d2/e/g.conf"
: > "$T/.done"
"#,
        &[],
    );
    let sh = child.id();
    let (td, od2, g) = (s.t("d"), s.o("d2"), s.t("d/e/g.conf"));
    // The test waits for the write's event before letting the child move the directory
    // out: a directory's path is resolved when the event is read (see mod.rs).
    let events = collect(
        &mut w,
        Some(child),
        |e| match e.new_path.as_deref() {
            Some(n) if n == td => s.go("in"),
            Some(n) if n == od2 => s.go("out"),
            _ if e.path == g && e.mask & FAN_CLOSE_WRITE != 0 => s.go("written"),
            _ => {}
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let expected = BTreeMap::from([
        (
            key(s.o("d"), Some(s.t("d")), p["mv_in"]),
            FAN_RENAME | FAN_ONDIR,
        ),
        (
            key(s.t("d/e/g.conf"), None, sh),
            FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
        (
            key(s.t("d"), Some(s.o("d2")), p["mv_out"]),
            FAN_RENAME | FAN_ONDIR,
        ),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 1);
}

#[tokio::test]
async fn renamed_directories_report_their_new_paths() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir_all(s.t("p/q")).expect("mkdir");
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 3);
    let child = s.spawn(
        r#"
printf 0 > "$T/p/q/f0"
ext mv mv "$T/p" "$T/p2"
printf 1 > "$T/p2/q/f1"
: > "$T/.done"
"#,
        &[],
    );
    let sh = child.id();
    let events = collect_until_done(&mut w, Some(child)).await;
    let p = s.pids();
    let g = group(&events);
    // f0's directory is resolved when the event is read: if that happened after the
    // rename it is already p2. Either way f1 must never be reported under the old path.
    let f0_old = key(s.t("p/q/f0"), None, sh);
    let f0_new = key(s.t("p2/q/f0"), None, sh);
    assert!(
        g.contains_key(&f0_old) || g.contains_key(&f0_new),
        "{events:#?}"
    );
    assert_eq!(
        g.get(&key(s.t("p"), Some(s.t("p2")), p["mv"])),
        Some(&(FAN_RENAME | FAN_ONDIR))
    );
    assert_eq!(
        g.get(&key(s.t("p2/q/f1"), None, sh)),
        Some(&(FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE)),
        "{events:#?}"
    );
    assert_eq!(w.marks(), 3);
}

#[tokio::test]
async fn single_files_and_their_atomic_replacement() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    std::fs::write(s.o("w.conf"), b"0").expect("write");
    w.add_file(&s.o("w.conf")).expect("add_file");
    let child = s.spawn(
        r#"
printf 1 >> "$O/w.conf"
ext chmod chmod 640 "$O/w.conf"
printf new > "$O/w.conf.tmp"
ext mv mv "$O/w.conf.tmp" "$O/w.conf"
waitgo r
ext append sh -c 'printf 2 >> "$1"' _ "$O/w.conf"
printf x > "$O/unwatched"
: > "$T/.done"
"#,
        &[],
    );
    let sh = child.id();
    let wconf = s.o("w.conf");
    let events = collect(
        &mut w,
        Some(child),
        |e| {
            if e.new_path.as_deref() == Some(wconf.as_path()) {
                s.go("r");
            }
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let expected = BTreeMap::from([
        (key(s.o("w.conf"), None, sh), FAN_MODIFY | FAN_CLOSE_WRITE),
        (key(s.o("w.conf"), None, p["chmod"]), FAN_ATTRIB),
        (
            key(s.o("w.conf.tmp"), Some(s.o("w.conf")), p["mv"]),
            FAN_RENAME,
        ),
        // The replacement (a new inode) was marked again.
        (
            key(s.o("w.conf"), None, p["append"]),
            FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 2);
}

#[tokio::test]
async fn deleting_directories_and_the_root() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir(s.t("sub")).expect("mkdir");
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 2);
    let child = s.spawn(
        r#"
ext rmdir rmdir "$T/sub"
ext rmroot rmdir "$T"
"#,
        &[],
    );
    let events = collect(
        &mut w,
        Some(child),
        |_| {},
        |e| e.mask & FAN_DELETE_SELF != 0,
    )
    .await;
    let p = s.pids();
    let expected = BTreeMap::from([
        (key(s.t("sub"), None, p["rmdir"]), FAN_DELETE | FAN_ONDIR),
        (
            key(s.t.clone(), None, p["rmroot"]),
            FAN_DELETE_SELF | FAN_ONDIR,
        ),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 0);
}

#[test]
fn tree_walk_does_not_follow_symlinks_and_rejects_bad_roots() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir_all(s.o("elsewhere/deeper")).expect("mkdir");
    std::os::unix::fs::symlink(s.o("elsewhere"), s.t("link")).expect("symlink");
    std::fs::create_dir(s.t("real")).expect("mkdir");
    std::fs::write(s.t("file"), b"").expect("write");
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 2);
    assert_eq!(w.marks(), 2);

    assert!(matches!(
        w.add_tree(&s.t("file")),
        Err(FanotifyError::NotADirectory { .. })
    ));
    assert!(matches!(
        w.add_file(&s.t("real")),
        Err(FanotifyError::IsADirectory { .. })
    ));
    assert!(matches!(
        w.add_tree(&s.t("missing")),
        Err(FanotifyError::Path { .. })
    ));
    assert!(matches!(
        w.add_tree(Path::new("/proc")),
        Err(FanotifyError::PseudoFs { .. })
    ));
    assert!(matches!(
        w.add_tree(Path::new("/sys")),
        Err(FanotifyError::PseudoFs { .. })
    ));
    assert_eq!(w.marks(), 2);
    assert_eq!(w.stats().mark_errors, 0);
}

#[test]
fn fd_is_closed_on_drop() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let fd = w.raw_fd();
    let fdinfo = format!("/proc/self/fdinfo/{fd}");
    let ino = {
        use std::os::unix::fs::MetadataExt;
        format!("ino:{:x} ", std::fs::metadata(&s.t).expect("stat").ino())
    };
    let info = std::fs::read_to_string(&fdinfo).expect("fdinfo");
    assert!(
        info.contains(&ino),
        "our mark is listed in {fdinfo}: {info}"
    );
    drop(w);
    // The number may have been reused by another test's descriptor, but not with our mark.
    let after = std::fs::read_to_string(&fdinfo).unwrap_or_default();
    assert!(
        !after.contains(&ino),
        "fd {fd} still holds our mark: {after}"
    );
}

/// Buffers the kernel could hand us, fed through the same path as real reads.
#[test]
fn overflow_and_malformed_buffers_are_counted() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    // Created behind the watcher's back (its event is never read): the walk done after
    // an overflow marks it.
    std::fs::create_dir(s.t("unseen")).expect("mkdir");
    assert_eq!(w.marks(), 1);
    let fsid = [9u8; 8];
    let mut buf = event(FAN_Q_OVERFLOW, -1, &[]);
    // A well-formed event for an unknown filesystem: unresolved, reported by bare name.
    buf.extend(event(
        FAN_CREATE,
        1,
        &[fid_record(
            INFO_DFID_NAME,
            fsid,
            1,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            Some(b"n\xff"),
        )],
    ));
    // A rename not touching anything watched: ignored.
    buf.extend(event(
        FAN_RENAME,
        1,
        &[
            fid_record(INFO_OLD_DFID_NAME, fsid, 1, &[1; 8], Some(b"a")),
            fid_record(INFO_NEW_DFID_NAME, fsid, 1, &[2; 8], Some(b"b")),
        ],
    ));
    // Malformed: name without NUL.
    let mut bad = fid_record(INFO_DFID_NAME, fsid, 1, &[1; 8], Some(b"abc"));
    let n = bad.len();
    bad[n - 1] = b'x';
    bad[n - 2] = b'x';
    bad[n - 3] = b'x';
    bad[n - 4] = b'x';
    buf.extend(event(FAN_CREATE, 1, &[bad]));
    // Truncated tail.
    buf.extend_from_slice(&[1, 2, 3]);
    let events = w.process_buffer(&buf);
    assert_eq!(
        events,
        vec![
            FanEvent {
                mask: FAN_Q_OVERFLOW,
                pid: 0,
                path: PathBuf::new(),
                new_path: None,
                is_dir: false
            },
            FanEvent {
                mask: FAN_CREATE,
                pid: 1,
                path: PathBuf::from(OsString::from_vec(b"n\xff".to_vec())),
                new_path: None,
                is_dir: false
            },
        ]
    );
    let st = w.stats();
    assert_eq!(
        (st.events, st.overflows, st.unresolved, st.malformed),
        (2, 1, 1, 2)
    );
    assert_eq!(w.marks(), 2);
}

/// Child side of `pid_is_the_writing_thread`: only acts when re-executed with the env var.
#[test]
fn helper_thread_writer() {
    let Some(path) = std::env::var_os("FANOTIFY_TEST_WRITE") else {
        return;
    };
    let writer = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        std::fs::write(&path, b"x").expect("write");
        tid
    });
    let tid = writer.join().expect("join");
    println!("TID={tid}");
}

/// FAN_REPORT_TID: a write from a secondary thread of a child process is reported with
/// that thread's id, not the process id.
#[tokio::test]
async fn pid_is_the_writing_thread() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    let file = s.t("from-thread.conf");
    let exe = std::env::current_exe().expect("current_exe");
    let child = {
        let _g = spawn_lock();
        Command::new(exe)
            .args([
                "--exact",
                "notify::tests::helper_thread_writer",
                "--nocapture",
            ])
            .args(["--test-threads=1", "-q"])
            .env("FANOTIFY_TEST_WRITE", &file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn test binary")
    };
    let child_pid = child.id();
    let f = file.clone();
    let events = collect(
        &mut w,
        None,
        |_| {},
        |e| e.path == f && e.mask & FAN_CLOSE_WRITE != 0,
    )
    .await;
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TID=")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no TID in child output: {stdout}"));
    assert_ne!(tid, child_pid, "the writer must be a secondary thread");
    let g = group(&events);
    let mask = g.get(&key(file.clone(), None, tid)).copied().unwrap_or(0);
    assert_eq!(
        mask & (FAN_CREATE | FAN_CLOSE_WRITE),
        FAN_CREATE | FAN_CLOSE_WRITE,
        "{events:#?}"
    );
    assert!(w.stats().events >= 1);
    // Nothing else in the tree was touched.
    assert!(g.keys().all(|k| k.0 == file), "{events:#?}");
}

/// The swap: the watched root is renamed away and another directory renamed onto its
/// path. Both renames are reported; the moved-away tree loses its marks and the new
/// directory at the root's path is watched.
#[tokio::test]
async fn renaming_the_root_away_and_another_directory_onto_it() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir(s.t("sub")).expect("mkdir");
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 2);
    let child = s.spawn(
        r#"
mkdir -p "$O/evil/inner"
ext away mv "$T" "$O/orig"
waitgo away
ext late sh -c 'printf 1 > "$1"' _ "$O/orig/sub/after-move"
ext swap mv "$O/evil" "$T"
waitgo swap
printf 2 > "$T/inner/planted.conf"
: > "$T/.done"
"#,
        &[],
    );
    let sh = child.id();
    let (t, orig) = (s.t.clone(), s.o("orig"));
    let events = collect(
        &mut w,
        Some(child),
        |e| match e.new_path.as_deref() {
            Some(n) if n == orig => s.go("away"),
            Some(n) if n == t => s.go("swap"),
            _ => {}
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let expected = BTreeMap::from([
        (
            key(s.t.clone(), Some(s.o("orig")), p["away"]),
            FAN_RENAME | FAN_ONDIR,
        ),
        (
            key(s.o("evil"), Some(s.t.clone()), p["swap"]),
            FAN_RENAME | FAN_ONDIR,
        ),
        (
            key(s.t("inner/planted.conf"), None, sh),
            FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE,
        ),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 2);
}

/// `rm -r` finishes before anything is read: every directory is gone when its events are
/// processed, and their last known paths are used.
#[tokio::test]
async fn events_in_directories_deleted_before_the_read_keep_full_paths() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir_all(s.t("a/b")).expect("mkdir");
    std::fs::write(s.t("a/b/f.conf"), b"x").expect("write");
    assert_eq!(w.add_tree(&s.t).expect("add_tree"), 3);
    let mut child = s.spawn(
        r#"
ext rm rm -r "$T/a"
: > "$T/.done"
"#,
        &[],
    );
    let status = child.wait().expect("wait");
    assert!(status.success());
    let events = collect_until_done(&mut w, None).await;
    let rm = s.pids()["rm"];
    let expected = BTreeMap::from([
        (key(s.t("a/b/f.conf"), None, rm), FAN_DELETE),
        (key(s.t("a/b"), None, rm), FAN_DELETE | FAN_ONDIR),
        (key(s.t("a"), None, rm), FAN_DELETE | FAN_ONDIR),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 1);
    assert_eq!(w.stats().unresolved, 0);
}

/// An ancestor of the root is renamed (outside every watched tree): the rename is
/// reported, and events after it carry the new paths (the cached directory paths are
/// dropped).
#[tokio::test]
async fn renaming_an_ancestor_of_the_root() {
    let Some(mut w) = watcher_or_skip() else {
        return;
    };
    let s = Scene::new();
    std::fs::create_dir_all(s.o("anc/tree/sub")).expect("mkdir");
    assert_eq!(w.add_tree(&s.o("anc/tree")).expect("add_tree"), 2);
    let child = s.spawn(
        r#"
printf 1 > "$O/anc/tree/sub/f1"
waitgo f1
ext mv mv "$O/anc" "$O/anc2"
printf 2 > "$O/anc2/tree/sub/f2"
: > "$O/anc2/tree/.done"
"#,
        &[],
    );
    let sh = child.id();
    let f1 = s.o("anc/tree/sub/f1");
    let events = collect(
        &mut w,
        Some(child),
        |e| {
            if e.path == f1 && e.mask & FAN_CLOSE_WRITE != 0 {
                s.go("f1");
            }
        },
        is_done,
    )
    .await;
    let p = s.pids();
    let all = FAN_CREATE | FAN_MODIFY | FAN_CLOSE_WRITE;
    let expected = BTreeMap::from([
        (key(s.o("anc/tree/sub/f1"), None, sh), all),
        (
            key(s.o("anc"), Some(s.o("anc2")), p["mv"]),
            FAN_RENAME | FAN_ONDIR,
        ),
        (key(s.o("anc2/tree/sub/f2"), None, sh), all),
    ]);
    assert_eq!(group(&events), expected, "all events: {events:#?}");
    assert_eq!(w.marks(), 2);
}

/// Without `enable_rename_sources` (the default) no filesystem-wide mark is placed: a
/// rename into the tree from outside is still reported, with an empty old path.
#[tokio::test]
async fn rename_from_outside_without_rename_sources_has_no_old_path() {
    let mut w = match NotifyWatcher::new() {
        Ok(w) => w,
        Err(e) if e.is_permission_denied() => {
            eprintln!("SKIP: fanotify not permitted here ({e}); run the tests as root");
            return;
        }
        Err(e) => panic!("NotifyWatcher::new: {e}"),
    };
    let s = Scene::new();
    w.add_tree(&s.t).expect("add_tree");
    std::fs::write(s.o("x.conf"), b"x").expect("write outside");
    let child = s.spawn("mv \"$O/x.conf\" \"$T/y.conf\"", &[]);
    let target = s.t("y.conf");
    let events = collect(
        &mut w,
        Some(child),
        |_| {},
        |e| e.new_path.as_deref() == Some(target.as_path()),
    )
    .await;
    let ev = events
        .iter()
        .find(|e| e.mask & FAN_RENAME != 0)
        .expect("rename event");
    assert_eq!(ev.path, PathBuf::new(), "old side unknown: {ev:?}");
    assert_eq!(ev.new_path.as_deref(), Some(target.as_path()));
}
