//! The process table: what the daemon knows of every process, built from a `/proc` scan
//! at start and then from the kernel's fork/exec/exit records, so that a short-lived
//! writer (`sed`, `mv`) is still described after it has exited.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::kernel::decode::Header;
use crate::os::procfs;

/// How long an exited process stays in the table for late attribution.
pub const EXITED_RETENTION: Duration = Duration::from_secs(30);
/// Longest ancestor chain reported (guards against cycles from pid reuse).
pub const MAX_ANCESTORS: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: Vec<u8>,
    pub exe: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub argv_truncated: bool,
    /// Current working directory, when known.
    pub cwd: Option<Vec<u8>>,
    /// Agent session (0 = none).
    pub session: u64,
    pub cgroup_id: u64,
    /// Created by a fork record and not yet confirmed as a process: may be a thread.
    pub tentative: bool,
    pub exited: Option<Instant>,
}

#[derive(Default)]
pub struct ProcTable {
    procs: HashMap<u32, Proc>,
    /// argv of exec attempts, by calling tid, until the matching exec record.
    pending_argv: HashMap<u32, (Vec<Vec<u8>>, bool, Instant)>,
    /// (tgid, fd) -> path of files opened by reported opens (shared with the
    /// observations of writes through them).
    fds: HashMap<(u32, i32), Arc<[u8]>>,
    /// Bumped by every change to what [`ProcTable::get`] or [`ProcTable::ancestors`]
    /// return for any process (so descriptions built from them can be cached).
    generation: u64,
}

/// Describe a live process from `/proc` (None if it is gone).
pub fn proc_from_procfs(pid: u32) -> Option<Proc> {
    let stat = procfs::read(pid, "stat")?;
    // "pid (comm) state ppid ...": comm may contain ')' so split at the last one.
    let close = stat.iter().rposition(|&c| c == b')')?;
    let open = stat.iter().position(|&c| c == b'(')?;
    let comm = stat.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let ppid = rest.split(' ').nth(1)?.parse().ok()?;
    let status = procfs::read(pid, "status").unwrap_or_default();
    let uid = status
        .split(|&c| c == b'\n')
        .find(|l| l.starts_with(b"Uid:"))
        .and_then(|l| std::str::from_utf8(&l[4..]).ok())
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX);
    let argv = procfs::read(pid, "cmdline")
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        uid,
        comm,
        exe: procfs::link(pid, "exe").unwrap_or_default(),
        argv,
        argv_truncated: false,
        cwd: procfs::link(pid, "cwd"),
        session: 0,
        cgroup_id: 0,
        tentative: false,
        exited: None,
    })
}

impl ProcTable {
    /// Fill the table from `/proc` (processes that started before the daemon).
    pub fn scan_procfs(&mut self) -> usize {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(p) = proc_from_procfs(pid) {
                self.procs.insert(pid, p);
            }
        }
        self.generation += 1;
        self.procs.len()
    }

    #[cfg(test)]
    pub fn insert_for_test(&mut self, p: Proc) {
        self.procs.insert(p.pid, p);
        self.generation += 1;
    }

    /// Changes with every change of any process's description (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Look a process up, falling back to `/proc` for one the table missed.
    pub fn get_or_load(&mut self, pid: u32) -> Option<&Proc> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.procs.entry(pid) {
            let p = proc_from_procfs(pid)?;
            e.insert(p);
            self.generation += 1;
        }
        self.procs.get(&pid)
    }

    pub fn on_fork(&mut self, parent: &Header, child_pid: u32) {
        let mut child = match self.procs.get(&parent.tgid) {
            Some(p) => p.clone(),
            // A parent the daemon never saw start (a session's root, started before its
            // session): described from procfs now, its working directory above all. The
            // child's own, read later when a relative path needs it, may have moved on by
            // then (`mkdir -p c/d` creates `c`, then chdirs into it at once).
            None => match proc_from_procfs(parent.tgid) {
                Some(mut p) => {
                    p.session = parent.session_id;
                    self.procs.insert(parent.tgid, p.clone());
                    p
                }
                None => Proc {
                    comm: parent.comm.to_vec(),
                    uid: parent.uid,
                    ..Proc::default()
                },
            },
        };
        child.pid = child_pid;
        child.ppid = parent.tgid;
        child.session = parent.session_id;
        child.tentative = true;
        child.exited = None;
        self.procs.insert(child_pid, child);
        self.generation += 1;
    }

    pub fn on_exec_args(&mut self, h: &Header, argv: Vec<Vec<u8>>, truncated: bool) {
        self.pending_argv
            .insert(h.tid, (argv, truncated, Instant::now()));
    }

    pub fn on_exec(&mut self, h: &Header, old_tid: u32, filename: Vec<u8>) {
        let (argv, truncated) = match self.pending_argv.remove(&old_tid) {
            Some((argv, t, _)) => (argv, t),
            None => (
                procfs::read(h.tgid, "cmdline")
                    .map(|c| {
                        c.split(|&b| b == 0)
                            .filter(|a| !a.is_empty())
                            .map(<[u8]>::to_vec)
                            .collect()
                    })
                    .unwrap_or_default(),
                false,
            ),
        };
        self.generation += 1;
        let fallback = || proc_from_procfs(h.tgid).unwrap_or_default();
        let p = self.procs.entry(h.tgid).or_insert_with(fallback);
        p.pid = h.tgid;
        p.uid = h.uid;
        p.comm = h.comm.to_vec();
        p.exe = filename;
        p.argv = argv;
        p.argv_truncated = truncated;
        p.session = h.session_id;
        p.cgroup_id = h.cgroup_id;
        p.tentative = false;
        p.exited = None;
        // The cwd copied at fork is stale if the child chdir'd before exec (as
        // posix_spawn/Command::current_dir do) outside a session, where chdir is not traced.
        if let Some(cwd) = procfs::link(h.tgid, "cwd") {
            p.cwd = Some(cwd);
        }
        // exec closes O_CLOEXEC descriptors; forget them all (reopened ones are re-reported).
        self.fds.retain(|(tgid, _), _| *tgid != h.tgid);
    }

    /// Returns the descriptors the process had tracked, so the kernel map can drop them.
    pub fn on_exit(&mut self, h: &Header, group_dead: bool) -> Vec<i32> {
        if h.tid != h.tgid {
            // A thread: drop the entry its creation made, if it was never a process.
            if self.procs.get(&h.tid).is_some_and(|p| p.tentative) {
                self.procs.remove(&h.tid);
                self.generation += 1;
            }
        }
        if !group_dead {
            return Vec::new();
        }
        if let Some(p) = self.procs.get_mut(&h.tgid) {
            p.exited = Some(Instant::now());
            p.tentative = false;
        }
        let mut fds = Vec::new();
        self.fds.retain(|(tgid, fd), _| {
            if *tgid == h.tgid {
                fds.push(*fd);
                false
            } else {
                true
            }
        });
        fds
    }

    /// Record a process's kernel-side session (seen on any of its records).
    pub fn note_session(&mut self, h: &Header) {
        if let Some(p) = self.procs.get_mut(&h.tgid) {
            p.session = h.session_id;
        }
    }

    pub fn set_session(&mut self, pid: u32, session: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.session = session;
        }
    }

    pub fn set_cwd(&mut self, pid: u32, cwd: Vec<u8>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.cwd = Some(cwd);
            self.generation += 1;
        }
    }

    /// The working directory of `pid` is not known any more (see `Outcome::CwdUnknown`):
    /// recorded as an empty path, which path resolution treats as unknown (without asking
    /// `/proc`, which would tell the directory of a later moment). Inherited at fork.
    pub fn forget_cwd(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.cwd = Some(Vec::new());
            self.generation += 1;
        }
    }

    pub fn set_fd(&mut self, tgid: u32, fd: i32, path: Arc<[u8]>) {
        self.fds.insert((tgid, fd), path);
    }

    pub fn fd_path(&self, tgid: u32, fd: i32) -> Option<&[u8]> {
        self.fds.get(&(tgid, fd)).map(|p| &p[..])
    }

    /// [`ProcTable::fd_path`], shared rather than copied.
    pub fn fd_path_shared(&self, tgid: u32, fd: i32) -> Option<Arc<[u8]>> {
        self.fds.get(&(tgid, fd)).cloned()
    }

    /// Live descendants of `pid` (children, grandchildren, ...).
    pub fn descendants(&self, pid: u32) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in self.procs.values().filter(|p| p.exited.is_none()) {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut out = Vec::new();
        let mut stack = vec![pid];
        while let Some(p) = stack.pop() {
            for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                if c != pid && !out.contains(&c) {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
        out
    }

    /// Of `sessions`, those with no live process left (one pass over the table).
    /// Session members not known to have exited for which `alive` says no: their exit
    /// record was lost (ring buffer full). Each is marked exited now, like an exit record
    /// would, so its session can end; returns each one's tracked descriptors (for the
    /// kernel map), as [`ProcTable::on_exit`] does.
    pub fn reap_vanished(&mut self, alive: impl Fn(u32) -> bool) -> Vec<(u32, Vec<i32>)> {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| p.exited.is_none() && p.session != 0 && !alive(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        let now = Instant::now();
        let mut out = Vec::with_capacity(gone.len());
        for pid in gone {
            if let Some(p) = self.procs.get_mut(&pid) {
                if p.tentative {
                    self.procs.remove(&pid);
                    self.generation += 1;
                } else {
                    p.exited = Some(now);
                }
            }
            let mut fds = Vec::new();
            self.fds.retain(|(tgid, fd), _| {
                if *tgid == pid {
                    fds.push(*fd);
                    false
                } else {
                    true
                }
            });
            out.push((pid, fds));
        }
        out
    }

    pub fn sessions_without_members(&self, sessions: &[u64]) -> Vec<u64> {
        let alive: std::collections::HashSet<u64> = self
            .procs
            .values()
            .filter(|p| p.exited.is_none() && p.session != 0)
            .map(|p| p.session)
            .collect();
        sessions
            .iter()
            .copied()
            .filter(|s| !alive.contains(s))
            .collect()
    }

    /// Parent first, up to pid 1 or the first unknown process.
    pub fn ancestors(&self, pid: u32) -> Vec<&Proc> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|p| p.ppid);
        while let Some(ppid) = cur {
            if ppid == 0 || out.len() >= MAX_ANCESTORS {
                break;
            }
            let Some(p) = self.procs.get(&ppid) else {
                break;
            };
            out.push(p);
            if ppid == 1 {
                break;
            }
            cur = Some(p.ppid);
        }
        out
    }

    /// Drop exited processes past their retention and stale exec argv.
    pub fn gc(&mut self, now: Instant) {
        let before = self.procs.len();
        self.procs.retain(|_, p| {
            p.exited
                .is_none_or(|t| now.duration_since(t) < EXITED_RETENTION)
        });
        if self.procs.len() != before {
            self.generation += 1;
        }
        self.pending_argv
            .retain(|_, (_, _, t)| now.duration_since(*t) < EXITED_RETENTION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::Comm;

    /// A pid no live process can have (above the kernel's maximum).
    const PID_UNUSED: u32 = 4_194_304 + 11;

    fn hdr(tgid: u32, tid: u32, session: u64) -> Header {
        Header {
            flags: 0,
            ktime_ns: 0,
            tgid,
            tid,
            uid: 0,
            gid: 0,
            session_id: session,
            cgroup_id: 0,
            comm: Comm::new(b"sh"),
        }
    }

    #[test]
    fn fork_exec_exit_lifecycle() {
        let mut t = ProcTable::default();
        t.procs.insert(
            10,
            Proc {
                pid: 10,
                ppid: 1,
                comm: b"bash".to_vec(),
                cwd: Some(b"/srv".to_vec()),
                ..Proc::default()
            },
        );
        t.on_fork(&hdr(10, 10, 7), 11);
        assert!(
            t.get(11)
                .is_some_and(|p| p.tentative && p.ppid == 10 && p.session == 7)
        );
        assert_eq!(
            t.get(11).and_then(|p| p.cwd.clone()),
            Some(b"/srv".to_vec())
        );
        t.on_exec_args(
            &hdr(11, 11, 7),
            vec![b"sed".to_vec(), b"-i".to_vec()],
            false,
        );
        t.on_exec(
            &Header {
                comm: Comm::new(b"sed"),
                ..hdr(11, 11, 7)
            },
            11,
            b"/usr/bin/sed".to_vec(),
        );
        let p = t.get(11).expect("present");
        assert!(!p.tentative);
        assert_eq!(p.argv, vec![b"sed".to_vec(), b"-i".to_vec()]);
        assert_eq!(p.exe, b"/usr/bin/sed");
        t.set_fd(11, 3, b"/etc/x"[..].into());
        assert_eq!(t.on_exit(&hdr(11, 11, 7), true), vec![3]);
        assert!(
            t.get(11).is_some_and(|p| p.exited.is_some()),
            "kept after exit for attribution"
        );
        assert_eq!(t.sessions_without_members(&[7, 0]), vec![7, 0]);
        t.gc(Instant::now() + EXITED_RETENTION + Duration::from_secs(1));
        assert!(t.get(11).is_none());
    }

    #[test]
    fn a_child_of_an_unknown_parent_gets_the_parents_cwd_at_once() {
        let mut t = ProcTable::default();
        let me = std::process::id();
        let mut h = hdr(me, me, 9);
        h.uid = 0;
        t.on_fork(&h, PID_UNUSED);
        let cwd = std::env::current_dir().unwrap();
        let want = Some(cwd.as_os_str().as_encoded_bytes().to_vec());
        assert_eq!(t.get(PID_UNUSED).and_then(|p| p.cwd.clone()), want);
        assert_eq!(
            t.get(me).map(|p| p.session),
            Some(9),
            "the parent is known now"
        );
    }

    #[test]
    fn a_member_gone_without_its_exit_record_is_reaped() {
        let mut t = ProcTable::default();
        for (pid, session) in [(20, 7), (21, 7), (22, 0)] {
            t.procs.insert(
                pid,
                Proc {
                    pid,
                    ppid: 1,
                    session,
                    ..Proc::default()
                },
            );
        }
        t.set_fd(21, 4, b"/etc/x"[..].into());
        assert!(t.sessions_without_members(&[7]).is_empty());
        // 21's exit record was lost; 20 is alive; 22 belongs to no session (not checked).
        let gone = t.reap_vanished(|pid| pid == 20);
        assert_eq!(gone, vec![(21, vec![4])]);
        assert!(t.get(21).is_some_and(|p| p.exited.is_some()));
        assert!(t.get(22).is_some_and(|p| p.exited.is_none()));
        assert!(
            t.sessions_without_members(&[7]).is_empty(),
            "20 is still there"
        );
        assert_eq!(t.reap_vanished(|_| false), vec![(20, vec![])]);
        assert_eq!(t.sessions_without_members(&[7]), vec![7]);
        assert!(t.reap_vanished(|_| false).is_empty(), "reaped once");
    }

    #[test]
    fn generation_moves_with_descriptions_only() {
        let mut t = ProcTable::default();
        t.procs.insert(
            30,
            Proc {
                pid: 30,
                ..Proc::default()
            },
        );
        let g = t.generation();
        t.set_fd(30, 3, b"/etc/x"[..].into());
        t.set_session(30, 4);
        t.note_session(&hdr(30, 30, 4));
        assert_eq!(
            t.generation(),
            g,
            "fds and sessions are not part of descriptions"
        );
        t.set_cwd(30, b"/srv".to_vec());
        let g2 = t.generation();
        assert_ne!(g2, g);
        t.on_fork(&hdr(30, 30, 4), 31);
        let g3 = t.generation();
        assert_ne!(g3, g2);
        t.on_exec(&hdr(31, 31, 4), 31, b"/bin/true".to_vec());
        assert_ne!(t.generation(), g3);
    }

    #[test]
    fn thread_entries_are_dropped_at_thread_exit() {
        let mut t = ProcTable::default();
        t.procs.insert(
            20,
            Proc {
                pid: 20,
                ..Proc::default()
            },
        );
        t.on_fork(&hdr(20, 20, 0), 21);
        t.on_exit(&hdr(20, 21, 0), false);
        assert!(t.get(21).is_none());
        assert!(t.get(20).is_some_and(|p| p.exited.is_none()));
    }

    #[test]
    fn ancestors_and_descendants() {
        let mut t = ProcTable::default();
        for (pid, ppid) in [(1, 0), (5, 1), (6, 5), (7, 6), (8, 5)] {
            t.procs.insert(
                pid,
                Proc {
                    pid,
                    ppid,
                    ..Proc::default()
                },
            );
        }
        let a: Vec<u32> = t.ancestors(7).iter().map(|p| p.pid).collect();
        assert_eq!(a, vec![6, 5, 1]);
        let mut d = t.descendants(5);
        d.sort();
        assert_eq!(d, vec![6, 7, 8]);
    }

    #[test]
    fn ancestor_cycle_is_bounded() {
        let mut t = ProcTable::default();
        t.procs.insert(
            2,
            Proc {
                pid: 2,
                ppid: 3,
                ..Proc::default()
            },
        );
        t.procs.insert(
            3,
            Proc {
                pid: 3,
                ppid: 2,
                ..Proc::default()
            },
        );
        assert_eq!(t.ancestors(2).len(), MAX_ANCESTORS);
    }

    #[test]
    fn procfs_describes_this_process() {
        let me = std::process::id();
        let p = proc_from_procfs(me).expect("own /proc entry");
        assert_eq!(p.pid, me);
        assert!(!p.argv.is_empty());
        assert!(p.cwd.is_some());
    }
}
