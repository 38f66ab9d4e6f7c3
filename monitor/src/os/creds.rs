//! Acting with another process's filesystem credentials on the current thread.
//!
//! The session supervisor performs approved operations on a writer's behalf; the kernel
//! must check them against the writer's credentials, not the daemon's. Linux keeps
//! credentials per thread: the raw `setfsuid`, `setfsgid` and `setgroups` syscalls (not
//! glibc's, which apply `setgroups` to every thread of the process) change only the
//! calling thread, and changing the fsuid away from 0 drops the filesystem capabilities
//! (`CAP_DAC_OVERRIDE`, `CAP_CHOWN`, `CAP_FOWNER`, ...) from it until it is set back.
use std::io;

/// The filesystem credentials of a thread, from `/proc/<tid>/status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsCreds {
    /// Filesystem user id.
    pub uid: u32,
    /// Filesystem group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// File mode creation mask.
    pub umask: u32,
}

/// Parses the `Uid:`, `Gid:`, `Groups:` and `Umask:` lines of a `/proc/<tid>/status` text.
pub fn parse_status(text: &str) -> Option<FsCreds> {
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    let mut umask = 0o022;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = v.split_whitespace().nth(3).and_then(|x| x.parse().ok());
        } else if let Some(v) = line.strip_prefix("Gid:") {
            gid = v.split_whitespace().nth(3).and_then(|x| x.parse().ok());
        } else if let Some(v) = line.strip_prefix("Groups:") {
            groups = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("Umask:") {
            umask = u32::from_str_radix(v.trim(), 8).ok()?;
        }
    }
    Some(FsCreds {
        uid: uid?,
        gid: gid?,
        groups,
        umask,
    })
}

/// The filesystem credentials of thread `tid` (`None`: it is gone).
pub fn of_thread(tid: u32) -> Option<FsCreds> {
    Some(status_of(tid)?.1)
}

/// Thread `tid`'s thread group id and filesystem credentials from one read of
/// `/proc/<tid>/status` (the kernel builds that whole text, memory figures included, on
/// every read: read it once per operation, and only when the answer needs it).
pub fn status_of(tid: u32) -> Option<(u32, FsCreds)> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tgid = text
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some((tgid, parse_status(&text)?))
}

fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the raw syscall reads `groups.len()` gids from the pointer, which is valid
    // for that many; it changes this thread's credentials only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::size_t,
            groups.as_ptr(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes an id and returns the previous one; no memory is involved.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

fn set_fsgid(gid: u32) -> u32 {
    // SAFETY: as `set_fsuid`.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// Sets back, when dropped, what [`as_writer`] changed of this thread's credentials.
struct Restore {
    groups: Option<Vec<u32>>,
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(uid) = self.uid {
            set_fsuid(uid);
        }
        if let Some(gid) = self.gid {
            set_fsgid(gid);
        }
        if let Some(groups) = &self.groups {
            let _ = set_groups(groups);
        }
    }
}

/// Runs `f` on this thread with `creds` as its filesystem credentials, and puts the
/// thread's own back afterwards (also if `f` panics). `f` must not move to another thread
/// or yield to an async runtime.
///
/// Only what differs is changed: each `setgroups`, `setfsuid` and `setfsgid` makes the
/// kernel copy and RCU-free a credential set, which was a fifth of the supervisor's time
/// for a caller that runs as the daemon does (root, as agents using `sudo` do).
pub fn as_writer<T>(creds: &FsCreds, f: impl FnOnce() -> T) -> io::Result<T> {
    let own_groups: Vec<u32> = nix::unistd::getgroups()
        .map_err(io::Error::from)?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    let own_uid = set_fsuid(u32::MAX);
    let own_gid = set_fsgid(u32::MAX);
    let mut restore = Restore {
        groups: None,
        uid: None,
        gid: None,
    };
    if !same_set(&own_groups, &creds.groups) {
        set_groups(&creds.groups)?;
        restore.groups = Some(own_groups);
    }
    if creds.gid != own_gid {
        restore.gid = Some(own_gid);
        set_fsgid(creds.gid);
    }
    if creds.uid != own_uid {
        restore.uid = Some(own_uid);
        set_fsuid(creds.uid);
    }
    // setfsuid reports no errors: read the ids back.
    if (restore.uid.is_some() || restore.gid.is_some())
        && (set_fsuid(u32::MAX) != creds.uid || set_fsgid(u32::MAX) != creds.gid)
    {
        drop(restore);
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let out = f();
    drop(restore);
    Ok(out)
}

/// Whether two group lists hold the same groups (the kernel keeps them sorted; /proc and
/// getgroups may list them in another order).
fn same_set(a: &[u32], b: &[u32]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fs_ids_groups_and_umask() {
        let text = "Name:\tx\nUmask:\t0027\nUid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t101\nGroups:\t4 24 27 \n";
        let c = parse_status(text).unwrap();
        assert_eq!(c.uid, 1001);
        assert_eq!(c.gid, 101);
        assert_eq!(c.groups, vec![4, 24, 27]);
        assert_eq!(c.umask, 0o027);
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn an_unprivileged_writer_cannot_write_a_root_only_file() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skip: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("root-only");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let nobody = FsCreds {
            uid: 65534,
            gid: 65534,
            groups: vec![],
            umask: 0o022,
        };
        let r = as_writer(&nobody, || std::fs::OpenOptions::new().write(true).open(&f)).unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        // And the thread is root again afterwards.
        std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    }
}
