//! The middle tier, in the style of aya's own integration tests: the eBPF object is loaded
//! in this test process through `monitor::kernel` (no daemon), each record kind is
//! triggered by a real syscall from a child process the test forks and controls, and the
//! decoded record is checked field by field (op, path bytes, pid/tid, flags, result).
//!
//! The filtering is set up the way the daemon does it: a child is tagged into an agent
//! session (`Kernel::tag_session`) before it is let go, and a watched prefix is added
//! (`Kernel::add_prefix`, `path_filter` on) for the test of processes outside sessions.
//! The test process itself is the kernel side's "daemon" (its own syscalls are never
//! reported), so everything runs in forked children.
use std::{
    ffi::{CString, c_char},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use e2e::{EVENT_TIMEOUT, poll, require_root};
use monitor::kernel::{
    Kernel, KernelSettings,
    decode::{Record, SyscallRecord, decode},
};
use monitor_common::{AT_FDCWD, NO_FD, SysOp};

/// The kernel side loaded once for all tests of this file, and what its ring buffer held.
struct Harness {
    kernel: Mutex<Loaded>,
    /// Scratch tree; `<root>/watched/` is a watched prefix.
    root: PathBuf,
    _dir: tempfile::TempDir,
}

struct Loaded {
    kernel: Kernel,
    /// Decoded records of our sessions and of the children we spawned.
    seen: Vec<Record>,
    spawned: Vec<u32>,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
static NEXT_SESSION: AtomicU64 = AtomicU64::new(0x5e55_1000);

/// The loaded kernel side, or `None` (skip recorded) without root.
fn harness(test: &str) -> Option<&'static Harness> {
    if !require_root(test) {
        return None;
    }
    Some(HARNESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("confgate-kernel-records-")
            .tempdir()
            .unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("watched")).unwrap();
        // As the daemon's defaults: 4 MiB ring buffer, prefix filter on.
        let settings = KernelSettings {
            ringbuf_bytes: 4 << 20,
            path_filter: true,
            skip_programs: Vec::new(),
        };
        let (mut kernel, report) = Kernel::load(&settings).expect("Kernel::load");
        assert!(
            report.missing.is_empty(),
            "programs not attached: {:?}",
            report.missing
        );
        let mut prefix = root.join("watched").into_os_string().into_vec();
        prefix.push(b'/');
        kernel.add_prefix(&prefix).unwrap();
        Harness {
            kernel: Mutex::new(Loaded {
                kernel,
                seen: Vec::new(),
                spawned: Vec::new(),
            }),
            root,
            _dir: dir,
        }
    }))
}

impl Harness {
    /// A fresh directory for one test, and a fresh session id.
    fn scratch(&self, name: &str) -> (PathBuf, u64) {
        let d = self.root.join(name);
        std::fs::create_dir(&d).unwrap();
        (d, NEXT_SESSION.fetch_add(1, Ordering::Relaxed))
    }

    /// Fork a child that waits until it is tagged into `session` (if any), then runs
    /// `body` and exits with its status. Returns the child's pid once it has exited
    /// successfully.
    fn run(&self, session: Option<u64>, body: impl FnOnce() -> i32) -> u32 {
        let mut fds = [0i32; 2];
        // SAFETY: `pipe2` writes two descriptors into the two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child makes only raw syscalls (async-signal-safe) on memory prepared
        // before the fork and leaves with `_exit`: it never returns into the test harness
        // nor touches a lock another thread may hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut b = 0u8;
            // SAFETY: raw syscalls on our own descriptors and a one-byte stack buffer.
            let status = unsafe {
                libc::close(fds[1]);
                if libc::read(fds[0], (&raw mut b).cast(), 1) != 1 {
                    libc::_exit(100);
                }
                libc::close(fds[0]);
                body()
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(status) };
        }
        {
            let mut k = self.kernel.lock().unwrap();
            k.spawned.push(pid as u32);
            if let Some(session) = session {
                k.kernel.tag_session(pid as u32, session).unwrap();
            }
        }
        let go = 1u8;
        let mut status = 0;
        // SAFETY: raw syscalls on the pipe we made and on our own child.
        unsafe {
            libc::close(fds[0]);
            assert_eq!(libc::write(fds[1], (&raw const go).cast(), 1), 1);
            libc::close(fds[1]);
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: status {status:#x}"
        );
        pid as u32
    }

    /// Every record seen so far that `keep` selects (drains the ring buffer first).
    fn records(&self, keep: impl Fn(&Record) -> bool) -> Vec<Record> {
        let mut k = self.kernel.lock().unwrap();
        let Loaded {
            kernel,
            seen,
            spawned,
        } = &mut *k;
        let ring = kernel.events.as_mut().expect("ring buffer");
        while let Some(item) = ring.next() {
            let Ok(rec) = decode(&item) else { continue };
            let h = rec.header();
            if h.session_id != 0 || spawned.contains(&h.tgid) {
                seen.push(rec);
            }
        }
        seen.iter().filter(|r| keep(r)).cloned().collect()
    }

    /// The records of `tgids`, once each of them has exited.
    fn records_until_exit(&self, tgids: &[u32]) -> Vec<Record> {
        poll("the exit records", EVENT_TIMEOUT, || {
            let recs = self.records(|r| tgids.contains(&r.header().tgid));
            let exited = |t: &u32| {
                recs.iter()
                    .any(|r| matches!(r, Record::Exit { header, .. } if header.tgid == *t))
            };
            tgids.iter().all(exited).then_some(recs)
        })
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// The one `Syscall` record of `op` (a child makes each syscall once).
fn enter(recs: &[Record], op: SysOp) -> &SyscallRecord {
    let found: Vec<&SyscallRecord> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Syscall(s) if s.op == op => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{op:?} records in {recs:#?}");
    found[0]
}

/// The return value in the `SyscallExit` record of `op`.
fn result(recs: &[Record], op: SysOp) -> i64 {
    let found: Vec<i64> = recs
        .iter()
        .filter_map(|r| match r {
            Record::SyscallExit { op: o, ret, .. } if *o == op => Some(*ret),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{op:?} exit records in {recs:#?}");
    found[0]
}

/// Header checks every record of a single-threaded child passes.
fn by(recs: &[Record], pid: u32, session: u64) {
    for r in recs.iter().filter(|r| r.header().tgid == pid) {
        let h = r.header();
        assert_eq!((h.tgid, h.tid, h.session_id), (pid, pid, session), "{r:?}");
        assert_eq!((h.uid, h.gid), (0, 0), "{r:?}");
    }
}

/// Opens with write intent, the first write through them, close, and duplication.
#[test]
fn opens_writes_and_descriptors() {
    let Some(h) = harness("opens_writes_and_descriptors") else {
        return;
    };
    let (d, session) = h.scratch("opens");
    let (a, ro, p) = (d.join("a"), d.join("ro"), d.join("p"));
    std::fs::write(&ro, "x").unwrap();
    let (ca, cro, cp) = (cstr(&a), cstr(&ro), cstr(&p));
    let wflags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let pid = h.run(Some(session), || {
        // SAFETY: raw syscalls on the prepared strings and on descriptors of this child.
        unsafe {
            // A read-only open is never reported.
            let r = libc::syscall(libc::SYS_openat, AT_FDCWD, cro.as_ptr(), libc::O_RDONLY);
            libc::close(r as i32);
            let fd = libc::syscall(libc::SYS_openat, AT_FDCWD, ca.as_ptr(), wflags, 0o640) as i32;
            if fd < 0 {
                return 1;
            }
            // The first write is reported, the second one is coalesced.
            libc::write(fd, b"hello".as_ptr().cast(), 5);
            libc::write(fd, b"world!".as_ptr().cast(), 6);
            libc::syscall(libc::SYS_ftruncate, fd, 7);
            let d1 = libc::dup(fd);
            let d2 = libc::fcntl(fd, libc::F_DUPFD, 100);
            libc::dup2(fd, 90);
            libc::close(d1);
            libc::close(d2);
            libc::close(90);
            libc::close(fd);
            // A pipe now gets the closed number: a write into it is not a tracked write.
            let mut pipe = [0i32; 2];
            libc::pipe(pipe.as_mut_ptr());
            libc::write(pipe[1], b"p".as_ptr().cast(), 1);
            #[cfg(target_arch = "x86_64")]
            {
                let o = libc::syscall(
                    libc::SYS_open,
                    cp.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT,
                    0o600,
                );
                libc::close(o as i32);
                let c = libc::syscall(libc::SYS_creat, cp.as_ptr(), 0o600);
                libc::close(c as i32);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = &cp;
            0
        }
    });
    let recs = h.records_until_exit(&[pid]);
    by(&recs, pid, session);

    assert!(
        !recs
            .iter()
            .any(|r| matches!(r, Record::Syscall(s) if s.path1 == bytes(&ro))),
        "a read-only open was reported: {recs:#?}"
    );
    let open = enter(&recs, SysOp::Openat);
    assert_eq!(open.path1, bytes(&a));
    assert!(open.path2.is_empty());
    assert_eq!(open.flags & 0o7777, wflags as u32);
    assert_eq!((open.dfd1, open.dfd2, open.fd), (AT_FDCWD, NO_FD, NO_FD));
    assert_eq!(open.mode, 0o640);
    let fd = result(&recs, SysOp::Openat);
    assert!(fd >= 0, "openat returned {fd}");
    let fd = fd as i32;

    let writes: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Write { op, fd, count, .. } => Some((*op, *fd, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(writes, [(SysOp::Write, fd, 5)], "{recs:#?}");

    let trunc = enter(&recs, SysOp::Ftruncate);
    assert_eq!((trunc.fd, trunc.length), (fd, 7));
    assert!(trunc.path1.is_empty());
    assert_eq!(result(&recs, SysOp::Ftruncate), 0);

    let dups: Vec<(i32, i32)> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Dup { old_fd, new_fd, .. } => Some((*old_fd, *new_fd)),
            _ => None,
        })
        .collect();
    assert_eq!(dups.len(), 3, "{recs:#?}");
    assert_eq!(dups[0].0, fd);
    assert!(dups[0].1 >= 0 && dups[0].1 != fd, "{dups:?}");
    assert_eq!(dups[1].0, fd);
    assert!(dups[1].1 >= 100, "{dups:?}");
    assert_eq!(dups[2], (fd, 90));

    #[cfg(target_arch = "x86_64")]
    {
        let open = enter(&recs, SysOp::Open);
        assert_eq!(open.path1, bytes(&p));
        assert_eq!(open.flags & 0o7777, (libc::O_RDWR | libc::O_CREAT) as u32);
        assert_eq!((open.dfd1, open.mode), (AT_FDCWD, 0o600));
        assert!(result(&recs, SysOp::Open) >= 0);
        let creat = enter(&recs, SysOp::Creat);
        assert_eq!(creat.path1, bytes(&p));
        assert_eq!(
            creat.flags,
            (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32
        );
        assert_eq!(creat.mode, 0o600);
        assert!(result(&recs, SysOp::Creat) >= 0);
    }
}

/// Renames, unlinks, links, symlinks, directories, truncate, chmod and chown, with their
/// flags and results (a failing call is reported with its error).
#[test]
fn path_operations() {
    let Some(h) = harness("path_operations") else {
        return;
    };
    let (d, session) = h.scratch("paths");
    let [f, g, l, s, sub, gone] = ["f", "g", "l", "s", "sub", "gone"].map(|n| d.join(n));
    std::fs::write(&f, "content").unwrap();
    let (cf, cg, cl, cs, csub, cgone) = (
        cstr(&f),
        cstr(&g),
        cstr(&l),
        cstr(&s),
        cstr(&sub),
        cstr(&gone),
    );
    let target = CString::new("a-target").unwrap();
    let pid = h.run(Some(session), || {
        // SAFETY: raw syscalls on the prepared strings.
        unsafe {
            let at = AT_FDCWD;
            let calls = [
                libc::syscall(libc::SYS_truncate, cf.as_ptr(), 3),
                libc::syscall(libc::SYS_fchmodat, at, cf.as_ptr(), 0o600),
                libc::syscall(
                    libc::SYS_fchownat,
                    at,
                    cf.as_ptr(),
                    4242,
                    4343,
                    libc::AT_SYMLINK_NOFOLLOW,
                ),
                libc::syscall(libc::SYS_linkat, at, cf.as_ptr(), at, cl.as_ptr(), 0),
                libc::syscall(libc::SYS_symlinkat, target.as_ptr(), at, cs.as_ptr()),
                libc::syscall(
                    libc::SYS_renameat2,
                    at,
                    cf.as_ptr(),
                    at,
                    cg.as_ptr(),
                    libc::RENAME_NOREPLACE,
                ),
                libc::syscall(libc::SYS_mkdirat, at, csub.as_ptr(), 0o750),
                libc::syscall(libc::SYS_unlinkat, at, csub.as_ptr(), libc::AT_REMOVEDIR),
            ];
            if calls.iter().any(|&r| r != 0) {
                return 1;
            }
            // Fails with ENOENT, and is reported all the same.
            libc::syscall(libc::SYS_unlinkat, at, cgone.as_ptr(), 0);
            #[cfg(target_arch = "x86_64")]
            {
                let legacy = [
                    libc::syscall(libc::SYS_chmod, cg.as_ptr(), 0o644),
                    libc::syscall(libc::SYS_chown, cg.as_ptr(), 1, 2),
                    libc::syscall(libc::SYS_lchown, cs.as_ptr(), 3, 4),
                    libc::syscall(libc::SYS_link, cg.as_ptr(), cf.as_ptr()),
                    libc::syscall(libc::SYS_unlink, cf.as_ptr()),
                    libc::syscall(libc::SYS_rename, cl.as_ptr(), cf.as_ptr()),
                    libc::syscall(libc::SYS_symlink, target.as_ptr(), cl.as_ptr()),
                    libc::syscall(libc::SYS_mkdir, csub.as_ptr(), 0o700),
                    libc::syscall(libc::SYS_rmdir, csub.as_ptr()),
                ];
                if legacy.iter().any(|&r| r != 0) {
                    return 2;
                }
            }
            0
        }
    });
    let recs = h.records_until_exit(&[pid]);
    by(&recs, pid, session);
    let one = |op: SysOp, p1: &[u8], p2: &[u8]| {
        let s = enter(&recs, op);
        assert_eq!((s.path1.as_slice(), s.path2.as_slice()), (p1, p2), "{s:?}");
        s.clone()
    };
    let (f, g, l, s, sub, gone) = (
        bytes(&f),
        bytes(&g),
        bytes(&l),
        bytes(&s),
        bytes(&sub),
        bytes(&gone),
    );

    let t = one(SysOp::Truncate, &f, b"");
    assert_eq!((t.length, t.dfd1, t.fd), (3, AT_FDCWD, NO_FD));
    assert_eq!(result(&recs, SysOp::Truncate), 0);
    let m = one(SysOp::Fchmodat, &f, b"");
    assert_eq!((m.mode, m.dfd1), (0o600, AT_FDCWD));
    assert_eq!(result(&recs, SysOp::Fchmodat), 0);
    let o = one(SysOp::Fchownat, &f, b"");
    assert_eq!((o.arg_uid, o.arg_gid), (4242, 4343));
    assert_eq!(o.flags, libc::AT_SYMLINK_NOFOLLOW as u32);
    assert_eq!(result(&recs, SysOp::Fchownat), 0);
    let k = one(SysOp::Linkat, &f, &l);
    assert_eq!((k.dfd1, k.dfd2, k.flags), (AT_FDCWD, AT_FDCWD, 0));
    assert_eq!(result(&recs, SysOp::Linkat), 0);
    let y = one(SysOp::Symlinkat, b"a-target", &s);
    assert_eq!(y.dfd2, AT_FDCWD);
    assert_eq!(result(&recs, SysOp::Symlinkat), 0);
    let r = one(SysOp::Renameat2, &f, &g);
    assert_eq!(r.flags, libc::RENAME_NOREPLACE);
    assert_eq!((r.dfd1, r.dfd2), (AT_FDCWD, AT_FDCWD));
    assert_eq!(result(&recs, SysOp::Renameat2), 0);
    let mk = one(SysOp::Mkdirat, &sub, b"");
    assert_eq!(mk.mode, 0o750);
    assert_eq!(result(&recs, SysOp::Mkdirat), 0);

    // Two unlinkat calls: the directory (AT_REMOVEDIR), then the missing file.
    let unlinks: Vec<(&SyscallRecord, i64)> = {
        let enters = recs.iter().filter_map(|r| match r {
            Record::Syscall(s) if s.op == SysOp::Unlinkat => Some(s),
            _ => None,
        });
        let exits = recs.iter().filter_map(|r| match r {
            Record::SyscallExit {
                op: SysOp::Unlinkat,
                ret,
                ..
            } => Some(*ret),
            _ => None,
        });
        enters.zip(exits).collect()
    };
    assert_eq!(unlinks.len(), 2, "{recs:#?}");
    assert_eq!(unlinks[0].0.path1, sub);
    assert_eq!(unlinks[0].0.flags, libc::AT_REMOVEDIR as u32);
    assert_eq!(unlinks[0].1, 0);
    assert_eq!(unlinks[1].0.path1, gone);
    assert_eq!(unlinks[1].0.flags, 0);
    assert_eq!(unlinks[1].1, -i64::from(libc::ENOENT));

    #[cfg(target_arch = "x86_64")]
    {
        let c = one(SysOp::Chmod, &g, b"");
        assert_eq!(c.mode, 0o644);
        let c = one(SysOp::Chown, &g, b"");
        assert_eq!((c.arg_uid, c.arg_gid), (1, 2));
        let c = one(SysOp::Lchown, &s, b"");
        assert_eq!((c.arg_uid, c.arg_gid), (3, 4));
        one(SysOp::Link, &g, &f);
        one(SysOp::Unlink, &f, b"");
        one(SysOp::Rename, &l, &f);
        one(SysOp::Symlink, b"a-target", &l);
        let c = one(SysOp::Mkdir, &sub, b"");
        assert_eq!(c.mode, 0o700);
        one(SysOp::Rmdir, &sub, b"");
        for op in [
            SysOp::Chmod,
            SysOp::Chown,
            SysOp::Lchown,
            SysOp::Link,
            SysOp::Unlink,
            SysOp::Rename,
            SysOp::Symlink,
            SysOp::Mkdir,
            SysOp::Rmdir,
        ] {
            assert_eq!(result(&recs, op), 0, "{op:?}");
        }
    }
}

/// fork, exec (with its argv) and exit; the grandchild inherits the session in the kernel.
#[test]
fn process_lifecycle() {
    let Some(h) = harness("process_lifecycle") else {
        return;
    };
    let (_d, session) = h.scratch("process");
    let prog = CString::new("/bin/true").unwrap();
    let arg0 = CString::new("true").unwrap();
    let arg1 = CString::new("kernel-records").unwrap();
    let argv: [*const c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp: [*const c_char; 1] = [std::ptr::null()];
    let pid = h.run(Some(session), || {
        // SAFETY: fork and execve with prepared, NUL-terminated argv/envp arrays; the
        // grandchild only execs or `_exit`s.
        unsafe {
            let gc = libc::fork();
            if gc == 0 {
                libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
            let mut status = 0;
            if gc < 0 || libc::waitpid(gc, &mut status, 0) != gc || status != 0 {
                return 1;
            }
            0
        }
    });
    let forks: Vec<u32> = poll("the fork record", EVENT_TIMEOUT, || {
        let f: Vec<u32> = h
            .records(|r| r.header().tgid == pid)
            .iter()
            .filter_map(|r| match r {
                Record::Fork { child_pid, .. } => Some(*child_pid),
                _ => None,
            })
            .collect();
        (!f.is_empty()).then_some(f)
    });
    assert_eq!(forks.len(), 1, "{forks:?}");
    let gc = forks[0];
    let recs = h.records_until_exit(&[pid, gc]);
    // Every record of both carries the session: the grandchild inherited it at fork.
    by(&recs, pid, session);
    for r in recs.iter().filter(|r| r.header().tgid == gc) {
        assert_eq!(r.header().session_id, session, "{r:?}");
    }

    let args: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::ExecArgs {
                header,
                argv,
                truncated,
            } if header.tgid == gc => Some((header.tid, argv.clone(), *truncated)),
            _ => None,
        })
        .collect();
    assert_eq!(
        args,
        [(
            gc,
            vec![b"true".to_vec(), b"kernel-records".to_vec()],
            false
        )]
    );
    let execs: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Exec {
                header,
                old_tid,
                filename,
            } => Some((header.tgid, header.tid, *old_tid, filename.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(execs, [(gc, gc, gc, b"/bin/true".to_vec())]);
    for t in [pid, gc] {
        let exits: Vec<bool> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Exit { header, group_dead } if header.tgid == t => {
                    assert_eq!(header.tid, t);
                    Some(*group_dead)
                }
                _ => None,
            })
            .collect();
        assert_eq!(exits, [true], "exit of {t}");
    }
    // Exit removed the session entries.
    let k = h.kernel.lock().unwrap();
    assert_eq!((k.kernel.session_of(pid), k.kernel.session_of(gc)), (0, 0));
}

/// chdir and fchdir are reported for session processes only.
#[test]
fn working_directory() {
    let Some(h) = harness("working_directory") else {
        return;
    };
    let (d, session) = h.scratch("cwd");
    let cd = cstr(&d);
    let change = || {
        // SAFETY: raw syscalls on the prepared string and this child's descriptor.
        unsafe {
            if libc::syscall(libc::SYS_chdir, cd.as_ptr()) != 0 {
                return 1;
            }
            let fd = libc::syscall(
                libc::SYS_openat,
                AT_FDCWD,
                cd.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            );
            if fd < 0 || libc::syscall(libc::SYS_fchdir, fd) != 0 {
                return 2;
            }
            0
        }
    };
    let member = h.run(Some(session), change);
    let outsider = h.run(None, change);
    let recs = h.records_until_exit(&[member, outsider]);
    by(&recs, member, session);
    let mine: Vec<Record> = recs
        .iter()
        .filter(|r| r.header().tgid == member)
        .cloned()
        .collect();
    let c = enter(&mine, SysOp::Chdir);
    assert_eq!(c.path1, bytes(&d));
    assert_eq!(result(&mine, SysOp::Chdir), 0);
    let f = enter(&mine, SysOp::Fchdir);
    assert!(f.fd >= 0 && f.path1.is_empty(), "{f:?}");
    assert_eq!(result(&mine, SysOp::Fchdir), 0);
    assert!(
        !recs
            .iter()
            .any(|r| r.header().tgid == outsider && matches!(r, Record::Syscall(_))),
        "{recs:#?}"
    );
}

/// Outside sessions, a path operation is reported when a path starts with a watched
/// prefix, and only then.
#[test]
fn watched_prefix_outside_sessions() {
    let Some(h) = harness("watched_prefix_outside_sessions") else {
        return;
    };
    let (d, _) = h.scratch("unwatched");
    let w = h.root.join("watched");
    let (inside, outside, moved) = (w.join("prefix-in"), d.join("out"), w.join("moved-in"));
    let (ci, co, cm) = (cstr(&inside), cstr(&outside), cstr(&moved));
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let pid = h.run(None, || {
        // SAFETY: raw syscalls on the prepared strings and this child's descriptors.
        unsafe {
            let a = libc::syscall(libc::SYS_openat, AT_FDCWD, ci.as_ptr(), flags, 0o600);
            let b = libc::syscall(libc::SYS_openat, AT_FDCWD, co.as_ptr(), flags, 0o600);
            if a < 0 || b < 0 {
                return 1;
            }
            // Only the new name is watched.
            let at = AT_FDCWD;
            libc::syscall(libc::SYS_renameat2, at, co.as_ptr(), at, cm.as_ptr(), 0) as i32
        }
    });
    let recs = h.records_until_exit(&[pid]);
    by(&recs, pid, 0);
    let opens: Vec<&[u8]> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Syscall(s) if s.op == SysOp::Openat => Some(s.path1.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [bytes(&inside).as_slice()], "{recs:#?}");
    let r = enter(&recs, SysOp::Renameat2);
    assert_eq!(
        (r.path1.clone(), r.path2.clone()),
        (bytes(&outside), bytes(&moved))
    );
    assert_eq!(result(&recs, SysOp::Renameat2), 0);
}
