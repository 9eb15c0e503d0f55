//! Shared by the integration tests: a real mount of the built binary in a temp dir.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_c4aj-lazyfs");

/// Why the FUSE tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounting FUSE filesystems needs root here)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// Prints the reason and returns true when the test must be skipped.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(r) => {
            say_skipped(&format!("{test}: {r}"));
            true
        }
        None => false,
    }
}

/// Prints `SKIPPED: ...` where it is seen even though cargo test captures the output of passing
/// tests (the capture only covers the print macros, not a direct write to the stderr handle).
pub fn say_skipped(msg: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
}

pub struct Mounted {
    pub child: Child,
    pub dir: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub ctl: PathBuf,
}

impl Mounted {
    pub fn new(name: &str) -> Mounted {
        let dir = std::env::temp_dir().join(format!("c4aj-lazyfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backing = dir.join("backing");
        let mnt = dir.join("mnt");
        let ctl = dir.join("ctl.sock");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let log = std::fs::File::create(dir.join("lazyfs.log")).unwrap();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(&backing)
            .arg(&mnt)
            .arg("--control")
            .arg(&ctl)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = Mounted {
            child,
            dir,
            backing,
            mnt,
            ctl,
        };
        let start = Instant::now();
        while !m.ctl.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the mount did not come up: {}",
                std::fs::read_to_string(m.dir.join("lazyfs.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Sends a control command over the socket; returns the lines before `ok`.
    pub fn ctl(&self, cmd: &str) -> Vec<String> {
        let mut s = UnixStream::connect(&self.ctl).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut out = Vec::new();
        for line in BufReader::new(s).lines() {
            let line = line.unwrap();
            if line == "ok" {
                return out;
            }
            assert!(!line.starts_with("error"), "{cmd}: {line}");
            out.push(line);
        }
        panic!("{cmd}: no ok");
    }

    pub fn cut(&self) {
        self.ctl("cut");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if start.elapsed() > Duration::from_secs(10) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
