//! From a completed syscall (enter record + return value) to an [`Observation`]:
//! which event kind it is, which paths it names (resolved), and its details.
use std::time::Instant;

use monitor_common::{AT_FDCWD, SysOp};

use crate::{
    event::{Details, Kind, Source, open_flag_names},
    kernel::decode::SyscallRecord,
    observe::correlate::Observation,
    observe::procs::proctable::ProcTable,
    observe::procs::resolve::{DirCache, Resolved, resolve},
    os::procfs,
};

const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const O_NOFOLLOW: u32 = 0o400000;
const AT_SYMLINK_NOFOLLOW: u32 = 0x100;
const AT_REMOVEDIR: u32 = 0x200;
const AT_SYMLINK_FOLLOW: u32 = 0x400;

/// What a completed syscall means for the daemon.
pub enum Outcome {
    /// A write-like operation to report (if its path is watched).
    Op(Box<Observation>),
    /// The working directory of the process changed.
    Chdir(Vec<u8>),
    /// The working directory of the process changed to a directory the daemon cannot
    /// name: relative paths of the process are unresolved until its next chdir.
    CwdUnknown,
    /// Nothing to report (failed chdir, ...).
    Nothing,
}

fn fd_path(procs: &ProcTable, tgid: u32, fd: i32) -> Resolved {
    match procfs::fd_path_or_live(procs.fd_path(tgid, fd).map(<[u8]>::to_vec), tgid, fd) {
        Some(path) => Resolved {
            path,
            unresolved: false,
        },
        None => Resolved {
            path: format!("<fd {fd}>").into_bytes(),
            unresolved: true,
        },
    }
}

fn mode_str(mode: u32) -> Option<String> {
    Some(format!("{:04o}", mode & 0o7777))
}

fn owner(v: u32) -> Option<i64> {
    Some(if v == u32::MAX { -1 } else { i64::from(v) })
}

/// Interpret syscall `s` that returned `ret` (None when its exit was never seen).
pub fn interpret(
    procs: &ProcTable,
    dirs: &mut DirCache,
    s: &SyscallRecord,
    ret: Option<i64>,
    time_ns: i128,
) -> Outcome {
    let tgid = s.header.tgid;
    let p1 = |dirs: &mut DirCache, follow| resolve(procs, dirs, tgid, s.dfd1, &s.path1, follow);
    let p2 = |dirs: &mut DirCache, follow| resolve(procs, dirs, tgid, s.dfd2, &s.path2, follow);
    let mut d = Details::default();
    let (kind, path, target): (Kind, Resolved, Option<Vec<u8>>) = match s.op {
        SysOp::Open | SysOp::Openat | SysOp::Openat2 | SysOp::Creat => {
            let created =
                s.flags & (O_CREAT | O_EXCL) == (O_CREAT | O_EXCL) && ret.is_some_and(|r| r >= 0);
            let follow =
                s.flags & O_NOFOLLOW == 0 && s.flags & (O_CREAT | O_EXCL) != (O_CREAT | O_EXCL);
            d.flags = Some(open_flag_names(s.flags));
            if s.flags & O_CREAT != 0 {
                d.mode = mode_str(s.mode);
            }
            (
                if created {
                    Kind::Create
                } else {
                    Kind::OpenWrite
                },
                p1(dirs, follow),
                None,
            )
        }
        SysOp::Rename | SysOp::Renameat | SysOp::Renameat2 => {
            let t = p2(dirs, false);
            d.unresolved |= t.unresolved;
            (Kind::Rename, p1(dirs, false), Some(t.path))
        }
        SysOp::Unlink | SysOp::Unlinkat | SysOp::Rmdir => {
            d.dir = s.op == SysOp::Rmdir || s.flags & AT_REMOVEDIR != 0;
            (Kind::Unlink, p1(dirs, false), None)
        }
        SysOp::Truncate => {
            d.length = Some(s.length);
            (Kind::Truncate, p1(dirs, true), None)
        }
        SysOp::Ftruncate => {
            d.length = Some(s.length);
            (Kind::Truncate, fd_path(procs, tgid, s.fd), None)
        }
        SysOp::Chmod | SysOp::Fchmodat | SysOp::Fchmodat2 => {
            d.mode = mode_str(s.mode);
            let follow = !(s.op == SysOp::Fchmodat2 && s.flags & AT_SYMLINK_NOFOLLOW != 0);
            (Kind::Chmod, p1(dirs, follow), None)
        }
        SysOp::Fchmod => {
            d.mode = mode_str(s.mode);
            (Kind::Chmod, fd_path(procs, tgid, s.fd), None)
        }
        SysOp::Chown | SysOp::Lchown | SysOp::Fchownat => {
            d.owner = owner(s.arg_uid);
            d.group = owner(s.arg_gid);
            let follow = s.op == SysOp::Chown
                || (s.op == SysOp::Fchownat && s.flags & AT_SYMLINK_NOFOLLOW == 0);
            (Kind::Chown, p1(dirs, follow), None)
        }
        SysOp::Fchown => {
            d.owner = owner(s.arg_uid);
            d.group = owner(s.arg_gid);
            (Kind::Chown, fd_path(procs, tgid, s.fd), None)
        }
        SysOp::Link | SysOp::Linkat => {
            let t = p2(dirs, false);
            d.unresolved |= t.unresolved;
            (
                Kind::Link,
                p1(dirs, s.flags & AT_SYMLINK_FOLLOW != 0),
                Some(t.path),
            )
        }
        SysOp::Symlink | SysOp::Symlinkat => {
            // path: the new link; target: its content, as given (not resolved).
            (Kind::Symlink, p2(dirs, false), Some(s.path1.clone()))
        }
        SysOp::Mkdir | SysOp::Mkdirat => {
            d.dir = true;
            d.mode = mode_str(s.mode);
            (Kind::Mkdir, p1(dirs, false), None)
        }
        SysOp::Chdir => {
            return match ret {
                Some(0) => {
                    let r = resolve(procs, dirs, tgid, AT_FDCWD, &s.path1, true);
                    if r.unresolved {
                        // Relative to a directory the daemon does not know.
                        Outcome::CwdUnknown
                    } else {
                        Outcome::Chdir(r.path)
                    }
                }
                _ => Outcome::Nothing,
            };
        }
        SysOp::Fchdir => {
            return match ret {
                Some(0) => {
                    let r = fd_path(procs, tgid, s.fd);
                    if r.unresolved {
                        // A directory opened read-only is not tracked, and the process may
                        // be gone or elsewhere by now (`mkdir -p a/b`: fchdir(a),
                        // mkdir("b"), exit): the old directory is certainly wrong, and
                        // /proc shows where it is now, not then. Unknown is honest.
                        Outcome::CwdUnknown
                    } else {
                        Outcome::Chdir(r.path)
                    }
                }
                _ => Outcome::Nothing,
            };
        }
        SysOp::Write | SysOp::Pwrite64 | SysOp::Writev | SysOp::Pwritev | SysOp::Pwritev2 => {
            return Outcome::Nothing;
        }
    };
    d.unresolved |= path.unresolved;
    Outcome::Op(Box::new(Observation {
        kind,
        path: path.path.into(),
        target: target.map(Into::into),
        tid: s.header.tid,
        tgid,
        result: ret,
        source: Source::Ebpf,
        time_ns,
        details: d,
        session: s.header.session_id,
        uid: Some(s.header.uid),
        comm: s.header.comm,
        open_flags: s.flags,
        attrib: false,
        arrived: Instant::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::{Comm, Header};

    fn rec(op: SysOp, p1: &[u8], p2: &[u8], flags: u32) -> SyscallRecord {
        SyscallRecord {
            header: Header {
                flags: 0,
                ktime_ns: 0,
                tgid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                session_id: 3,
                cgroup_id: 0,
                comm: Comm::new(b"mv"),
            },
            op,
            flags,
            dfd1: AT_FDCWD,
            dfd2: AT_FDCWD,
            fd: -1,
            mode: 0o644,
            arg_uid: u32::MAX,
            arg_gid: 0,
            length: 0,
            path1: p1.to_vec(),
            path2: p2.to_vec(),
        }
    }

    fn op(o: Outcome) -> Observation {
        match o {
            Outcome::Op(o) => *o,
            _ => panic!("expected an operation"),
        }
    }

    #[test]
    fn kinds_and_paths() {
        let t = ProcTable::default();
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Renameat2, b"/tmp/x", b"/etc/y.conf", 0),
            Some(0),
            0,
        ));
        assert_eq!(
            (o.kind, &o.path[..], o.target.as_deref()),
            (Kind::Rename, &b"/tmp/x"[..], Some(&b"/etc/y.conf"[..]))
        );
        assert_eq!(o.session, 3);
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Openat, b"/nonexistent/a", b"", 0o301),
            Some(3),
            0,
        ));
        assert_eq!(o.kind, Kind::Create, "O_CREAT|O_EXCL success creates");
        assert_eq!(o.details.flags.as_deref(), Some("O_WRONLY|O_CREAT|O_EXCL"));
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Openat, b"/nonexistent/a", b"", 0o1101),
            Some(3),
            0,
        ));
        assert_eq!(o.kind, Kind::OpenWrite);
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Unlinkat, b"/nonexistent/d", b"", AT_REMOVEDIR),
            Some(0),
            0,
        ));
        assert!(o.details.dir);
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Symlink, b"../target", b"/nonexistent/ln", 0),
            Some(0),
            0,
        ));
        assert_eq!(
            (o.kind, &o.path[..], o.target.as_deref()),
            (
                Kind::Symlink,
                &b"/nonexistent/ln"[..],
                Some(&b"../target"[..])
            )
        );
        let o = op(interpret(
            &t,
            &mut DirCache::default(),
            &rec(SysOp::Fchownat, b"/nonexistent/f", b"", 0),
            Some(-1),
            0,
        ));
        assert_eq!(
            (o.details.owner, o.details.group, o.result),
            (Some(-1), Some(0), Some(-1))
        );
    }

    #[test]
    fn chdir_updates_cwd_only_on_success() {
        let t = ProcTable::default();
        assert!(
            matches!(interpret(&t, &mut DirCache::default(), &rec(SysOp::Chdir, b"/", b"", 0), Some(0), 0), Outcome::Chdir(p) if p == b"/")
        );
        assert!(matches!(
            interpret(
                &t,
                &mut DirCache::default(),
                &rec(SysOp::Chdir, b"/", b"", 0),
                Some(-2),
                0
            ),
            Outcome::Nothing
        ));
    }
}
