//! Interpretation: kernel records (directory handle + name) into [`FanEvent`]s with paths,
//! renames with both names, the daemon's own writes left out.
use super::*;

impl NotifyWatcher {
    /// Turn one read buffer into events (bookkeeping included).
    pub(crate) fn process_buffer(&mut self, buf: &[u8]) -> Vec<FanEvent> {
        let parsed = records::parse_buffer(buf);
        if let Some(why) = parsed.truncated {
            self.stats.malformed += 1;
            warn!(
                why,
                bytes = buf.len(),
                "fanotify: malformed event buffer; the rest of it was skipped"
            );
        }
        let mut out = Vec::new();
        for ev in parsed.events {
            self.process_event(ev, &mut out);
        }
        // Drop what this process did itself (after the bookkeeping: a directory the daemon
        // creates inside a tree is still marked).
        let mut own: HashMap<u32, bool> = HashMap::new();
        out.retain(|e| e.mask & FAN_Q_OVERFLOW != 0 || !self.is_own(e.pid, &mut own));
        self.stats.events += out.len() as u64;
        out
    }

    pub(super) fn is_own(&self, pid: u32, memo: &mut HashMap<u32, bool>) -> bool {
        if pid == self.own_pid {
            return true;
        }
        if !self.report_tid || pid == 0 {
            return false;
        }
        // With FAN_REPORT_TID the pid is a thread id: ours if it is one of our threads.
        *memo
            .entry(pid)
            .or_insert_with(|| procfs::is_own_thread(pid))
    }

    pub(super) fn process_event(&mut self, ev: RawEvent, out: &mut Vec<FanEvent>) {
        if ev.fd >= 0 {
            // A group reporting fids never gets event descriptors (the kernel sets
            // FAN_NOFD), so this number is not one the kernel installed for us: closing it
            // could close one of our own descriptors. Leave it alone.
            warn!(
                fd = ev.fd,
                "fanotify: event carries a descriptor in fid mode; ignored"
            );
        }
        if ev.mask & FAN_Q_OVERFLOW != 0 {
            self.stats.overflows += 1;
            warn!(
                "fanotify queue overflow: events were LOST; changes in the watched trees may \
                 have gone unreported"
            );
            out.push(FanEvent {
                mask: FAN_Q_OVERFLOW,
                pid: 0,
                path: PathBuf::new(),
                new_path: None,
                is_dir: false,
            });
            self.rescan_after_overflow();
            return;
        }
        if let Some(why) = ev.malformed {
            self.stats.malformed += 1;
            warn!(
                why,
                mask = format_args!("{:#x}", ev.mask),
                "fanotify: malformed event skipped"
            );
            return;
        }
        let pid = u32::try_from(ev.pid).unwrap_or(0);
        if ev.mask & FAN_RENAME != 0 {
            self.process_rename(&ev, pid, out);
        } else {
            self.process_plain(&ev, pid, out);
        }
    }

    pub(super) fn process_rename(&mut self, ev: &RawEvent, pid: u32, out: &mut Vec<FanEvent>) {
        let old = ev.records.iter().find(|r| r.kind == FidKind::OldDfidName);
        let new = ev.records.iter().find(|r| r.kind == FidKind::NewDfidName);
        if old.is_none() && new.is_none() {
            self.stats.malformed += 1;
            warn!("fanotify: FAN_RENAME without old or new parent record skipped");
            return;
        }
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let old_marked = old.is_some_and(|r| self.marks.contains_key(&r.key));
        let new_marked = new.is_some_and(|r| self.marks.contains_key(&r.key));
        let old_file = old
            .and_then(|r| self.watched_file(r))
            .map(|w| w.path.clone());
        let new_file = new
            .and_then(|r| self.watched_file(r))
            .map(|w| w.path.clone());
        let old_root = old.and_then(|r| self.root_entry(r));
        let new_root = new.and_then(|r| self.root_entry(r));
        let ancestor = old.is_some_and(|r| self.is_ancestor(r));
        if !(old_marked
            || new_marked
            || old_file.is_some()
            || new_file.is_some()
            || old_root.is_some()
            || new_root.is_some()
            || ancestor)
        {
            // Cannot change the path of any marked directory: only marked directories are
            // cached, and they move only with renames inside the trees, of a root, or of
            // an ancestor of a root.
            trace!("fanotify: rename outside the watched set ignored");
            return;
        }
        if is_dir {
            // Cached paths of the moved directory and everything below it are stale.
            // Directory renames in or above the trees are rare: clear the whole cache.
            self.dir_cache.clear();
            self.rename_gen += 1;
        }
        let path = old.map(|r| self.entry_path(r)).unwrap_or_default();
        let new_path = new.map(|r| self.entry_path(r)).unwrap_or_default();
        out.push(FanEvent {
            mask: ev.mask,
            pid,
            path,
            new_path: Some(new_path.clone()),
            is_dir,
        });
        if ancestor && is_dir {
            self.refresh_roots();
        }
        if let Some(root) = &old_root {
            // The configured path no longer holds the tree (typical prelude to swapping in
            // another directory). The moved tree is no longer watched unless it landed in
            // a watched directory.
            warn!(root = %root.display(), new = %new_path.display(), "fanotify: root of a watched tree was renamed away");
            self.roots.retain(|_, p| p != root);
        }
        if is_dir && new_path.is_absolute() {
            if let Some(root) = &new_root {
                // Something was renamed onto a root's path: watch what is there now.
                warn!(root = %root.display(), "fanotify: a directory was renamed onto the root of a watched tree; marking it");
                match fs::open_dir(&new_path)
                    .map_err(|source| FanotifyError::Mark {
                        path: new_path.clone(),
                        source,
                    })
                    .and_then(|fd| self.mark_tree_from(fd, &new_path, None, &mut Vec::new()))
                {
                    Ok((_, key)) => {
                        self.roots.insert(key, root.clone());
                    }
                    Err(e) => {
                        self.stats.mark_errors += 1;
                        warn!(root = %root.display(), error = %e, "fanotify: cannot mark the new root");
                    }
                }
            } else if new_marked {
                self.mark_moved_in(&new_path);
            } else if old_marked || old_root.is_some() {
                self.unmark_moved_out(&new_path);
            }
        }
        if let Some(p) = new_file {
            // Atomic replace of a watched file: the name now holds a new inode.
            match self.mark_file(&p) {
                Ok(_) => {
                    debug!(file = %p.display(), "fanotify: watched file replaced; new inode marked")
                }
                Err(e) => {
                    self.stats.mark_errors += 1;
                    warn!(file = %p.display(), error = %e, "fanotify: watched file replaced but the new one could not be marked");
                }
            }
        }
    }

    pub(super) fn watched_file(&self, r: &FidRecord) -> Option<&WatchedFile> {
        let name = r.name.clone()?;
        self.files.get(&(r.key.clone(), name))
    }

    pub(super) fn process_plain(&mut self, ev: &RawEvent, pid: u32, out: &mut Vec<FanEvent>) {
        let rec = ev.records.iter().find(|r| {
            matches!(
                r.kind,
                FidKind::DfidName | FidKind::Dfid | FidKind::NewDfidName
            )
        });
        let Some(rec) = rec else {
            // No directory information at all: nothing to attach the event to.
            self.stats.unresolved += 1;
            debug!(
                mask = format_args!("{:#x}", ev.mask),
                "fanotify: event without directory record dropped"
            );
            return;
        };
        let is_dir = ev.mask & FAN_ONDIR != 0;
        let mut mask = ev.mask;
        if mask & FAN_DELETE_SELF != 0 {
            // A marked directory was removed: forget it. Only a tree root is reported
            // (its parent is not watched, so nothing else would tell).
            self.marks.remove(&rec.key);
            self.dir_cache.remove(&rec.key);
            if let Some(root) = self.roots.remove(&rec.key) {
                warn!(root = %root.display(), "fanotify: root of a watched tree was deleted; watching for it to reappear");
                out.push(FanEvent {
                    mask: FAN_DELETE_SELF | (mask & FAN_ONDIR),
                    pid,
                    path: root.clone(),
                    new_path: None,
                    is_dir,
                });
                self.await_root(&root, out);
            }
            mask &= !FAN_DELETE_SELF;
            if mask & !FAN_ONDIR == 0 {
                return;
            }
        }
        if mask & FAN_CREATE != 0
            && self.root_parents.contains_key(&rec.key)
            && !self.marks.contains_key(&rec.key)
        {
            // The parent of a deleted root: only the root's return matters here.
            if let Some(root) = self.root_entry(rec).filter(|r| is_dir && !self.is_root(r)) {
                out.push(FanEvent {
                    mask,
                    pid,
                    path: root.clone(),
                    new_path: None,
                    is_dir,
                });
                self.restore_root(&root, Some(pid), out);
            }
            return;
        }
        let path = self.entry_path(rec);
        if path.as_os_str().is_empty() {
            return;
        }
        let parent_marked = self.marks.contains_key(&rec.key);
        out.push(FanEvent {
            mask,
            pid,
            path: path.clone(),
            new_path: None,
            is_dir,
        });
        if !is_dir || !path.is_absolute() {
            return;
        }
        if mask & (FAN_DELETE | FAN_MOVED_FROM) != 0 {
            self.dir_cache.retain(|_, p| !p.starts_with(&path));
        }
        // CREATE|DELETE can be a merged mkdir+rmdir or rmdir+mkdir: the bits do not say
        // which came last, so try to mark (a directory that is gone is skipped quietly).
        if mask & FAN_CREATE != 0 && parent_marked {
            // A new directory: mark it (and whatever already appeared in it) before
            // returning; entries found are reported as created by the same thread.
            self.mark_new_dir(&path, Some(pid), out);
        } else if mask & FAN_MOVED_TO != 0 && parent_marked {
            self.mark_new_dir(&path, None, out);
        }
    }
}

/// A creation event for an entry found in a directory that was only just marked.
pub(super) fn synthesized(path: PathBuf, pid: u32, st: &libc::stat) -> FanEvent {
    let fmt = st.st_mode & libc::S_IFMT;
    let is_dir = fmt == libc::S_IFDIR;
    let mut mask = FAN_CREATE;
    if is_dir {
        mask |= FAN_ONDIR;
    } else if fmt == libc::S_IFREG && st.st_size > 0 {
        // Content was written before we could watch: say so.
        mask |= FAN_MODIFY;
    }
    FanEvent {
        mask,
        pid,
        path,
        new_path: None,
        is_dir,
    }
}
