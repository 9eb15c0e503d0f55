//! The FUSE passthrough filesystem over a backing directory, recording undo state for every
//! data change (see `undo.rs`). This file holds the shared state (inodes, open handles, the
//! undo journal, cut and stats) and the attribute conversions; `ops.rs` the FUSE operations.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, Notifier, ReplyEntry, TimeOrNow,
};

use crate::undo::{FileStats, Key, Undo};

mod ops;

pub use ops::LazyFs;

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
