//! Marks: the filesystems the group watches, directory trees walked and marked, single
//! files, and the directories that appear, move in or out, or must be rescanned.
use super::*;

impl NotifyWatcher {
    /// Identify the filesystem of `fd` (st_dev `dev`). `Ok(None)` for pseudo filesystems.
    /// The first directory seen on a filesystem becomes its mount fd for handle decoding,
    /// and the filesystem gets the rename mark.
    pub(super) fn register_fs(
        &mut self,
        fd: BorrowedFd<'_>,
        dev: u64,
    ) -> io::Result<Option<[u8; 8]>> {
        if let Some(known) = self.dev_fsid.get(&dev) {
            return Ok(*known);
        }
        let fs = sys::fstatfs(fd)?;
        if let Some(name) = pseudo_fs_name(fs.magic) {
            self.dev_fsid.insert(dev, None);
            debug!(fs = name, "fanotify: not entering pseudo filesystem");
            return Ok(None);
        }
        self.dev_fsid.insert(dev, Some(fs.fsid));
        if let std::collections::hash_map::Entry::Vacant(v) = self.mount_fds.entry(fs.fsid) {
            v.insert(sys::mount_root(fd)?);
        }
        if self.rename_sources
            && self.dir_mask & FAN_RENAME != 0
            && !self.sb_rename.contains(&fs.fsid)
        {
            let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
            match sys::fanotify_mark_fd(self.group_fd(), flags, SB_RENAME_MASK, fd) {
                Ok(()) => {
                    self.sb_rename.insert(fs.fsid);
                }
                Err(e) => warn!(
                    error = %e,
                    "fanotify: cannot place the filesystem rename mark; renames from outside a \
                     watched tree into it will have an unknown (empty) old path"
                ),
            }
        }
        Ok(Some(fs.fsid))
    }

    /// Mark one directory; returns its handle key.
    pub(super) fn mark_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        fsid: [u8; 8],
        path: &Path,
    ) -> io::Result<HandleKey> {
        let (handle_type, handle) = sys::handle_of_fd(fd)?;
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR;
        match sys::fanotify_mark_fd(self.group_fd(), flags, self.dir_mask, fd) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.dir_mask == DIR_MASK => {
                // Kernel without FAN_RENAME: fall back once, for good.
                sys::fanotify_mark_fd(self.group_fd(), flags, DIR_MASK_LEGACY, fd)?;
                warn!(
                    "fanotify: kernel refused FAN_RENAME (EINVAL, needs 5.17); using \
                     FAN_MOVED_FROM/FAN_MOVED_TO: a rename becomes two unlinked events"
                );
                self.dir_mask = DIR_MASK_LEGACY;
            }
            Err(e) => return Err(e),
        }
        let key = HandleKey {
            fsid,
            handle_type,
            handle: handle.into(),
        };
        let known = Known {
            path: path.to_path_buf(),
            generation: self.rename_gen,
        };
        self.marks.insert(key.clone(), known);
        Ok(key)
    }

    pub(super) fn unmark_dir(&mut self, fd: BorrowedFd<'_>, fsid: [u8; 8]) -> io::Result<()> {
        let (handle_type, handle) = sys::handle_of_fd(fd)?;
        let key = HandleKey {
            fsid,
            handle_type,
            handle: handle.into(),
        };
        self.dir_cache.remove(&key);
        if self.marks.remove(&key).is_some() {
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_ONLYDIR;
            match sys::fanotify_mark_fd(self.group_fd(), flags, self.dir_mask, fd) {
                Ok(()) => {}
                // Mark already gone (e.g. the kernel dropped it).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Mark the tree whose root directory is open as `fd`. Errors on the root are returned,
    /// errors below are counted. With `synth_pid`, every entry found below the root is also
    /// reported as a synthesized creation event (see `mod.rs`).
    pub(super) fn mark_tree_from(
        &mut self,
        fd: OwnedFd,
        path: &Path,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) -> Result<(usize, HandleKey), FanotifyError> {
        let mark_err = |source| FanotifyError::Mark {
            path: path.to_path_buf(),
            source,
        };
        let st = sys::fstat(fd.as_fd()).map_err(mark_err)?;
        let Some(fsid) = self.register_fs(fd.as_fd(), st.st_dev).map_err(mark_err)? else {
            let magic = sys::fstatfs(fd.as_fd()).map(|f| f.magic).unwrap_or(0);
            return Err(FanotifyError::PseudoFs {
                path: path.to_path_buf(),
                fs: pseudo_fs_name(magic).unwrap_or("pseudo"),
            });
        };
        let key = self.mark_dir(fd.as_fd(), fsid, path).map_err(mark_err)?;
        let root = WalkRoot {
            fd,
            path,
            dev: st.st_dev,
            fsid,
        };
        let below = self.walk(root, WalkOp::Mark, synth_pid, out);
        Ok((1 + below, key))
    }

    /// Walk below `root` (already handled by the caller), applying `op` to every directory.
    /// Returns the number of directories it succeeded on.
    pub(super) fn walk(
        &mut self,
        root: WalkRoot<'_>,
        op: WalkOp,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) -> usize {
        let WalkRoot {
            fd,
            path,
            dev,
            fsid,
        } = root;
        let mut done = 0usize;
        let mut errors = 0u64;
        let mut visited: HashSet<(u64, u64)> = HashSet::new();
        if let Ok(st) = sys::fstat(fd.as_fd()) {
            visited.insert((st.st_dev, st.st_ino));
        }
        let mut stack: Vec<Frame> = Vec::new();
        match sys::list_dir(fd.as_fd()) {
            Ok(entries) => stack.push(Frame {
                fd,
                path: path.to_path_buf(),
                dev,
                fsid,
                depth: 0,
                entries: entries.into_iter(),
            }),
            Err(e) => self.walk_error(op, &mut errors, path, "listing", &e),
        }
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            let name: &CStr = &entry.name;
            let child = sys::join(&frame.path, name.to_bytes());
            let maybe_dir = matches!(entry.file_type, None | Some(nix::dir::Type::Directory));
            if !maybe_dir && synth_pid.is_none() {
                continue;
            }
            let st = match sys::fstatat_nofollow(frame.fd.as_fd(), name) {
                Ok(st) => st,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    self.walk_error(op, &mut errors, &child, "stat", &e);
                    continue;
                }
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if let Some(pid) = synth_pid {
                out.push(synthesized(child.clone(), pid, &st));
            }
            if !is_dir {
                continue;
            }
            if frame.depth + 1 >= MAX_DEPTH {
                let e = io::Error::other(format!("deeper than {MAX_DEPTH} levels"));
                self.walk_error(op, &mut errors, &child, "descending", &e);
                continue;
            }
            if !visited.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            let cfd = match sys::openat_dir(frame.fd.as_fd(), name) {
                Ok(fd) => fd,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    self.walk_error(op, &mut errors, &child, "opening", &e);
                    continue;
                }
            };
            let (cdev, cfsid, depth) = (st.st_dev, frame.fsid, frame.depth + 1);
            let cfsid = if cdev == frame.dev {
                cfsid
            } else {
                match self.register_fs(cfd.as_fd(), cdev) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        self.walk_error(op, &mut errors, &child, "statfs", &e);
                        continue;
                    }
                }
            };
            let r = match op {
                WalkOp::Mark => self.mark_dir(cfd.as_fd(), cfsid, &child).map(drop),
                WalkOp::Unmark => self.unmark_dir(cfd.as_fd(), cfsid),
            };
            match r {
                Ok(()) => done += 1,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    // Not marked: its subtree is skipped too (same filesystem, same error).
                    self.walk_error(op, &mut errors, &child, "marking", &e);
                    continue;
                }
            }
            match sys::list_dir(cfd.as_fd()) {
                Ok(entries) => stack.push(Frame {
                    fd: cfd,
                    path: child,
                    dev: cdev,
                    fsid: cfsid,
                    depth,
                    entries: entries.into_iter(),
                }),
                Err(e) if is_vanished(&e) => {}
                Err(e) => self.walk_error(op, &mut errors, &child, "listing", &e),
            }
        }
        if errors > WARN_ERRORS_PER_WALK {
            warn!(root = %path.display(), errors, "fanotify: directories below the root could not be handled");
        }
        done
    }

    pub(super) fn walk_error(
        &mut self,
        op: WalkOp,
        errors: &mut u64,
        path: &Path,
        what: &str,
        e: &io::Error,
    ) {
        *errors += 1;
        if op == WalkOp::Unmark {
            debug!(path = %path.display(), error = %e, "fanotify: {what} failed while unmarking");
            return;
        }
        self.stats.mark_errors += 1;
        if *errors <= WARN_ERRORS_PER_WALK {
            warn!(path = %path.display(), error = %e, "fanotify: {what} failed; this directory (and below) is not watched");
        } else {
            debug!(path = %path.display(), error = %e, "fanotify: {what} failed");
        }
    }

    /// Inode mark on one (canonical) file.
    pub(super) fn mark_file(
        &mut self,
        canon: &Path,
    ) -> Result<(HandleKey, HandleKey), FanotifyError> {
        let err = |source| FanotifyError::Mark {
            path: canon.to_path_buf(),
            source,
        };
        let (Some(parent), Some(name)) = (canon.parent(), canon.file_name()) else {
            return Err(FanotifyError::IsADirectory {
                path: canon.to_path_buf(),
            });
        };
        let pfd = sys::open_dir(parent).map_err(err)?;
        let pst = sys::fstat(pfd.as_fd()).map_err(err)?;
        let Some(fsid) = self.register_fs(pfd.as_fd(), pst.st_dev).map_err(err)? else {
            return Err(FanotifyError::PseudoFs {
                path: canon.to_path_buf(),
                fs: "pseudo",
            });
        };
        let cname = sys::path_cstring(Path::new(name)).map_err(err)?;
        let st = sys::fstatat_nofollow(pfd.as_fd(), &cname).map_err(err)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(FanotifyError::IsADirectory {
                path: canon.to_path_buf(),
            });
        }
        let (pt, ph) = sys::handle_of_fd(pfd.as_fd()).map_err(err)?;
        let (ft, fh) = sys::handle_at(pfd.as_fd(), &cname).map_err(err)?;
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_DONT_FOLLOW;
        sys::fanotify_mark_at(self.group_fd(), flags, FILE_MASK, pfd.as_fd(), &cname)
            .map_err(err)?;
        let parent_key = HandleKey {
            fsid,
            handle_type: pt,
            handle: ph.into(),
        };
        let key = HandleKey {
            fsid,
            handle_type: ft,
            handle: fh.into(),
        };
        let known = Known {
            path: canon.to_path_buf(),
            generation: self.rename_gen,
        };
        self.marks.insert(key.clone(), known);
        let entry = (parent_key.clone(), name.as_bytes().into());
        if let Some(old) = self.files.insert(
            entry,
            WatchedFile {
                path: canon.to_path_buf(),
                key: key.clone(),
            },
        ) && old.key != key
        {
            // The name now refers to another inode: the old mark is moot.
            self.marks.remove(&old.key);
        }
        Ok((parent_key, key))
    }

    /// Lost events may include renames (cached paths may be stale) and new directories
    /// (not marked): forget the paths and walk every tree again to mark what is new.
    pub(super) fn rescan_after_overflow(&mut self) {
        self.dir_cache.clear();
        self.rename_gen += 1;
        let roots: Vec<(HandleKey, PathBuf)> = self
            .roots
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (old_key, root) in roots {
            let r = sys::open_dir(&root)
                .map_err(|source| FanotifyError::Mark {
                    path: root.clone(),
                    source,
                })
                .and_then(|fd| self.mark_tree_from(fd, &root, None, &mut Vec::new()));
            match r {
                Ok((n, key)) => {
                    self.roots.remove(&old_key);
                    self.roots.insert(key, root.clone());
                    info!(root = %root.display(), marks = n, "fanotify: tree walked again after overflow");
                }
                Err(e) => {
                    self.stats.mark_errors += 1;
                    warn!(root = %root.display(), error = %e, "fanotify: cannot walk tree again after overflow");
                }
            }
        }
    }

    /// Mark a directory that appeared in a tree (created, or moved in), with its subtree.
    pub(super) fn mark_new_dir(
        &mut self,
        path: &Path,
        synth_pid: Option<u32>,
        out: &mut Vec<FanEvent>,
    ) {
        let fd = match sys::open_dir(path) {
            Ok(fd) => fd,
            Err(e) if is_vanished(&e) => {
                debug!(path = %path.display(), "fanotify: new directory already gone");
                return;
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(path = %path.display(), error = %e, "fanotify: cannot open new directory; it is not watched");
                return;
            }
        };
        match self.mark_tree_from(fd, path, synth_pid, out) {
            Ok((n, _)) => {
                debug!(path = %path.display(), marks = n, "fanotify: new directory marked")
            }
            Err(e) => {
                self.stats.mark_errors += 1;
                warn!(path = %path.display(), error = %e, "fanotify: cannot mark new directory; it is not watched");
            }
        }
    }

    /// A directory was renamed into a marked directory.
    pub(super) fn mark_moved_in(&mut self, path: &Path) {
        // Moved within the trees: its marks moved with the inodes, nothing to walk.
        if let Ok(fd) = sys::open_dir(path)
            && let Ok((t, h)) = sys::handle_of_fd(fd.as_fd())
            && let Ok(fs) = sys::fstatfs(fd.as_fd())
            && self.marks.contains_key(&HandleKey {
                fsid: fs.fsid,
                handle_type: t,
                handle: h.into(),
            })
        {
            return;
        }
        self.mark_new_dir(path, None, &mut Vec::new());
    }

    /// A marked directory was renamed out of the trees: drop the marks of its subtree.
    pub(super) fn unmark_moved_out(&mut self, path: &Path) {
        let fd = match sys::open_dir(path) {
            Ok(fd) => fd,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "fanotify: moved-out directory not reachable; marks stay until it is deleted");
                return;
            }
        };
        let (Ok(st), Ok(fs)) = (sys::fstat(fd.as_fd()), sys::fstatfs(fd.as_fd())) else {
            return;
        };
        if let Err(e) = self.unmark_dir(fd.as_fd(), fs.fsid) {
            debug!(path = %path.display(), error = %e, "fanotify: unmarking moved-out directory failed");
        }
        let root = WalkRoot {
            fd,
            path,
            dev: st.st_dev,
            fsid: fs.fsid,
        };
        let n = self.walk(root, WalkOp::Unmark, None, &mut Vec::new());
        debug!(path = %path.display(), below = n, "fanotify: directory moved out of the trees; marks removed");
    }
}

/// (parent directory handle, name) of `path`; `None` for "/".
pub(super) fn entry_key(path: &Path) -> io::Result<Option<(HandleKey, Box<[u8]>)>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let pfd = sys::open_dir(parent)?;
    let fs = sys::fstatfs(pfd.as_fd())?;
    let (handle_type, handle) = sys::handle_of_fd(pfd.as_fd())?;
    let key = HandleKey {
        fsid: fs.fsid,
        handle_type,
        handle: handle.into(),
    };
    Ok(Some((key, name.as_bytes().into())))
}
