//! The FUSE passthrough filesystem over a backing directory, recording undo state for every
//! data change (see `undo.rs`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::undo::{FileStats, Key, Undo};

/// Attribute and entry cache lifetime. Short, because a cut changes sizes behind the kernel's
/// back (it also invalidates the reverted inodes explicitly).
const TTL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(m: &Metadata) -> Key {
    (m.dev(), m.ino())
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

/// The kernel's inode numbers for backing files.
#[derive(Debug, Default)]
struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

#[derive(Debug)]
struct Node {
    path: PathBuf,
    key: Key,
    nlookup: u64,
}

#[derive(Debug)]
enum Handle {
    File {
        file: Arc<File>,
        key: Key,
        ino: u64,
        writable: bool,
        /// O_SYNC / O_DSYNC: every write is durable when it returns.
        sync_writes: bool,
    },
    Dir {
        file: File,
        entries: Vec<(u64, FileType, OsString)>,
    },
}

/// State shared by the filesystem and the control channel.
#[derive(Debug)]
pub struct Shared {
    root: PathBuf,
    root_key: Key,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    undo: Mutex<Undo>,
    notifier: Mutex<Option<Notifier>>,
    backing_fsync: bool,
}

impl Shared {
    pub fn new(root: &Path, backing_fsync: bool) -> io::Result<Arc<Shared>> {
        let root = root.canonicalize()?;
        let m = std::fs::metadata(&root)?;
        if !m.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(Arc::new(Shared {
            root_key: key_of(&m),
            root,
            inodes: Mutex::new(Inodes {
                next: 2,
                ..Inodes::default()
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            undo: Mutex::new(Undo::default()),
            notifier: Mutex::new(None),
            backing_fsync,
        }))
    }

    pub fn set_notifier(&self, n: Notifier) {
        *lock(&self.notifier) = Some(n);
    }

    /// The power cut. Returns how many files were reverted.
    pub fn cut(&self) -> io::Result<usize> {
        let keys = lock(&self.undo).cut()?;
        // Tell the kernel the reverted files' sizes and pages are stale (outside every lock: the
        // kernel may need a request served while it invalidates).
        let inos: Vec<u64> = {
            let inodes = lock(&self.inodes);
            keys.iter()
                .filter_map(|k| inodes.by_key.get(k).copied())
                .collect()
        };
        let notifier = lock(&self.notifier).clone();
        if let Some(n) = notifier {
            for ino in inos {
                // ENOENT: the kernel no longer has the inode cached; nothing to invalidate.
                let _ = n.inval_inode(INodeNo(ino), 0, -1);
            }
        }
        Ok(keys.len())
    }

    pub fn sync_all(&self) -> usize {
        lock(&self.undo).sync_all()
    }

    pub fn stats(&self) -> Vec<FileStats> {
        lock(&self.undo).stats()
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino == INodeNo::ROOT {
            return Ok(self.root.clone());
        }
        lock(&self.inodes)
            .by_ino
            .get(&ino.0)
            .map(|n| n.path.clone())
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// Registers one kernel lookup of the file at `path`, returning its inode number.
    fn remember(&self, path: PathBuf, m: &Metadata) -> INodeNo {
        let key = key_of(m);
        if key == self.root_key {
            return INodeNo::ROOT;
        }
        let mut inodes = lock(&self.inodes);
        let ino = match inodes.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = inodes.next;
                inodes.next += 1;
                inodes.by_key.insert(key, ino);
                ino
            }
        };
        let node = inodes.by_ino.entry(ino).or_insert(Node {
            path: PathBuf::new(),
            key,
            nlookup: 0,
        });
        node.path = path;
        node.nlookup += 1;
        INodeNo(ino)
    }

    fn entry(&self, path: PathBuf, reply: ReplyEntry) {
        match std::fs::symlink_metadata(&path) {
            Ok(m) => {
                let ino = self.remember(path, &m);
                reply.entry(&TTL, &attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// A read-write descriptor for changing the file `ino`: the open handle's if it has one.
    fn writable(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
    ) -> Result<(Arc<File>, Key, PathBuf), Errno> {
        let path = self.path(ino)?;
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                if let Handle::File {
                    file,
                    key,
                    writable: true,
                    ..
                } = &*h
                {
                    return Ok((Arc::clone(file), *key, path));
                }
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(errno)?;
        let key = key_of(&file.metadata().map_err(errno)?);
        Ok((Arc::new(file), key, path))
    }

    /// Sets the size of a file, recording how to undo it.
    fn truncate(&self, file: &Arc<File>, key: Key, path: &Path, size: u64) -> io::Result<()> {
        let mut undo = lock(&self.undo);
        undo.before_truncate(key, file, path, size)?;
        file.set_len(size)
    }

    fn open_file(
        &self,
        path: &Path,
        flags: i32,
        create: Option<u32>,
        ino: Option<INodeNo>,
    ) -> io::Result<(u64, Metadata, INodeNo)> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let mut oo = OpenOptions::new();
        // Writable handles are always opened read-write: saving original bytes needs to read.
        oo.read(true).write(writable);
        if let Some(mode) = create {
            oo.create(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                oo.create_new(true);
            }
        }
        // O_APPEND is left out: the kernel gives every write its offset, which the undo state
        // needs to know. O_TRUNC goes through `truncate`. O_DIRECT is left to the kernel.
        oo.custom_flags(flags & (libc::O_NOFOLLOW | libc::O_NOATIME));
        let file = Arc::new(oo.open(path)?);
        let m = file.metadata()?;
        let key = key_of(&m);
        if writable && flags & libc::O_TRUNC != 0 && m.size() > 0 {
            self.truncate(&file, key, path, 0)?;
        }
        let m = file.metadata()?;
        // On create the kernel counts a lookup; on open it already has the inode.
        let ino = match ino {
            Some(ino) => ino,
            None => self.remember(path.to_path_buf(), &m),
        };
        let fh = self.add_handle(Handle::File {
            file,
            key,
            ino: ino.0,
            writable,
            sync_writes: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
        });
        Ok((fh, m, ino))
    }

    /// After a rename, every remembered path under `from` is under `to`.
    fn renamed(&self, from: &Path, to: &Path) {
        let mut inodes = lock(&self.inodes);
        for node in inodes.by_ino.values_mut() {
            if let Ok(rest) = node.path.strip_prefix(from) {
                node.path = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    fn fsync_file(&self, file: &File, key: Key, datasync: bool) -> io::Result<()> {
        // Forget the undo state first: a write racing with this fsync may or may not be
        // covered by it, and keeping it is allowed either way.
        lock(&self.undo).synced(key);
        if self.backing_fsync {
            if datasync {
                file.sync_data()?;
            } else {
                file.sync_all()?;
            }
        }
        Ok(())
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn kind(m: &Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr(ino: INodeNo, m: &Metadata) -> FileAttr {
    FileAttr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: system_time(m.atime(), m.atime_nsec()),
        mtime: system_time(m.mtime(), m.mtime_nsec()),
        ctime: system_time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(_) => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        },
    }
}

fn cpath(p: &Path) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

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
