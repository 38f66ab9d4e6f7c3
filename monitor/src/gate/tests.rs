//! Real-kernel tests of the gate: a forked child opens files in a gated temp tree and the
//! listener, with a test decider and a receiver standing in for the engine, answers.
//! Skipped (with a printed reason) when not root.
//!
//! Without eBPF maps, write intents come from `/proc/<tid>/syscall` (the decider asks for
//! that fallback); one test loads the real `Kernel` and checks that the intent and session
//! come from the `PENDING`/`SESSIONS` maps.
use super::intent::IntentOrigin;
use super::preimage::{self, capture, created_by_open};
use super::*;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn group_or_skip() -> Option<Arc<PermGroup>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: fanotify permission events need root");
        return None;
    }
    match PermGroup::new() {
        Ok(g) => Some(Arc::new(g)),
        Err(GateError::Init { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("SKIP: fanotify permission group not permitted here: {source}");
            None
        }
        Err(e) => panic!("PermGroup::new: {e}"),
    }
}

fn counter(group: &PermGroup, name: &str) -> u64 {
    group
        .counters()
        .snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap()
}

/// What the test decider was asked.
#[derive(Clone, Debug)]
struct Seen {
    path: PathBuf,
    tid: u32,
    tgid: u32,
    session: u64,
    intent: Option<Intent>,
}

type Rule = Box<dyn Fn(&PermEvent) -> FastVerdict + Send + Sync>;

struct TestDecider {
    fallback: bool,
    rule: Rule,
    seen: Mutex<Vec<Seen>>,
}

impl Decider for TestDecider {
    fn decide(&self, e: &PermEvent) -> FastVerdict {
        self.seen.lock().unwrap().push(Seen {
            path: e.path().to_path_buf(),
            tid: e.tid,
            tgid: e.tgid,
            session: e.session,
            intent: e.intent,
        });
        (self.rule)(e)
    }

    fn wants_proc_fallback(&self) -> bool {
        self.fallback
    }
}

impl TestDecider {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn ends_with(e: &PermEvent, suffix: &str) -> bool {
    e.path.ends_with(suffix.as_bytes())
}

/// A gated tree `t` (marked), an ungated directory `o`, a running listener.
struct Scene {
    listener: Listener,
    rx: Option<mpsc::Receiver<Held>>,
    decider: Arc<TestDecider>,
    marks: Marks,
    group: Arc<PermGroup>,
    t: PathBuf,
    o: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Scene {
    /// `setup` runs before the tree is marked (fixtures).
    fn new(
        cap: usize,
        fallback: bool,
        rule: Rule,
        intent: IntentSource,
        setup: impl FnOnce(&Path, &Path),
    ) -> Option<Scene> {
        let group = group_or_skip()?;
        let td = tempfile::tempdir().unwrap();
        let od = tempfile::tempdir().unwrap();
        let t = std::fs::canonicalize(td.path()).unwrap();
        let o = std::fs::canonicalize(od.path()).unwrap();
        setup(&t, &o);
        let marks = Marks::new(group.clone());
        marks.mark_tree(&t).unwrap();
        let decider = Arc::new(TestDecider {
            fallback,
            rule,
            seen: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(cap);
        let listener =
            Listener::start(group.clone(), Arc::new(intent), decider.clone(), tx).unwrap();
        Some(Scene {
            listener,
            rx: Some(rx),
            decider,
            marks,
            group,
            t,
            o,
            _dirs: (td, od),
        })
    }

    fn simple(cap: usize, rule: Rule) -> Option<Scene> {
        Self::new(cap, true, rule, IntentSource::proc_only(), |_, _| {})
    }

    fn t(&self, rel: &str) -> PathBuf {
        self.t.join(rel)
    }

    fn o(&self, rel: &str) -> PathBuf {
        self.o.join(rel)
    }

    fn recv(&mut self) -> Held {
        recv(self.rx.as_mut().unwrap(), WAIT).expect("no held event arrived")
    }

    fn counter(&self, name: &str) -> u64 {
        counter(&self.group, name)
    }
}

fn recv(rx: &mut mpsc::Receiver<Held>, t: Duration) -> Option<Held> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(t, rx.recv()).await.ok().flatten() })
}

/// How the child opens.
#[derive(Clone, Copy, Debug)]
enum How {
    /// glibc `open` (the `openat` syscall).
    Openat(i32),
    /// The raw `open` syscall.
    Open(i32),
    /// The raw `creat` syscall.
    Creat,
    /// The raw `openat2` syscall with these flags in `open_how`.
    Openat2(i32),
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A forked child that opens one file (optionally after the parent releases it), writes
/// `data` to it and exits with 0, or with the errno of the failed open.
struct Child {
    pid: libc::pid_t,
    release: Option<std::os::fd::OwnedFd>,
}

impl Child {
    fn open(path: &Path, how: How, data: &[u8]) -> Child {
        Self::spawn(path, how, data, false)
    }

    fn spawn(path: &Path, how: How, data: &[u8], wait_for_release: bool) -> Child {
        use std::os::fd::FromRawFd;
        let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
        let data = data.to_vec();
        let mut pipe = [-1i32; 2];
        if wait_for_release {
            // SAFETY: `pipe` is a valid out array of two fds.
            let rc = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
            assert_eq!(rc, 0);
        }
        // SAFETY: the child only makes async-signal-safe syscalls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (whole block) raw syscalls on memory prepared before the fork.
            unsafe {
                if wait_for_release {
                    let mut b = 0u8;
                    libc::read(pipe[0], (&raw mut b).cast(), 1);
                }
                // Drop the inherited descriptors (fanotify groups of this and other tests
                // among them): a child holding a group open would keep it alive.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let fd = match how {
                    How::Openat(f) => libc::open(cpath.as_ptr(), f, 0o644),
                    How::Open(f) => libc::syscall(libc::SYS_open, cpath.as_ptr(), f, 0o644) as i32,
                    How::Creat => libc::syscall(libc::SYS_creat, cpath.as_ptr(), 0o644) as i32,
                    How::Openat2(f) => {
                        let how = OpenHow {
                            flags: f as u64,
                            mode: if f & libc::O_CREAT != 0 { 0o644 } else { 0 },
                            resolve: 0,
                        };
                        libc::syscall(
                            libc::SYS_openat2,
                            libc::AT_FDCWD,
                            cpath.as_ptr(),
                            &raw const how,
                            std::mem::size_of::<OpenHow>(),
                        ) as i32
                    }
                };
                if fd < 0 {
                    libc::_exit(*libc::__errno_location());
                }
                if !data.is_empty() {
                    libc::write(fd, data.as_ptr().cast(), data.len());
                }
                libc::_exit(0);
            }
        }
        let release = wait_for_release.then(|| {
            // SAFETY: we own both ends; the read end is closed here, the write end kept.
            unsafe {
                libc::close(pipe[0]);
                std::os::fd::OwnedFd::from_raw_fd(pipe[1])
            }
        });
        Child { pid, release }
    }

    /// Let a child spawned with `wait_for_release` go on.
    fn release(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.release.take().unwrap();
        // SAFETY: writes one byte from a valid buffer to a pipe fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }

    /// Exit code if the child has exited.
    fn try_wait(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: valid out pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        (r == self.pid).then(|| {
            assert!(libc::WIFEXITED(status), "child did not exit normally");
            libc::WEXITSTATUS(status)
        })
    }

    /// Wait for the exit code (0 = the open succeeded, else its errno).
    fn wait(self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(code) = self.try_wait() {
                return code;
            }
            if start.elapsed() > WAIT {
                // SAFETY: our child.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let _ = self.try_wait();
                panic!("child {} still blocked after {WAIT:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Assert the child is still blocked in its open for a while.
    fn assert_blocked(&self) {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(self.try_wait(), None, "the open completed while held");
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const WO: i32 = libc::O_WRONLY;
const WO_CREAT: i32 = libc::O_WRONLY | libc::O_CREAT;
const EPERM: i32 = libc::EPERM;

#[test]
fn denied_write_fails_with_eperm_and_allowed_write_lands() {
    let rule: Rule = Box::new(|e| {
        if ends_with(e, "deny-me") {
            FastVerdict::Deny
        } else {
            FastVerdict::Allow
        }
    });
    let Some(s) = Scene::new(8, true, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("deny-me"), "keep").unwrap();
        std::fs::write(t.join("ok"), "before").unwrap();
    }) else {
        return;
    };
    let c = Child::open(&s.t("deny-me"), How::Openat(WO | libc::O_TRUNC), b"changed");
    let pid = c.pid as u32;
    assert_eq!(c.wait(), EPERM);
    assert_eq!(std::fs::read(s.t("deny-me")).unwrap(), b"keep");
    assert_eq!(
        Child::open(&s.t("ok"), How::Openat(WO | libc::O_TRUNC), b"after").wait(),
        0
    );
    assert_eq!(std::fs::read(s.t("ok")).unwrap(), b"after");

    // The kernel creates the file before the permission event: a denied O_CREAT leaves
    // it behind (empty), which is why the engine removes files that a denied open created.
    let c = Child::open(&s.t("new-deny-me"), How::Openat(WO_CREAT), b"x");
    assert_eq!(c.wait(), EPERM);
    assert_eq!(std::fs::metadata(s.t("new-deny-me")).unwrap().len(), 0);

    let seen = s.decider.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].path, s.t("deny-me"));
    assert_eq!((seen[0].tid, seen[0].tgid, seen[0].session), (pid, pid, 0));
    let i = seen[0].intent.unwrap();
    assert!(i.write);
    assert_eq!(i.origin, IntentOrigin::Proc);
    assert_eq!(
        i.flags & (libc::O_ACCMODE | libc::O_TRUNC) as u32,
        (WO | libc::O_TRUNC) as u32
    );
    assert_eq!(i.tgid, pid);
    assert_eq!(seen[1].path, s.t("ok"));
    assert_eq!(s.counter("perm_denied"), 2);
    assert_eq!(s.counter("perm_allowed"), 1);
    assert_eq!(s.counter("perm_intent_proc"), 3);
}

#[test]
fn read_only_opens_are_allowed_without_the_decider() {
    let rule: Rule = Box::new(|_| FastVerdict::Deny);
    let Some(s) = Scene::new(8, true, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("r"), "data").unwrap();
    }) else {
        return;
    };
    let before = s.counter("perm_allowed_fast");
    assert_eq!(
        Child::open(&s.t("r"), How::Openat(libc::O_RDONLY), b"").wait(),
        0
    );
    assert_eq!(
        Child::open(&s.t("r"), How::Openat2(libc::O_RDONLY), b"").wait(),
        0
    );
    assert!(s.decider.seen().is_empty());
    assert_eq!(s.counter("perm_allowed_fast"), before + 2);
    // The same decider denies writes: the events did reach the listener.
    assert_eq!(Child::open(&s.t("r"), How::Openat(WO), b"").wait(), EPERM);
    assert_eq!(s.decider.seen().len(), 1);
}

#[test]
fn outside_sessions_everything_is_fast_unless_the_decider_gates_them() {
    let rule: Rule = Box::new(|_| FastVerdict::Deny);
    let Some(s) = Scene::new(8, false, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("w"), "data").unwrap();
    }) else {
        return;
    };
    assert_eq!(Child::open(&s.t("w"), How::Openat(WO), b"").wait(), 0);
    assert!(s.decider.seen().is_empty());
    assert_eq!(s.counter("perm_allowed_fast"), 1);
    assert_eq!(
        s.counter("perm_intent_proc"),
        0,
        "no /proc read on the fast path"
    );
}

#[test]
fn deferred_open_waits_for_the_answer() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::new(8, true, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("a"), "a0").unwrap();
    }) else {
        return;
    };
    let c = Child::open(&s.t("a"), How::Openat(WO | libc::O_TRUNC), b"a1");
    let held = s.recv();
    assert_eq!(held.event().path(), s.t("a"));
    assert_eq!(held.event().tid, c.pid as u32);
    assert!(held.event().is_write());
    assert_eq!(held.fail_verdict(), Verdict::Deny);
    c.assert_blocked();
    held.allow().unwrap();
    assert_eq!(c.wait(), 0);
    assert_eq!(std::fs::read(s.t("a")).unwrap(), b"a1");

    let c = Child::open(&s.t("a"), How::Openat(WO | libc::O_TRUNC), b"a2");
    let held = s.recv();
    c.assert_blocked();
    held.deny().unwrap();
    assert_eq!(c.wait(), EPERM);
    assert_eq!(std::fs::read(s.t("a")).unwrap(), b"a1");
    assert_eq!(s.counter("perm_deferred"), 2);
    assert_eq!(
        (s.counter("perm_allowed"), s.counter("perm_denied")),
        (1, 1)
    );
}

#[test]
fn dropped_held_applies_its_failure_verdict() {
    let rule: Rule = Box::new(|e| FastVerdict::Defer {
        fail: if ends_with(e, "fail-allow") {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
    });
    let Some(mut s) = Scene::simple(8, rule) else {
        return;
    };
    let c = Child::open(&s.t("fail-allow"), How::Openat(WO_CREAT), b"");
    drop(s.recv());
    assert_eq!(c.wait(), 0);
    let c = Child::open(&s.t("fail-deny"), How::Openat(WO_CREAT), b"");
    drop(s.recv());
    assert_eq!(c.wait(), EPERM);
    assert_eq!(s.counter("perm_held_dropped_fallback"), 2);
    assert_eq!(
        (s.counter("perm_allowed"), s.counter("perm_denied")),
        (1, 1)
    );
}

#[test]
fn queue_full_and_closed_channel_apply_the_failure_verdict_at_once() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::simple(1, rule) else {
        return;
    };
    let first = Child::open(&s.t("one"), How::Openat(WO_CREAT), b"");
    wait_until("the first open to be queued", || {
        s.counter("perm_deferred") == 1
    });
    // The queue (capacity 1) is full: the second open gets its failure verdict at once.
    let second = Child::open(&s.t("two"), How::Openat(WO_CREAT), b"");
    assert_eq!(second.wait(), EPERM);
    assert_eq!(s.counter("perm_defer_queue_full"), 1);
    first.assert_blocked();
    s.recv().allow().unwrap();
    assert_eq!(first.wait(), 0);

    // Nobody receives any more.
    drop(s.rx.take());
    let third = Child::open(&s.t("three"), How::Openat(WO_CREAT), b"");
    assert_eq!(third.wait(), EPERM);
    assert_eq!(s.counter("perm_defer_closed"), 1);
}

#[test]
fn new_subdirectory_is_gated_once_marked() {
    let rule: Rule = Box::new(|_| FastVerdict::Deny);
    let Some(s) = Scene::simple(8, rule) else {
        return;
    };
    let sub = s.t("sub");
    std::fs::create_dir(&sub).unwrap();
    // Not marked yet: not gated.
    assert_eq!(
        Child::open(&sub.join("x"), How::Openat(WO_CREAT), b"x").wait(),
        0
    );
    assert!(s.decider.seen().is_empty());
    let report = s.marks.mark_dir(&sub).unwrap();
    assert_eq!(
        report,
        MarkReport {
            dirs: 1,
            files: 1,
            errors: 0
        }
    );
    assert_eq!(
        Child::open(&sub.join("y"), How::Openat(WO_CREAT), b"y").wait(),
        EPERM
    );
    assert_eq!(
        Child::open(&sub.join("x"), How::Openat(WO), b"z").wait(),
        EPERM
    );
    assert_eq!(std::fs::read(sub.join("x")).unwrap(), b"x");
    assert_eq!(s.decider.seen().len(), 2);
}

#[test]
fn hard_link_outside_the_tree_is_gated() {
    let rule: Rule = Box::new(|_| FastVerdict::Deny);
    let Some(s) = Scene::new(8, true, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("f"), "f").unwrap();
        std::fs::create_dir(t.join("d")).unwrap();
        std::fs::write(t.join("d/g"), "g").unwrap();
    }) else {
        return;
    };
    // Links made after marking: the inode marks placed by the walk gate them.
    std::fs::hard_link(s.t("f"), s.o("h")).unwrap();
    std::fs::hard_link(s.t("d/g"), s.o("h2")).unwrap();
    std::fs::write(s.o("u"), "u").unwrap();
    assert_eq!(Child::open(&s.o("h"), How::Openat(WO), b"x").wait(), EPERM);
    assert_eq!(Child::open(&s.o("h2"), How::Openat(WO), b"x").wait(), EPERM);
    assert_eq!(Child::open(&s.o("u"), How::Openat(WO), b"x").wait(), 0);
    let seen = s.decider.seen();
    assert_eq!(
        seen.iter().map(|x| x.path.clone()).collect::<Vec<_>>(),
        vec![s.o("h"), s.o("h2")]
    );

    // A file created later in the tree is gated through its directory, but its hard links
    // only once mark_file put an inode mark on it.
    std::fs::write(s.t("late"), "l").unwrap();
    std::fs::hard_link(s.t("late"), s.o("late-link")).unwrap();
    assert_eq!(
        Child::open(&s.o("late-link"), How::Openat(WO), b"x").wait(),
        0
    );
    s.marks.mark_file(&s.t("late")).unwrap();
    assert_eq!(
        Child::open(&s.o("late-link"), How::Openat(WO), b"x").wait(),
        EPERM
    );
    assert!(matches!(
        s.marks.mark_file(&s.t("d")),
        Err(GateError::WrongKind { .. })
    ));
    assert!(matches!(
        s.marks.mark_tree(&s.t("f")),
        Err(GateError::WrongKind { .. })
    ));
}

#[test]
fn own_process_is_exempt_and_does_not_deadlock() {
    let rule: Rule = Box::new(|_| FastVerdict::Deny);
    let Some(s) = Scene::simple(8, rule) else {
        return;
    };
    let before = s.counter("perm_allowed_self");
    let (tx, rx) = std::sync::mpsc::channel();
    let t = s.t.clone();
    // Opens from two threads of this process (neither is the main thread, so the tgid is
    // found through /proc), in a thread so that a deadlock fails the test.
    std::thread::spawn(move || {
        std::fs::write(t.join("mine"), "ours").unwrap();
        let t2 = t.clone();
        std::thread::spawn(move || std::fs::read(t2.join("mine")).unwrap())
            .join()
            .unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(WAIT)
        .expect("an open by this process was not answered");
    assert!(s.decider.seen().is_empty());
    assert_eq!(s.counter("perm_allowed_self"), before + 2);
    assert_eq!(std::fs::read(s.t("mine")).unwrap(), b"ours");
}

#[test]
fn preimage_is_read_before_o_trunc_truncates() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let old = b"old content\nline two\n".repeat(1000);
    let old2 = old.clone();
    let Some(mut s) = Scene::new(8, true, rule, IntentSource::proc_only(), move |t, _| {
        std::fs::write(t.join("conf"), &old2).unwrap();
        std::fs::set_permissions(t.join("conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    }) else {
        return;
    };
    let c = Child::open(&s.t("conf"), How::Openat(WO | libc::O_TRUNC), b"new\n");
    let held = s.recv();
    let pre = capture(&held.event().fd, 1 << 20).unwrap();
    assert_eq!(
        pre.content.as_deref(),
        Some(&old[..]),
        "O_TRUNC happened before the event"
    );
    assert_eq!(pre.size, old.len() as u64);
    let digest: [u8; 32] = Sha256::digest(&old).into();
    assert_eq!(pre.sha256, digest);
    assert_eq!(pre.mode & 0o7777, 0o640);
    assert_eq!(pre.mode & libc::S_IFMT, libc::S_IFREG);
    let st = std::fs::metadata(s.t("conf")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (pre.uid, pre.gid, pre.ino, pre.dev),
        (st.uid(), st.gid(), st.ino(), st.dev())
    );
    assert_eq!(st.len(), old.len() as u64, "truncated while held");
    // Larger than the limit: no content, same hash.
    let small = capture(&held.event().fd, 100).unwrap();
    assert_eq!(small.content, None);
    assert_eq!(small.sha256, digest);
    assert_eq!(preimage::hex(&small.sha256).len(), 64);
    held.allow().unwrap();
    assert_eq!(c.wait(), 0);
    assert_eq!(std::fs::read(s.t("conf")).unwrap(), b"new\n");
}

fn monotonic_ns() -> u64 {
    crate::os::clock::clock_ns(libc::CLOCK_MONOTONIC)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn created_by_open_tells_new_files_from_existing_ones() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::new(8, true, rule, IntentSource::proc_only(), |t, _| {
        std::fs::write(t.join("empty"), "").unwrap();
    }) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut check = |name: &str, flags: i32| {
        let enter = monotonic_ns();
        let c = Child::open(&s.t(name), How::Openat(flags), b"");
        let held = s.recv();
        let pre = capture(&held.event().fd, 1024).unwrap();
        let proc_intent = held.event().intent.unwrap();
        assert_eq!(proc_intent.enter_ns, 0);
        let with_enter = Intent {
            enter_ns: enter,
            ..proc_intent
        };
        let r = (
            created_by_open(&pre, &with_enter),
            created_by_open(&pre, &proc_intent),
        );
        held.allow().unwrap();
        assert_eq!(c.wait(), 0);
        r
    };
    assert_eq!(check("fresh", WO_CREAT), (true, false));
    assert_eq!(check("empty", WO_CREAT), (false, false));
    assert_eq!(check("excl", WO_CREAT | libc::O_EXCL), (true, true));
    assert_eq!(check("fresh", WO), (false, false));
}

#[test]
fn proc_fallback_decodes_every_open_syscall() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::simple(8, rule) else {
        return;
    };
    let cases = [
        (
            How::Openat(libc::O_RDWR | libc::O_CREAT),
            libc::O_RDWR | libc::O_CREAT,
        ),
        (How::Open(WO_CREAT), WO_CREAT),
        (How::Creat, WO_CREAT | libc::O_TRUNC),
        (
            How::Openat2(libc::O_RDWR | libc::O_CREAT),
            libc::O_RDWR | libc::O_CREAT,
        ),
        (
            How::Openat2(libc::O_WRONLY | libc::O_APPEND),
            libc::O_WRONLY | libc::O_APPEND,
        ),
    ];
    std::fs::write(s.t("f"), "").unwrap();
    for (how, want) in cases {
        let c = Child::open(&s.t("f"), how, b"");
        let held = s.recv();
        let i = held.event().intent.unwrap();
        let mask = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;
        assert_eq!(i.flags & mask, want as u32, "{how:?}");
        assert!(i.write, "{how:?}");
        assert_eq!(i.origin, IntentOrigin::Proc);
        assert_eq!(i.tgid, c.pid as u32);
        held.allow().unwrap();
        assert_eq!(c.wait(), 0, "{how:?}");
    }
    assert_eq!(s.counter("perm_intent_proc"), cases.len() as u64);
}

#[test]
fn mark_tree_refuses_pseudo_filesystems_and_counts_marks() {
    let Some(group) = group_or_skip() else {
        return;
    };
    let marks = Marks::new(group.clone());
    assert!(matches!(
        marks.mark_tree(Path::new("/proc/sys")),
        Err(GateError::PseudoFs { fs: "proc", .. })
    ));
    assert!(matches!(
        marks.mark_tree(Path::new("/nonexistent/confgate")),
        Err(GateError::Mark { .. })
    ));
    let td = tempfile::tempdir().unwrap();
    let t = td.path();
    std::fs::create_dir_all(t.join("a/b")).unwrap();
    std::fs::write(t.join("a/b/f1"), "").unwrap();
    std::fs::write(t.join("f2"), "").unwrap();
    std::os::unix::fs::symlink("/etc", t.join("link")).unwrap();
    std::os::unix::fs::symlink(t.join("f2"), t.join("a/flink")).unwrap();
    let r = marks.mark_tree(t).unwrap();
    assert_eq!(
        r,
        MarkReport {
            dirs: 3,
            files: 2,
            errors: 0
        }
    );
    assert_eq!(counter(&group, "perm_marks"), 5);
    assert_eq!(counter(&group, "perm_mark_errors"), 0);
}

/// The intent and session come from the eBPF maps for a process tagged into a session.
#[test]
fn kernel_maps_give_intent_and_session() {
    let Some(group) = group_or_skip() else {
        return;
    };
    drop(group);
    let settings = crate::kernel::KernelSettings {
        ringbuf_bytes: 1 << 20,
        path_filter: false,
        skip_programs: Vec::new(),
    };
    let (mut kernel, _report) = crate::kernel::Kernel::load(&settings).expect("Kernel::load");
    let source = IntentSource::from_kernel(&kernel).unwrap();
    assert!(source.has_maps());
    let check = IntentSource::from_kernel(&kernel).unwrap();
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::new(8, false, rule, source, |t, _| {
        std::fs::write(t.join("r"), "read me").unwrap();
    }) else {
        return;
    };
    const SESSION: u64 = 0x00c0_ffee;

    // A session member's write open: intent, session and enter time from PENDING.
    let mut c = Child::spawn(&s.t("k"), How::Openat(WO_CREAT), b"k", true);
    let pid = c.pid as u32;
    kernel.tag_session(pid, SESSION).unwrap();
    assert_eq!(check.session_of_tid(pid), SESSION);
    let before = monotonic_ns();
    c.release();
    let held = s.recv();
    let ev = held.event();
    let i = ev.intent.unwrap();
    assert_eq!(i.origin, IntentOrigin::Ebpf);
    assert_eq!((ev.tid, ev.tgid, ev.session), (pid, pid, SESSION));
    assert_eq!((i.tgid, i.session), (pid, SESSION));
    assert!(i.write);
    assert_eq!(
        i.flags & (libc::O_ACCMODE | libc::O_CREAT) as u32,
        WO_CREAT as u32
    );
    assert!(
        i.enter_ns >= before && i.enter_ns <= monotonic_ns(),
        "{i:?}"
    );
    let pre = capture(&ev.fd, 1024).unwrap();
    assert!(created_by_open(&pre, &i));
    assert_eq!(s.counter("perm_intent_ebpf"), 1);
    held.allow().unwrap();
    assert_eq!(c.wait(), 0);
    kernel.untag(pid);

    // A session member's read-only open has no PENDING entry: session from SESSIONS,
    // intent from /proc, and the decider is asked (it may protect paths even from reads).
    let mut c = Child::spawn(&s.t("r"), How::Openat(libc::O_RDONLY), b"", true);
    let pid = c.pid as u32;
    kernel.tag_session(pid, SESSION).unwrap();
    c.release();
    let held = s.recv();
    let ev = held.event();
    assert_eq!((ev.tgid, ev.session), (pid, SESSION));
    let i = ev.intent.unwrap();
    assert_eq!((i.origin, i.write), (IntentOrigin::Proc, false));
    held.allow().unwrap();
    assert_eq!(c.wait(), 0);
    kernel.untag(pid);
    assert_eq!(check.session_of_tid(pid), 0);

    // Outside any session (the decider does not gate those): fast, even for writes.
    let fast = s.counter("perm_allowed_fast");
    assert_eq!(Child::open(&s.t("r"), How::Openat(WO), b"").wait(), 0);
    assert_eq!(s.counter("perm_allowed_fast"), fast + 1);
    assert_eq!(s.decider.seen().len(), 2);
    drop(s);
}

#[test]
fn stop_removes_the_marks_and_held_events_stay_answerable() {
    let rule: Rule = Box::new(|_| FastVerdict::Defer {
        fail: Verdict::Deny,
    });
    let Some(mut s) = Scene::simple(8, rule) else {
        return;
    };
    let c = Child::open(&s.t("held"), How::Openat(WO_CREAT), b"1");
    let held = s.recv();
    s.listener.stop();
    s.listener.stop();
    // No marks any more: not gated, the decider is not asked.
    assert_eq!(
        Child::open(&s.t("after"), How::Openat(WO_CREAT), b"2").wait(),
        0
    );
    assert_eq!(s.decider.seen().len(), 1);
    c.assert_blocked();
    held.allow().unwrap();
    assert_eq!(c.wait(), 0);
    let counters = s.listener.counters();
    assert!(counters.contains(&("perm_deferred", 1)), "{counters:?}");
    assert!(counters.contains(&("perm_allowed", 1)), "{counters:?}");
}

/// What the daemon's death means for held opens: when the group is closed, the kernel
/// allows both the events nobody read and those read but not answered.
#[test]
fn closing_the_group_lets_pending_opens_through() {
    let Some(group) = group_or_skip() else {
        return;
    };
    let td = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(td.path()).unwrap();
    std::fs::write(t.join("f"), "0").unwrap();
    let marks = Marks::new(group.clone());
    marks.mark_tree(&t).unwrap();

    let read_unanswered = Child::open(&t.join("f"), How::Openat(WO), b"1");
    let mut buf = vec![0u8; 4096];
    let mut events = Vec::new();
    wait_until("the first event", || match group.read(&mut buf) {
        Ok(n) => {
            crate::os::fanotify::parse_fd_events(&buf[..n], &mut events);
            !events.is_empty()
        }
        Err(_) => false,
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].pid, read_unanswered.pid);
    assert_eq!(events[0].mask, libc::FAN_OPEN_PERM);
    let unread = Child::open(&t.join("f"), How::Openat(WO), b"2");
    read_unanswered.assert_blocked();
    unread.assert_blocked();
    drop(marks);
    drop(group);
    assert_eq!(read_unanswered.wait(), 0);
    assert_eq!(unread.wait(), 0);
    drop(events);
}

/// A decider that blocks (a stalled permission thread) on paths ending in `stall` until
/// released; every other open is allowed. The watchdog's verdict is `Deny`, so an open the
/// watchdog answered fails with EPERM and one the listener answered succeeds.
struct StallingDecider {
    released: Mutex<bool>,
    cv: std::sync::Condvar,
    stalled: std::sync::atomic::AtomicU64,
}

impl Decider for StallingDecider {
    fn decide(&self, e: &PermEvent) -> FastVerdict {
        if ends_with(e, "stall") {
            self.stalled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = self.released.lock().unwrap();
            while !*r {
                r = self.cv.wait(r).unwrap();
            }
        }
        FastVerdict::Allow
    }

    fn wants_proc_fallback(&self) -> bool {
        true
    }

    fn stall_verdict(&self, _session: u64, _write: Option<bool>) -> Verdict {
        Verdict::Deny
    }
}

impl StallingDecider {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[test]
fn watchdog_answers_for_a_stalled_listener_until_it_recovers() {
    use watchdog::Episode;
    let Some(group) = group_or_skip() else {
        return;
    };
    let td = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(td.path()).unwrap();
    for f in ["stall", "queued", "after"] {
        std::fs::write(t.join(f), "0").unwrap();
    }
    let marks = Marks::new(group.clone());
    marks.mark_tree(&t).unwrap();
    let decider = Arc::new(StallingDecider {
        released: Mutex::new(false),
        cv: std::sync::Condvar::new(),
        stalled: std::sync::atomic::AtomicU64::new(0),
    });
    let episodes = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let e = episodes.clone();
        Box::new(move |ep: Episode| e.lock().unwrap().push(ep))
    };
    let deadline = Duration::from_millis(300);
    let (tx, _rx) = mpsc::channel(16);
    let mut listener = Listener::start_with(
        group.clone(),
        Arc::new(IntentSource::proc_only()),
        decider.clone(),
        tx,
        Some(WatchdogOptions {
            deadline,
            sink: Some(sink),
        }),
    )
    .unwrap();

    // The listener stalls on the first open; a second one waits in the kernel's queue.
    let started = Instant::now();
    let stalled = Child::open(&t.join("stall"), How::Openat(WO), b"1");
    wait_until("the listener to stall", || {
        decider.stalled.load(std::sync::atomic::Ordering::SeqCst) == 1
    });
    let queued = Child::open(&t.join("queued"), How::Openat(WO), b"2");
    // Both get the watchdog's verdict while the listener is still stuck.
    assert_eq!(stalled.wait(), EPERM);
    assert_eq!(queued.wait(), EPERM);
    assert!(
        started.elapsed() >= deadline,
        "answered before the deadline"
    );
    assert!(!*decider.released.lock().unwrap());
    assert_eq!(counter(&group, "perm_watchdog_answered"), 2);
    assert_eq!(std::fs::read(t.join("stall")).unwrap(), b"0");
    assert!(matches!(
        episodes.lock().unwrap().first(),
        Some(Episode::Fired { answered: 1, .. })
    ));

    // The listener recovers: the event the watchdog answered is dropped, not answered
    // twice, and the listener answers again.
    decider.release();
    wait_until("the recovery", || {
        matches!(
            episodes.lock().unwrap().last(),
            Some(Episode::Recovered { .. })
        )
    });
    // (The test's own read of `stall` above was answered by the watchdog too: allowed.)
    let answered = counter(&group, "perm_watchdog_answered");
    assert_eq!(answered, 3);
    assert!(
        matches!(
            episodes.lock().unwrap().last(),
            Some(Episode::Recovered { answered: 3, .. })
        ),
        "{:?}",
        episodes.lock().unwrap()
    );
    assert_eq!(counter(&group, "perm_watchdog_late"), 1);
    let after = Child::open(&t.join("after"), How::Openat(WO), b"3");
    assert_eq!(after.wait(), 0);
    assert_eq!(std::fs::read(t.join("after")).unwrap(), b"3");
    assert_eq!(counter(&group, "perm_watchdog_answered"), answered);
    listener.stop();
}

#[test]
fn without_a_watchdog_a_stalled_listener_holds_the_open() {
    let Some(group) = group_or_skip() else {
        return;
    };
    let td = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(td.path()).unwrap();
    std::fs::write(t.join("stall"), "0").unwrap();
    let marks = Marks::new(group.clone());
    marks.mark_tree(&t).unwrap();
    let decider = Arc::new(StallingDecider {
        released: Mutex::new(false),
        cv: std::sync::Condvar::new(),
        stalled: std::sync::atomic::AtomicU64::new(0),
    });
    let (tx, _rx) = mpsc::channel(16);
    let mut listener = Listener::start(
        group.clone(),
        Arc::new(IntentSource::proc_only()),
        decider.clone(),
        tx,
    )
    .unwrap();
    let stalled = Child::open(&t.join("stall"), How::Openat(WO), b"1");
    wait_until("the listener to stall", || {
        decider.stalled.load(std::sync::atomic::Ordering::SeqCst) == 1
    });
    std::thread::sleep(Duration::from_millis(400));
    stalled.assert_blocked();
    decider.release();
    assert_eq!(stalled.wait(), 0);
    assert_eq!(counter(&group, "perm_watchdog_answered"), 0);
    listener.stop();
}
