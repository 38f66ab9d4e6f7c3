//! File handles to paths: the directory cache, and opening a handle the cache lacks.
use super::*;

impl NotifyWatcher {
    pub(super) fn is_ancestor(&self, r: &FidRecord) -> bool {
        r.name
            .clone()
            .is_some_and(|n| self.ancestors.contains(&(r.key.clone(), n)))
    }

    pub(super) fn root_entry(&self, r: &FidRecord) -> Option<PathBuf> {
        let name = r.name.clone()?;
        self.root_entries.get(&(r.key.clone(), name)).cloned()
    }

    /// Path of the entry a fid record names: resolved directory + name ("." or no name:
    /// the directory itself). If the directory cannot be resolved the bare name is
    /// returned (a relative path; empty if there is no name) and `unresolved` counted.
    pub(super) fn entry_path(&mut self, r: &FidRecord) -> PathBuf {
        let name = r.name.as_deref().filter(|n| *n != b".");
        match self.resolve_dir(&r.key) {
            Some(dir) => match name {
                Some(n) => fs::join(&dir, n),
                None => dir,
            },
            None => {
                self.stats.unresolved += 1;
                name.map(|n| PathBuf::from(OsStr::from_bytes(n)))
                    .unwrap_or_default()
            }
        }
    }

    /// Current path of a directory handle (cached); for a marked directory that is gone,
    /// its last known path if no directory was renamed since.
    pub(super) fn resolve_dir(&mut self, key: &HandleKey) -> Option<PathBuf> {
        if let Some(p) = self.dir_cache.get(key) {
            return Some(p.clone());
        }
        let found = self.open_dir_handle(key);
        match (found, self.marks.get_mut(key)) {
            (Some(p), Some(known)) => {
                known.path.clone_from(&p);
                known.generation = self.rename_gen;
                Some(p)
            }
            (Some(p), None) => Some(p),
            (None, Some(known)) if known.generation == self.rename_gen => {
                debug!(path = %known.path.display(), "fanotify: directory gone; using its last known path");
                Some(known.path.clone())
            }
            (None, _) => None,
        }
    }

    /// `open_by_handle_at` + readlink, then cache.
    pub(super) fn open_dir_handle(&mut self, key: &HandleKey) -> Option<PathBuf> {
        let Some(mount_fd) = self.mount_fds.get(&key.fsid) else {
            debug!("fanotify: event on a filesystem without a mount fd; path unknown");
            return None;
        };
        let fd = match fs::open_by_handle(mount_fd.as_fd(), key.handle_type, &key.handle) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.warned_no_cap {
                    self.warned_no_cap = true;
                    warn!(
                        "fanotify: open_by_handle_at refused (EPERM, needs CAP_DAC_READ_SEARCH): \
                         event paths cannot be resolved (bare names or last known paths)"
                    );
                }
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: directory handle does not resolve (deleted?)");
                return None;
            }
        };
        match fs::fstat(fd.as_fd()) {
            Ok(st) if st.st_nlink > 0 => {}
            Ok(_) => {
                debug!("fanotify: directory was deleted; path unknown");
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: fstat of resolved directory failed");
                return None;
            }
        }
        let path = match procfs::own_fd_path(fd.as_fd()) {
            Ok(p) if p.is_absolute() => p,
            Ok(p) => {
                debug!(path = %p.display(), "fanotify: directory not reachable from our root");
                return None;
            }
            Err(e) => {
                debug!(error = %e, "fanotify: readlink of resolved directory failed");
                return None;
            }
        };
        // Only marked directories are cached: renames that move them are all seen (see
        // process_rename). Others (the old parent of a rename from outside, the parent of
        // a single watched file) are resolved afresh each time.
        if self.marks.contains_key(key) {
            if self.dir_cache.len() >= DIR_CACHE_CAP {
                self.dir_cache.clear();
            }
            self.dir_cache.insert(key.clone(), path.clone());
        }
        Some(path)
    }
}
