//! The power-cut model: per file, how to undo every data change since that file's last fsync.
//!
//! Writes go to the backing file at once (so reads see them). Before a range of a file is
//! changed for the first time since its last fsync, the original bytes of the blocks it touches
//! are saved, together with the file's size at that moment (its synced size). `fsync` forgets
//! the saved state (the current content becomes the synced content); `cut` writes every saved
//! block back and truncates every file to its synced size. Bytes beyond the synced size are never
//! saved: the truncation removes them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A backing file's identity: (st_dev, st_ino).
pub type Key = (u64, u64);

/// Granularity of saved original bytes.
const BLOCK: u64 = 4096;

/// The undo state of one file changed since its last fsync.
#[derive(Debug)]
struct Pending {
    /// A read-write descriptor of the backing file; keeps the inode alive until the state is
    /// dropped, so a file's key cannot be reused while it has pending state.
    file: Arc<File>,
    /// Last path the file was changed through (for `stats` only).
    path: PathBuf,
    /// Size at the last fsync (or when the file was first changed since).
    synced_size: u64,
    /// Block index -> the block's synced bytes (clipped to `synced_size`).
    saved: BTreeMap<u64, Vec<u8>>,
}

impl Pending {
    /// Saves the synced bytes of every block meeting `[start, end)` not yet saved.
    fn save(&mut self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.synced_size);
        if start >= end {
            return Ok(());
        }
        for block in start / BLOCK..=(end - 1) / BLOCK {
            if self.saved.contains_key(&block) {
                continue;
            }
            let from = block * BLOCK;
            let to = (from + BLOCK).min(self.synced_size);
            let mut buf = vec![0u8; (to - from) as usize];
            let mut got = 0;
            while got < buf.len() {
                let n = self.file.read_at(&mut buf[got..], from + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            // Cannot be short while the file is at least `synced_size` long, which every change
            // below it ensures by saving first; keep what was read if it is.
            buf.truncate(got);
            self.saved.insert(block, buf);
        }
        Ok(())
    }

    fn saved_bytes(&self) -> u64 {
        self.saved.values().map(|b| b.len() as u64).sum()
    }

    /// Puts the synced content back.
    fn revert(&self) -> io::Result<()> {
        for (block, bytes) in &self.saved {
            self.file.write_all_at(bytes, block * BLOCK)?;
        }
        self.file.set_len(self.synced_size)?;
        self.file.sync_all()
    }
}

/// One line of `stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStats {
    pub path: PathBuf,
    /// Bytes a cut would undo: saved original bytes plus bytes beyond the synced size.
    pub pending_bytes: u64,
    pub synced_size: u64,
    pub current_size: u64,
}

/// The undo state of every file changed since its last fsync.
#[derive(Debug, Default)]
pub struct Undo {
    files: HashMap<Key, Pending>,
}

impl Undo {
    fn entry(&mut self, key: Key, file: &Arc<File>, path: &Path) -> io::Result<&mut Pending> {
        let p = match self.files.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let synced_size = file.metadata()?.size();
                v.insert(Pending {
                    file: Arc::clone(file),
                    path: path.to_path_buf(),
                    synced_size,
                    saved: BTreeMap::new(),
                })
            }
        };
        if p.path != path {
            p.path = path.to_path_buf();
        }
        Ok(p)
    }

    /// To call (holding the lock until the change is made) before bytes `[offset, offset+len)`
    /// of the file change, or its size grows. `file` must be open for reading and writing.
    pub fn before_write(
        &mut self,
        key: Key,
        file: &Arc<File>,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let p = self.entry(key, file, path)?;
        p.save(offset, offset.saturating_add(len))
    }

    /// To call (holding the lock until the change is made) before the file's size is set to
    /// `new_size`.
    pub fn before_truncate(
        &mut self,
        key: Key,
        file: &Arc<File>,
        path: &Path,
        new_size: u64,
    ) -> io::Result<()> {
        let p = self.entry(key, file, path)?;
        p.save(new_size, u64::MAX)
    }

    /// The file was fsynced: its current content is its synced content.
    pub fn synced(&mut self, key: Key) {
        self.files.remove(&key);
    }

    /// The file may have lost its last name: drop its state if it has no link left (data loss
    /// of unlinked files is not modelled).
    pub fn maybe_unlinked(&mut self, key: Key) {
        let gone = match self.files.get(&key) {
            Some(p) => p.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true),
            None => false,
        };
        if gone {
            self.files.remove(&key);
        }
    }

    /// Every file's current content becomes its synced content.
    pub fn sync_all(&mut self) -> usize {
        let n = self.files.len();
        self.files.clear();
        n
    }

    /// The power cut: every file goes back to its last synced content. Returns the keys of
    /// the files reverted. Stops at the first error (the files not yet reverted keep their
    /// state, so a retry can finish).
    pub fn cut(&mut self) -> io::Result<Vec<Key>> {
        let keys: Vec<Key> = self.files.keys().copied().collect();
        for key in &keys {
            if let Some(p) = self.files.get(key) {
                p.revert()?;
            }
            self.files.remove(key);
        }
        Ok(keys)
    }

    pub fn stats(&self) -> Vec<FileStats> {
        let mut out: Vec<FileStats> = self
            .files
            .values()
            .map(|p| {
                let current_size = p.file.metadata().map(|m| m.size()).unwrap_or(0);
                FileStats {
                    path: p.path.clone(),
                    pending_bytes: p.saved_bytes() + current_size.saturating_sub(p.synced_size),
                    synced_size: p.synced_size,
                    current_size,
                }
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &Path) -> (Arc<File>, Key) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        let m = f.metadata().unwrap();
        (Arc::new(f), (m.dev(), m.ino()))
    }

    fn write(u: &mut Undo, f: &Arc<File>, k: Key, p: &Path, off: u64, data: &[u8]) {
        u.before_write(k, f, p, off, data.len() as u64).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    fn truncate(u: &mut Undo, f: &Arc<File>, k: Key, p: &Path, size: u64) {
        u.before_truncate(k, f, p, size).unwrap();
        f.set_len(size).unwrap();
    }

    #[test]
    fn overwrite_append_truncate_and_cut() {
        let dir = std::env::temp_dir().join(format!("c4aj-lazyfs-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let _ = std::fs::remove_file(&path);
        let (f, k) = open(&path);
        let mut u = Undo::default();
        let synced: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        write(&mut u, &f, k, &path, 0, &synced);
        u.synced(k);
        // Overwrite across a block boundary, shrink, grow, append.
        write(&mut u, &f, k, &path, 4000, &[0xAA; 300]);
        truncate(&mut u, &f, k, &path, 5000);
        truncate(&mut u, &f, k, &path, 20_000);
        write(&mut u, &f, k, &path, 9000, &[0xBB; 3000]);
        assert_eq!(u.stats().len(), 1);
        assert_eq!(u.cut().unwrap(), vec![k]);
        assert_eq!(std::fs::read(&path).unwrap(), synced);
        assert!(u.stats().is_empty());
        // A new file never synced comes back empty.
        let path2 = dir.join("g");
        let _ = std::fs::remove_file(&path2);
        let (g, k2) = open(&path2);
        write(&mut u, &g, k2, &path2, 0, b"hello");
        u.cut().unwrap();
        assert_eq!(std::fs::read(&path2).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
