//! The FUSE operations of the passthrough filesystem, over its [`Shared`] state.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::*;

/// The filesystem handed to fuser; all state is in `Shared`.
pub struct LazyFs(pub Arc<Shared>);

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.child(parent, name) {
            Ok(p) => self.0.entry(p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut inodes = lock(&self.0.inodes);
        let gone = match inodes.by_ino.get_mut(&ino.0) {
            Some(n) => {
                n.nlookup = n.nlookup.saturating_sub(nlookup);
                (n.nlookup == 0).then_some(n.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            inodes.by_ino.remove(&ino.0);
            if inodes.by_key.get(&key) == Some(&ino.0) {
                inodes.by_key.remove(&key);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            if let Ok(h) = self.0.handle(fh) {
                let m = match &*h {
                    Handle::File { file, .. } => file.metadata(),
                    Handle::Dir { file, .. } => file.metadata(),
                };
                match m {
                    Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
                    Err(e) => reply.error(errno(e)),
                }
                return;
            }
        }
        match self.0.path(ino).map(std::fs::symlink_metadata) {
            Ok(Ok(m)) => reply.attr(&TTL, &attr(ino, &m)),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = (|| -> Result<Metadata, Errno> {
            let path = self.0.path(ino)?;
            if let Some(size) = size {
                let (file, key, path) = self.0.writable(ino, fh)?;
                self.0.truncate(&file, key, &path, size).map_err(errno)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let c = cpath(&path)?;
                let times = [timespec(atime), timespec(mtime)];
                // SAFETY: `c` is a valid NUL-terminated path and `times` two valid timespecs,
                // both alive for the call; utimensat has no safe wrapper taking UTIME_OMIT/NOW.
                let r = unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r != 0 {
                    return Err(errno(io::Error::last_os_error()));
                }
            }
            std::fs::symlink_metadata(&path).map_err(errno)
        })();
        match res {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.0.path(ino).map(std::fs::read_link) {
            Ok(Ok(t)) => reply.data(t.as_os_str().as_bytes()),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.0.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let res = std::fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path);
        match res {
            Ok(()) => self.0.entry(path, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.0.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let key = std::fs::symlink_metadata(&path).map(|m| key_of(&m)).ok();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(key) = key {
                    lock(&self.0.undo).maybe_unlinked(key);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.0.child(parent, name).map(std::fs::remove_dir) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let path = match self.0.child(parent, link_name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::os::unix::fs::symlink(target, &path) {
            Ok(()) => self.0.entry(path, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> Result<(), Errno> {
            let from = self.0.child(parent, name)?;
            let to = self.0.child(newparent, newname)?;
            let replaced = std::fs::symlink_metadata(&to).map(|m| key_of(&m)).ok();
            if flags.is_empty() {
                std::fs::rename(&from, &to).map_err(errno)?;
            } else {
                let (f, t) = (cpath(&from)?, cpath(&to)?);
                // SAFETY: both paths are valid NUL-terminated strings alive for the call;
                // renameat2 (NOREPLACE/EXCHANGE) has no std wrapper.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        f.as_ptr(),
                        libc::AT_FDCWD,
                        t.as_ptr(),
                        flags.bits(),
                    )
                };
                if r != 0 {
                    return Err(errno(io::Error::last_os_error()));
                }
            }
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                // Swap via a placeholder that cannot collide with a real path.
                let tmp = from.with_file_name(".c4aj-lazyfs-exchange\0");
                self.0.renamed(&from, &tmp);
                self.0.renamed(&to, &from);
                self.0.renamed(&tmp, &to);
            } else {
                self.0.renamed(&from, &to);
                if let Some(key) = replaced {
                    lock(&self.0.undo).maybe_unlinked(key);
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| -> Result<PathBuf, Errno> {
            let from = self.0.path(ino)?;
            let to = self.0.child(newparent, newname)?;
            std::fs::hard_link(&from, &to).map_err(errno)?;
            Ok(to)
        })();
        match res {
            // The inode keeps its remembered path (the first name).
            Ok(to) => match std::fs::symlink_metadata(&to) {
                Ok(m) => {
                    let from = self.0.path(ino).unwrap_or(to);
                    let ino = self.0.remember(from, &m);
                    reply.entry(&TTL, &attr(ino, &m), Generation(0));
                }
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.0.open_file(&path, flags.0, None, Some(ino)) {
            Ok((fh, _, _)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.0.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self
            .0
            .open_file(&path, flags, Some(mode & !umask & 0o7777), None)
        {
            Ok((fh, m, ino)) => reply.created(
                &TTL,
                &attr(ino, &m),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File { file, .. } = &*h else {
            return reply.error(Errno::EISDIR);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File {
            file,
            key,
            ino,
            writable: true,
            sync_writes,
        } = &*h
        else {
            return reply.error(Errno::EBADF);
        };
        let res = (|| -> io::Result<()> {
            let path = self.0.path(INodeNo(*ino)).unwrap_or_default();
            let mut undo = lock(&self.0.undo);
            undo.before_write(*key, file, &path, offset, data.len() as u64)?;
            file.write_all_at(data, offset)?;
            drop(undo);
            if *sync_writes {
                self.0.fsync_file(file, *key, true)?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: nothing to do.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let res = match &*h {
            Handle::File { file, key, .. } => self.0.fsync_file(file, *key, datasync),
            Handle::Dir { file, .. } => file.sync_all(),
        };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> Result<u64, Errno> {
            let path = self.0.path(ino)?;
            let file = File::open(&path).map_err(errno)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for e in std::fs::read_dir(&path).map_err(errno)? {
                let e = e.map_err(errno)?;
                let t = e
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                // The backing inode number: only shown as d_ino, never used to look up.
                let bino = std::os::unix::fs::DirEntryExt::ino(&e);
                entries.push((bino, t, e.file_name()));
            }
            Ok(self.0.add_handle(Handle::Dir { file, entries }))
        })();
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir { entries, .. } = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (ino, t, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *t, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries are not modelled (see the README): pass the sync through.
        let res = match self.0.handle(fh) {
            Ok(h) => match &*h {
                Handle::Dir { file, .. } => file.sync_all().map_err(errno),
                Handle::File { file, .. } => file.sync_all().map_err(errno),
            },
            Err(_) => self
                .0
                .path(ino)
                .and_then(|p| File::open(p).map_err(errno))
                .and_then(|f| f.sync_all().map_err(errno)),
        };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.0.root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let supported =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !supported != 0 {
            // COLLAPSE_RANGE / INSERT_RANGE move data: not modelled.
            return reply.error(Errno::EOPNOTSUPP);
        }
        let res = (|| -> Result<(), Errno> {
            let (file, key, path) = self.0.writable(ino, Some(fh))?;
            let mut undo = lock(&self.0.undo);
            let changes_bytes =
                mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
            // Plain allocation only grows the file (recorded by the entry's synced size).
            let len = if changes_bytes { length } else { 0 };
            undo.before_write(key, &file, &path, offset, len)
                .map_err(errno)?;
            // SAFETY: the descriptor is open for the whole call; fallocate takes no pointers.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            };
            if r != 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
