//! Watched roots: remembered by their entry in the parent, and marked again when a root
//! that was removed appears again.
use super::*;

impl NotifyWatcher {
    /// Record (parent handle, name) of a tree root and of each of its ancestors. Best
    /// effort: what cannot be identified is logged and its renames are not recognised.
    pub(super) fn remember_root_entry(&mut self, canon: &Path) {
        match entry_key(canon) {
            Ok(Some(k)) => {
                self.root_entries.insert(k, canon.to_path_buf());
            }
            Ok(None) => {}
            Err(e) => {
                debug!(root = %canon.display(), error = %e, "fanotify: parent of root not identifiable; renames of the root will not be seen")
            }
        }
        for a in canon.ancestors().skip(1) {
            match entry_key(a) {
                Ok(Some(k)) => {
                    self.ancestors.insert(k);
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(dir = %a.display(), error = %e, "fanotify: ancestor of a root not identifiable")
                }
            }
        }
    }

    /// An ancestor of a root was renamed: learn where the roots are now.
    pub(super) fn refresh_roots(&mut self) {
        let roots: Vec<(HandleKey, PathBuf)> = self
            .roots
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        self.ancestors.clear();
        for (key, old) in roots {
            let now = self.resolve_dir(&key).unwrap_or_else(|| old.clone());
            if now != old {
                warn!(old = %old.display(), now = %now.display(), "fanotify: a watched tree moved with a renamed ancestor; it stays watched at its new path");
                self.roots.insert(key, now.clone());
            }
            for a in now.ancestors().skip(1) {
                if let Ok(Some(k)) = entry_key(a) {
                    self.ancestors.insert(k);
                }
            }
        }
    }

    pub(super) fn is_root(&self, path: &Path) -> bool {
        self.roots.values().any(|r| r == path)
    }

    /// A root was deleted: mark its parent for creations (unless the parent is watched
    /// anyway), so that a directory made at the root's path is watched again; if one is
    /// already there, watch it now (reported as created, pid 0).
    pub(super) fn await_root(&mut self, root: &Path, out: &mut Vec<FanEvent>) {
        let Some(parent) = root.parent() else {
            return;
        };
        let placed = fs::open_dir(parent).and_then(|fd| {
            let fs = fs::fstatfs(fd.as_fd())?;
            let (handle_type, handle) = fs::handle_of_fd(fd.as_fd())?;
            let key = HandleKey {
                fsid: fs.fsid,
                handle_type,
                handle: handle.into(),
            };
            if !self.marks.contains_key(&key) && !self.root_parents.contains_key(&key) {
                let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR;
                fanotify::mark_fd(self.group_fd(), flags, ROOT_RETURN_MASK, fd.as_fd())?;
                self.root_parents.insert(key, parent.to_path_buf());
            }
            Ok(())
        });
        if let Err(e) = placed {
            self.stats.mark_errors += 1;
            warn!(root = %root.display(), error = %e, "fanotify: cannot watch the parent of a deleted root; a directory made at its path will not be watched");
            return;
        }
        if root.is_dir() {
            out.push(FanEvent {
                mask: FAN_CREATE | FAN_ONDIR,
                pid: 0,
                path: root.to_path_buf(),
                new_path: None,
                is_dir: true,
            });
            self.restore_root(root, Some(0), out);
        }
    }

    /// A directory reappeared at a root's path: watch it (and report what it already
    /// holds, as for a new directory), and drop the parent's creation mark when no other
    /// root of that parent is missing.
    pub(super) fn restore_root(
        &mut self,
        root: &Path,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) {
        let marked = fs::open_dir(root)
            .map_err(|source| FanotifyError::Mark {
                path: root.to_path_buf(),
                source,
            })
            .and_then(|fd| self.mark_tree_from(fd, root, synth_pid, out));
        match marked {
            Ok((n, key)) => {
                warn!(root = %root.display(), marks = n, "fanotify: a directory reappeared at the root of a watched tree; watching it again");
                self.roots.insert(key, root.to_path_buf());
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(root = %root.display(), error = %e, "fanotify: cannot watch the reappeared root");
                return;
            }
        }
        let Some(parent) = root.parent() else {
            return;
        };
        let still_missing = self
            .root_entries
            .values()
            .any(|r| r.parent() == Some(parent) && !self.is_root(r));
        if still_missing {
            return;
        }
        let Some(key) = self
            .root_parents
            .iter()
            .find(|(_, p)| p.as_path() == parent)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.root_parents.remove(&key);
        if let Ok(fd) = fs::open_dir(parent) {
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_ONLYDIR;
            if let Err(e) = fanotify::mark_fd(self.group_fd(), flags, ROOT_RETURN_MASK, fd.as_fd())
            {
                debug!(parent = %parent.display(), error = %e, "fanotify: removing the root-return mark failed");
            }
        }
    }
}
