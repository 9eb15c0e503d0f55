//! The file damage of the `corrupt` fault (scenario S7): done to a node's RocksDB directory
//! while the node is down.
//!
//! ```text
//!  db/ has *.sst ──► the largest: 16 bytes XOR 0xff a third of the way in
//!  else *.log    ──► the newest WAL: 64 bytes cut out of its middle (the rest moves up)
//!  else          ──► nothing damaged (recorded; the run then proves nothing about damage)
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Bytes flipped in an SST file.
pub const FLIP_BYTES: usize = 16;
/// Bytes cut out of the middle of a WAL file.
pub const CUT_BYTES: usize = 64;

/// What was done to the files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "damage")]
pub enum Damage {
    /// `bytes` bytes XOR 0xff at `offset` of `file` (`size` bytes long).
    FlippedSst {
        /// The file.
        file: PathBuf,
        /// Its size.
        size: u64,
        /// Where the flipped bytes start.
        offset: u64,
        /// How many.
        bytes: usize,
    },
    /// `bytes` bytes removed at `offset` of `file` (`size` bytes long before).
    CutWal {
        /// The file.
        file: PathBuf,
        /// Its size before.
        size: u64,
        /// Where the removed bytes were.
        offset: u64,
        /// How many.
        bytes: usize,
    },
    /// No SST file and no WAL file long enough: nothing was damaged.
    Nothing {
        /// What the directory held.
        reason: String,
    },
}

impl Damage {
    /// Whether a file was damaged.
    pub fn damaged(&self) -> bool {
        !matches!(self, Damage::Nothing { .. })
    }
}

/// Damages the RocksDB directory `db` (the node must be down): see the module's documentation.
pub fn damage(db: &Path) -> anyhow::Result<Damage> {
    let files = list(db)?;
    let largest_sst = files
        .iter()
        .filter(|(p, _, _)| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|(_, len, _)| *len);
    if let Some((file, size, _)) = largest_sst.filter(|(_, len, _)| *len >= 3 * FLIP_BYTES as u64) {
        let offset = size / 3;
        flip(file, offset, FLIP_BYTES)?;
        return Ok(Damage::FlippedSst {
            file: file.clone(),
            size: *size,
            offset,
            bytes: FLIP_BYTES,
        });
    }
    let newest_wal = files
        .iter()
        .filter(|(p, len, _)| {
            p.extension().is_some_and(|x| x == "log") && *len >= 2 * CUT_BYTES as u64
        })
        .max_by_key(|(_, _, modified)| *modified);
    if let Some((file, size, _)) = newest_wal {
        let offset = size / 2;
        cut(file, offset, CUT_BYTES)?;
        return Ok(Damage::CutWal {
            file: file.clone(),
            size: *size,
            offset,
            bytes: CUT_BYTES,
        });
    }
    Ok(Damage::Nothing {
        reason: format!(
            "no *.sst and no *.log of {} bytes or more among {} files in {}",
            2 * CUT_BYTES,
            files.len(),
            db.display()
        ),
    })
}

/// Whether a node's log says it refused damaged data (the node's own words, or RocksDB's).
pub fn log_says_damaged(log: &str) -> bool {
    log.contains("is damaged") || log.contains("Corruption") || log.contains("damaged files")
}

/// The first line of `log` that says so, shortened.
pub fn damaged_line(log: &str) -> Option<String> {
    log.lines()
        .find(|l| log_says_damaged(l))
        .map(|l| l.chars().take(400).collect())
}

/// Files of `dir`: path, length, modification time.
fn list(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64, std::time::SystemTime)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((entry.path(), meta.len(), meta.modified()?));
        }
    }
    files.sort();
    Ok(files)
}

/// XORs `len` bytes of `file` at `offset` with 0xff, in place, and syncs.
fn flip(file: &Path, offset: u64, len: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(file)?;
    let at = usize::try_from(offset)?;
    let end = (at + len).min(bytes.len());
    for b in &mut bytes[at..end] {
        *b ^= 0xff;
    }
    write_synced(file, &bytes)
}

/// Removes `len` bytes of `file` at `offset` (what follows moves up), and syncs.
fn cut(file: &Path, offset: u64, len: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(file)?;
    let at = usize::try_from(offset)?;
    let end = (at + len).min(bytes.len());
    bytes.drain(at..end);
    write_synced(file, &bytes)
}

fn write_synced(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temp dir.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("c4aj-corrupt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn the_largest_sst_gets_16_bytes_flipped_a_third_of_the_way_in() {
        let dir = scratch("sst");
        std::fs::write(dir.join("000010.sst"), pattern(300)).expect("write");
        std::fs::write(dir.join("000011.sst"), pattern(900)).expect("write");
        std::fs::write(dir.join("000012.log"), pattern(5_000)).expect("write");
        let damage = damage(&dir).expect("damage");
        assert_eq!(
            damage,
            Damage::FlippedSst {
                file: dir.join("000011.sst"),
                size: 900,
                offset: 300,
                bytes: 16,
            }
        );
        assert!(damage.damaged());
        let after = std::fs::read(dir.join("000011.sst")).expect("read");
        let before = pattern(900);
        assert_eq!(after.len(), 900);
        for i in 0..900 {
            let flipped = (300..316).contains(&i);
            assert_eq!(after[i] == before[i] ^ 0xff, flipped, "byte {i}");
        }
        // The others are untouched.
        assert_eq!(
            std::fs::read(dir.join("000010.sst")).expect("read"),
            pattern(300)
        );
        assert_eq!(
            std::fs::read(dir.join("000012.log")).expect("read"),
            pattern(5_000)
        );
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    #[test]
    fn without_sst_the_newest_wal_loses_64_bytes_in_its_middle_and_else_nothing_is_damaged() {
        let dir = scratch("wal");
        std::fs::write(dir.join("000003.log"), pattern(1_000)).expect("write");
        std::fs::write(dir.join("MANIFEST-000001"), pattern(1_000)).expect("write");
        let damage = damage(&dir).expect("damage");
        assert_eq!(
            damage,
            Damage::CutWal {
                file: dir.join("000003.log"),
                size: 1_000,
                offset: 500,
                bytes: 64,
            }
        );
        let after = std::fs::read(dir.join("000003.log")).expect("read");
        let before = pattern(1_000);
        assert_eq!(after.len(), 936);
        assert_eq!(after[..500], before[..500]);
        assert_eq!(after[500..], before[564..]);

        let empty = scratch("empty");
        std::fs::write(empty.join("000004.log"), pattern(10)).expect("write");
        let nothing = super::damage(&empty).expect("damage");
        assert!(!nothing.damaged(), "{nothing:?}");
        assert_eq!(
            std::fs::read(empty.join("000004.log")).expect("read"),
            pattern(10)
        );
        std::fs::remove_dir_all(dir).expect("clean up");
        std::fs::remove_dir_all(empty).expect("clean up");
    }

    #[test]
    fn a_refusal_is_recognised_by_the_nodes_words_or_rocksdbs() {
        let log = "INFO starting\nError: the data in /r/data/n2 is damaged: this node refuses\n";
        assert!(log_says_damaged(log));
        assert_eq!(
            damaged_line(log).as_deref(),
            Some("Error: the data in /r/data/n2 is damaged: this node refuses")
        );
        assert!(log_says_damaged(
            "Caused by: Corruption: block checksum mismatch"
        ));
        assert!(!log_says_damaged("INFO verified every stored checksum"));
        assert_eq!(damaged_line("INFO ready"), None);
    }
}
