//! Classifying fanotify `ATTRIB`: a cache of the mode and owner of watched files tells a
//! chmod from a chown, or from a change of neither (times, xattrs, link count).
use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
};

use super::observation::Observation;
use crate::event::Kind;

/// Mode and owner of watched files, to tell a chmod from a chown (or from a timestamp
/// change) when fanotify reports only `ATTRIB`.
#[derive(Default)]
pub(super) struct StatCache {
    entries: HashMap<Vec<u8>, (u32, u32, u32)>,
}

const STAT_CACHE_MAX: usize = 200_000;

impl StatCache {
    fn stat(path: &[u8]) -> Option<(u32, u32, u32)> {
        let m = std::fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(path))).ok()?;
        Some((m.mode() & 0o7777, m.uid(), m.gid()))
    }

    pub(super) fn prime(&mut self, root: &Path, limit: usize) -> usize {
        let mut stack = vec![root.to_path_buf()];
        let mut n = 0;
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.flatten() {
                if n >= limit || self.entries.len() >= STAT_CACHE_MAX {
                    return n;
                }
                let path = entry.path();
                if let Ok(ft) = entry.file_type()
                    && ft.is_dir()
                {
                    stack.push(path.clone());
                }
                self.refresh(path.as_os_str().as_bytes());
                n += 1;
            }
        }
        n
    }

    /// Keep the cache true after eBPF observation `o`, with a `stat` only where needed:
    /// content-only operations change neither mode nor owner; a file renamed or unlinked
    /// takes its attributes along (known from the syscall's success).
    pub(super) fn after(&mut self, o: &Observation) {
        let succeeded = o.result.is_some_and(|r| r >= 0);
        match o.kind {
            Kind::Write | Kind::OpenWrite | Kind::Truncate => {}
            Kind::Rename if succeeded => {
                let moved = self.entries.remove(&o.path[..]);
                if let Some(to) = o.target.as_deref() {
                    match moved {
                        Some(a) if self.entries.len() < STAT_CACHE_MAX => {
                            self.entries.insert(to.to_vec(), a);
                        }
                        _ => {
                            self.entries.remove(to);
                        }
                    }
                }
            }
            Kind::Unlink if succeeded => {
                self.entries.remove(&o.path[..]);
            }
            _ => self.refresh(&o.path),
        }
    }

    /// Fanotify observation `obs` as it leaves the buffer: an `ATTRIB` classified as
    /// chmod or chown, or `None` when it changed neither; any other observation refreshes
    /// the cache for its paths.
    pub(super) fn settle(&mut self, mut obs: Observation) -> Option<Observation> {
        if obs.attrib {
            obs.kind = self.classify(&obs.path)?;
            obs.attrib = false;
        } else {
            self.refresh(&obs.path);
            if let Some(t) = &obs.target {
                self.refresh(t);
            }
        }
        Some(obs)
    }

    fn refresh(&mut self, path: &[u8]) {
        match Self::stat(path) {
            Some(s) if self.entries.len() < STAT_CACHE_MAX || self.entries.contains_key(path) => {
                self.entries.insert(path.to_vec(), s);
            }
            Some(_) => {}
            None => {
                self.entries.remove(path);
            }
        }
    }

    /// What an ATTRIB on `path` changed: mode, owner, or neither (None).
    fn classify(&mut self, path: &[u8]) -> Option<Kind> {
        let now = Self::stat(path)?;
        let before = self.entries.insert(path.to_vec(), now);
        match before {
            Some(b) if b.0 != now.0 => Some(Kind::Chmod),
            Some(b) if (b.1, b.2) != (now.1, now.2) => Some(Kind::Chown),
            Some(_) => None,
            // Never seen before: report it rather than lose a possible change.
            None => Some(Kind::Chmod),
        }
    }
}
