//! The power-cut semantics and the passthrough operations, on a real FUSE mount.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::process::Command;

use common::{skip, Mounted, BIN};

fn rw(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn write_fsync_write_cut_keeps_exactly_the_fsynced_content() {
    if skip("write_fsync_write_cut") {
        return;
    }
    let m = Mounted::new("fsync");
    let p = m.path("f");
    let mut f = rw(&p);
    let synced: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    f.write_all(b"lost append").unwrap();
    f.write_all_at(b"lost overwrite", 100).unwrap();
    drop(f);
    let stats = m.ctl("stats");
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert!(stats[0].starts_with("4107 20000 20011 "), "{stats:?}");
    m.cut();
    assert_eq!(std::fs::read(&p).unwrap(), synced);
    assert!(m.ctl("stats").is_empty());
}

#[test]
fn fdatasync_counts_as_a_sync() {
    if skip("fdatasync_counts_as_a_sync") {
        return;
    }
    let m = Mounted::new("fdatasync");
    let p = m.path("f");
    let mut f = rw(&p);
    f.write_all(b"kept").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" lost").unwrap();
    drop(f);
    m.cut();
    assert_eq!(std::fs::read(&p).unwrap(), b"kept");
}

#[test]
fn append_without_fsync_is_truncated_back() {
    if skip("append_without_fsync") {
        return;
    }
    let m = Mounted::new("append");
    let p = m.path("log");
    std::fs::write(&p, b"base").unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"+one").unwrap();
    f.write_all(b"+two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"base+one+two");
    // The client subcommand, as the harness would use it.
    let out = Command::new(BIN)
        .arg("cut")
        .arg("--control")
        .arg(&m.ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(std::fs::read(&p).unwrap(), b"base");
    // The descriptor still open across the cut keeps working from the reverted state.
    f.write_all(b"+three").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"base+three");
}

#[test]
fn overwrite_in_the_middle_gets_the_old_bytes_back() {
    if skip("overwrite_in_the_middle") {
        return;
    }
    let m = Mounted::new("overwrite");
    let p = m.path("f");
    let synced: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 241) as u8).collect();
    let f = rw(&p);
    f.write_all_at(&synced, 0).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(&[0xEE; 5000], 3000).unwrap();
    f.set_len(5000).unwrap(); // shrink below the synced size, then grow again
    f.set_len(40_000).unwrap();
    drop(f);
    m.cut();
    assert_eq!(std::fs::read(&p).unwrap(), synced);
}

#[test]
fn a_file_created_and_written_without_fsync_comes_back_empty() {
    if skip("created_without_fsync") {
        return;
    }
    let m = Mounted::new("create");
    std::fs::create_dir(m.path("d")).unwrap();
    let p = m.path("d/new");
    std::fs::write(&p, b"never synced").unwrap();
    m.cut();
    // Data loss only: the name survives (see the README), the data does not.
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(std::fs::read(&p).unwrap(), b"");
}

#[test]
fn rename_over_an_existing_file() {
    if skip("rename_over_an_existing_file") {
        return;
    }
    let m = Mounted::new("rename");
    let (cur, tmp) = (m.path("CURRENT"), m.path("CURRENT.tmp"));
    let f = rw(&cur);
    f.write_all_at(b"MANIFEST-000001\n", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // RocksDB's pattern: write a temp file, fsync it, rename it over, fsync the directory.
    let f = rw(&tmp);
    f.write_all_at(b"MANIFEST-000002\n", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, &cur).unwrap();
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    assert_eq!(std::fs::read(&cur).unwrap(), b"MANIFEST-000002\n");
    assert!(!tmp.exists());
    // Renamed without its data fsynced: the name stays, the data goes.
    let other = m.path("other");
    std::fs::write(&other, b"unsynced").unwrap();
    std::fs::rename(&other, m.path("renamed")).unwrap();
    m.cut();
    assert_eq!(std::fs::read(&cur).unwrap(), b"MANIFEST-000002\n");
    assert_eq!(std::fs::read(m.path("renamed")).unwrap(), b"");
    // A directory rename moves what is under it.
    std::fs::create_dir_all(m.path("a/b")).unwrap();
    std::fs::write(m.path("a/b/c"), b"x").unwrap();
    std::fs::rename(m.path("a"), m.path("z")).unwrap();
    assert_eq!(std::fs::read(m.path("z/b/c")).unwrap(), b"x");
}

#[test]
fn reads_see_the_latest_writes_before_a_cut() {
    if skip("reads_see_latest_writes") {
        return;
    }
    let m = Mounted::new("reads");
    let p = m.path("f");
    let mut w = rw(&p);
    let mut r = File::open(&p).unwrap();
    for i in 0..50u32 {
        let chunk = format!("line {i}\n");
        w.write_all(chunk.as_bytes()).unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, chunk);
        if i == 20 {
            w.sync_data().unwrap();
        }
    }
    w.write_all_at(b"LINE", 0).unwrap();
    let mut head = [0u8; 4];
    r.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"LINE");
    // The backing file has them too.
    assert_eq!(
        std::fs::read(m.backing.join("f")).unwrap(),
        std::fs::read(&p).unwrap()
    );
    m.cut();
    let expect: String = (0..=20).map(|i| format!("line {i}\n")).collect();
    r.seek(SeekFrom::Start(0)).unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, expect);
}

#[test]
fn sync_all_makes_everything_synced() {
    if skip("sync_all") {
        return;
    }
    let m = Mounted::new("syncall");
    std::fs::write(m.path("a"), b"aaa").unwrap();
    std::fs::write(m.path("b"), b"bbb").unwrap();
    assert_eq!(m.ctl("stats").len(), 2);
    m.ctl("sync-all");
    assert!(m.ctl("stats").is_empty());
    m.cut();
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"aaa");
}

#[test]
fn the_other_operations_rocksdb_uses() {
    if skip("other_operations") {
        return;
    }
    let m = Mounted::new("ops");
    // mkdir, readdir, rmdir
    std::fs::create_dir(m.path("dir")).unwrap();
    for n in ["x", "y", "z"] {
        std::fs::write(m.path(&format!("dir/{n}")), n).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(m.path("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["x", "y", "z"]);
    assert!(std::fs::remove_dir(m.path("dir")).is_err());
    for n in ["x", "y", "z"] {
        std::fs::remove_file(m.path(&format!("dir/{n}"))).unwrap();
    }
    std::fs::remove_dir(m.path("dir")).unwrap();
    assert!(!m.path("dir").exists());
    // fsyncdir
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    // chmod, utimes, truncate by path
    let p = m.path("f");
    std::fs::write(&p, b"0123456789").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().mtime(), 1_000_000_000);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid path for the call.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4) }, 0);
    assert_eq!(std::fs::read(&p).unwrap(), b"0123");
    // fallocate: preallocation (KEEP_SIZE, as RocksDB does) and growth
    let f = rw(&p);
    // SAFETY: open descriptor, no pointers.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 4);
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 8192);
    drop(f);
    // statfs
    let s = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert!(s.blocks() > 0);
    // O_EXCL create of an existing file fails
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    // symlink and hard link
    std::os::unix::fs::symlink("f", m.path("sym")).unwrap();
    assert_eq!(
        std::fs::read_link(m.path("sym")).unwrap().to_str(),
        Some("f")
    );
    std::fs::hard_link(&p, m.path("hard")).unwrap();
    assert_eq!(std::fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    // unlink of an open file: the descriptor keeps working
    let g = rw(&m.path("g"));
    std::fs::remove_file(m.path("g")).unwrap();
    g.write_all_at(b"still", 0).unwrap();
    let mut buf = [0u8; 5];
    g.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still");
    // cut after all this does not fail
    m.cut();
}

#[test]
fn posix_locks_exclude_another_process() {
    if skip("posix_locks") {
        return;
    }
    let m = Mounted::new("locks");
    let p = m.path("LOCK");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&p)
        .unwrap();
    // RocksDB's LockFile: fcntl(F_SETLK, F_WRLCK) over the whole file.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: valid descriptor and flock struct.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // Another process cannot take it.
    let script = format!(
        "import fcntl,sys\nf=open('{}','r+')\ntry:\n  fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n  sys.exit(0)\nexcept OSError:\n  sys.exit(3)\n",
        p.display()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3), "a second process took the lock");
    drop(f);
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "the lock was not released on close");
}
