//! The `powercut` nemesis's side of the hosts: each node's data directory as a `c4aj-lazyfs`
//! mount over `node-K.backing`, the `cut` that reverts every byte not fsynced, stopping the
//! shims at teardown, and unmounting what an interrupted run left.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Hosts, lock_map, run};
use crate::schedule::NodeId;

/// How long a `c4aj-lazyfs mount` may take to make its control socket.
const SHIM_READY_LIMIT: Duration = Duration::from_secs(15);
/// How long a shim may take to unmount and exit after SIGTERM (it detaches a busy mount and
/// exits after 5 s).
const SHIM_EXIT_LIMIT: Duration = Duration::from_secs(10);
/// The source (`fsname`) of a `c4aj-lazyfs` mount in `/proc/mounts`.
const LAZYFS_SOURCE: &str = "c4aj-lazyfs";

impl Hosts {
    /// The backing directory of node `id`'s `c4aj-lazyfs` mount: where its data really is.
    pub fn backing_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.backing"))
    }

    /// The control socket of node `id`'s shim.
    fn control_socket(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("lazyfs-{id}.sock"))
    }

    /// Mounts node `id`'s data directory through `c4aj-lazyfs` (a child process in the root
    /// namespace, in its own process group so that a terminal's ^C reaches it only through
    /// the teardown, after the nodes; its output goes to `lazyfs-K.log`) over
    /// `node-K.backing`, and waits for its control socket.
    pub(super) fn mount_lazyfs(&self, id: NodeId) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let Some(bin) = &self.lazyfs else {
            return Ok(());
        };
        let (backing, data, socket) = (
            self.backing_dir(id),
            self.data_dir(id),
            self.control_socket(id),
        );
        std::fs::create_dir_all(&backing)?;
        std::fs::create_dir_all(&data)?;
        let _ = std::fs::remove_file(&socket);
        let log_path = self.dir.join(format!("lazyfs-{id}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(bin)
            .arg("mount")
            .arg(&backing)
            .arg(&data)
            .arg("--control")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        lock_map(&self.shims).insert(id, child);
        let deadline = Instant::now() + SHIM_READY_LIMIT;
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            let exited = lock_map(&self.shims)
                .get_mut(&id)
                .map(|c| c.try_wait())
                .transpose()?
                .flatten();
            if let Some(status) = exited {
                bail!(
                    "c4aj-lazyfs for node {id} exited ({status}) before its control socket was ready: {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "c4aj-lazyfs for node {id}: no control socket {} after {SHIM_READY_LIMIT:?}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts node `id`'s power as far as its disk goes: every file of its data directory goes
    /// back to its last fsync (the node must be down). Returns what was unsynced before the
    /// cut: one `(pending bytes, file)` per file with changes since its last fsync.
    pub fn cut(&self, id: NodeId) -> anyhow::Result<Vec<(u64, String)>> {
        if self.lazyfs.is_none() {
            bail!("node {id}: no c4aj-lazyfs mount to cut");
        }
        let socket = self.control_socket(id);
        let stats = control(&socket, "stats")?;
        control(&socket, "cut")?;
        Ok(stats
            .iter()
            .filter_map(|line| {
                let mut words = line.splitn(4, ' ');
                let pending = words.next()?.parse().ok()?;
                let path = words.nth(2)?;
                let name = Path::new(path)
                    .strip_prefix(self.backing_dir(id))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| path.to_owned());
                Some((pending, name))
            })
            .collect())
    }

    /// Ends every shim: SIGTERM (it unmounts), bounded wait, then SIGKILL; a mount left behind
    /// is detached by [`remove_lazyfs_mounts`].
    pub(super) fn stop_shims(&self) {
        let shims = std::mem::take(&mut *lock_map(&self.shims));
        for child in shims.values() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + SHIM_EXIT_LIMIT;
        for (id, mut child) in shims {
            loop {
                match child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(None) => {
                        tracing::warn!("c4aj-lazyfs of node {id} still runs after SIGTERM: killed");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Sends one command to a `c4aj-lazyfs` control socket: the reply's lines before `ok`.
fn control(socket: &Path, command: &str) -> anyhow::Result<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(format!("{command}\n").as_bytes())?;
    let mut lines = Vec::new();
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line == "ok" {
            return Ok(lines);
        }
        if line.starts_with("error") {
            bail!("c4aj-lazyfs {command}: {line}");
        }
        lines.push(line);
    }
    bail!("c4aj-lazyfs {command}: the control socket closed before `ok`")
}

/// Lazily unmounts (`umount -l`) every `c4aj-lazyfs` mount in `/proc/mounts` that is a node's
/// data directory in a results folder (`<folder>/data/nK` next to `<folder>/c4aj-nodes.toml`),
/// as an interrupted run leaves them.
pub(super) fn remove_lazyfs_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for target in lazyfs_mounts(&mounts) {
        if let Err(e) = run(&["umount", "-l", &target]) {
            tracing::warn!("cannot unmount {target}: {e:#}");
        }
    }
}

/// The mount points in `mounts` (`/proc/mounts`' text) of `c4aj-lazyfs` mounts on a results
/// folder's `data/nK`.
fn lazyfs_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, target) = (fields.next()?, fields.next()?);
            (source == LAZYFS_SOURCE).then(|| unescape_mount_path(target))
        })
        .filter(|target| {
            let path = Path::new(target);
            let is_node_dir = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('n'));
            let folder = path
                .parent()
                .filter(|p| p.file_name().is_some_and(|n| n == "data"))
                .and_then(Path::parent);
            is_node_dir && folder.is_some_and(|f| f.join(crate::config::CLUSTER_FILE).exists())
        })
        .collect()
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_lazyfs_mounts_are_the_shims_on_a_results_folders_node_dirs() {
        let dir = std::env::temp_dir().join(format!("c4aj hosts {}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("mkdir");
        std::fs::write(dir.join(crate::config::CLUSTER_FILE), "").expect("cluster file");
        let escaped = dir.to_string_lossy().replace(' ', "\\040");
        let mounts = format!(
            "proc /proc proc rw 0 0\n\
             c4aj-lazyfs {escaped}/data/n1 fuse.c4aj-lazyfs rw 0 0\n\
             c4aj-lazyfs /tmp/other/mnt fuse.c4aj-lazyfs rw 0 0\n\
             tmpfs {escaped}/data/n2 tmpfs rw 0 0\n\
             c4aj-lazyfs /nowhere/data/n3 fuse.c4aj-lazyfs rw 0 0\n"
        );
        assert_eq!(
            lazyfs_mounts(&mounts),
            vec![format!("{}/data/n1", dir.display())]
        );
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
